//! SPIFFE IDs for workloads: `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`.

use std::fmt;

/// A workload identity.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SpiffeId {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

/// Why a SPIFFE ID or an `ns/sa` pair is invalid.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IdError(pub String);

impl fmt::Display for IdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for IdError {}

const MAX_URI: usize = 2048;

/// A trust domain: lower-case letters, digits, `.`, `-`, `_` (SPIFFE ID spec, section 2.1).
pub fn check_trust_domain(td: &str) -> Result<(), IdError> {
    if td.is_empty() || td.len() > 255 {
        return Err(IdError(format!("trust domain {td:?} must be 1 to 255 characters")));
    }
    if let Some(c) = td
        .chars()
        .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, '.' | '-' | '_')))
    {
        return Err(IdError(format!(
            "trust domain {td:?}: {c:?} is not allowed (lower-case letters, digits, '.', '-', '_')"
        )));
    }
    Ok(())
}

fn check_segment(what: &str, s: &str) -> Result<(), IdError> {
    if s.is_empty() || s.len() > 253 || s == "." || s == ".." {
        return Err(IdError(format!(
            "{what} {s:?} must be 1 to 253 characters and not '.' or '..'"
        )));
    }
    if let Some(c) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_')))
    {
        return Err(IdError(format!(
            "{what} {s:?}: {c:?} is not allowed (letters, digits, '.', '-', '_')"
        )));
    }
    Ok(())
}

impl SpiffeId {
    pub fn new(trust_domain: &str, namespace: &str, service_account: &str) -> Result<SpiffeId, IdError> {
        check_trust_domain(trust_domain)?;
        check_segment("namespace", namespace)?;
        check_segment("service account", service_account)?;
        Ok(SpiffeId {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }

    /// `ns/sa` (as given to `weft control token --identity`) in `trust_domain`.
    pub fn from_short(trust_domain: &str, short: &str) -> Result<SpiffeId, IdError> {
        let Some((ns, sa)) = short.split_once('/') else {
            return Err(IdError(format!(
                "identity {short:?} must be NAMESPACE/SERVICE_ACCOUNT, e.g. default/reviews"
            )));
        };
        SpiffeId::new(trust_domain, ns, sa)
    }

    /// Parses `spiffe://<td>/ns/<ns>/sa/<sa>` exactly (no query, fragment, port, user or extra path).
    pub fn parse(uri: &str) -> Result<SpiffeId, IdError> {
        if uri.len() > MAX_URI {
            return Err(IdError(format!("SPIFFE ID longer than {MAX_URI} bytes")));
        }
        let Some(rest) = uri.strip_prefix("spiffe://") else {
            return Err(IdError(format!("{uri:?} is not a spiffe:// URI")));
        };
        let mut parts = rest.split('/');
        let td = parts.next().unwrap_or_default();
        match (parts.next(), parts.next(), parts.next(), parts.next(), parts.next()) {
            (Some("ns"), Some(ns), Some("sa"), Some(sa), None) => {
                SpiffeId::new(td, ns, sa).map_err(|e| IdError(format!("{uri:?}: {e}")))
            }
            _ => Err(IdError(format!(
                "{uri:?} is not of the form spiffe://TRUST_DOMAIN/ns/NAMESPACE/sa/SERVICE_ACCOUNT"
            ))),
        }
    }

    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for SpiffeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

#[cfg(test)]
mod tests {
    use super::SpiffeId;

    #[test]
    fn parse_and_print() {
        let id = SpiffeId::parse("spiffe://cluster.local/ns/default/sa/reviews").unwrap();
        assert_eq!(id.namespace(), "default");
        assert_eq!(id.service_account(), "reviews");
        assert_eq!(id.to_string(), "spiffe://cluster.local/ns/default/sa/reviews");
        assert_eq!(SpiffeId::from_short("cluster.local", "default/reviews").unwrap(), id);
    }

    #[test]
    fn refusals() {
        for bad in [
            "spiffe://cluster.local/ns/default/sa/reviews/x",
            "spiffe://cluster.local/ns/default/sa/",
            "spiffe://Cluster.local/ns/default/sa/r",
            "spiffe://cluster.local:8080/ns/default/sa/r",
            "spiffe:///ns/default/sa/r",
            "https://cluster.local/ns/default/sa/r",
            "spiffe://cluster.local/ns/../sa/r",
            "spiffe://cluster.local/sa/r/ns/x",
            "spiffe://cluster.local/ns/a b/sa/r",
        ] {
            assert!(SpiffeId::parse(bad).is_err(), "{bad} accepted");
        }
        assert!(SpiffeId::from_short("td", "onlyone").is_err());
    }
}
