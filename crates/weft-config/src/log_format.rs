//! Access-log format strings with Envoy's command operators (`%START_TIME%`, `%REQ(X?Y):N%`, …),
//! parsed once when the configuration loads into a [`LogFormat`] the proxy formats without
//! re-reading the string. See docs/observability.md for the supported subset.

use serde::{Serialize, Serializer};
use std::fmt;

/// Envoy's default text format (used when `format` is empty), newline included.
pub const ENVOY_DEFAULT_FORMAT: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\"\n";

/// Longest format string accepted (a guard against configuration mistakes, not a real limit).
const MAX_FORMAT_LEN: usize = 16 * 1024;
/// Most distinct request (or response) headers one format may name.
const MAX_HEADERS: usize = 64;

/// A request-side value `%REQ(...)%` names: a pseudo-header or a captured header slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderRef {
    Method,
    Path,
    Authority,
    Scheme,
    /// Index into [`LogFormat::req_headers`] (or `resp_headers` for `%RESP%`).
    Slot(u16),
}

/// One piece of a compiled format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Op {
    Literal(Box<str>),
    StartTime,
    Req {
        main: HeaderRef,
        alt: Option<HeaderRef>,
        max: Option<u32>,
    },
    Resp {
        main: HeaderRef,
        alt: Option<HeaderRef>,
        max: Option<u32>,
    },
    Protocol,
    ResponseCode,
    ResponseFlags,
    ResponseCodeDetails,
    ConnectionTerminationDetails,
    UpstreamTransportFailureReason,
    BytesReceived,
    BytesSent,
    Duration,
    UpstreamHost,
    UpstreamCluster,
    UpstreamLocalAddress,
    UpstreamRequestAttemptCount,
    DownstreamLocalAddress,
    DownstreamLocalAddressWithoutPort,
    DownstreamRemoteAddress,
    DownstreamRemoteAddressWithoutPort,
    DownstreamPeerUriSan,
    RequestedServerName,
    RouteName,
    Hostname,
}

impl Op {
    /// Whether the operator's value is a number (a JSON number when it is a json_format value alone).
    pub fn is_numeric(&self) -> bool {
        matches!(
            self,
            Op::ResponseCode | Op::BytesReceived | Op::BytesSent | Op::Duration | Op::UpstreamRequestAttemptCount
        )
    }
}

/// The compiled shape of a format.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FormatKind {
    /// One text line (the string's own newline, if any, ends it; one is added otherwise).
    Text(Vec<Op>),
    /// One JSON object per line: (key, value pieces) in key order.
    Json(Vec<(String, Vec<Op>)>),
}

/// A parsed access-log format: what to write and which headers a request must keep for it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LogFormat {
    pub kind: FormatKind,
    /// Request headers `%REQ(...)%` names (lower case), captured when the request arrives.
    pub req_headers: Vec<http::HeaderName>,
    /// Response headers `%RESP(...)%` names (lower case).
    pub resp_headers: Vec<http::HeaderName>,
    /// The source, for the configuration dump.
    source: String,
}

impl Serialize for LogFormat {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.source)
    }
}

/// Why a format string was refused: a message and the byte offset where the problem starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FormatError {
    pub offset: usize,
    pub message: String,
}

impl fmt::Display for FormatError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (at byte {})", self.message, self.offset)
    }
}

impl std::error::Error for FormatError {}

struct Names {
    req: Vec<http::HeaderName>,
    resp: Vec<http::HeaderName>,
}

impl Names {
    fn slot(list: &mut Vec<http::HeaderName>, name: http::HeaderName) -> Result<u16, String> {
        if let Some(i) = list.iter().position(|n| *n == name) {
            return Ok(i as u16);
        }
        if list.len() >= MAX_HEADERS {
            return Err(format!("more than {MAX_HEADERS} distinct headers"));
        }
        list.push(name);
        Ok((list.len() - 1) as u16)
    }
}

impl LogFormat {
    /// Compiles a text format. An empty string means Envoy's default format.
    pub fn text(source: &str) -> Result<LogFormat, FormatError> {
        let source = if source.is_empty() {
            ENVOY_DEFAULT_FORMAT
        } else {
            source
        };
        check_len(source)?;
        let mut names = Names {
            req: Vec::new(),
            resp: Vec::new(),
        };
        let mut ops = parse(source, &mut names)?;
        if !matches!(ops.last(), Some(Op::Literal(l)) if l.ends_with('\n')) {
            ops.push(Op::Literal("\n".into()));
        }
        Ok(LogFormat {
            kind: FormatKind::Text(ops),
            req_headers: names.req,
            resp_headers: names.resp,
            source: source.to_string(),
        })
    }

