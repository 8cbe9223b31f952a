//! boot.ipxe: the generic entry script every machine gets first. It asks the server for this
//! machine's own script and, if that cannot be loaded, boots the local disk.
//!
//! ```text
//! #!ipxe
//! # byol entry script (boot.ipxe): ask the byol server what this machine boots
//! echo byol: asking BASE what to boot for ${netX/mac} (${platform} ${buildarch})
//! chain --replace BASE/ipxe/${netX/mac}?platform=${platform}&buildarch=${buildarch} || goto byol_failed
//! :byol_failed
//! echo byol: could not load the boot script from BASE/ipxe/${netX/mac}
//! echo byol: falling back to the local disk in 5 seconds
//! sleep 5
//! iseq ${platform} efi && exit 1 ||
//! echo byol: booting the local disk
//! sanboot --no-describe --drive 0x80 || goto byol_no_local_disk
//! :byol_no_local_disk
//! echo byol: could not boot the local disk, handing back to the firmware
//! exit 1
//! ```
//!
//! `netX` is the NIC that opened last, i.e. the one that booted. `chain --replace` makes the
//! machine's script take the place of this one, so when it ends (for example `exit 1` to leave
//! the machine to its firmware) nothing of boot.ipxe runs afterwards; only a failed fetch (HTTP
//! error, no server, not a script) reaches `byol_failed`.

use crate::base_url::BaseUrl;
use crate::error::RenderError;
use crate::safe::{BUILDARCH, NETX_MAC, PLATFORM};
use crate::script::{LABEL_FAILED, Script, push_fallback_any_platform};

/// Path of the per-machine script under the base URL: `BASE/ipxe/<mac>`.
pub const MACHINE_SCRIPT_PATH: &str = "/ipxe/";

/// Seconds the fallback message stays on screen before the local disk is booted.
const FALLBACK_SECS: u32 = 5;

const COMMENT: &str = "byol entry script (boot.ipxe): ask the byol server what this machine boots";

/// boot.ipxe: chains to `BASE/ipxe/${netX/mac}?platform=${platform}&buildarch=${buildarch}`; on
/// failure prints why, sleeps a few seconds and boots the local disk (UEFI: `exit 1` so the
/// firmware tries its next boot entry; BIOS: `sanboot` of drive 0x80).
///
/// A [`BaseUrl::Fixed`] that is not a valid base URL (one built without [`BaseUrl::parse`]) is
/// never written into the script: the script then says so and boots the local disk. Use
/// [`try_entry_script`] to get the error instead.
pub fn entry_script(base: &BaseUrl) -> String {
    try_entry_script(base).unwrap_or_else(|_| refused_base_script())
}

/// [`entry_script`], but an unusable base URL is an error.
pub fn try_entry_script(base: &BaseUrl) -> Result<String, RenderError> {
    let b = base.script_text()?;
    let mut s = Script::new(COMMENT);
    s.cmd(&format!(
        "echo byol: asking {b} what to boot for {NETX_MAC} ({PLATFORM} {BUILDARCH})"
    ));
    s.cmd(&format!(
        "chain --replace {b}{MACHINE_SCRIPT_PATH}{NETX_MAC}?platform={PLATFORM}&buildarch={BUILDARCH} || goto {LABEL_FAILED}"
    ));
    s.label(LABEL_FAILED);
    s.cmd(&format!(
        "echo byol: could not load the boot script from {b}{MACHINE_SCRIPT_PATH}{NETX_MAC}"
    ));
    push_fallback_any_platform(&mut s, FALLBACK_SECS);
    Ok(s.finish())
}

fn refused_base_script() -> String {
    let mut s = Script::new(COMMENT);
    s.cmd(
        "echo byol: the base URL of the byol server cannot be used in an iPXE script, see its log",
    );
    push_fallback_any_platform(&mut s, FALLBACK_SECS);
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{Expect, check, cmd, entry_shape, fallback_any_platform};

    const SETTINGS: &[&str] = &["netX/mac", "platform", "buildarch"];

    #[test]
    fn fixed_base_exact() {
        let base = BaseUrl::parse("http://10.0.2.2:8080").unwrap();
        let got = entry_script(&base);
        let want = "#!ipxe
# byol entry script (boot.ipxe): ask the byol server what this machine boots
echo byol: asking http://10.0.2.2:8080 what to boot for ${netX/mac} (${platform} ${buildarch})
chain --replace http://10.0.2.2:8080/ipxe/${netX/mac}?platform=${platform}&buildarch=${buildarch} || goto byol_failed
:byol_failed
echo byol: could not load the boot script from http://10.0.2.2:8080/ipxe/${netX/mac}
echo byol: falling back to the local disk in 5 seconds
sleep 5
iseq ${platform} efi && exit 1 ||
echo byol: booting the local disk
sanboot --no-describe --drive 0x80 || goto byol_no_local_disk
:byol_no_local_disk
echo byol: could not boot the local disk, handing back to the firmware
exit 1
";
        assert_eq!(got, want);
        let parsed = check(&got, SETTINGS, &entry_shape()).unwrap();
        let chain = &parsed[2];
        assert_eq!(
            chain.words,
            [
                "chain",
                "--replace",
                "http://10.0.2.2:8080/ipxe/${netX/mac}?platform=${platform}&buildarch=${buildarch}"
            ]
        );
        assert_eq!(chain.expansions, ["netX/mac", "platform", "buildarch"]);
        assert_eq!(try_entry_script(&base), Ok(got));
    }

    #[test]
    fn next_server_base() {
        let got = entry_script(&BaseUrl::NextServer { port: 8080 });
        let mut settings = SETTINGS.to_vec();
        settings.push("next-server");
        let parsed = check(&got, &settings, &entry_shape()).unwrap();
        assert_eq!(
            parsed[2].words[2],
            "http://${next-server}:8080/ipxe/${netX/mac}?platform=${platform}&buildarch=${buildarch}"
        );
        // without next-server allowed, the checker refuses it: the checker is not blind
        assert!(check(&got, SETTINGS, &entry_shape()).is_err());
    }

    #[test]
    fn https_path_and_ipv6_bases() {
        for b in ["https://byol.example.com/boot", "http://[fd00::2]:8080"] {
            let got = entry_script(&BaseUrl::parse(b).unwrap());
            let parsed = check(&got, SETTINGS, &entry_shape()).unwrap();
            assert!(parsed[2].words[2].starts_with(&format!("{b}/ipxe/")));
        }
    }

    #[test]
    fn unusable_base_never_reaches_the_script() {
        let mut shape = vec![Expect::Comment, cmd("echo", None, "")];
        shape.extend(fallback_any_platform());
        for bad in [
            BaseUrl::Fixed("http://x/ ${root-path}".into()),
            BaseUrl::Fixed("http://host\nshell".into()),
            BaseUrl::Fixed("http://x || shell".into()),
            BaseUrl::Fixed("javascript:alert(1)".into()),
            BaseUrl::NextServer { port: 0 },
        ] {
            assert!(try_entry_script(&bad).is_err(), "{bad:?}");
            let got = entry_script(&bad);
            check(&got, SETTINGS, &shape).unwrap();
            assert!(!got.contains("chain"), "{got}");
            assert!(
                !got.contains("shell") && !got.contains("root-path"),
                "{got}"
            );
        }
    }
}
