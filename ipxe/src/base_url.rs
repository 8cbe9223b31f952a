//! The base of every URL written into a script: a checked `http(s)://host[:port][/path]`, or the
//! DHCP next-server that iPXE already knows.
//!
//! A fixed base URL is refused unless it is, exactly:
//! - `http://` or `https://` (lowercase);
//! - a host: a DNS name (labels of letters, digits and `-`, not starting or ending with `-`, at
//!   most 63 characters each and 253 in all; a name whose last label is all digits must be an
//!   IPv4 address), a dotted-quad IPv4 address, or `[IPv6]` (no zone);
//! - optionally `:port`, 1–65535 in decimal without leading zeros;
//! - optionally a path of `/segment`s, each non-empty, not `.` or `..`, made of letters, digits
//!   and `-._~`;
//! - nothing else: no user info, query, fragment, percent-encoding, whitespace or other character.
//!
//! [`BaseUrl::parse`] drops a single trailing `/` (`http://h/` is `http://h`); it changes nothing
//! else. Renderers check a [`BaseUrl::Fixed`] again, so a value built without `parse` cannot
//! slip through.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use crate::error::{RenderError, shown};
use crate::safe::{NEXT_SERVER, first_bad_char};

/// Longest base URL accepted.
const MAX_URL_LEN: usize = 512;

/// Base of the URLs that go into scripts.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum BaseUrl {
    /// A validated `http(s)://host[:port][/path]` with no trailing slash (from the server config or
    /// the Host header). Build it with [`BaseUrl::parse`] or [`BaseUrl::from_host_header`].
    Fixed(String),
    /// Use the DHCP next-server that iPXE knows: `http://${next-server}:PORT` (for boot.ipxe
    /// served over TFTP, where the server does not know which of its addresses the client used).
    NextServer { port: u16 },
}

impl BaseUrl {
    /// Checks a base URL (see the module documentation); a single trailing `/` is dropped.
    pub fn parse(s: &str) -> Result<BaseUrl, RenderError> {
        let candidate = s.strip_suffix('/').unwrap_or(s);
        check_fixed(candidate).map_err(|reason| RenderError::BaseUrl {
            value: shown(s),
            reason,
        })?;
        Ok(BaseUrl::Fixed(candidate.to_string()))
    }

    /// `http://HOST` from an HTTP `Host` header (`host` or `host:port`); refused unless it is
    /// exactly a host and optional port as [`BaseUrl::parse`] accepts them.
    pub fn from_host_header(host: &str) -> Result<BaseUrl, RenderError> {
        let url = format!("http://{host}");
        let refused = |reason: String| RenderError::BaseUrl {
            value: shown(&url),
            reason,
        };
        if host.contains('/') {
            return Err(refused("a Host header must not hold `/`".into()));
        }
        check_fixed(&url).map_err(refused)?;
        Ok(BaseUrl::Fixed(url))
    }

    /// The text that goes into scripts, checked again for [`BaseUrl::Fixed`].
    pub(crate) fn script_text(&self) -> Result<String, RenderError> {
        match self {
            BaseUrl::Fixed(s) => {
                check_fixed(s).map_err(|reason| RenderError::BaseUrl {
                    value: shown(s),
                    reason,
                })?;
                Ok(s.clone())
            }
            BaseUrl::NextServer { port: 0 } => Err(RenderError::BaseUrl {
                value: format!("http://{NEXT_SERVER}:0"),
                reason: "port 0 cannot be connected to".into(),
            }),
            BaseUrl::NextServer { port } => Ok(format!("http://{NEXT_SERVER}:{port}")),
        }
    }
}

impl fmt::Display for BaseUrl {
    /// The text as it appears in scripts (`http://${next-server}:PORT` for [`BaseUrl::NextServer`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BaseUrl::Fixed(s) => f.write_str(s),
            BaseUrl::NextServer { port } => write!(f, "http://{NEXT_SERVER}:{port}"),
        }
    }
}

fn is_url_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~' | '/' | ':' | '[' | ']')
}

/// Why `s` is not an acceptable fixed base URL, if it is not.
fn check_fixed(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    let rest = s
        .strip_prefix("http://")
        .or_else(|| s.strip_prefix("https://"))
        .ok_or_else(|| String::from("it must start with `http://` or `https://`"))?;
    if s.len() > MAX_URL_LEN {
        return Err(format!("it is longer than {MAX_URL_LEN} bytes"));
    }
    first_bad_char(
        s,
        is_url_char,
        "letters, digits and `-._~/:[]`; no user info, query, fragment or percent-encoding",
    )?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, ""),
    };
    check_authority(authority)?;
    check_path(path)
}