    /// Compiles a `json_format` map (key → format string). Errors name the key.
    pub fn json<'a>(fields: impl IntoIterator<Item = (&'a str, &'a str)>) -> Result<LogFormat, (String, FormatError)> {
        let mut names = Names {
            req: Vec::new(),
            resp: Vec::new(),
        };
        let mut out = Vec::new();
        let mut source = String::from("{");
        for (k, v) in fields {
            check_len(v).map_err(|e| (k.to_string(), e))?;
            let ops = parse(v, &mut names).map_err(|e| (k.to_string(), e))?;
            if source.len() > 1 {
                source.push_str(", ");
            }
            source.push_str(&format!("{k:?}: {v:?}"));
            out.push((k.to_string(), ops));
        }
        source.push('}');
        out.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(LogFormat {
            kind: FormatKind::Json(out),
            req_headers: names.req,
            resp_headers: names.resp,
            source,
        })
    }

    pub fn source(&self) -> &str {
        &self.source
    }
}

/// The format an access log's raw `format` / `json_format` asks for; errors name the field under
/// `path` (the access log's own path).
pub fn from_raw(a: &crate::raw::RawAccessLog, path: &str) -> Result<Option<LogFormat>, crate::FieldError> {
    match (&a.format, &a.json_format) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(crate::FieldError {
            path: format!("{path}.json_format"),
            message: "set either format or json_format, not both".into(),
        }),
        (Some(f), None) => LogFormat::text(f).map(Some).map_err(|e| crate::FieldError {
            path: format!("{path}.format"),
            message: e.to_string(),
        }),
        (None, Some(m)) => {
            if m.is_empty() {
                return Err(crate::FieldError {
                    path: format!("{path}.json_format"),
                    message: "must name at least one key".into(),
                });
            }
            LogFormat::json(m.iter().map(|(k, v)| (k.as_str(), v.as_str())))
                .map(Some)
                .map_err(|(k, e)| crate::FieldError {
                    path: format!("{path}.json_format.{k}"),
                    message: e.to_string(),
                })
        }
    }
}

fn check_len(s: &str) -> Result<(), FormatError> {
    if s.len() > MAX_FORMAT_LEN {
        return Err(FormatError {
            offset: MAX_FORMAT_LEN,
            message: format!("longer than {MAX_FORMAT_LEN} bytes"),
        });
    }
    Ok(())
}

/// Parses a format string into pieces. `%%` is a literal `%`.
fn parse(s: &str, names: &mut Names) -> Result<Vec<Op>, FormatError> {
    let mut ops = Vec::new();
    let mut lit = String::new();
    let mut rest = s;
    let mut offset = 0;
    while let Some(i) = rest.find('%') {
        lit.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        if let Some(a) = after.strip_prefix('%') {
            lit.push('%');
            offset += i + 2;
            rest = a;
            continue;
        }
        let at = offset + i;
        let Some(end) = find_close(after) else {
            return Err(FormatError {
                offset: at,
                message: "unterminated operator: a '%' without its closing '%' (write %% for a literal '%')".into(),
            });
        };
        let body = &after[..end];
        let op = operator(body, names).map_err(|message| FormatError { offset: at, message })?;
        if !lit.is_empty() {
            ops.push(Op::Literal(std::mem::take(&mut lit).into_boxed_str()));
        }
        ops.push(op);
        offset = at + 1 + end + 1;
        rest = &after[end + 1..];
    }
    lit.push_str(rest);
    if !lit.is_empty() {
        ops.push(Op::Literal(lit.into_boxed_str()));
    }
    Ok(ops)
}

/// The closing `%` of an operator, skipping a parenthesised argument (`%REQ(A?B)%`).
fn find_close(s: &str) -> Option<usize> {
    let mut depth = 0usize;
    for (i, c) in s.char_indices() {
        match c {
            '(' => depth += 1,
            ')' => depth = depth.saturating_sub(1),
            '%' if depth == 0 => return Some(i),
            _ => {}
        }
    }
    None
}

