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

/// A size for people: `10 B`, `1.5 KiB`, `20.0 GiB` (binary units, one decimal). The one
/// formatter of byol's messages.
pub fn human(n: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_for_people() {
        assert_eq!(human(10), "10 B");
        assert_eq!(human(1536), "1.5 KiB");
        assert_eq!(human(20 << 30), "20.0 GiB");
        assert_eq!(human(u64::MAX), "16384.0 PiB");
    }

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