fn check_authority(a: &str) -> Result<(), String> {
    if a.is_empty() {
        return Err("it has no host".into());
    }
    let port = if let Some(rest) = a.strip_prefix('[') {
        let (inside, after) = rest
            .split_once(']')
            .ok_or_else(|| String::from("`[` opens an IPv6 address that is never closed"))?;
        if inside.parse::<Ipv6Addr>().is_err() {
            return Err(format!("`[{inside}]` is not an IPv6 address"));
        }
        if after.is_empty() {
            None
        } else {
            Some(
                after
                    .strip_prefix(':')
                    .ok_or_else(|| format!("unexpected `{after}` after the IPv6 address"))?,
            )
        }
    } else {
        if a.contains(['[', ']']) {
            return Err("`[` and `]` may only enclose an IPv6 address".into());
        }
        let (host, port) = match a.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        };
        check_host(host)?;
        port
    };
    match port {
        Some(p) => check_port(p),
        None => Ok(()),
    }
}

fn check_host(h: &str) -> Result<(), String> {
    if h.is_empty() {
        return Err("it has no host".into());
    }
    if h.len() > 253 {
        return Err("its host name is longer than 253 bytes".into());
    }
    let last = h.rsplit('.').next().unwrap_or(h);
    if !last.is_empty() && last.bytes().all(|b| b.is_ascii_digit()) {
        return match h.parse::<Ipv4Addr>() {
            Ok(_) => Ok(()),
            Err(_) => Err(format!("`{h}` is neither a host name nor an IPv4 address")),
        };
    }
    for label in h.split('.') {
        if label.is_empty() {
            return Err(format!("host name `{h}` has an empty label"));
        }
        if label.len() > 63 {
            return Err(format!("host name label `{label}` is longer than 63 bytes"));
        }
        if !label
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(format!(
                "host name label `{label}` may only hold letters, digits and `-`"
            ));
        }
        if label.starts_with('-') || label.ends_with('-') {
            return Err(format!(
                "host name label `{label}` must not start or end with `-`"
            ));
        }
    }
    Ok(())
}

fn check_port(p: &str) -> Result<(), String> {
    let bad = || format!("port `{p}` is not a number from 1 to 65535 without leading zeros");
    if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) || p.starts_with('0') {
        return Err(bad());
    }
    match p.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(()),
        _ => Err(bad()),
    }
}

