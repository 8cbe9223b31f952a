//! text: text from the machine (agent messages, hook output, paths from an image) made safe
//! to print in a log line or on an operator's terminal: control characters (newlines,
//! carriage returns, ESC of terminal escape sequences, DEL, C1 controls) are written as
//! `\n`, `\r`, `\t` or `\u{1b}`, so that no one can forge a log line or drive a terminal.

/// `s` with its control characters escaped (and `\` itself, so that escapes stay readable).
pub fn escape_control(s: &str) -> std::borrow::Cow<'_, str> {
    if !s.chars().any(|c| c.is_control() || c == '\\') {
        return std::borrow::Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_control() => out.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => out.push(c),
        }
    }
    std::borrow::Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn controls_are_escaped() {
        assert_eq!(escape_control("plain text, é ok"), "plain text, é ok");
        assert_eq!(
            escape_control("a\nINFO forged line\r\x1b[2J\x07\u{9b}x\\y"),
            "a\\nINFO forged line\\r\\u{1b}[2J\\u{7}\\u{9b}x\\\\y"
        );
        assert_eq!(escape_control("tab\there"), "tab\\there");
    }
}
