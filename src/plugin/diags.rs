//! How the plugin writes diags.log lines.
#![forbid(unsafe_code)]

/// Collapses a (possibly multi-line) error into one diags.log line.
pub fn one_line(e: &dyn std::fmt::Display) -> String {
    format!("{e:#}").split('\n').map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}
