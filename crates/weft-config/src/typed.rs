//! Fields that YAML writes as text and the xDS conversion fills in already typed.
//!
//! A user's YAML says `timeout: 250ms` or `lb_policy: ring_hash`; validation parses that text and
//! names the field when it does not parse. An Envoy resource already carries a
//! `google.protobuf.Duration` or an enum number: the xDS conversion stores the typed value, and
//! validation applies the same range checks to it without formatting it into text only to parse it
//! back. Both sources reach the same validated model through the same checks.

use serde::{Deserialize, Deserializer};
use std::time::Duration;

/// A value as text (from YAML) or already typed (from xDS).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Typed<T> {
    Text(String),
    Value(T),
}

/// A duration: `"250ms"` from YAML or a [`Duration`] from xDS.
pub type RawDuration = Typed<Duration>;

/// What a [`Typed`] field holds: parsed from YAML's text, or checked when it arrived typed.
pub trait FromText: Sized + Clone {
    /// The value a text names; the error says what is wrong with it (not where: the caller adds
    /// the field's path).
    fn from_text(s: &str) -> Result<Self, String>;
    /// The bounds a typed value must meet too (those of the text form).
    fn check(self) -> Result<Self, String> {
        Ok(self)
    }
}

impl FromText for Duration {
    fn from_text(s: &str) -> Result<Self, String> {
        crate::duration::parse(s)
    }
    fn check(self) -> Result<Self, String> {
        crate::duration::check(self)
    }
}

/// An enumeration written by name: `names` pairs each value with its name, in the order an error
/// lists them (`unknown value "rr" (round_robin, least_request, ...)`).
pub fn by_name<T: Copy>(s: &str, names: &[(&'static str, T)]) -> Result<T, String> {
    match names.iter().find(|(n, _)| *n == s) {
        Some((_, v)) => Ok(*v),
        None => {
            let list: Vec<&str> = names.iter().map(|(n, _)| *n).collect();
            Err(format!("unknown value \"{s}\" ({})", list.join(", ")))
        }
    }
}

/// Enumerations written by name implement [`FromText`] through their `NAMES` table.
macro_rules! named {
    ($($t:ty),+ $(,)?) => {$(
        impl FromText for $t {
            fn from_text(s: &str) -> Result<Self, String> {
                by_name(s, <$t>::NAMES)
            }
        }
    )+};
}

named!(
    crate::raw::ClusterType,
    crate::raw::LbKind,
    crate::model::UpstreamProtocol,
    crate::model::Direction,
    crate::model::RoutePriority,
    crate::model::Codec,
    crate::model::HeaderAppendAction,
    crate::model::SubsetFallback,
);

/// Written in any case (as Envoy's enum names, upper case, are often copied).
impl FromText for crate::tls::ForwardClientCert {
    fn from_text(s: &str) -> Result<Self, String> {
        use crate::tls::ForwardClientCert as F;
        let names = [
            ("sanitize", F::Sanitize),
            ("forward_only", F::ForwardOnly),
            ("append_forward", F::AppendForward),
            ("sanitize_set", F::SanitizeSet),
            ("always_forward_only", F::AlwaysForwardOnly),
        ];
        by_name(&s.to_ascii_lowercase(), &names)
    }
}

/// `http/protobuf` (the OpenTelemetry spelling) is `http`.
impl FromText for crate::tracing::OtlpProtocol {
    fn from_text(s: &str) -> Result<Self, String> {
        use crate::tracing::OtlpProtocol as P;
        match s {
            "http/protobuf" => Ok(P::Http),
            _ => by_name(s, &[("grpc", P::Grpc), ("http", P::Http)]),
        }
    }
}

impl<T: FromText> Typed<T> {
    /// The value, parsed from text or checked as given: the same rules for both sources.
    pub fn get(&self) -> Result<T, String> {
        match self {
            Typed::Text(s) => T::from_text(s),
            Typed::Value(v) => v.clone().check(),
        }
    }
}

impl<T> From<&str> for Typed<T> {
    fn from(s: &str) -> Self {
        Typed::Text(s.to_string())
    }
}

impl<T> From<String> for Typed<T> {
    fn from(s: String) -> Self {
        Typed::Text(s)
    }
}

impl From<Duration> for Typed<Duration> {
    fn from(d: Duration) -> Self {
        Typed::Value(d)
    }
}

/// YAML gives text; typed values only come from code.
impl<'de, T> Deserialize<'de> for Typed<T> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d).map(Typed::Text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_and_values_meet_the_same_checks() {
        assert_eq!(RawDuration::from("1.5s").get(), Ok(Duration::from_millis(1500)));
        assert_eq!(
            RawDuration::from(Duration::from_millis(1500)).get(),
            Ok(Duration::from_millis(1500))
        );
        assert!(RawDuration::from("5").get().unwrap_err().contains("no unit"));
        let huge = Duration::from_secs(2_000_000_000);
        assert_eq!(
            RawDuration::from(huge).get().unwrap_err(),
            crate::duration::parse(&crate::duration::format(huge)).unwrap_err()
        );
        let t: Typed<crate::raw::LbKind> = "rr".into();
        assert_eq!(
            t.get(),
            Err("unknown value \"rr\" (round_robin, least_request, random, ring_hash, maglev)".to_string())
        );
        let t: Typed<crate::raw::LbKind> = "ring_hash".into();
        assert_eq!(t.get(), Ok(crate::raw::LbKind::RingHash));
        assert_eq!(
            Typed::Value(crate::raw::LbKind::Maglev).get(),
            Ok(crate::raw::LbKind::Maglev)
        );
    }

    #[test]
    fn yaml_gives_text() {
        #[derive(Deserialize)]
        struct S {
            t: RawDuration,
        }
        let s: S = serde_saphyr::from_str("t: 250ms\n").unwrap();
        assert_eq!(s.t, Typed::Text("250ms".into()));
    }
}
