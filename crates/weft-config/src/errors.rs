//! Field errors: the one collector shared by YAML validation, the xDS conversion (and its
//! protoc-gen-validate rules) and `weft control`'s registry parsing. Every error names the path
//! of the field at fault, e.g. `clusters[2].lb_policy: unknown value "rr"`; all of them are
//! collected, not just the first, so one NACK or one refusal lists everything to fix.

use std::fmt;

/// One problem in a configuration, with the path of the field at fault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

/// Every problem found in a configuration: the collector while checking, the error after.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfigError {
    pub errors: Vec<FieldError>,
}

/// `path.field`, or `field` at the top.
pub fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

impl ConfigError {
    pub fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        ConfigError {
            errors: vec![FieldError {
                path: path.into(),
                message: message.into(),
            }],
        }
    }

    /// Records a problem with the field at `path` (empty: the whole resource).
    pub fn add(&mut self, path: impl Into<String>, message: impl fmt::Display) {
        self.errors.push(FieldError {
            path: path.into(),
            message: message.to_string(),
        });
    }

    /// Records a problem with `field` of the object at `path`.
    pub fn add_at(&mut self, path: &str, field: &str, message: impl fmt::Display) {
        self.add(join(path, field), message);
    }

    /// Takes over another collector's problems, their paths put under `prefix`.
    pub fn extend_under(&mut self, prefix: &str, other: ConfigError) {
        for e in other.errors {
            let path = if e.path.is_empty() {
                prefix.to_string()
            } else if prefix.is_empty() {
                e.path
            } else if e.path.starts_with('[') {
                format!("{prefix}{}", e.path)
            } else {
                format!("{prefix}.{}", e.path)
            };
            self.errors.push(FieldError {
                path,
                message: e.message,
            });
        }
    }

    /// Takes over another collector's problems as they are.
    pub fn extend(&mut self, other: ConfigError) {
        self.errors.extend(other.errors);
    }

    pub fn is_empty(&self) -> bool {
        self.errors.is_empty()
    }

    pub fn len(&self) -> usize {
        self.errors.len()
    }

    /// `value` if nothing was recorded, else the problems.
    pub fn or<T>(self, value: T) -> Result<T, ConfigError> {
        if self.errors.is_empty() {
            Ok(value)
        } else {
            Err(self)
        }
    }

    /// Each problem as `path: message`.
    pub fn lines(&self) -> Vec<String> {
        self.errors.iter().map(ToString::to_string).collect()
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigError {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn collects_with_paths() {
        let mut e = ConfigError::default();
        assert!(e.is_empty());
        e.add("", "whole");
        e.add_at("clusters[0]", "lb_policy", "unknown value \"rr\"");
        e.add_at("", "name", "is required");
        let mut inner = ConfigError::default();
        inner.add("", "bad");
        inner.add("[2].x", "worse");
        inner.add("y", "worst");
        e.extend_under("a.b", inner);
        assert_eq!(
            e.lines(),
            [
                "whole",
                "clusters[0].lb_policy: unknown value \"rr\"",
                "name: is required",
                "a.b: bad",
                "a.b[2].x: worse",
                "a.b.y: worst"
            ]
        );
        assert_eq!(e.len(), 6);
        assert_eq!(e.to_string().lines().count(), 6);
        assert!(e.clone().or(1).is_err());
        assert_eq!(ConfigError::default().or(1), Ok(1));
    }
}
