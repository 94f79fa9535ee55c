//! Envoy's access loggers over xDS (`envoy.access_loggers.file`, `envoy.access_loggers.stdout`)
//! and their `log_format` (`SubstitutionFormatString`) in weft's raw form.

use crate::convert::Errs;
use std::collections::BTreeMap;
use weft_config::raw::RawAccessLog;
use weft_xds_api::pb::envoy::config::core::v3::{data_source, substitution_format_string, SubstitutionFormatString};
use weft_xds_api::pb::envoy::extensions::access_loggers::file::v3::{file_access_log, FileAccessLog};
use weft_xds_api::pb::envoy::extensions::access_loggers::stream::v3::{stdout_access_log, StdoutAccessLog};
use weft_xds_api::pb::google::protobuf::{value::Kind, Any, Struct};

pub const FILE_URL: &str = weft_xds_api::type_url::FILE_ACCESS_LOG;
pub const STDOUT_URL: &str = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog";

/// One access logger's typed config (`p` is its path, e.g. `…access_log[0].typed_config`);
/// `None` when its type is not one of these (the caller reports it).
pub fn convert(errs: &mut Errs, p: &str, a: &Any) -> Option<RawAccessLog> {
    if a.type_url == FILE_URL {
        let f = match weft_xds_api::unpack::<FileAccessLog>(a, FILE_URL) {
            Ok(f) => f,
            Err(e) => {
                errs.add(p, e);
                return Some(RawAccessLog::default());
            }
        };
        let path = match f.path.as_str() {
            "/dev/stdout" => "stdout".to_string(),
            "/dev/stderr" => "stderr".to_string(),
            other => other.to_string(),
        };
        let mut raw = RawAccessLog {
            path: Some(path),
            ..RawAccessLog::default()
        };
        #[allow(deprecated)]
        match &f.access_log_format {
            None => {}
            Some(file_access_log::AccessLogFormat::LogFormat(s)) => {
                format(errs, &format!("{p}.log_format"), s, &mut raw);
            }
            Some(file_access_log::AccessLogFormat::Format(s)) => raw.format = Some(s.clone()),
            Some(
                file_access_log::AccessLogFormat::JsonFormat(s) | file_access_log::AccessLogFormat::TypedJsonFormat(s),
            ) => raw.json_format = json(errs, &format!("{p}.json_format"), s),
        }
        return Some(raw);
    }
    if a.type_url == STDOUT_URL {
        let f = match weft_xds_api::unpack::<StdoutAccessLog>(a, STDOUT_URL) {
            Ok(f) => f,
            Err(e) => {
                errs.add(p, e);
                return Some(RawAccessLog::default());
            }
        };
        let mut raw = RawAccessLog {
            path: Some("stdout".into()),
            ..RawAccessLog::default()
        };
        if let Some(stdout_access_log::AccessLogFormat::LogFormat(s)) = &f.access_log_format {
            format(errs, &format!("{p}.log_format"), s, &mut raw);
        }
        return Some(raw);
    }
    None
}

/// `log_format`: text (inline or `text_format`) or a flat JSON map of strings. Envoy's default
/// format when no format is set, like Envoy.
fn format(errs: &mut Errs, p: &str, s: &SubstitutionFormatString, raw: &mut RawAccessLog) {
    if !s.formatters.is_empty() {
        errs.add(&format!("{p}.formatters"), "unsupported");
    }
    if s.omit_empty_values {
        errs.add(&format!("{p}.omit_empty_values"), "unsupported");
    }
    #[allow(deprecated)]
    match &s.format {
        None => raw.format = Some(String::new()),
        Some(substitution_format_string::Format::TextFormat(t)) => raw.format = Some(t.clone()),
        Some(substitution_format_string::Format::TextFormatSource(d)) => match &d.specifier {
            Some(data_source::Specifier::InlineString(t)) => raw.format = Some(t.clone()),
            Some(data_source::Specifier::InlineBytes(b)) => match std::str::from_utf8(b) {
                Ok(t) => raw.format = Some(t.to_string()),
                Err(_) => errs.add(&format!("{p}.text_format_source.inline_bytes"), "is not UTF-8"),
            },
            _ => errs.add(
                &format!("{p}.text_format_source"),
                "only inline_string and inline_bytes are supported",
            ),
        },
        Some(substitution_format_string::Format::JsonFormat(j)) => {
            raw.json_format = json(errs, &format!("{p}.json_format"), j)
        }
    }
}

fn json(errs: &mut Errs, p: &str, s: &Struct) -> Option<BTreeMap<String, String>> {
    let mut out = BTreeMap::new();
    for (k, v) in &s.fields {
        match &v.kind {
            Some(Kind::StringValue(t)) => {
                out.insert(k.clone(), t.clone());
            }
            _ => errs.add(&format!("{p}.{k}"), "only string values (format strings) are supported"),
        }
    }
    Some(out)
}
