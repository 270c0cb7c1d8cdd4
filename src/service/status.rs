//! The one place where fugo's outcomes become gRPC statuses and item errors.
//!
//! Whole-request failures become a `tonic::Status`; per-item failures become
//! an `ItemError` with a `google.rpc.Code`. Both start from the core's typed
//! outcomes ([`BatchError`], [`ItemError`]), so which code a client sees is
//! decided here and nowhere else. Every message names a rule, a field or an
//! index, never a number or a code.

use tonic::{Code, Status};
use tonic_types::{ErrorDetails, StatusExt};

use super::quota::Exceeded;
use crate::agency::AgencyId;
use crate::audit::RecorderError;
use crate::exchange::{BatchError, ItemError, ItemFailure, PlanError};
use crate::persons::PersonsError;
use crate::policy::{Capability, Denied, Metered};
use crate::proto::fugo::v1::ItemError as WireItemError;
use crate::proto::google::rpc::Code as RpcCode;
use crate::token::TokenError;

/// A whole batch refused.
pub(crate) fn batch(error: BatchError) -> Status {
    let message = error.to_string();
    match error {
        BatchError::Denied(Denied::UnknownAgency(_)) | BatchError::Denied(_) => {
            Status::permission_denied(message)
        }
        BatchError::TooLarge(_) => Status::resource_exhausted(message),
        BatchError::NoItems | BatchError::DuplicateItem { .. } | BatchError::Items(_) => {
            bad_field("items", &message)
        }
        BatchError::NonDisclosurePast | BatchError::NonDisclosureTooFar { .. } => {
            bad_field("non_disclosure_until", &message)
        }
        BatchError::Random(_) => Status::internal("the server could not draw random numbers"),
        BatchError::Epoch { .. } | BatchError::Generation(_) => {
            Status::failed_precondition(message)
        }
        _ => Status::internal(message),
    }
}

/// The audit trail could not record the call: UNAVAILABLE, nothing was
/// returned, the call may be retried (fail closed).
pub(crate) fn audit(error: &RecorderError) -> Status {
    Status::unavailable(error.to_string())
}

/// A call over its agency's quota: RESOURCE_EXHAUSTED with a
/// google.rpc.RetryInfo saying when a retry can succeed (none for a batch
/// too large to ever pass) and a google.rpc.QuotaFailure naming the agency,
/// the operation and the limit (D124).
pub(crate) fn quota(agency: &AgencyId, operation: Metered, exceeded: &Exceeded) -> Status {
    let unit = if operation == Metered::Disclose {
        "reads"
    } else {
        "items"
    };
    let message = match exceeded {
        Exceeded::Rate { limit, .. } => format!(
            "agency {agency}: {operation} quota of {} {unit} a second (burst {}) is used up; \
             retry after the delay in RetryInfo",
            limit.per_second, limit.burst
        ),
        Exceeded::Day { limit, .. } => format!(
            "agency {agency}: {operation} quota of {} {unit} a day (from 00:00 JST) is used up; \
             retry after the delay in RetryInfo",
            limit.per_day
        ),
        Exceeded::TooLarge { items, limit } => format!(
            "agency {agency}: a call of {items} {operation} {unit} is more than its quota allows \
             at once (burst {}, {} a day); split it",
            limit.burst, limit.per_day
        ),
    };
    let mut details = ErrorDetails::new();
    if let Some(delay) = exceeded.retry_after() {
        details.set_retry_info(Some(delay));
    }
    details.add_quota_failure_violation(
        format!("agency:{agency}/{operation}"),
        format!("{} limit", exceeded.which()),
    );
    Status::with_error_details(Code::ResourceExhausted, message, details)
}

/// A malformed request field, with a field violation in the details.
pub(crate) fn bad_field(field: &str, reason: &str) -> Status {
    Status::with_error_details(
        Code::InvalidArgument,
        format!("field {field}: {reason}"),
        ErrorDetails::with_bad_request_violation(field, reason),
    )
}

