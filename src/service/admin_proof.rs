//! An admin proven without a connection (D203).
//!
//! `fugo admin restore` runs with the server stopped, so no handshake
//! proves who restores; yet the Restored record must name an admin as
//! every admin call's record does (D231). The admin gives the certificate
//! and key they give the admin listener, and this module checks them as
//! that listener and the Admin service would:
//!
//! - the chain leads to `[admin] ca`, the certificate is current and meant
//!   for client authentication, and `[admin] crl`, if any, does not revoke
//!   it (the same verifier the handshake uses, `edge::client_verifier`);
//! - its one Common Name is listed in `[admin] identities`;
//! - the private key belongs to the certificate (the key's public half is
//!   the certificate's), which stands in for the handshake's signature.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::rustls::crypto::ring;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, UnixTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::config::AdminConfig;
use super::edge;
use super::error::ServeError;
use super::identity::PeerCertificate;
use super::revocation::Revocations;
use super::tls_files::{crl_texts, read_crls, read_tls};
use crate::files;

/// The admin identity that `certificate` (PEM, its chain) and `key` (its
/// private key, PEM) prove under `admin`, or why they prove none.
pub fn prove_admin(
    admin: &AdminConfig,
    certificate: &Path,
    key: &Path,
) -> Result<String, ServeError> {
    let refused = |reason: String| ServeError::NotAnAdmin {
        path: certificate.display().to_string(),
        reason,
    };
    let ca = read_tls(&admin.ca, files::MAX_CERTIFICATES)?;
    let crl_files = read_crls(&admin.crls)?;
    let crls = crl_texts(&crl_files);
    let provider = Arc::new(ring::default_provider());
    let (verifier, _) =
        edge::client_verifier((&admin.ca, &ca.bytes), &crls, &provider).map_err(ServeError::Tls)?;

    let pem = read_tls(certificate, files::MAX_CERTIFICATES)?;
    let chain = CertificateDer::pem_slice_iter(&pem.bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|error| refused(format!("not PEM: {error}")))?;
    let Some((leaf, intermediates)) = chain.split_first() else {
        return Err(refused("holds no certificate".into()));
    };
    verifier
        .verify_client_cert(leaf, intermediates, UnixTime::now())
        .map_err(|error| {
            refused(format!(
                "not accepted by the admin CA {}: {error}",
                admin.ca.display()
            ))
        })?;
    let identity = PeerCertificate::from_der(leaf, Revocations::default())
        .identity
        .map_err(refused)?;
    if !admin.identities.contains(&identity) {
        return Err(refused(format!(
            "'{identity}' is not one of the admins in [admin] identities"
        )));
    }

    let key_file = read_tls(key, files::MAX_TLS_KEY)?;
    let not_its_key = |reason: &str| ServeError::NotAnAdmin {
        path: key.display().to_string(),
        reason: reason.to_owned(),
    };
    let private = PrivateKeyDer::from_pem_slice(&key_file.bytes)
        .map_err(|_| not_its_key("holds no private key (PEM)"))?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|_| not_its_key("a private key of a kind TLS cannot use"))?;
    let public = signing
        .public_key()
        .ok_or_else(|| not_its_key("its public key cannot be derived"))?;
    let (_, parsed) = X509Certificate::from_der(leaf)
        .map_err(|_| refused("the certificate cannot be parsed".into()))?;
    if public.as_ref() != parsed.public_key().raw {
        return Err(not_its_key(&format!(
            "not the private key of the certificate {}",
            certificate.display()
        )));
    }
    Ok(identity)
}
