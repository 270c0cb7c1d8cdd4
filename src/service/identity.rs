//! Who is calling: the client certificate, and only the client certificate.
//!
//! The identity is the certificate's Subject Common Name, from exactly one
//! place: the subject must hold exactly one Common Name, and it must be a
//! UTF8String or a PrintableString. Anything else (no Common Name, two of
//! them, a BMPString or another string type) is refused, never replaced by
//! another field such as a DNS name: a second source of identity is a
//! second way to be someone else. The certificate is parsed once per
//! connection, after the TLS handshake; which agency the identity is, is
//! decided per call and per batch against the policy in force, and so is
//! whether the certificate has been revoked since (the CRLs in force).

use sha2::{Digest, Sha256};
use tonic::Status;
use x509_parser::asn1_rs::Tag;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::revocation::Revocations;
use super::status;
use crate::agency::AgencyId;
use crate::policy::Policy;

/// The client certificate of one connection, parsed once.
#[derive(Debug)]
pub(crate) struct PeerCertificate {
    /// SHA-256 of the certificate (DER), in hex: names it in logs.
    pub(crate) fingerprint: String,
    /// The subject as text, for logs.
    pub(crate) subject: String,
    /// The identity, or why the certificate has no usable one.
    pub(crate) identity: Result<String, String>,
    /// The issuer (DER) and serial number, which a CRL names.
    revocation_key: (Vec<u8>, Vec<u8>),
    /// The CRLs in force, replaced by reloads.
    revocations: Revocations,
}

impl PeerCertificate {
    /// Parses the leaf certificate `der`; `revocations` are the CRLs it is
    /// checked against on every call.
    pub(crate) fn from_der(der: &[u8], revocations: Revocations) -> Self {
        let fingerprint = crate::hex::encode(&Sha256::digest(der));
        match X509Certificate::from_der(der) {
            Ok((_, certificate)) => PeerCertificate {
                fingerprint,
                subject: certificate.subject().to_string(),
                identity: common_name(&certificate),
                revocation_key: (
                    certificate.issuer().as_raw().to_vec(),
                    certificate.raw_serial().to_vec(),
                ),
                revocations,
            },
            Err(_) => PeerCertificate {
                fingerprint,
                subject: String::new(),
                identity: Err("the client certificate cannot be parsed".to_owned()),
                revocation_key: (Vec::new(), Vec::new()),
                revocations,
            },
        }
    }

    /// The agency this certificate acts as under `policy`, if the CRLs in
    /// force do not revoke it.
    pub(crate) fn caller(&self, policy: &Policy) -> Result<AgencyId, Status> {
        let (issuer, serial) = &self.revocation_key;
        if let Some(reason) = self.revocations.current().refusal(issuer, serial) {
            return Err(status::unauthenticated(&reason));
        }
        let identity = self
            .identity
            .as_ref()
            .map_err(|reason| status::unauthenticated(reason))?;
        let agency = policy.agency_for_certificate(identity).ok_or_else(|| {
            status::unauthenticated(&format!(
                "certificate identity '{identity}' is not an agency in the policy"
            ))
        })?;
        // A retired (merged) agency is known but no longer acts (D212).
        if let Some(merger) = policy.retired(&agency.id) {
            return Err(status::denied(crate::policy::Denied::Retired {
                agency: agency.id.clone(),
                survivor: merger.survivor.clone(),
            }));
        }
        Ok(agency.id.clone())
    }
}

/// The one Common Name of the subject, if it is a plain string.
fn common_name(certificate: &X509Certificate<'_>) -> Result<String, String> {
    let mut names = certificate.subject().iter_common_name();
    let name = names
        .next()
        .ok_or_else(|| "the client certificate has no Common Name".to_owned())?;
    if names.next().is_some() {
        return Err("the client certificate has more than one Common Name".to_owned());
    }
    let tag = name.attr_value().tag();
    if tag != Tag::Utf8String && tag != Tag::PrintableString {
        return Err(format!(
            "the client certificate's Common Name is a {tag}, not a UTF8String or PrintableString"
        ));
    }
    name.as_str()
        .map(str::to_owned)
        .map_err(|_| "the client certificate's Common Name is not valid UTF-8".to_owned())
}