/// A stream's next message could not be read: one over the size limit
/// stays OUT_OF_RANGE as tonic says; one cut short or framed wrongly (a
/// compressed flag without an encoding) is INVALID_ARGUMENT, where tonic
/// says INTERNAL; see `framing`. Anything else stays as tonic said.
pub(crate) fn incoming(status: Status) -> Status {
    if !super::framing::malformed_request(&status) {
        return status;
    }
    if status.message() == "Unexpected EOF decoding stream." {
        Status::invalid_argument("the last message is cut short (Unexpected EOF)")
    } else {
        Status::invalid_argument(status.message().to_owned())
    }
}

/// An admin-listener certificate whose identity is not in `[admin]
/// identities`: PERMISSION_DENIED.
pub(crate) fn not_admin(identity: &str) -> Status {
    Status::permission_denied(format!(
        "certificate identity '{identity}' is not an admin ([admin] identities)"
    ))
}

/// An admin call while the server is sealed: UNAVAILABLE.
pub(crate) fn admin_sealed() -> Status {
    Status::unavailable("the server is sealed: admin calls work once it is unsealed")
}

/// A share the unsealing refused, or a share for a server that is not
/// sealed: FAILED_PRECONDITION saying why (never the share).
pub(crate) fn unseal_refused(reason: &str) -> Status {
    Status::failed_precondition(format!("share refused: {reason}"))
}

/// A policy reload refused (the policy in force stays): FAILED_PRECONDITION
/// naming the problem.
pub(crate) fn reload_refused(error: &super::error::ServeError) -> Status {
    Status::failed_precondition(format!(
        "policy reload refused, the policy in force stays: {error}"
    ))
}

/// A CRL reload refused (the lists in force stay): FAILED_PRECONDITION
/// naming the file and the problem.
pub(crate) fn crl_reload_refused(error: &super::error::ServeError) -> Status {
    Status::failed_precondition(format!(
        "CRL reload refused, the lists in force stay: {error}"
    ))
}

/// A backup that could not be made or sent: INTERNAL naming why.
pub(crate) fn backup_failed(reason: &str) -> Status {
    Status::internal(format!("backup failed: {reason}"))
}

/// The caller has no usable identity.
pub(crate) fn unauthenticated(reason: &str) -> Status {
    Status::unauthenticated(reason.to_owned())
}

/// The code a client sees for one item's failure.
fn item_code(error: &ItemError) -> RpcCode {
    match error {
        ItemError::Number(_) | ItemError::CodeText(_) => RpcCode::InvalidArgument,
        ItemError::UnknownCode => RpcCode::NotFound,
        ItemError::RetiredEpoch(_)
        | ItemError::RekeyOnlyEpoch(_)
        | ItemError::DestroyedEpoch(_)
        | ItemError::DestroyedGeneration(_)
        | ItemError::Generation(_)
        | ItemError::StaleWindow
        | ItemError::Expired => RpcCode::FailedPrecondition,
        ItemError::Token(TokenError::WrongAddressee | TokenError::WrongWindow) => {
            RpcCode::FailedPrecondition
        }
        ItemError::Token(_) => RpcCode::InvalidArgument,
        ItemError::Withdrawn(_) => RpcCode::PermissionDenied,
        ItemError::Superseded | ItemError::Unavailable => RpcCode::FailedPrecondition,
        _ => RpcCode::Internal,
    }
}

/// A request about one value (the portal's code in a disclosure) that
/// failed as an item would: the same code, as the call's status.
pub(crate) fn single(field: &str, error: &ItemError) -> Status {
    let message = format!("field {field}: {error}");
    match item_code(error) {
        RpcCode::InvalidArgument => bad_field(field, &error.to_string()),
        RpcCode::NotFound => Status::not_found(message),
        RpcCode::FailedPrecondition => Status::failed_precondition(message),
        RpcCode::PermissionDenied => Status::permission_denied(message),
        _ => Status::internal(message),
    }
}

