//! The one place where fugo's errors become gRPC statuses and item errors.
//!
//! Whole-request failures become a `tonic::Status`; per-item failures become
//! an `ItemError` with a `google.rpc.Code`. Every message here names a rule,
//! a field or an index, never a number or a code.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use crate::exchange::{BatchError, FailureKind, ItemFailure};
use crate::policy::Denied;
use crate::proto::fugo::v1::ItemError;
use crate::proto::google::rpc::Code as RpcCode;

/// A whole batch refused.
pub(crate) fn batch(error: BatchError) -> Status {
    match error {
        BatchError::Denied(Denied::UnknownAgency(agency)) => {
            Status::permission_denied(format!("agency {agency} is not in the policy"))
        }
        BatchError::Denied(denied) => Status::permission_denied(denied.to_string()),
        BatchError::TooLarge(_) => Status::resource_exhausted(error.to_string()),
        BatchError::BadField { field, reason } => bad_field(field, &reason),
        BatchError::Random => Status::internal("the server could not draw random numbers"),
    }
}

/// A malformed request field, with a field violation in the details.
pub(crate) fn bad_field(field: &str, reason: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("field {field}: {reason}"),
        ErrorDetails::with_bad_request_violation(field, reason),
    )
}

/// A stream's next message could not be read: one over the size limit is
/// RESOURCE_EXHAUSTED (tonic says OUT_OF_RANGE), one cut short is
/// INVALID_ARGUMENT (tonic says INTERNAL); see `framing`. Anything else
/// stays as tonic said.
pub(crate) fn incoming(status: Status) -> Status {
    match status.code() {
        Code::OutOfRange => Status::resource_exhausted(status.message().to_owned()),
        Code::Internal if status.message() == "Unexpected EOF decoding stream." => {
            Status::invalid_argument("the last message is cut short (Unexpected EOF)")
        }
        _ => status,
    }
}

/// The caller has no usable identity.
pub(crate) fn unauthenticated(reason: &str) -> Status {
    Status::unauthenticated(reason.to_owned())
}

/// One item's failure, for the response.
pub(crate) fn item(failure: ItemFailure) -> ItemError {
    let code = match failure.kind {
        FailureKind::InvalidArgument => RpcCode::InvalidArgument,
        FailureKind::NotFound => RpcCode::NotFound,
        FailureKind::FailedPrecondition => RpcCode::FailedPrecondition,
        FailureKind::PermissionDenied => RpcCode::PermissionDenied,
    };
    ItemError {
        index: u32::try_from(failure.index).unwrap_or(u32::MAX),
        code: code as i32,
        reason: failure.reason,
    }
}
