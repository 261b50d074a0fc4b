//! Where the log lines go and what they look like: stderr, so that the client subcommands'
//! stdout stays data; text coloured only for a terminal, or one JSON object a line for a
//! collector.

use std::ffi::OsString;
use std::io::IsTerminal;

use clap::ValueEnum;
use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines (coloured on a terminal unless NO_COLOR is set).
    #[default]
    Text,
    /// One JSON object a line: timestamp, level, target, message and fields, and the request's
    /// span (its request_id) under "span".
    Json,
}

/// Installs the global subscriber; the filter is `SLUICE_LOG` (env-filter syntax, default info).
pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("SLUICE_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            builder.with_ansi(colour(std::io::stderr().is_terminal(), std::env::var_os("NO_COLOR"))).init()
        }
        // The current span only, as one flat object: a collector can index `span.request_id`
        // without walking a list.
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).with_span_list(false).init(),
    }
}

/// Colour for a terminal, unless NO_COLOR is set to anything but the empty string
/// (<https://no-color.org>). A file or a pipe never gets escape codes.
pub fn colour(terminal: bool, no_color: Option<OsString>) -> bool {
    terminal && no_color.is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_only_on_a_terminal_without_no_color() {
        assert!(colour(true, None));
        assert!(colour(true, Some("".into())));
        assert!(!colour(true, Some("1".into())));
        assert!(!colour(false, None));
        assert!(!colour(false, Some("".into())));
    }
}
