//! What may go into a script: the character whitelists, the checks for embedded values, the
//! neutralising of free text shown with `echo`, and the settings the templates expand.
//!
//! See the crate documentation for why these sets are safe against iPXE's parser.

use crate::error::shown_char;

/// Settings the templates themselves expand. Each is typed by iPXE (MAC, IPv4 address or a fixed
/// word such as `efi`), so its value never holds whitespace, `$`, `{`, `}`, `|`, `&`, `;` or `#`.
/// Values given to the crate never contain `$`, so these are the only expansions in any script.
pub(crate) const NETX_MAC: &str = "${netX/mac}";
pub(crate) const NETX_IP: &str = "${netX/ip}";
pub(crate) const NETX_NETMASK: &str = "${netX/netmask}";
pub(crate) const NETX_GATEWAY: &str = "${netX/gateway}";
pub(crate) const DNS: &str = "${dns}";
pub(crate) const PLATFORM: &str = "${platform}";
pub(crate) const BUILDARCH: &str = "${buildarch}";
pub(crate) const NEXT_SERVER: &str = "${next-server}";

/// The longest text each expansion above can produce (a MAC is 17 characters, an IPv4 address at
/// most 15); used to bound the kernel command line after iPXE has filled it in.
pub(crate) const EXPANSION_MAX_LEN: &[(&str, usize)] = &[
    (NETX_MAC, 17),
    (NETX_IP, 15),
    (NETX_NETMASK, 15),
    (NETX_GATEWAY, 15),
    (DNS, 15),
    (PLATFORM, 6),
    (BUILDARCH, 16),
    (NEXT_SERVER, 15),
];

/// Free text shown with `echo` is cut to this many characters (including a trailing `...`).
pub const ECHO_TEXT_MAX_CHARS: usize = 200;

/// Characters allowed in a kernel command-line word (console values, extra arguments):
/// letters, digits and `. _ , : / = + @ ~ -`.
pub(crate) fn is_kernel_arg_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(c, '.' | '_' | ',' | ':' | '/' | '=' | '+' | '@' | '~' | '-')
}

pub(crate) const KERNEL_ARG_CHARS: &str = "letters, digits and `._,:/=+@~-`";

/// Characters kept as they are in `echo` text: letters, digits, space and `. _ : / , ( ) @ = + -`.
fn is_echo_char(c: char) -> bool {
    c.is_ascii_alphanumeric()
        || matches!(
            c,
            ' ' | '.' | '_' | ':' | '/' | ',' | '(' | ')' | '@' | '=' | '+' | '-'
        )
}

/// The first character of `s` outside `allowed`, as "character `x` at byte N is not allowed; …".
pub(crate) fn first_bad_char(
    s: &str,
    allowed: impl Fn(char) -> bool,
    allowed_desc: &str,
) -> Result<(), String> {
    match s.char_indices().find(|&(_, c)| !allowed(c)) {
        None => Ok(()),
        Some((i, c)) => Err(format!(
            "character {} at byte {i} is not allowed (allowed: {allowed_desc})",
            shown_char(c)
        )),
    }
}

/// Checks one word for the kernel command line: non-empty, at most `max_len` bytes, only
/// [`is_kernel_arg_char`] characters, and not starting with `-` (so no command ever reads it as an
/// option and `--` cannot end the kernel's own arguments).
pub(crate) fn check_kernel_word(s: &str, max_len: usize) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.len() > max_len {
        return Err(format!("it is longer than {max_len} bytes"));
    }
    first_bad_char(s, is_kernel_arg_char, KERNEL_ARG_CHARS)?;
    if s.starts_with('-') {
        return Err("it starts with `-`".into());
    }
    Ok(())
}

/// Makes free text safe to show with `echo`: every character outside `[A-Za-z0-9 ._:/,()@=+-]`
/// becomes `_` (so no `$`, `{`, `|`, `&`, `;`, `#`, quote, backslash, control character or
/// non-ASCII character survives, and the text can never expand a setting, end the command or the
/// line), runs of spaces become one, leading and trailing spaces go, and the result is cut to
/// [`ECHO_TEXT_MAX_CHARS`] characters, ending in `...` when cut.
pub fn echo_safe(text: &str) -> String {
    let mut out = String::new();
    let mut pending_space = false;
    let mut count = 0usize;
    let mut truncated = false;
    for c in text.chars() {
        let c = if is_echo_char(c) { c } else { '_' };
        if c == ' ' {
            pending_space = !out.is_empty();
            continue;
        }
        let needed = usize::from(pending_space) + 1;
        if count + needed > ECHO_TEXT_MAX_CHARS - 3 {
            truncated = true;
            break;
        }
        if pending_space {
            out.push(' ');
            count += 1;
            pending_space = false;
        }
        out.push(c);
        count += 1;
    }
    if truncated {
        out.push_str("...");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_text_keeps_the_safe_set() {
        let t = "no install pending for 52:54:00:12:34:56 (see /ipxe, a=b+c, x@y.z_w-v)";
        assert_eq!(echo_safe(t), t);
    }

    #[test]
    fn echo_text_replaces_everything_else() {
        assert_eq!(echo_safe("a\nshell"), "a_shell");
        assert_eq!(echo_safe("${root-path}"), "__root-path_");
        assert_eq!(echo_safe("x || shell"), "x __ shell");
        assert_eq!(
            echo_safe("x && chain http://evil/"),
            "x __ chain http://evil/"
        );
        assert_eq!(echo_safe("#c ;d"), "_c _d");
        assert_eq!(echo_safe("\"q\" 'q' `q` \\"), "_q_ _q_ _q_ _");
        assert_eq!(echo_safe("é☃"), "__");
        assert_eq!(echo_safe("tab\there\r\n"), "tab_here__");
        assert_eq!(
            echo_safe("<a>|b&c%d!e?f*g[h]i~j^k"),
            "_a__b_c_d_e_f_g_h_i_j_k"
        );
    }

    #[test]
    fn echo_text_collapses_and_trims_spaces() {
        assert_eq!(echo_safe("   a    b   "), "a b");
        assert_eq!(echo_safe("    "), "");
        assert_eq!(echo_safe(""), "");
    }

    #[test]
    fn echo_text_is_cut() {
        let cut = echo_safe(&"x".repeat(10_000));
        assert_eq!(cut.len(), ECHO_TEXT_MAX_CHARS);
        assert!(cut.ends_with("..."));
        let exact = "y".repeat(ECHO_TEXT_MAX_CHARS - 3);
        assert_eq!(echo_safe(&exact), exact);
        // multi-byte input is counted in characters and each becomes one `_`
        let cut = echo_safe(&"é".repeat(1000));
        assert_eq!(cut.chars().count(), ECHO_TEXT_MAX_CHARS);
        assert!(cut.is_ascii());
    }

    #[test]
    fn kernel_words() {
        assert!(check_kernel_word("ttyS0,115200n8", 64).is_ok());
        assert!(check_kernel_word("modprobe.blacklist=a,b", 64).is_ok());
        assert!(check_kernel_word("", 64).is_err());
        assert!(check_kernel_word("-x", 64).is_err());
        assert!(check_kernel_word("a b", 64).is_err());
        assert!(check_kernel_word("aaaa", 3).is_err());
        let e = check_kernel_word("a$b", 64).unwrap_err();
        assert!(e.contains("`$` at byte 1"), "{e}");
    }
}
