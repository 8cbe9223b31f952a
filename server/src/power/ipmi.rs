//! ipmi: an IPMI v2.0 BMC over RMCP+ (`lanplus`), through Debian's `ipmitool`: `chassis power
//! status|on|off|reset`, `chassis bootdev pxe` (next boot only, as IPMI boot flags are unless
//! made persistent; `options=efiboot` for a machine that last booted UEFI). The password goes to
//! ipmitool in its environment (`-E`, `IPMI_PASSWORD`), never on its command line, where any
//! user of the host could read it. Why ipmitool rather than a crate: see the README.

use std::process::Stdio;

use byol_spec::Secret;

use super::{BMC_TIMEOUT, BmcError, PowerAction, PowerState, shown};

pub struct Ipmi {
    host: String,
    port: u16,
    user: String,
    password: Secret,
    efi: bool,
}

/// `HOST[:PORT]` (IPv6 in brackets) checked and written back as `HOST:PORT` (623 by default).
pub fn check_address(s: &str) -> Result<String, BmcError> {
    let bad = |why: &str| {
        Err(BmcError(format!(
            "IPMI BMC `{}`: {why} (give HOST, HOST:PORT or [IPV6]:PORT)",
            shown(s)
        )))
    };
    let (host, port) = match split(s) {
        Some(hp) => hp,
        None => return bad("not HOST[:PORT]"),
    };
    let port: u16 = match port {
        None => 623,
        Some(p) => match p.parse() {
            Ok(p) if p > 0 => p,
            _ => return bad("the port is not a number from 1 to 65535"),
        },
    };
    let v6 = host.parse::<std::net::Ipv6Addr>().is_ok();
    let name_ok = !host.is_empty()
        && host.len() <= 253
        && !host.starts_with('-')
        && host
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'.' || b == b'-');
    if !v6 && !name_ok {
        return bad("the host is not a name or an address");
    }
    Ok(if v6 {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    })
}

/// (host, port) of `HOST`, `HOST:PORT`, `[V6]`, `[V6]:PORT` or a bare IPv6 address.
fn split(s: &str) -> Option<(&str, Option<&str>)> {
    if let Some(rest) = s.strip_prefix('[') {
        let (host, after) = rest.split_once(']')?;
        return match after {
            "" => Some((host, None)),
            a => Some((host, Some(a.strip_prefix(':')?))),
        };
    }
    if s.parse::<std::net::Ipv6Addr>().is_ok() {
        return Some((s, None));
    }
    match s.split_once(':') {
        Some((h, p)) => Some((h, Some(p))),
        None => Some((s, None)),
    }
}

impl Ipmi {
    pub fn new(address: &str, user: &str, password: Secret, efi: bool) -> Result<Ipmi, BmcError> {
        let address = check_address(address)?;
        let (host, port) = split(&address).ok_or_else(|| BmcError(address.clone()))?;
        Ok(Ipmi {
            host: host.to_string(),
            port: port.and_then(|p| p.parse().ok()).unwrap_or(623),
            user: user.to_string(),
            password,
            efi,
        })
    }

    pub fn describe(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    /// `ipmitool -I lanplus … ARGS`: its output, or an error with its own words.
    async fn ipmitool(&self, args: &[&str]) -> Result<String, BmcError> {
        let mut c = tokio::process::Command::new("ipmitool");
        c.args(["-I", "lanplus", "-H", &self.host, "-p"])
            .arg(self.port.to_string())
            .args(["-U", &self.user, "-E", "-N", "2", "-R", "3"])
            .args(args)
            .env("IPMI_PASSWORD", self.password.expose())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let what = format!("`ipmitool {}` on {}", args.join(" "), self.describe());
        let out = match tokio::time::timeout(BMC_TIMEOUT, c.output()).await {
            Err(_) => {
                return Err(BmcError(format!(
                    "{what}: no answer within {} s",
                    BMC_TIMEOUT.as_secs()
                )));
            }
            Ok(Err(e)) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(BmcError(
                    "ipmitool is not installed on the byol server: install it (apt-get install \
                     ipmitool); byol drives IPMI BMCs through it"
                        .into(),
                ));
            }
            Ok(Err(e)) => return Err(BmcError(format!("{what}: {e}"))),
            Ok(Ok(o)) => o,
        };
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() {
            return Ok(stdout);
        }
        let stderr = String::from_utf8_lossy(&out.stderr);
        let said: Vec<&str> = stderr
            .lines()
            .chain(stdout.lines())
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        let hint = if said
            .iter()
            .any(|l| l.contains("Unauthorized name") || l.contains("RAKP"))
        {
            format!(
                ": the BMC refused user `{}` and its password",
                shown(&self.user)
            )
        } else {
            String::new()
        };
        Err(BmcError(format!(
            "{what} failed ({}){hint}: {}",
            out.status,
            shown(&said.join("; "))
        )))
    }

    pub async fn status(&self) -> Result<PowerState, BmcError> {
        let out = self.ipmitool(&["chassis", "power", "status"]).await?;
        let t = out.trim();
        Ok(match t.strip_prefix("Chassis Power is ") {
            Some("on") => PowerState::On,
            Some("off") => PowerState::Off,
            _ => PowerState::Other(shown(t)),
        })
    }

    pub async fn power(&self, action: PowerAction) -> Result<String, BmcError> {
        let verb = match action {
            PowerAction::On => "on",
            PowerAction::Off => "off",
            PowerAction::Cycle => "reset",
            PowerAction::Status => return Ok(String::new()),
        };
        let out = self.ipmitool(&["chassis", "power", verb]).await?;
        Ok(format!("chassis power {verb}: {}", shown(out.trim())))
    }

    pub async fn boot_network_once(&self) -> Result<String, BmcError> {
        let args: &[&str] = if self.efi {
            &["chassis", "bootdev", "pxe", "options=efiboot"]
        } else {
            &["chassis", "bootdev", "pxe"]
        };
        let out = self.ipmitool(args).await?;
        Ok(format!("{}: {}", args[1..].join(" "), shown(out.trim())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipmi_addresses_are_checked_and_written_in_one_form() {
        for (given, want) in [
            ("10.0.0.9", "10.0.0.9:623"),
            ("bmc-1.example:6230", "bmc-1.example:6230"),
            ("[fd00::9]:6230", "[fd00::9]:6230"),
            ("fd00::9", "[fd00::9]:623"),
            ("[fd00::9]", "[fd00::9]:623"),
        ] {
            assert_eq!(check_address(given).unwrap(), want, "{given}");
            let i = Ipmi::new(given, "admin", Secret::new("pw"), false).unwrap();
            assert_eq!(i.describe(), want);
        }
        for (bad, why) in [
            ("-H127.0.0.1", "not a name"),
            ("bmc:0", "port"),
            ("bmc:99999", "port"),
            ("bmc host", "not a name"),
            ("bmc;reboot", "not a name"),
            ("", "not a name"),
            ("[fd00::9]x", "not HOST"),
        ] {
            let e = check_address(bad).unwrap_err().0;
            assert!(e.contains(why), "{bad}: {e}");
        }
    }
}
