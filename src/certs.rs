//! Demo and test certificates: a CA, a server certificate for `localhost`
//! and 127.0.0.1, and one client certificate per agency (Common Name = the
//! agency's certificate identity). For `fugo dev-certs`, the server's dev
//! mode and the tests; production certificates come from a real CA.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
#[cfg(unix)]
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DistinguishedName, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyPair, KeyUsagePurpose,
};
use thiserror::Error;

use crate::policy::check_certificate_identity;

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
    /// An identity that cannot be a file name in the folder, or that would
    /// overwrite the CA's or the server's files.
    #[error("certificate identity '{identity}' {reason}")]
    BadIdentity {
        /// The identity, escaped.
        identity: String,
        /// What is wrong.
        reason: String,
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

/// Writes `text` to `dir/name` through a new file created with its final
/// mode (0600 for a private key: never readable by others, not even for a
/// moment), then renamed over the old one. The rename replaces a symbolic
/// link at the name instead of following it, so nothing is written outside
/// `dir`.
fn write(dir: &Path, name: &str, text: &str, private: bool) -> Result<(), CertError> {
    let path = dir.join(name);
    let temporary = dir.join(format!(".{name}.tmp"));
    let error = |source| CertError::Write {
        path: path.display().to_string(),
        source,
    };
    let mut options = OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    options.mode(if private { 0o600 } else { 0o644 });
    #[cfg(not(unix))]
    let _ = private;
    let mut file = match options.open(&temporary) {
        Err(stale) if stale.kind() == io::ErrorKind::AlreadyExists => {
            // Left by an interrupted run: remove it (a link, not its target).
            fs::remove_file(&temporary).map_err(error)?;
            options.open(&temporary)
        }
        other => other,
    }
    .map_err(error)?;
    let written = file
        .write_all(text.as_bytes())
        .and_then(|()| file.sync_all())
        .and_then(|()| fs::rename(&temporary, &path));
    if let Err(source) = written {
        let _ = fs::remove_file(&temporary);
        return Err(error(source));
    }
    Ok(())
}

/// Names of the files the CA and the server certificate use; no client
/// identity may take them.
const RESERVED: [&str; 2] = ["ca", "server"];

/// Checks that every identity is a safe file name, is not reserved, and is
/// not another identity in a different case (one file on macOS and Windows).
fn check_identities(identities: &[String]) -> Result<(), CertError> {
    let mut seen = std::collections::HashSet::new();
    for identity in identities {
        let bad = |reason: String| CertError::BadIdentity {
            identity: identity.escape_debug().collect(),
            reason,
        };
        check_certificate_identity(identity).map_err(|error| bad(error.to_string()))?;
        let folded = identity.to_ascii_lowercase();
        if RESERVED.contains(&folded.as_str()) {
            return Err(bad(
                "would overwrite the files of the CA or the server".to_owned()
            ));
        }
        if !seen.insert(folded) {
            return Err(bad("is listed twice (letter case aside)".to_owned()));
        }
    }
    Ok(())
}

/// Writes a CA, a server certificate and one client certificate per
/// identity (`<identity>.pem`, `<identity>.key`) into `dir`.
/// Every file is written inside `dir` (an identity that is not a safe file
/// name is refused before anything is written), and every private key is
/// created with mode 0600. A folder created here gets mode 0700.
pub fn write_dev_certs(dir: &Path, identities: &[String]) -> Result<CertFiles, CertError> {
    check_identities(identities)?;
    let mut folder = fs::DirBuilder::new();
    folder.recursive(true);
    #[cfg(unix)]
    folder.mode(0o700);
    folder.create(dir).map_err(|source| CertError::Write {
        path: dir.display().to_string(),
        source,
    })?;
    let ca = DevCa::new("fugo dev CA")?;
    write(dir, "ca.pem", &ca.cert_pem(), false)?;
    write(dir, "ca.key", &ca.key_pem(), true)?;
    let server = ca.server()?;
    write(dir, "server.pem", &server.cert, false)?;
    write(dir, "server.key", &server.key, true)?;
    for identity in identities {
        let client = ca.client(identity)?;
        write(dir, &format!("{identity}.pem"), &client.cert, false)?;
        write(dir, &format!("{identity}.key"), &client.key, true)?;
    }
    Ok(CertFiles::in_dir(dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(list: &[&str]) -> Vec<String> {
        list.iter().map(|name| (*name).to_owned()).collect()
    }

    #[test]
    fn identities_that_would_escape_the_folder_are_refused_before_writing() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        for (identities, message) in [
            (
                names(&["mhlw", "../escaped"]),
                "certificate identity '../escaped' contains a path separator",
            ),
            (names(&["..x"]), "certificate identity '..x' contains '..'"),
            (
                names(&["ca"]),
                "certificate identity 'ca' would overwrite the files of the CA or the server",
            ),
            (
                names(&["Server"]),
                "certificate identity 'Server' would overwrite the files of the CA or the server",
            ),
            (
                names(&["mhlw", "MHLW"]),
                "certificate identity 'MHLW' is listed twice (letter case aside)",
            ),
        ] {
            let error = write_dev_certs(&out, &identities).unwrap_err();
            assert_eq!(error.to_string(), message);
        }
        assert!(!out.exists(), "nothing was written");
        assert!(!dir.path().join("escaped.pem").exists());
    }

    #[cfg(unix)]
    #[test]
    fn private_keys_replace_old_files_and_are_never_readable_by_others() {
        use std::os::unix::fs::{PermissionsExt, symlink};
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("certs");
        fs::create_dir(&out).unwrap();
        fs::set_permissions(&out, fs::Permissions::from_mode(0o755)).unwrap();
        // An old key left readable by everyone, and a link pointing outside.
        fs::write(out.join("server.key"), "old").unwrap();
        fs::set_permissions(out.join("server.key"), fs::Permissions::from_mode(0o644)).unwrap();
        let outside = dir.path().join("outside");
        fs::write(&outside, "untouched").unwrap();
        symlink(&outside, out.join("mhlw.key")).unwrap();

        write_dev_certs(&out, &names(&["mhlw"])).unwrap();
        for key in ["ca.key", "server.key", "mhlw.key"] {
            let metadata = fs::symlink_metadata(out.join(key)).unwrap();
            assert!(metadata.is_file(), "{key} is a regular file");
            assert_eq!(metadata.permissions().mode() & 0o777, 0o600, "{key}");
        }
        assert_eq!(fs::read_to_string(&outside).unwrap(), "untouched");
        let folder = fs::metadata(&out).unwrap().permissions().mode();
        assert_eq!(folder & 0o777, 0o755, "an existing folder keeps its mode");
        let fresh = dir.path().join("fresh");
        write_dev_certs(&fresh, &[]).unwrap();
        let mode = fs::metadata(&fresh).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
