//! Revoked agency certificates: the certificate revocation lists (CRLs)
//! named by `[tls] crl`.
//!
//! A CRL is checked when it is loaded, at start and on every reload: it
//! must parse (PEM `X509 CRL` blocks or one DER list), be issued and signed
//! by one of the client CAs (whose key usage, if stated, allows cRLSign),
//! not have expired, and each client CA must have exactly one list; on
//! reload, a list may not be older than the one in force for its CA. At
//! start a bad list stops the server; on reload the lists in force stay.
//!
//! The lists are enforced twice (D130, D131):
//! - at the TLS handshake, by rustls' client verifier (a revoked
//!   certificate gets the `certificate_revoked` alert);
//! - on every call and every batch of a stream, against the lists in force
//!   at that moment, so a connection opened before a reload installed a
//!   list loses access at its next message.

use std::collections::HashSet;
use std::fmt;
use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio_rustls::rustls::RootCertStore;
use tokio_rustls::rustls::crypto::CryptoProvider;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use x509_parser::num_bigint::BigUint;
use x509_parser::prelude::{FromDer, X509Certificate};
use x509_parser::revocation_list::CertificateRevocationList;

/// A list whose next update is nearer than this is warned about when loaded.
pub(crate) const EXPIRY_WARNING: Duration = Duration::from_secs(7 * 86_400);

/// The revocation lists in force: none, or one per client CA.
#[derive(Default)]
pub(crate) struct Crls {
    /// The lists as DER, for rustls.
    ders: Vec<CertificateRevocationListDer<'static>>,
    /// The same lists, read for the per-call check.
    lists: Vec<List>,
}

/// One CA's list.
struct List {
    /// The file it came from.
    path: String,
    /// The issuing CA's subject (DER), as in its certificates' issuer field.
    issuer: Vec<u8>,
    /// The issuing CA's subject, for messages.
    issuer_name: String,
    /// The revoked serial numbers (big-endian, no leading zero bytes).
    serials: HashSet<Vec<u8>>,
    /// When the CA promises a fresher list (seconds since 1970).
    next_update: i64,
    /// When it was issued (seconds since 1970).
    this_update: i64,
    /// Its CRL number, if it has one.
    number: Option<BigUint>,
}

impl fmt::Debug for Crls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.lists.iter().map(|list| {
                format!(
                    "{} ({}: {} revoked)",
                    list.path,
                    list.issuer_name,
                    list.serials.len()
                )
            }))
            .finish()
    }
}

/// A serial number as compared here: DER integers may carry a leading
/// zero byte (a positive number with its top bit set).
fn serial_key(raw: &[u8]) -> Vec<u8> {
    let start = raw.iter().position(|&byte| byte != 0).unwrap_or(raw.len());
    raw[start..].to_vec()
}

fn now_seconds() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs() as i64)
}

/// A time in seconds since 1970, as RFC 3339 (UTC) for messages.
fn shown_time(seconds: i64) -> String {
    x509_parser::time::ASN1Time::from_timestamp(seconds)
        .map_or_else(|_| seconds.to_string(), |time| time.to_string())
}

fn shown_number(number: Option<&BigUint>) -> String {
    number.map_or_else(|| "none".to_owned(), ToString::to_string)
}

impl Crls {
    /// No lists: only the CA's signature and the validity dates count.
    pub(crate) fn none() -> Self {
        Crls::default()
    }

    /// Whether no list is configured.
    pub(crate) fn is_empty(&self) -> bool {
        self.lists.is_empty()
    }