fn operator(body: &str, names: &mut Names) -> Result<Op, String> {
    let (name, arg, max) = split_operator(body)?;
    let no_arg = |op: Op| -> Result<Op, String> {
        if arg.is_some() || max.is_some() {
            return Err(format!("operator %{name}% takes no argument"));
        }
        Ok(op)
    };
    match name {
        "REQ" | "RESP" => {
            let arg = arg.ok_or_else(|| format!("operator %{name}% needs a header name: %{name}(NAME)%"))?;
            let (a, b) = match arg.split_once('?') {
                Some((a, b)) => (a, Some(b)),
                None => (arg, None),
            };
            let resp = name == "RESP";
            let list = if resp { &mut names.resp } else { &mut names.req };
            let main = header_ref(a, resp, list)?;
            let alt = b.map(|b| header_ref(b, resp, list)).transpose()?;
            Ok(if resp {
                Op::Resp { main, alt, max }
            } else {
                Op::Req { main, alt, max }
            })
        }
        "START_TIME" => {
            if arg.is_some() {
                return Err("%START_TIME(...)% with a custom time format is not supported: use %START_TIME%".into());
            }
            no_arg(Op::StartTime)
        }
        "PROTOCOL" => no_arg(Op::Protocol),
        "RESPONSE_CODE" => no_arg(Op::ResponseCode),
        "RESPONSE_FLAGS" => no_arg(Op::ResponseFlags),
        "RESPONSE_CODE_DETAILS" => no_arg(Op::ResponseCodeDetails),
        "CONNECTION_TERMINATION_DETAILS" => no_arg(Op::ConnectionTerminationDetails),
        "UPSTREAM_TRANSPORT_FAILURE_REASON" => no_arg(Op::UpstreamTransportFailureReason),
        "BYTES_RECEIVED" => no_arg(Op::BytesReceived),
        "BYTES_SENT" => no_arg(Op::BytesSent),
        "DURATION" => no_arg(Op::Duration),
        "UPSTREAM_HOST" => no_arg(Op::UpstreamHost),
        "UPSTREAM_CLUSTER" => no_arg(Op::UpstreamCluster),
        "UPSTREAM_LOCAL_ADDRESS" => no_arg(Op::UpstreamLocalAddress),
        "UPSTREAM_REQUEST_ATTEMPT_COUNT" => no_arg(Op::UpstreamRequestAttemptCount),
        "DOWNSTREAM_LOCAL_ADDRESS" => no_arg(Op::DownstreamLocalAddress),
        "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT" => no_arg(Op::DownstreamLocalAddressWithoutPort),
        "DOWNSTREAM_REMOTE_ADDRESS" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS" => no_arg(Op::DownstreamRemoteAddress),
        "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT" | "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT" => {
            no_arg(Op::DownstreamRemoteAddressWithoutPort)
        }
        "DOWNSTREAM_PEER_URI_SAN" => no_arg(Op::DownstreamPeerUriSan),
        "REQUESTED_SERVER_NAME" => no_arg(Op::RequestedServerName),
        "ROUTE_NAME" => no_arg(Op::RouteName),
        "HOSTNAME" => no_arg(Op::Hostname),
        "" => Err("empty operator %%-pair: write %% for a literal '%'".into()),
        other => Err(format!(
            "unknown operator %{other}% (see docs/observability.md for the supported list)"
        )),
    }
}

/// `NAME`, `NAME(ARG)` or `NAME(ARG):N`.
fn split_operator(body: &str) -> Result<(&str, Option<&str>, Option<u32>), String> {
    let Some(open) = body.find('(') else {
        if body.contains([')', ':']) {
            return Err(format!("malformed operator %{body}%"));
        }
        return Ok((body, None, None));
    };
    let name = &body[..open];
    let Some(close) = body.rfind(')').filter(|c| *c > open) else {
        return Err(format!("operator %{body}%: '(' without ')'"));
    };
    let arg = &body[open + 1..close];
    let tail = &body[close + 1..];
    let max = if tail.is_empty() {
        None
    } else {
        let n = tail
            .strip_prefix(':')
            .and_then(|n| n.parse::<u32>().ok())
            .filter(|n| *n > 0)
            .ok_or_else(|| format!("operator %{body}%: the length after ':' must be a positive integer"))?;
        Some(n)
    };
    Ok((name, Some(arg), max))
}

