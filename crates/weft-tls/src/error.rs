//! Typed TLS configuration errors. Each names the configuration field at fault (and the file, when
//! there is one), e.g. `certificates[0].cert_file: /etc/weft/a.pem: no CERTIFICATE block`.

use std::fmt;
use std::path::PathBuf;

#[derive(Debug)]
pub enum TlsError {
    /// A file could not be read.
    Read {
        field: String,
        path: PathBuf,
        source: std::io::Error,
    },
    /// A file holds no usable PEM block of the expected kind, or a block that does not parse.
    Pem {
        field: String,
        path: PathBuf,
        reason: String,
    },
    /// A private key that is unsupported or does not match its certificate.
    Key {
        field: String,
        path: PathBuf,
        reason: String,
    },
    /// Any other invalid setting (an in-memory identity, a protocol version, a name).
    Invalid { field: String, reason: String },
}

impl TlsError {
    /// The field path at fault.
    pub fn field(&self) -> &str {
        match self {
            TlsError::Read { field, .. }
            | TlsError::Pem { field, .. }
            | TlsError::Key { field, .. }
            | TlsError::Invalid { field, .. } => field,
        }
    }

    /// The same error with `prefix` put before its field path (`listeners[0].tls.` + `certificates[0]…`).
    pub fn prefixed(mut self, prefix: &str) -> TlsError {
        let f = match &mut self {
            TlsError::Read { field, .. }
            | TlsError::Pem { field, .. }
            | TlsError::Key { field, .. }
            | TlsError::Invalid { field, .. } => field,
        };
        *f = format!("{prefix}{f}");
        self
    }

    pub(crate) fn invalid(field: impl Into<String>, reason: impl fmt::Display) -> TlsError {
        TlsError::Invalid {
            field: field.into(),
            reason: reason.to_string(),
        }
    }
}

impl fmt::Display for TlsError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TlsError::Read { field, path, source } => write!(f, "{field}: cannot read {}: {source}", path.display()),
            TlsError::Pem { field, path, reason } | TlsError::Key { field, path, reason } => {
                write!(f, "{field}: {}: {reason}", path.display())
            }
            TlsError::Invalid { field, reason } => write!(f, "{field}: {reason}"),
        }
    }
}

impl std::error::Error for TlsError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TlsError::Read { source, .. } => Some(source),
            _ => None,
        }
    }
}
