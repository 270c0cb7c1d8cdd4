//! Who is calling: the client certificate, and only the client certificate.
//!
//! The identity is the certificate's Subject Common Name (or, failing that,
//! its first DNS subject alternative name). The policy maps identities to
//! agencies, so a certificate can be rotated by listing both identities.
//! Parsed identities are remembered per certificate, so a connection's
//! certificate is parsed once, not on every call.

use std::collections::HashMap;
use std::sync::{Mutex, PoisonError};

use tonic::{Request, Status};
use x509_parser::prelude::{FromDer, GeneralName, X509Certificate};

use super::status;
use crate::agency::AgencyId;
use crate::policy::Policy;

/// Certificates remembered at most; past this the memory starts afresh.
const REMEMBERED: usize = 4096;

/// Maps client certificates to identities.
#[derive(Default)]
pub(crate) struct Identities {
    known: Mutex<HashMap<Vec<u8>, String>>,
}

impl Identities {
    /// The agency behind the request's client certificate under `policy`.
    pub(crate) fn caller<T>(
        &self,
        request: &Request<T>,
        policy: &Policy,
    ) -> Result<AgencyId, Status> {
        let certificates = request
            .peer_certs()
            .ok_or_else(|| status::unauthenticated("no client certificate"))?;
        let leaf = certificates
            .first()
            .ok_or_else(|| status::unauthenticated("no client certificate"))?;
        let identity = self.identity(leaf.as_ref())?;
        policy
            .agency_for_certificate(&identity)
            .map(|agency| agency.id.clone())
            .ok_or_else(|| {
                status::unauthenticated(&format!(
                    "certificate identity '{identity}' is not an agency in the policy"
                ))
            })
    }

    fn identity(&self, der: &[u8]) -> Result<String, Status> {
        let mut known = self.known.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(identity) = known.get(der) {
            return Ok(identity.clone());
        }
        let identity = parse_identity(der)?;
        if known.len() >= REMEMBERED {
            known.clear();
        }
        known.insert(der.to_vec(), identity.clone());
        Ok(identity)
    }
}

fn parse_identity(der: &[u8]) -> Result<String, Status> {
    let (_, certificate) = X509Certificate::from_der(der)
        .map_err(|_| status::unauthenticated("the client certificate cannot be parsed"))?;
    if let Some(name) = certificate
        .subject()
        .iter_common_name()
        .next()
        .and_then(|cn| cn.as_str().ok())
    {
        return Ok(name.to_owned());
    }
    if let Ok(Some(names)) = certificate.subject_alternative_name() {
        for name in &names.value.general_names {
            if let GeneralName::DNSName(dns) = name {
                return Ok((*dns).to_owned());
            }
        }
    }
    Err(status::unauthenticated(
        "the client certificate names no Common Name and no DNS name",
    ))
}