fn header_ref(name: &str, resp: bool, list: &mut Vec<http::HeaderName>) -> Result<HeaderRef, String> {
    if name.is_empty() {
        return Err("empty header name".into());
    }
    if let Some(p) = name.strip_prefix(':') {
        if resp {
            return Err(format!("%RESP({name})%: pseudo-headers are request-only"));
        }
        return match p.to_ascii_lowercase().as_str() {
            "method" => Ok(HeaderRef::Method),
            "path" => Ok(HeaderRef::Path),
            "authority" => Ok(HeaderRef::Authority),
            "scheme" => Ok(HeaderRef::Scheme),
            _ => Err(format!(
                "unknown pseudo-header {name} (:method, :path, :authority and :scheme are supported)"
            )),
        };
    }
    let h = http::HeaderName::from_bytes(name.to_ascii_lowercase().as_bytes())
        .map_err(|_| format!("invalid header name \"{name}\""))?;
    Names::slot(list, h).map(HeaderRef::Slot)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ISTIO: &str = "[%START_TIME%] \"%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%\" %RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% \"%UPSTREAM_TRANSPORT_FAILURE_REASON%\" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% %RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% \"%REQ(X-FORWARDED-FOR)%\" \"%REQ(USER-AGENT)%\" \"%REQ(X-REQUEST-ID)%\" \"%REQ(:AUTHORITY)%\" \"%UPSTREAM_HOST%\" %UPSTREAM_CLUSTER% %UPSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%\n";

    #[test]
    fn envoy_and_istio_defaults_parse() {
        let d = LogFormat::text("").unwrap();
        assert_eq!(d.source(), ENVOY_DEFAULT_FORMAT);
        let names: Vec<_> = d.req_headers.iter().map(|h| h.as_str()).collect();
        assert_eq!(
            names,
            ["x-envoy-original-path", "x-forwarded-for", "user-agent", "x-request-id"]
        );
        assert_eq!(d.resp_headers.len(), 1);
        let i = LogFormat::text(ISTIO).unwrap();
        let FormatKind::Text(ops) = &i.kind else { panic!() };
        assert!(ops.contains(&Op::RouteName));
        assert!(ops.contains(&Op::Req {
            main: HeaderRef::Slot(0),
            alt: Some(HeaderRef::Path),
            max: None
        }));
    }

    #[test]
    fn truncation_and_literals() {
        let f = LogFormat::text("a%%b %REQ(x-a?X-B):10% %RESP(x-c)%").unwrap();
        let FormatKind::Text(ops) = &f.kind else { panic!() };
        assert_eq!(ops[0], Op::Literal("a%b ".into()));
        assert_eq!(
            ops[1],
            Op::Req {
                main: HeaderRef::Slot(0),
                alt: Some(HeaderRef::Slot(1)),
                max: Some(10)
            }
        );
        assert_eq!(ops.last(), Some(&Op::Literal("\n".into())));
    }

    #[test]
    fn bad_formats_are_refused_with_a_reason() {
        for (f, want) in [
            ("%FOO%", "unknown operator %FOO%"),
            ("%REQ%", "needs a header name"),
            ("%REQ(a):x%", "positive integer"),
            ("%REQ(a):0%", "positive integer"),
            ("abc %PROTOCOL", "unterminated"),
            ("%RESP(:path)%", "request-only"),
            ("%REQ(:foo)%", "unknown pseudo-header"),
            ("%REQ(a b)%", "invalid header name"),
            ("%DURATION(x)%", "takes no argument"),
            ("%START_TIME(%s)%", "custom time format"),
            ("%REQ(a%", "unterminated"),
        ] {
            let e = LogFormat::text(f).unwrap_err();
            assert!(e.message.contains(want), "{f}: {e}");
        }
    }

    #[test]
    fn json_keys_sorted_and_errors_name_the_key() {
        let f = LogFormat::json([("b", "%RESPONSE_CODE%"), ("a", "%REQ(:METHOD)% x")]).unwrap();
        let FormatKind::Json(fields) = &f.kind else { panic!() };
        assert_eq!(fields[0].0, "a");
        let (k, _) = LogFormat::json([("ok", "%DURATION%"), ("bad", "%NOPE%")]).unwrap_err();
        assert_eq!(k, "bad");
    }
}
