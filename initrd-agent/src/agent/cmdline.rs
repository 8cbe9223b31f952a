//! cmdline: the kernel command line the iPXE script wrote (`/proc/cmdline`), split the way the
//! kernel splits it (spaces outside double quotes, quotes removed, everything after a lone `--`
//! left to init), and the `byol.*` values read from it into [`BootParams`].
//!
//! Unknown keys are kept (`console=` is read from there), empty values (`byol.gateway=`) are
//! "not given", and a value that does not parse (`byol.ip=10.0.2`) is a warning and counts as
//! not given: the agent then falls back (DHCP) instead of failing with a typo.

use std::fmt;
use std::net::Ipv4Addr;

use byol_spec::Secret;

/// One `key[=value]` word of the command line, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Param {
    pub key: String,
    /// `None` for a bare word (`quiet`), `Some("")` for `key=`.
    pub value: Option<String>,
}

/// The whole command line, every parameter kept in order (duplicates too: `console=` repeats).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Cmdline {
    pub params: Vec<Param>,
    /// Words after a lone `--` (the kernel hands them to init as arguments).
    pub init_args: Vec<String>,
}

impl Cmdline {
    /// Splits a command line like the kernel's `next_arg()`: whitespace separates words except
    /// inside double quotes; a word that starts with `"` loses it and its closing `"`, a value
    /// that starts with `"` (`key="a b"`) loses it and the word's last `"`. Quotes elsewhere
    /// stay, as in the kernel.
    pub fn parse(text: &str) -> Cmdline {
        let mut out = Cmdline::default();
        let mut words: Vec<String> = Vec::new();
        let mut cur = String::new();
        let mut in_word = false;
        let mut in_quote = false;
        for c in text.chars() {
            if c.is_whitespace() && !in_quote {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
                continue;
            }
            if c == '"' {
                in_quote = !in_quote;
            }
            cur.push(c);
            in_word = true;
        }
        if in_word {
            words.push(cur);
        }
        let mut rest = words.into_iter();
        for w in rest.by_ref() {
            if w == "--" {
                break;
            }
            let mut w = w.as_str();
            let quoted = w.starts_with('"');
            if quoted {
                w = &w[1..];
            }
            let (key, value) = match w.split_once('=') {
                Some((k, v)) => match v.strip_prefix('"') {
                    Some(v) => (k, Some(v.strip_suffix('"').unwrap_or(v))),
                    None if quoted => (k, Some(v.strip_suffix('"').unwrap_or(v))),
                    None => (k, Some(v)),
                },
                None if quoted => (w.strip_suffix('"').unwrap_or(w), None),
                None => (w, None),
            };
            out.params.push(Param {
                key: key.to_string(),
                value: value.map(str::to_string),
            });
        }
        out.init_args = rest.collect();
        out
    }

    /// The last value given for `key` (the kernel's rule: the last one wins). A bare word
    /// gives `Some("")`.
    pub fn get(&self, key: &str) -> Option<&str> {
        self.params
            .iter()
            .rev()
            .find(|p| p.key == key)
            .map(|p| p.value.as_deref().unwrap_or(""))
    }

    /// Every value given for `key`, in order (`console=tty0 console=ttyS0,115200n8`).
    pub fn all(&self, key: &str) -> Vec<&str> {
        self.params
            .iter()
            .filter(|p| p.key == key)
            .map(|p| p.value.as_deref().unwrap_or(""))
            .collect()
    }

    /// The value of `key`, trimmed, or `None` when it is missing or empty.
    pub fn non_empty(&self, key: &str) -> Option<&str> {
        self.get(key).map(str::trim).filter(|v| !v.is_empty())
    }
}

/// The firmware the machine booted with, as iPXE saw it (`${platform}`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Platform {
    Pcbios,
    Efi,
    /// Not given (or unknown): the agent looks at `/sys/firmware/efi` itself.
    Unknown,
}

impl Platform {
    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Pcbios => "pcbios",
            Platform::Efi => "efi",
            Platform::Unknown => "unknown",
        }
    }
}

/// A MAC address, shown in lowercase colon form.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Mac(pub [u8; 6]);