/// A re-issue, suspension or lift the tables refuse (see
/// `fugo_core::persons`): a malformed pair is INVALID_ARGUMENT, a number
/// in the wrong state FAILED_PRECONDITION.
pub(crate) fn persons(error: &PlanError) -> Status {
    let message = error.to_string();
    match error {
        PlanError::Persons(PersonsError::SameNumber) => {
            bad_field("new_number", "the new number is the old number")
        }
        PlanError::Persons(
            PersonsError::Superseded { .. }
            | PersonsError::NewNumberKnown
            | PersonsError::NotSuspended,
        ) => Status::failed_precondition(message),
        PlanError::Random(_) => Status::internal("the server could not draw random numbers"),
        _ => Status::internal(message),
    }
}

/// A re-issue to a number that already has records in the audit trail.
pub(crate) fn new_number_has_history() -> Status {
    Status::failed_precondition(
        "field new_number: the new number already has a history in the audit trail;          a re-issue must be recorded before the new number is released or used",
    )
}

/// A caller without any of the capabilities a call needs.
pub(crate) fn missing_capability(caller: &AgencyId, needed: &[Capability]) -> Status {
    let names: Vec<String> = needed.iter().map(ToString::to_string).collect();
    Status::permission_denied(format!(
        "agency {caller} lacks the {} capability",
        names.join(" or ")
    ))
}

/// A capability or agency refusal of a whole call.
pub(crate) fn denied(denied: Denied) -> Status {
    Status::permission_denied(denied.to_string())
}

/// One item's failure, for the response.
pub(crate) fn item(failure: ItemFailure) -> WireItemError {
    WireItemError {
        index: u32::try_from(failure.index).unwrap_or(u32::MAX),
        code: item_code(&failure.error) as i32,
        reason: failure.error.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agency::{AffairId, AgencyId, Epoch};
    use crate::code_text::CodeTextError;
    use crate::mynumber::ParseError;

    #[test]
    fn every_item_outcome_has_its_documented_code() {
        let agency = AgencyId::new("mhlw").unwrap();
        let cases = [
            (
                ItemError::Number(ParseError::CheckDigit),
                RpcCode::InvalidArgument,
            ),
            (
                ItemError::CodeText(CodeTextError::WrongLength { length: 3 }),
                RpcCode::InvalidArgument,
            ),
            (ItemError::UnknownCode, RpcCode::NotFound),
            (
                ItemError::RetiredEpoch(Epoch::new(1).unwrap()),
                RpcCode::FailedPrecondition,
            ),
            (
                ItemError::Token(TokenError::WrongAddressee),
                RpcCode::FailedPrecondition,
            ),
            (
                ItemError::Token(TokenError::Forged),
                RpcCode::InvalidArgument,
            ),
            (ItemError::StaleWindow, RpcCode::FailedPrecondition),
            (ItemError::Expired, RpcCode::FailedPrecondition),
            (ItemError::Superseded, RpcCode::FailedPrecondition),
            (ItemError::Unavailable, RpcCode::FailedPrecondition),
            (
                ItemError::Withdrawn(Denied::NoRule {
                    requester: agency.clone(),
                    affair: AffairId::new("health").unwrap(),
                    provider: agency,
                }),
                RpcCode::PermissionDenied,
            ),
        ];
        for (error, code) in cases {
            let shown = error.to_string();
            let wire = item(ItemFailure { index: 7, error });
            assert_eq!(
                (wire.index, wire.code, wire.reason),
                (7, code as i32, shown)
            );
        }
    }

    #[test]
    fn seal_field_problems_name_their_field() {
        let status = batch(BatchError::NonDisclosurePast);
        assert_eq!(status.code(), Code::InvalidArgument);
        assert!(status.message().starts_with("field non_disclosure_until:"));
        let status = batch(BatchError::NoItems);
        assert!(status.message().starts_with("field items:"));
        assert_eq!(
            batch(BatchError::TooLarge(10_001)).code(),
            Code::ResourceExhausted
        );
    }
}