    /// The lists as rustls takes them.
    pub(crate) fn ders(&self) -> Vec<CertificateRevocationListDer<'static>> {
        self.ders.clone()
    }

    /// How many serial numbers the lists revoke in all.
    pub(crate) fn revoked(&self) -> usize {
        self.lists.iter().map(|list| list.serials.len()).sum()
    }

    /// Reads and checks the lists in `files` (path, contents) against the
    /// client CAs (`client_ca`: its path and certificates); the error names
    /// the file and what is wrong with it. `provider` is the crypto rustls
    /// will verify them with.
    pub(crate) fn load(
        files: &[(&Path, &[u8])],
        client_ca: (&Path, &[CertificateDer<'static>]),
        provider: &Arc<CryptoProvider>,
    ) -> Result<Self, String> {
        let mut crls = Crls::none();
        if files.is_empty() {
            return Ok(crls);
        }
        let (ca_path, ca_ders) = client_ca;
        let mut cas = Vec::new();
        for der in ca_ders {
            let (_, ca) = X509Certificate::from_der(der.as_ref()).map_err(|error| {
                format!(
                    "{}: a client CA cannot be parsed: {error}",
                    ca_path.display()
                )
            })?;
            cas.push(ca);
        }
        for (path, bytes) in files {
            for der in crl_ders(path, bytes)? {
                crls.add(path, der, (ca_path, &cas), ca_ders, provider)?;
            }
        }
        if crls.is_empty() {
            return Ok(crls);
        }
        for ca in &cas {
            if !crls
                .lists
                .iter()
                .any(|list| list.issuer == ca.subject().as_raw())
            {
                return Err(format!(
                    "client CA '{}' in {} has no CRL among [tls] crl: once CRLs are named, \
                     every client CA needs its own, or all its agencies would be refused",
                    ca.subject(),
                    ca_path.display()
                ));
            }
        }
        let now = now_seconds();
        for list in &crls.lists {
            if list.next_update - now < EXPIRY_WARNING.as_secs() as i64 {
                tracing::warn!(
                    crl = %list.path,
                    next_update = %shown_time(list.next_update),
                    "CRL expires within 7 days; install a fresh one and reload (SIGHUP), \
                     or every agency of its CA will be refused"
                );
            }
        }
        Ok(crls)
    }

    fn add(
        &mut self,
        path: &Path,
        der: CertificateRevocationListDer<'static>,
        cas: (&Path, &[X509Certificate<'_>]),
        ca_ders: &[CertificateDer<'static>],
        provider: &Arc<CryptoProvider>,
    ) -> Result<(), String> {
        let shown = path.display().to_string();
        let (rest, crl) = CertificateRevocationList::from_der(der.as_ref())
            .map_err(|error| format!("{shown}: not a CRL: {error}"))?;
        if !rest.is_empty() {
            return Err(format!("{shown}: bytes after the CRL"));
        }
        let issuer = crl.issuer();
        let (ca_path, cas) = cas;
        let Some(ca) = cas
            .iter()
            .find(|ca| ca.subject().as_raw() == issuer.as_raw())
        else {
            return Err(format!(
                "{shown}: issued by '{issuer}', which is not a client CA in {}",
                ca_path.display()
            ));
        };
        if let Ok(Some(usage)) = ca.key_usage()
            && !usage.value.crl_sign()
        {
            return Err(format!(
                "{shown}: client CA '{issuer}' may not sign CRLs (its key usage lacks cRLSign)"
            ));
        }
        crl.verify_signature(ca.public_key()).map_err(|_| {
            format!("{shown}: its signature does not verify with the key of client CA '{issuer}'")
        })?;
        // What rustls accepts: the same list through its own parser (it
        // refuses, for instance, delta CRLs and a missing nextUpdate).
        let mut roots = RootCertStore::empty();
        for ca in ca_ders {
            let _ = roots.add(ca.clone());
        }
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots), Arc::clone(provider))
            .with_crls([der.clone()])
            .build()
            .map_err(|error| format!("{shown}: unusable: {error}"))?;
        let Some(next_update) = crl.next_update() else {
            return Err(format!("{shown}: the CRL has no nextUpdate"));
        };
        let next_update = next_update.timestamp();
        if next_update <= now_seconds() {
            return Err(format!(
                "{shown}: expired at {} (its nextUpdate); get a fresh CRL from the CA",
                shown_time(next_update)
            ));
        }
        if let Some(other) = self
            .lists
            .iter()
            .find(|list| list.issuer == issuer.as_raw())
        {
            return Err(format!(
                "{shown}: a second CRL of client CA '{issuer}' (the other is in {}); \
                 name only the newest",
                other.path
            ));
        }
        self.lists.push(List {
            path: shown,
            issuer: issuer.as_raw().to_vec(),
            issuer_name: issuer.to_string(),
            serials: crl
                .iter_revoked_certificates()
                .map(|revoked| serial_key(revoked.raw_serial()))
                .collect(),
            next_update,
            this_update: crl.last_update().timestamp(),
            number: crl.crl_number().cloned(),
        });
        self.ders.push(der);
        Ok(())
    }

    /// Refuses a list older than the one of the same CA in `current` (a
    /// lower CRL number, or an earlier thisUpdate): putting it in force
    /// would bring revoked certificates back (D136).
    pub(crate) fn not_older_than(&self, current: &Crls) -> Result<(), String> {
        for list in &self.lists {
            let Some(old) = current.lists.iter().find(|old| old.issuer == list.issuer) else {
                continue;
            };
            let older_number = match (&list.number, &old.number) {
                (Some(new), Some(old)) => new < old,
                _ => false,
            };
            if older_number || list.this_update < old.this_update {
                return Err(format!(
                    "{}: older than the CRL of '{}' in force (CRL number {}, issued {}; in \
                     force: number {}, issued {}); a revocation list never goes back",
                    list.path,
                    list.issuer_name,
                    shown_number(list.number.as_ref()),
                    shown_time(list.this_update),
                    shown_number(old.number.as_ref()),
                    shown_time(old.this_update),
                ));
            }
        }
        Ok(())
    }

    /// Why a certificate with this issuer (DER) and serial number (DER
    /// content) may not call now, if it may not: it is revoked, its CA's
    /// list has expired, or no list covers its CA.
    pub(crate) fn refusal(&self, issuer: &[u8], serial: &[u8]) -> Option<String> {
        if self.lists.is_empty() {
            return None;
        }
        let Some(list) = self.lists.iter().find(|list| list.issuer == issuer) else {
            return Some("no CRL covers the client certificate's CA".to_owned());
        };
        let serial = serial_key(serial);
        if list.serials.contains(&serial) {
            return Some(format!(
                "the client certificate is revoked (serial {}, CRL of '{}')",
                crate::hex::encode(&serial),
                list.issuer_name
            ));
        }
        if list.next_update <= now_seconds() {
            return Some(format!(
                "the CRL of the client certificate's CA expired at {}; \
                 the operator must install a fresh one",
                shown_time(list.next_update)
            ));
        }
        None
    }
}

/// The CRLs in one file: PEM (`-----BEGIN X509 CRL-----` blocks, any
/// number) or one DER list.
fn crl_ders(
    path: &Path,
    bytes: &[u8],
) -> Result<Vec<CertificateRevocationListDer<'static>>, String> {
    let shown = path.display();
    if bytes.first() == Some(&0x30) {
        return Ok(vec![CertificateRevocationListDer::from(bytes.to_vec())]);
    }
    let ders = CertificateRevocationListDer::pem_slice_iter(bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| format!("{shown}: not PEM: {error}"))?;
    if ders.is_empty() {
        return Err(format!(
            "{shown}: no CRL in it (expected PEM '-----BEGIN X509 CRL-----' blocks or DER)"
        ));
    }
    Ok(ders)
}

/// The lists in force, shared by the acceptor (which replaces them on a
/// reload) and every connection's certificate (which reads them per call).
#[derive(Clone, Default)]
pub(crate) struct Revocations(Arc<RwLock<Arc<Crls>>>);

impl fmt::Debug for Revocations {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.current().fmt(f)
    }
}

impl Revocations {
    /// The lists in force now.
    pub(crate) fn current(&self) -> Arc<Crls> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Puts `crls` in force.
    pub(crate) fn install(&self, crls: Arc<Crls>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = crls;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serials_compare_without_leading_zero_bytes() {
        assert_eq!(serial_key(&[0, 0x80, 1]), vec![0x80, 1]);
        assert_eq!(serial_key(&[0x12]), vec![0x12]);
        assert_eq!(serial_key(&[0]), Vec::<u8>::new());
    }

    #[test]
    fn no_lists_refuse_nothing() {
        assert!(Crls::none().refusal(b"anyone", &[1]).is_none());
    }
}