impl Mac {
    /// `52:54:00:12:34:56`, `52-54-00-12-34-56` or `525400123456`, any case.
    pub fn parse(s: &str) -> Option<Mac> {
        let hex: String = s
            .trim()
            .chars()
            .filter(|c| *c != ':' && *c != '-')
            .collect();
        if hex.len() != 12 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
            return None;
        }
        let mut m = [0u8; 6];
        for (i, b) in m.iter_mut().enumerate() {
            *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
        }
        Some(Mac(m))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

impl fmt::Debug for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

/// What the agent needs from the command line. The token is a [`Secret`]: never printed.
#[derive(Debug, Clone)]
pub struct BootParams {
    /// `byol.server`, without a trailing `/` (empty when missing).
    pub server: String,
    /// `byol.install`: the install's id, for messages only (the token is what authenticates).
    pub install: String,
    pub token: Secret,
    /// `byol.mac`: the interface that booted.
    pub mac: Option<Mac>,
    /// `byol.ip` / `byol.netmask` / `byol.gateway`: the address iPXE got; no `ip` → DHCP.
    pub ip: Option<Ipv4Addr>,
    pub netmask: Option<Ipv4Addr>,
    pub gateway: Option<Ipv4Addr>,
    /// `byol.dns`: one address or several separated by commas.
    pub dns: Vec<Ipv4Addr>,
    pub platform: Platform,
    /// The devices of the `console=` parameters, in order, without options
    /// (`ttyS0,115200n8` → `ttyS0`), duplicates removed.
    pub consoles: Vec<String>,
    /// Values that were given but could not be read (`byol.ip=10.0.2`): shown on the console.
    pub warnings: Vec<String>,
}

impl BootParams {
    pub fn from_cmdline(c: &Cmdline) -> BootParams {
        // the warnings go to the console: a value's control characters are shown escaped
        let esc = byol_spec::text::escape_control;
        let mut warnings = Vec::new();
        let mut ipv4 = |key: &str| -> Option<Ipv4Addr> {
            let v = c.non_empty(key)?;
            match v.parse() {
                Ok(a) => Some(a),
                Err(_) => {
                    warnings.push(format!(
                        "{key}=`{}` is not an IPv4 address: ignored",
                        esc(v)
                    ));
                    None
                }
            }
        };
        let ip = ipv4("byol.ip");
        let netmask = ipv4("byol.netmask");
        let gateway = ipv4("byol.gateway");
        let mut dns = Vec::new();
        for d in c.non_empty("byol.dns").unwrap_or("").split([',', ' ']) {
            let d = d.trim();
            if d.is_empty() {
                continue;
            }
            match d.parse() {
                Ok(a) => dns.push(a),
                Err(_) => warnings.push(format!(
                    "byol.dns `{}` is not an IPv4 address: ignored",
                    esc(d)
                )),
            }
        }
        let mac = match c.non_empty("byol.mac") {
            None => None,
            Some(v) => {
                let m = Mac::parse(v);
                if m.is_none() {
                    warnings.push(format!(
                        "byol.mac=`{}` is not a MAC address: ignored",
                        esc(v)
                    ));
                }
                m
            }
        };
        let platform = match c.non_empty("byol.platform") {
            Some("efi") => Platform::Efi,
            Some("pcbios") => Platform::Pcbios,
            Some(other) => {
                warnings.push(format!(
                    "byol.platform=`{}` is neither pcbios nor efi: looking at the firmware",
                    esc(other)
                ));
                Platform::Unknown
            }
            None => Platform::Unknown,
        };
        BootParams {
            server: c
                .non_empty("byol.server")
                .unwrap_or("")
                .trim_end_matches('/')
                .to_string(),
            install: c.non_empty("byol.install").unwrap_or("").to_string(),
            token: Secret::new(c.non_empty("byol.token").unwrap_or("")),
            mac,
            ip,
            netmask,
            gateway,
            dns,
            platform,
            consoles: console_devices(c),
            warnings,
        }
    }
}

/// The device names of the `console=` parameters (`ttyS0,115200n8` → `ttyS0`), in order,
/// without duplicates. Non-device consoles (`console=null`, `netconsole`…) are kept as named;
/// opening them simply fails later.
pub fn console_devices(c: &Cmdline) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for v in c.all("console") {
        let dev = v.split(',').next().unwrap_or("").trim();
        let dev = dev.strip_prefix("/dev/").unwrap_or(dev);
        if !dev.is_empty() && !dev.contains('/') && !out.iter().any(|d| d == dev) {
            out.push(dev.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    const IPXE: &str = "byol.server=http://10.0.2.2:8080 byol.install=5f0c byol.token=abcdef \
        byol.mac=52:54:00:12:34:56 byol.ip=10.0.2.15 byol.netmask=255.255.255.0 \
        byol.gateway= byol.dns=10.0.2.3 byol.platform=efi console=tty0 \
        console=ttyS0,115200n8 initrd=initramfs\n";

    #[test]
    fn ipxe_line() {
        let c = Cmdline::parse(IPXE);
        let b = BootParams::from_cmdline(&c);
        assert_eq!(b.server, "http://10.0.2.2:8080");
        assert_eq!(b.install, "5f0c");
        assert_eq!(b.token.expose(), "abcdef");
        assert_eq!(b.mac.unwrap().to_string(), "52:54:00:12:34:56");
        assert_eq!(b.ip, Some(Ipv4Addr::new(10, 0, 2, 15)));
        assert_eq!(b.netmask, Some(Ipv4Addr::new(255, 255, 255, 0)));
        assert_eq!(b.gateway, None, "empty value = not given");
        assert_eq!(b.dns, vec![Ipv4Addr::new(10, 0, 2, 3)]);
        assert_eq!(b.platform, Platform::Efi);
        assert_eq!(b.consoles, vec!["tty0", "ttyS0"]);
        assert!(b.warnings.is_empty(), "{:?}", b.warnings);
        // Unknown keys are kept, with their values.
        assert_eq!(c.get("initrd"), Some("initramfs"));
        assert_eq!(c.get("byol.gateway"), Some(""));
        assert!(!format!("{b:?}").contains("abcdef"), "token must not show");
    }

    #[test]
    fn quoting_like_the_kernel() {
        let c = Cmdline::parse(r#"a="b c" "d=e f" g=h"i j"k quiet x= -- single init args"#);
        assert_eq!(c.get("a"), Some("b c"));
        assert_eq!(c.get("d"), Some("e f"));
        // Quotes inside a value stay, as the kernel leaves them; the space is kept.
        assert_eq!(c.get("g"), Some(r#"h"i j"k"#));
        assert_eq!(c.get("quiet"), Some(""));
        assert_eq!(c.params[3].value, None, "bare word has no value");
        assert_eq!(c.get("x"), Some(""));
        assert_eq!(c.get("missing"), None);
        assert_eq!(c.init_args, vec!["single", "init", "args"]);
    }

    #[test]
    fn value_with_equals_and_last_wins() {
        let c = Cmdline::parse("k=a=b k=c\tconsole=ttyS0 console=/dev/ttyS0,9600 console=tty1");
        assert_eq!(c.get("k"), Some("c"));
        assert_eq!(c.all("k"), vec!["a=b", "c"]);
        assert_eq!(console_devices(&c), vec!["ttyS0", "tty1"]);
    }

    #[test]
    fn bad_values_are_warnings_not_errors() {
        let c = Cmdline::parse(
            "byol.ip=10.0.2 byol.mac=zz byol.dns=1.1.1.1,nope,9.9.9.9 byol.platform=bios \
             byol.server=http://h:1/",
        );
        let b = BootParams::from_cmdline(&c);
        assert_eq!(b.ip, None);
        assert_eq!(b.mac, None);
        assert_eq!(b.dns.len(), 2);
        assert_eq!(b.platform, Platform::Unknown);
        assert_eq!(b.server, "http://h:1");
        assert_eq!(b.warnings.len(), 4, "{:?}", b.warnings);
        assert!(b.token.is_empty());
        assert!(b.consoles.is_empty());
    }

    #[test]
    fn warnings_show_control_characters_escaped() {
        let c = Cmdline::parse("byol.ip=1\u{1b}[2J byol.platform=x\u{7}");
        let b = BootParams::from_cmdline(&c);
        assert_eq!(b.warnings.len(), 2, "{:?}", b.warnings);
        assert!(b.warnings[0].contains("`1\\u{1b}[2J`"), "{:?}", b.warnings);
        assert!(!b.warnings.iter().any(|w| w.chars().any(char::is_control)));
    }

    #[test]
    fn mac_forms() {
        let want = "52:54:00:ab:cd:ef";
        for s in ["52:54:00:AB:CD:EF", "52-54-00-ab-cd-ef", "525400abcdef"] {
            assert_eq!(Mac::parse(s).unwrap().to_string(), want);
        }
        assert!(Mac::parse("52:54:00:ab:cd").is_none());
        assert!(Mac::parse("").is_none());
    }
}
