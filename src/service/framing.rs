//! Every call gets its request id here, and runs inside its span.
//!
//! A request that tonic cannot frame or decode before any fugo code runs
//! gets the code the proto promises for a malformed request,
//! INVALID_ARGUMENT, not tonic's INTERNAL: a last message cut short
//! ("Unexpected EOF decoding stream."), a message whose compressed flag is
//! set although no `grpc-encoding` was sent, or whose flag is neither 0
//! nor 1 (the gRPC compression document asks for INTERNAL there; fugo
//! keeps INTERNAL for its own faults, D141), and a message the services
//! fugo does not generate (health) cannot decode.
//!
//! On a stream the error reaches the handler (see `status::incoming`); a
//! unary call tonic answers by itself, so this layer rewrites the code of
//! that answer. fugo's own handlers answer INTERNAL only with other
//! messages. (A message over `limits.max_message_bytes` keeps tonic's
//! OUT_OF_RANGE, as docs/PROTOCOL.md lists.)

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::{Service, http};
use tonic::server::NamedService;
use tracing::Instrument;

use super::request_id::RequestId;

/// Wraps the `fugo.v1.Codes` service; see the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct FramingStatus<S> {
    inner: S,
}

impl<S> FramingStatus<S> {
    pub(crate) fn new(inner: S) -> Self {
        FramingStatus { inner }
    }
}

impl<S: NamedService> NamedService for FramingStatus<S> {
    const NAME: &'static str = S::NAME;
}

/// Whether `status` is tonic's INTERNAL for a request it could not frame
/// or decode (see the module documentation): the caller's fault.
pub(crate) fn malformed_request(status: &tonic::Status) -> bool {
    let message = status.message();
    status.code() == tonic::Code::Internal
        && (message == "Unexpected EOF decoding stream."
            || message.starts_with("protocol error: received message with compressed-flag")
            || message
                .starts_with("protocol error: received message with invalid compression flag")
            || message.starts_with("failed to decode Protobuf message"))
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, Req, ResBody> Service<http::Request<Req>> for FramingStatus<S>
where
    S: Service<http::Request<Req>, Response = http::Response<ResBody>>,
    S::Future: Send + 'static,
{
    type Response = http::Response<ResBody>;
    type Error = S::Error;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: http::Request<Req>) -> Self::Future {
        // The call's request id is given here, and every log line made
        // while the call runs (its interceptor, its handler, the tasks it
        // starts in this span) carries it (D254).
        let id = RequestId::new();
        let span = id.span();
        request.extensions_mut().insert(id);
        let answer = span.in_scope(|| self.inner.call(request));
        Box::pin(
            async move {
                let mut response = answer.await?;
                let headers = response.headers_mut();
                // A trailers-only answer: 13 INTERNAL with one of tonic's
                // framing or decoding messages → 3 INVALID_ARGUMENT.
                if let Some(status) = tonic::Status::from_header_map(headers)
                    && malformed_request(&status)
                {
                    headers.insert("grpc-status", http::HeaderValue::from_static("3"));
                }
                Ok(response)
            }
            .instrument(span),
        )
    }
}
