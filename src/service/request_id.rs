//! The id of one call, made at its arrival: in every log line about the
//! call (its span), in the response metadata and in errors, so an
//! agency's report and the server's log meet (D254).

use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use ring::rand::{SecureRandom, SystemRandom};
use tonic::metadata::MetadataValue;
use tonic::{Request, Status};

/// The metadata key of the request id, in responses and errors.
const REQUEST_ID: &str = "x-request-id";

/// The id of one call: in every log line about it and in its response
/// metadata, so an agency's report and the server's log meet.
#[derive(Clone)]
pub(crate) struct RequestId(Arc<str>);

impl std::fmt::Debug for RequestId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl RequestId {
    /// 16 random hex digits.
    pub(crate) fn new() -> Self {
        let mut bytes = [0u8; 8];
        if SystemRandom::new().fill(&mut bytes).is_err() {
            // Only for logs: a clock value is an acceptable stand-in.
            bytes = now_nanos().to_be_bytes();
        }
        RequestId(crate::hex::encode(&bytes).into())
    }

    pub(crate) fn of<T>(request: &Request<T>) -> Self {
        request
            .extensions()
            .get::<RequestId>()
            .cloned()
            .unwrap_or_else(RequestId::new)
    }

    pub(crate) fn as_str(&self) -> &str {
        &self.0
    }

    pub(crate) fn tag(&self, metadata: &mut tonic::metadata::MetadataMap) {
        if let Ok(value) = MetadataValue::try_from(self.as_str()) {
            metadata.insert(REQUEST_ID, value);
        }
    }

    pub(crate) fn tag_status(&self, mut status: Status) -> Status {
        self.tag(status.metadata_mut());
        status
    }

    /// The span of the call: every log line made inside it carries the
    /// request id, whatever module writes it (D254). Its level is ERROR
    /// so that it is on whenever any line of the call can be written,
    /// whatever the level filter.
    pub(crate) fn span(&self) -> tracing::Span {
        tracing::error_span!("call", request_id = self.as_str())
    }
}

fn now_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_nanos() as u64)
}
