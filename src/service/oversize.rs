//! A request message over `limits.max_message_bytes` is RESOURCE_EXHAUSTED,
//! as the proto promises for a batch over the limit (and as gRPC's other
//! implementations answer), not tonic's OUT_OF_RANGE.
//!
//! tonic refuses such a message while framing, before any fugo code runs:
//! for a stream the error reaches the handler (see `status::incoming`); for
//! a unary call tonic answers by itself, so this layer rewrites the code of
//! that answer. fugo's own handlers never answer OUT_OF_RANGE.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tonic::codegen::{Service, http};
use tonic::server::NamedService;

/// Wraps the `fugo.v1.Codes` service; see the module documentation.
#[derive(Debug, Clone)]
pub(crate) struct Oversize<S> {
    inner: S,
}

impl<S> Oversize<S> {
    pub(crate) fn new(inner: S) -> Self {
        Oversize { inner }
    }
}

impl<S: NamedService> NamedService for Oversize<S> {
    const NAME: &'static str = S::NAME;
}

type BoxFuture<T, E> = Pin<Box<dyn Future<Output = Result<T, E>> + Send>>;

impl<S, Req, ResBody> Service<http::Request<Req>> for Oversize<S>
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
            // grpc-status 11 is OUT_OF_RANGE, 8 RESOURCE_EXHAUSTED.
            if headers.get("grpc-status").map(http::HeaderValue::as_bytes) == Some(b"11") {
                headers.insert("grpc-status", http::HeaderValue::from_static("8"));
            }
            Ok(response)
        })
    }
}
