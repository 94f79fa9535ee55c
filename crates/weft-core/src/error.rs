//! The request path's one error type (after `pingora-error`): what went wrong as a [`Reason`] code,
//! who is to blame, and whether the request may be tried again.
//!
//! Blame decides what a failure counts against: only [`Blame::Upstream`] feeds outlier detection,
//! host error counts and retries; a [`Blame::Downstream`] failure is answered to the client (400 or
//! a closed connection) and leaves the upstream's record alone.

use crate::flags::Reason;
use std::borrow::Cow;
use std::fmt;

/// Who caused a failure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Blame {
    /// The client: a malformed or aborted request.
    Downstream,
    /// The upstream host or the network path to it.
    Upstream,
    /// The proxy itself or its configuration: no route, no cluster, a breaker, a rate limit.
    Internal,
}

/// Whether a failed try may be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Retry {
    /// Nothing of the request reached the upstream: always safe to resend, even a non-idempotent
    /// request, and a streamed body is still available.
    NotSent,
    /// The request may have been (partly) processed; the route's retry policy decides.
    Safe,
    /// Retrying cannot help or is not allowed (client fault, breaker open, body consumed).
    Unsafe,
}

/// A failure on the request path.
pub struct Error {
    pub reason: Reason,
    pub blame: Blame,
    pub retry: Retry,
    context: Option<Cow<'static, str>>,
    cause: Option<Box<dyn std::error::Error + Send + Sync>>,
}

impl Error {
    pub fn new(reason: Reason, blame: Blame, retry: Retry) -> Error {
        Error {
            reason,
            blame,
            retry,
            context: None,
            cause: None,
        }
    }

    /// A failure the proxy decides on its own (no route, breaker, rate limit): never retried.
    pub fn internal(reason: Reason) -> Error {
        Error::new(reason, Blame::Internal, Retry::Unsafe)
    }

    /// The client broke its own request.
    pub fn downstream(reason: Reason) -> Error {
        Error::new(reason, Blame::Downstream, Retry::Unsafe)
    }

    /// The upstream failed.
    pub fn upstream(reason: Reason, retry: Retry) -> Error {
        Error::new(reason, Blame::Upstream, retry)
    }

    pub fn context(mut self, context: impl Into<Cow<'static, str>>) -> Error {
        self.context = Some(context.into());
        self
    }

    pub fn cause(mut self, cause: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Error {
        self.cause = Some(cause.into());
        self
    }

    /// Whether this failure counts against the upstream host (outlier detection, error counts).
    pub fn counts_against_host(&self) -> bool {
        self.blame == Blame::Upstream
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.reason.code())?;
        if let Some(c) = &self.context {
            write!(f, ": {c}")?;
        }
        if let Some(c) = &self.cause {
            write!(f, ": {c}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{self} ({:?}, {:?})", self.blame, self.retry)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.cause.as_deref().map(|c| c as &(dyn std::error::Error + 'static))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_names_code_context_and_cause() {
        let e = Error::upstream(Reason::UpstreamConnectFailure, Retry::NotSent)
            .context("connect to 127.0.0.1:1")
            .cause(std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused"));
        assert_eq!(e.to_string(), "UF: connect to 127.0.0.1:1: refused");
        assert!(e.counts_against_host());
        assert!(!Error::downstream(Reason::DownstreamDisconnect).counts_against_host());
        assert!(std::error::Error::source(&e).is_some());
    }
}
