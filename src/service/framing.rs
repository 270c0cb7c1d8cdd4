//! A request whose last message is cut short ("Unexpected EOF decoding
//! stream."), which tonic finds while framing messages before any fugo code
//! runs, gets the code the proto promises for a malformed request,
//! INVALID_ARGUMENT, not INTERNAL.
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
            // 13 INTERNAL with tonic's "cut short" message → 3 INVALID_ARGUMENT.
            if (code, message) == (Some(b"13".as_slice()), Some(TRUNCATED)) {
                headers.insert("grpc-status", http::HeaderValue::from_static("3"));
            }
            Ok(response)
        })
    }
}
