//! Two request errors tonic finds while framing messages, before any fugo
//! code runs, get the codes the proto promises:
//!
//! - a message over `limits.max_message_bytes` is RESOURCE_EXHAUSTED (a
//!   batch over the limit; gRPC's other implementations agree), not tonic's
//!   OUT_OF_RANGE;
//! - a request whose last message is cut short ("Unexpected EOF decoding
//!   stream.") is INVALID_ARGUMENT (a malformed request), not INTERNAL.
//!
//! On a stream these errors reach the handler (see `status::incoming`); a
//! unary call tonic answers by itself, so this layer rewrites the code of
//! that answer. fugo's own handlers never answer OUT_OF_RANGE, and INTERNAL
//! only with other messages.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::{Service, http};
use tonic::server::NamedService;

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

/// tonic's message for a request cut short, as it travels (percent-encoded).
const TRUNCATED: &[u8] = b"Unexpected%20EOF%20decoding%20stream.";

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

    fn call(&mut self, request: http::Request<Req>) -> Self::Future {
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            let headers = response.headers_mut();
            let code = headers.get("grpc-status").map(http::HeaderValue::as_bytes);
            let message = headers.get("grpc-message").map(http::HeaderValue::as_bytes);
            // 11 OUT_OF_RANGE → 8 RESOURCE_EXHAUSTED; 13 INTERNAL → 3 INVALID_ARGUMENT.
            let fixed = match (code, message) {
                (Some(b"11"), _) => Some("8"),
                (Some(b"13"), Some(TRUNCATED)) => Some("3"),
                _ => None,
            };
            if let Some(fixed) = fixed {
                headers.insert("grpc-status", http::HeaderValue::from_static(fixed));
            }
            Ok(response)
        })
    }
}
