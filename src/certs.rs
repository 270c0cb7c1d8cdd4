//! Demo and test certificates: a CA, a server certificate for `localhost`
//! and 127.0.0.1, and one client certificate per agency (Common Name = the
//! agency's certificate identity). For `fugo dev-certs`, the server's dev
//! mode and the tests; production certificates come from a real CA.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use thiserror::Error;

/// Why certificates could not be made.
#[derive(Debug, Error)]
#[non_exhaustive]
pub enum CertError {
    /// rcgen refused (a bad name, most likely).
    #[error("cannot make certificate {name}: {source}")]
    Make {
        /// The certificate's name.
        name: String,
        /// Why.
        #[source]
        source: rcgen::Error,
    },
    /// Writing a file failed.
    #[error("cannot write {path}: {source}")]
    Write {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: io::Error,
    },
}

/// PEM text of one certificate and its private key.
pub struct Pem {
    /// The certificate.
    pub cert: String,
    /// The private key (PKCS#8). Demo material, but still a key: redacted.
    pub key: String,
}

impl std::fmt::Debug for Pem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Pem { cert, key: [REDACTED] }")
    }
}

/// A certificate authority that signs demo certificates.
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl DevCa {
    /// A fresh CA named `name`.
    pub fn new(name: &str) -> Result<Self, CertError> {
        let make = |source| CertError::Make {
            name: name.to_owned(),
            source,
        };
        let mut params = CertificateParams::new(Vec::<String>::new()).map_err(make)?;
        params.distinguished_name = DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().map_err(make)?;
        let issuer = CertifiedIssuer::self_signed(params, key).map_err(make)?;
        Ok(DevCa { issuer })
    }

    /// The CA certificate.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// The CA's private key.
    pub fn key_pem(&self) -> String {
        self.issuer.key().serialize_pem()
    }

    /// A server certificate for `localhost`, 127.0.0.1 and ::1.
    pub fn server(&self) -> Result<Pem, CertError> {
        self.leaf(
            "localhost",
            vec![
                "localhost".to_owned(),
                "127.0.0.1".to_owned(),
                "::1".to_owned(),
            ],
            ExtendedKeyUsagePurpose::ServerAuth,
        )
    }

    /// A client certificate whose Common Name is `identity`.
    pub fn client(&self, identity: &str) -> Result<Pem, CertError> {
        self.leaf(identity, Vec::new(), ExtendedKeyUsagePurpose::ClientAuth)
    }

    fn leaf(
        &self,
        common_name: &str,
        names: Vec<String>,
        usage: ExtendedKeyUsagePurpose,
    ) -> Result<Pem, CertError> {
        let make = |source| CertError::Make {
            name: common_name.to_owned(),
            source,
        };
        let mut params = CertificateParams::new(names).map_err(make)?;
        params.distinguished_name = DistinguishedName::new();
        params
            .distinguished_name
            .push(DnType::CommonName, common_name);
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![usage];
        params.use_authority_key_identifier_extension = true;
        let key = KeyPair::generate().map_err(make)?;
        let cert = params.signed_by(&key, &self.issuer).map_err(make)?;
        Ok(Pem {
            cert: cert.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// The files `write_dev_certs` makes in a folder.
#[derive(Debug, Clone)]
pub struct CertFiles {
    /// `ca.pem`: the CA that signs every certificate here.
    pub ca: PathBuf,
    /// `server.pem`.
    pub server_cert: PathBuf,
    /// `server.key`.
    pub server_key: PathBuf,
}

impl CertFiles {
    /// The file names inside `dir`.
    pub fn in_dir(dir: &Path) -> Self {
        CertFiles {
            ca: dir.join("ca.pem"),
            server_cert: dir.join("server.pem"),
            server_key: dir.join("server.key"),
        }
    }
}

fn write(path: &Path, text: &str, private: bool) -> Result<(), CertError> {
    let error = |source| CertError::Write {
        path: path.display().to_string(),
        source,
    };
    fs::write(path, text).map_err(error)?;
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::PermissionsExt;
        fs::set_permissions(path, fs::Permissions::from_mode(0o600)).map_err(error)?;
    }
    #[cfg(not(unix))]
    let _ = private;
    Ok(())
}

/// Writes a CA, a server certificate and one client certificate per
/// identity (`<identity>.pem`, `<identity>.key`) into `dir`.
pub fn write_dev_certs(dir: &Path, identities: &[String]) -> Result<CertFiles, CertError> {
    fs::create_dir_all(dir).map_err(|source| CertError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let ca = DevCa::new("fugo dev CA")?;
    let files = CertFiles::in_dir(dir);
    write(&files.ca, &ca.cert_pem(), false)?;
    write(&dir.join("ca.key"), &ca.key_pem(), true)?;
    let server = ca.server()?;
    write(&files.server_cert, &server.cert, false)?;
    write(&files.server_key, &server.key, true)?;
    for identity in identities {
        let client = ca.client(identity)?;
        write(&dir.join(format!("{identity}.pem")), &client.cert, false)?;
        write(&dir.join(format!("{identity}.key")), &client.key, true)?;
    }
    Ok(files)
}