fn check_path(path: &str) -> Result<(), String> {
    let Some(segments) = path.strip_prefix('/') else {
        return Ok(()); // empty: no path
    };
    if path.ends_with('/') {
        return Err("it must not end with `/`".into());
    }
    for seg in segments.split('/') {
        if seg.is_empty() {
            return Err("its path has an empty segment (`//`)".into());
        }
        if seg == "." || seg == ".." {
            return Err("its path has a `.` or `..` segment".into());
        }
        if !seg
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~'))
        {
            return Err(format!(
                "path segment `{seg}` may only hold letters, digits and `-._~`"
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed(s: &str) -> BaseUrl {
        BaseUrl::Fixed(s.to_string())
    }

    #[test]
    fn accepted() {
        for ok in [
            "http://10.0.2.2:8080",
            "http://10.0.2.2",
            "https://byol.example.com",
            "https://byol.example.com:8443/byol",
            "http://localhost:1/a/b-c/d_e/f.g/h~i",
            "http://[::1]:8080",
            "http://[fd00::1]",
            "http://[2001:db8::10]:65535/x",
            "http://a",
            "http://0.0.0.0",
            "http://255.255.255.255",
            "http://host-1.example",
            "http://1host.example",
            "http://example.123abc",
        ] {
            assert_eq!(BaseUrl::parse(ok), Ok(fixed(ok)), "{ok}");
            assert_eq!(fixed(ok).script_text().as_deref(), Ok(ok));
        }
    }

    #[test]
    fn one_trailing_slash_is_dropped() {
        assert_eq!(BaseUrl::parse("http://h/"), Ok(fixed("http://h")));
        assert_eq!(
            BaseUrl::parse("http://h:80/byol/"),
            Ok(fixed("http://h:80/byol"))
        );
        assert!(BaseUrl::parse("http://h//").is_err());
        assert!(BaseUrl::parse("http:///").is_err());
        // a Fixed value built by hand keeps the rule: no trailing slash
        assert!(fixed("http://h/").script_text().is_err());
    }

    #[test]
    fn refused() {
        let long_label = format!("http://{}.example", "a".repeat(64));
        let long_host = format!("http://{}", ["abcdefghi"; 26].join("."));
        let long_url = format!("http://h/{}", "a".repeat(600));
        let cases: Vec<&str> = vec![
            "",
            "http://",
            "https://",
            "HTTP://x",
            "Http://x",
            "ftp://x",
            "file:///etc/passwd",
            "javascript:alert(1)",
            "//x",
            "x",
            "http:/x",
            "http://x/ ${foo}",
            "http://host\nshell",
            "http://host\r",
            "http://host\t",
            " http://x",
            "http://x ",
            "http://x/${root-path}",
            "http://${next-server}:8080",
            "http://x||shell",
            "http://x/||",
            "http://x/&&chain",
            "http://x/a;b",
            "http://x#frag",
            "http://x/#",
            "http://x?q=1",
            "http://x/a?b",
            "http://user:pw@x",
            "http://@x",
            "http://x/a%20b",
            "http://x/'a'",
            "http://x/\"a\"",
            "http://x/a\\b",
            "http://x/`id`",
            "http://x/<a>",
            "http://x:0",
            "http://x:65536",
            "http://x:99999",
            "http://x:123456",
            "http://x:08080",
            "http://x:",
            "http://x:80:80",
            "http://x:-1",
            "http://x:+80",
            "http://:80",
            "http://[::1",
            "http://[::1]x",
            "http://[zz::1]",
            "http://[fe80::1%25eth0]",
            "http://[]",
            "http://::1",
            "http://x[1]",
            "http://x_y",
            "http://-x",
            "http://x-",
            "http://x..y",
            "http://.x",
            "http://x.",
            "http://999.1.1.1",
            "http://1.2.3",
            "http://01.2.3.4",
            "http://1.2.3.4.5",
            "http://ünï.example",
            "http://x/é",
            "http://x/./a",
            "http://x/../a",
            "http://x/a/..",
            "http://x//a",
            "http://x/a//b",
            "http://x/a:b",
            "http://x/[a]",
            &long_label,
            &long_host,
            &long_url,
        ];
        for bad in cases {
            let e = BaseUrl::parse(bad).expect_err(bad);
            let msg = e.to_string();
            assert!(msg.starts_with("base URL `"), "{msg}");
            assert!(!msg.contains('\n') && !msg.contains('\r'), "{msg:?}");
            assert!(fixed(bad).script_text().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn messages_say_why() {
        let msg = |s: &str| BaseUrl::parse(s).unwrap_err().to_string();
        assert_eq!(
            msg("http://x/ ${foo}"),
            "base URL `http://x/ ${foo}` is not safe in an iPXE script: character ` ` at byte 9 \
             is not allowed (allowed: letters, digits and `-._~/:[]`; no user info, query, \
             fragment or percent-encoding)"
        );
        assert!(msg("javascript:alert(1)").ends_with("it must start with `http://` or `https://`"));
        assert!(msg("http://host\nshell").contains("`http://host\\nshell`"));
        assert!(msg("http://x:0").contains("port `0`"));
    }

    #[test]
    fn host_header() {
        assert_eq!(
            BaseUrl::from_host_header("10.0.2.2:8080"),
            Ok(fixed("http://10.0.2.2:8080"))
        );
        assert_eq!(
            BaseUrl::from_host_header("[::1]:80"),
            Ok(fixed("http://[::1]:80"))
        );
        for bad in [
            "",
            "x/",
            "x/evil",
            "x y",
            "x\r\nshell",
            "x:0",
            "u@x",
            "${next-server}",
        ] {
            assert!(BaseUrl::from_host_header(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn next_server() {
        let b = BaseUrl::NextServer { port: 8080 };
        assert_eq!(b.script_text().as_deref(), Ok("http://${next-server}:8080"));
        assert_eq!(b.to_string(), "http://${next-server}:8080");
        assert!(BaseUrl::NextServer { port: 0 }.script_text().is_err());
    }
}
