//! Reading the TLS files (CA bundles, certificates, keys, revocation
//! lists) with the size limits and the error the server uses, for its
//! listeners and for `fugo admin restore`'s admin proof.

use std::path::{Path, PathBuf};

use super::error::ServeError;
use crate::files;

/// One TLS file of at most `limit` bytes; the error names it.
pub(crate) fn read_tls(path: &Path, limit: u64) -> Result<files::Contents, ServeError> {
    files::read(path, limit).map_err(|source| ServeError::TlsFile {
        path: path.display().to_string(),
        source,
    })
}

/// The CRL files at `paths`, each with its path.
pub(crate) fn read_crls(paths: &[PathBuf]) -> Result<Vec<(&Path, files::Contents)>, ServeError> {
    paths
        .iter()
        .map(|path| Ok((path.as_path(), read_tls(path, files::MAX_CRL)?)))
        .collect()
}

/// What [`read_crls`] read, as the TLS setup takes it.
pub(crate) fn crl_texts<'a>(read: &'a [(&'a Path, files::Contents)]) -> Vec<(&'a Path, &'a [u8])> {
    read.iter()
        .map(|(path, contents)| (*path, contents.bytes.as_slice()))
        .collect()
}
