//! The service graph's page: one self-contained HTML file (inline CSS, JavaScript and SVG; no
//! external script, style or font), embedded in the binary. It polls `graph.json` every 1.5 s.

/// `GET /graph`.
pub const HTML: &str = include_str!("graph.html");
