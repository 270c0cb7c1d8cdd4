//! The services of a server that may start sealed: until the master key is
//! rebuilt from its shares, the Codes and Audit services do not exist yet,
//! and every call to them is answered UNAVAILABLE "sealed: N of M shares
//! supplied" by `Gate`; the health service says NOT_SERVING and names
//! the same reason in the `x-fugo-health-reason` response header
//! (`HealthReason`). Once unsealed, the gate hands every call to the real
//! service, which is built then (it needs the keys and the audit trail).

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};

use tonic::Status;
use tonic::body::Body;
use tonic::codegen::{Body as HttpBody, Bytes, Service, StdError, http};
use tonic::server::NamedService;

use crate::custody::SealStatus;

/// The response header in which health answers carry why the server is
/// not serving.
pub const HEALTH_REASON: &str = "x-fugo-health-reason";

type BoxFuture<T> = Pin<Box<dyn Future<Output = Result<T, Infallible>> + Send>>;

/// A service that exists once the server is unsealed.
pub(crate) struct Gate<S> {
    slot: Arc<OnceLock<S>>,
    progress: Option<Arc<SealStatus>>,
}

impl<S> Clone for Gate<S> {
    fn clone(&self) -> Self {
        Gate {
            slot: Arc::clone(&self.slot),
            progress: self.progress.clone(),
        }
    }
}

impl<S> Gate<S> {
    /// A gate on `slot`; `progress` words the answer while it is empty.
    pub(crate) fn new(slot: Arc<OnceLock<S>>, progress: Option<Arc<SealStatus>>) -> Self {
        Gate { slot, progress }
    }
}

impl<S: NamedService> NamedService for Gate<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B, R> Service<http::Request<B>> for Gate<S>
where
    S: Service<http::Request<B>, Response = http::Response<R>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: Send + 'static,
    R: HttpBody<Data = Bytes> + Send + 'static,
    R::Error: Into<StdError>,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        // Readiness is asked of the inner service per call, below.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        match self.slot.get() {
            Some(inner) => {
                let mut inner = inner.clone();
                Box::pin(async move {
                    std::future::poll_fn(|cx| inner.poll_ready(cx)).await?;
                    Ok(inner.call(request).await?.map(Body::new))
                })
            }
            None => {
                let reason = self
                    .progress
                    .as_ref()
                    .map_or_else(|| "sealed".to_owned(), |progress| progress.reason());
                Box::pin(std::future::ready(Ok(
                    Status::unavailable(reason).into_http()
                )))
            }
        }
    }
}

/// The health service, with the sealed reason in a response header while
/// the server is sealed.
#[derive(Clone)]
pub(crate) struct HealthReason<S> {
    inner: S,
    open: Arc<OnceLock<()>>,
    progress: Option<Arc<SealStatus>>,
}

impl<S> HealthReason<S> {
    /// Wraps `inner`; sealed until `open` is set.
    pub(crate) fn new(
        inner: S,
        open: Arc<OnceLock<()>>,
        progress: Option<Arc<SealStatus>>,
    ) -> Self {
        HealthReason {
            inner,
            open,
            progress,
        }
    }
}

impl<S: NamedService> NamedService for HealthReason<S> {
    const NAME: &'static str = S::NAME;
}

impl<S, B> Service<http::Request<B>> for HealthReason<S>
where
    S: Service<http::Request<B>, Response = http::Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = http::Response<Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let reason = match (&self.progress, self.open.get()) {
            (Some(progress), None) => http::HeaderValue::from_str(&progress.reason()).ok(),
            _ => None,
        };
        let answer = self.inner.call(request);
        Box::pin(async move {
            let mut response = answer.await?;
            if let Some(reason) = reason {
                response.headers_mut().insert(HEALTH_REASON, reason);
            }
            Ok(response)
        })
    }
}
