//! What rendering refuses: one error per kind of value, each saying which value was refused and why.
//!
//! Refused values are shown escaped (`\n`, `\u{…}`) and cut short, so an error message is safe to log
//! even when the value was an injection attempt. The agent token is never shown.

/// A value that cannot be put into an iPXE script safely. Nothing is ever altered to make it fit.
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
pub enum RenderError {
    #[error("base URL `{value}` is not safe in an iPXE script: {reason}")]
    BaseUrl { value: String, reason: String },

    #[error("install id `{value}` is not safe in an iPXE script: {reason}")]
    InstallId { value: String, reason: String },

    /// The token itself is a secret: it is not part of the message.
    #[error("agent token (not shown) is not safe in an iPXE script: {reason}")]
    Token { reason: String },

    #[error("console value `{value}` is not safe in an iPXE script: {reason}")]
    Console { value: String, reason: String },

    #[error("extra kernel argument `{value}` is not safe in an iPXE script: {reason}")]
    ExtraArg { value: String, reason: String },

    #[error(
        "kernel command line would be up to {len} bytes once iPXE fills in the network settings, \
         more than the {max} bytes Linux accepts"
    )]
    CommandLineTooLong { len: usize, max: usize },
}

/// At most this many characters of a refused value go into an error message.
const SHOWN_MAX_CHARS: usize = 80;

/// A refused value as it appears in an error message: escaped to printable ASCII and cut short.
pub(crate) fn shown(value: &str) -> String {
    let mut out = String::new();
    for (i, c) in value.chars().enumerate() {
        if i == SHOWN_MAX_CHARS {
            out.push_str("...");
            break;
        }
        out.extend(c.escape_default());
    }
    out
}

/// One character, escaped, between backticks: for "character `…` is not allowed".
pub(crate) fn shown_char(c: char) -> String {
    format!("`{}`", c.escape_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_values_are_escaped_and_short() {
        assert_eq!(shown("a\nb"), "a\\nb");
        assert_eq!(shown("é"), "\\u{e9}");
        let long = "x".repeat(500);
        assert_eq!(shown(&long), format!("{}...", "x".repeat(SHOWN_MAX_CHARS)));
        assert_eq!(shown_char('\r'), "`\\r`");
    }

    #[test]
    fn messages_name_the_value_and_the_reason() {
        let e = RenderError::InstallId {
            value: shown("ab\ncd"),
            reason: "it holds a newline".into(),
        };
        assert_eq!(
            e.to_string(),
            "install id `ab\\ncd` is not safe in an iPXE script: it holds a newline"
        );
    }
}
