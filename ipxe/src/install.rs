//! The script for a machine with a pending install: load byol's kernel and initramfs and boot
//! them with a command line that tells the agent where the server is, which install it runs, its
//! one-time token, and the network settings iPXE already has.
//!
//! ```text
//! #!ipxe
//! # byol install script: boot the byol installer
//! echo byol: install ID for ${netX/mac}: loading the installer from BASE
//! kernel --name vmlinuz BASE/assets/vmlinuz byol.server=BASE byol.install=ID byol.token=TOKEN
//!     byol.mac=${netX/mac} byol.ip=${netX/ip} byol.netmask=${netX/netmask}
//!     byol.gateway=${netX/gateway} byol.dns=${dns} byol.platform=PLATFORM
//!     console=… initrd=initramfs EXTRA… || goto byol_failed          (all on one line)
//! initrd --name initramfs BASE/assets/initramfs || goto byol_failed
//! boot || goto byol_failed
//! :byol_failed
//! echo byol: could not load or start the installer from BASE
//! echo byol: falling back to the local disk in 10 seconds
//! sleep 10
//! …local-disk boot for PLATFORM (as in local_boot_script)…
//! ```
//!
//! `initrd=initramfs` is what Linux's EFI stub reads to load the initramfs iPXE holds under that
//! name (`--name`, which the 2019 iPXE of Debian and QEMU knows); under BIOS iPXE passes the
//! initramfs itself and Linux ignores the argument. A setting iPXE does not have (no gateway, no
//! DNS server from DHCP) expands to nothing: the agent gets `byol.gateway=` and must accept that.
//! Every `goto` jumps forward, so a failure can never loop.

use std::fmt;

use crate::base_url::BaseUrl;
use crate::error::{RenderError, shown};
use crate::platform::Platform;
use crate::safe::{
    DNS, EXPANSION_MAX_LEN, NETX_GATEWAY, NETX_IP, NETX_MAC, NETX_NETMASK, check_kernel_word,
    first_bad_char,
};
use crate::script::{LABEL_FAILED, Script, push_fallback};

/// Path of byol's kernel under the base URL.
pub const KERNEL_PATH: &str = "/assets/vmlinuz";
/// Path of byol's initramfs under the base URL.
pub const INITRAMFS_PATH: &str = "/assets/initramfs";

/// Name iPXE gives the kernel image.
const KERNEL_NAME: &str = "vmlinuz";
/// Name iPXE gives the initramfs image, and the `initrd=` value the EFI stub looks for.
const INITRAMFS_NAME: &str = "initramfs";

/// Linux on x86 takes at most 2048 bytes of command line including the final NUL.
pub const KERNEL_CMDLINE_MAX: usize = 2047;

const INSTALL_ID_MAX: usize = 64;
const TOKEN_MAX: usize = 256;
const CONSOLE_MAX: usize = 64;
const EXTRA_ARG_MAX: usize = 256;

/// Seconds the failure message stays on screen before the local disk is booted.
const FALLBACK_SECS: u32 = 10;

/// Everything an install script needs.
#[derive(Clone, Copy)]
pub struct InstallBoot<'a> {
    pub base: &'a BaseUrl,
    /// uuid-like: 1–64 characters of `[0-9a-f-]`.
    pub install_id: &'a str,
    /// The agent's one-time token: 1–256 hex digits.
    pub token: &'a str,
    pub platform: Platform,
    /// Kernel `console=` values, e.g. `["tty0", "ttyS0,115200n8"]`; each a safe word.
    pub console: &'a [String],
    /// Extra kernel arguments from the operator's config (e.g. `quiet`); each a safe word, not
    /// starting with `byol.` or `initrd=` (those are byol's own).
    pub extra_args: &'a [String],
}

impl fmt::Debug for InstallBoot<'_> {
    /// The token is a secret: it is never shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InstallBoot")
            .field("base", self.base)
            .field("install_id", &self.install_id)
            .field("token", &"<hidden>")
            .field("platform", &self.platform)
            .field("console", &self.console)
            .field("extra_args", &self.extra_args)
            .finish()
    }
}

/// The install script (see the module documentation). Every value is checked first; any unsafe
/// value is an error naming it and nothing is rendered.
pub fn install_script(b: &InstallBoot) -> Result<String, RenderError> {
    let base = b.base.script_text()?;
    check_install_id(b.install_id)?;
    check_token(b.token)?;
    for c in b.console {
        check_kernel_word(c, CONSOLE_MAX).map_err(|reason| RenderError::Console {
            value: shown(c),
            reason,
        })?;
    }
    for a in b.extra_args {
        check_extra_arg(a).map_err(|reason| RenderError::ExtraArg {
            value: shown(a),
            reason,
        })?;
    }

    let mut args = vec![
        format!("byol.server={base}"),
        format!("byol.install={}", b.install_id),
        format!("byol.token={}", b.token),
        format!("byol.mac={NETX_MAC}"),
        format!("byol.ip={NETX_IP}"),
        format!("byol.netmask={NETX_NETMASK}"),
        format!("byol.gateway={NETX_GATEWAY}"),
        format!("byol.dns={DNS}"),
        format!("byol.platform={}", b.platform.as_ipxe()),
    ];
    args.extend(b.console.iter().map(|c| format!("console={c}")));
    args.push(format!("initrd={INITRAMFS_NAME}"));
    args.extend(b.extra_args.iter().cloned());
    let cmdline = args.join(" ");
    let len = worst_case_cmdline_len(&cmdline);
    if len > KERNEL_CMDLINE_MAX {
        return Err(RenderError::CommandLineTooLong {
            len,
            max: KERNEL_CMDLINE_MAX,
        });
    }

    let mut s = Script::new("byol install script: boot the byol installer");
    s.cmd(&format!(
        "echo byol: install {} for {NETX_MAC}: loading the installer from {base}",
        b.install_id
    ));
    s.cmd(&format!(
        "kernel --name {KERNEL_NAME} {base}{KERNEL_PATH} {cmdline} || goto {LABEL_FAILED}"
    ));
    s.cmd(&format!(
        "initrd --name {INITRAMFS_NAME} {base}{INITRAMFS_PATH} || goto {LABEL_FAILED}"
    ));
    s.cmd(&format!("boot || goto {LABEL_FAILED}"));
    s.label(LABEL_FAILED);
    s.cmd(&format!(
        "echo byol: could not load or start the installer from {base}"
    ));
    push_fallback(&mut s, b.platform, FALLBACK_SECS);
    Ok(s.finish())
}

fn check_install_id(id: &str) -> Result<(), RenderError> {
    let refuse = |reason: String| RenderError::InstallId {
        value: shown(id),
        reason,
    };
    if id.is_empty() {
        return Err(refuse("it is empty".into()));
    }
    if id.len() > INSTALL_ID_MAX {
        return Err(refuse(format!("it is longer than {INSTALL_ID_MAX} bytes")));
    }
    first_bad_char(
        id,
        |c| c.is_ascii_digit() || matches!(c, 'a'..='f' | '-'),
        "`0-9`, `a-f` and `-`",
    )
    .map_err(refuse)
}

/// The token's characters are never named: the reason only says where the first bad one is.
fn check_token(token: &str) -> Result<(), RenderError> {
    let refuse = |reason: String| RenderError::Token { reason };
    if token.is_empty() {
        return Err(refuse("it is empty".into()));
    }
    if token.len() > TOKEN_MAX {
        return Err(refuse(format!("it is longer than {TOKEN_MAX} bytes")));
    }
    match token.char_indices().find(|(_, c)| !c.is_ascii_hexdigit()) {
        None => Ok(()),
        Some((i, _)) => Err(refuse(format!(
            "the character at byte {i} is not a hex digit"
        ))),
    }
}

fn check_extra_arg(a: &str) -> Result<(), String> {
    check_kernel_word(a, EXTRA_ARG_MAX)?;
    if a.starts_with("byol.") {
        return Err("`byol.` arguments are byol's own".into());
    }
    if a.starts_with("initrd=") {
        return Err("`initrd=` is byol's own".into());
    }
    Ok(())
}

/// Length of the command line once iPXE has replaced each `${…}` by its longest possible value,
/// plus the image name iPXE puts in front of it for an EFI kernel (`vmlinuz `).
fn worst_case_cmdline_len(cmdline: &str) -> usize {
    let mut len = KERNEL_NAME.len() + 1 + cmdline.len();
    for (expansion, max) in EXPANSION_MAX_LEN {
        let n = cmdline.matches(expansion).count();
        len = len - n * expansion.len() + n * max;
    }
    len
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{check, install_shape};

    const SETTINGS: &[&str] = &["netX/mac", "netX/ip", "netX/netmask", "netX/gateway", "dns"];
    const ID: &str = "0b7c9f2e-5d1a-4c3b-9e8f-1a2b3c4d5e6f";
    const TOKEN: &str = "6f1ed002ab5595859014ebf0951522d9";

    fn console() -> Vec<String> {
        vec!["tty0".into(), "ttyS0,115200n8".into()]
    }

    fn boot<'a>(
        base: &'a BaseUrl,
        platform: Platform,
        console: &'a [String],
        extra: &'a [String],
    ) -> InstallBoot<'a> {
        InstallBoot {
            base,
            install_id: ID,
            token: TOKEN,
            platform,
            console,
            extra_args: extra,
        }
    }

    #[test]
    fn bios_exact() {
        let base = BaseUrl::parse("http://10.0.2.2:8080").unwrap();
        let (console, extra) = (console(), vec!["quiet".to_string()]);
        let got = install_script(&boot(&base, Platform::Pcbios, &console, &extra)).unwrap();
        let want = "#!ipxe
# byol install script: boot the byol installer
echo byol: install 0b7c9f2e-5d1a-4c3b-9e8f-1a2b3c4d5e6f for ${netX/mac}: loading the installer from http://10.0.2.2:8080
kernel --name vmlinuz http://10.0.2.2:8080/assets/vmlinuz byol.server=http://10.0.2.2:8080 byol.install=0b7c9f2e-5d1a-4c3b-9e8f-1a2b3c4d5e6f byol.token=6f1ed002ab5595859014ebf0951522d9 byol.mac=${netX/mac} byol.ip=${netX/ip} byol.netmask=${netX/netmask} byol.gateway=${netX/gateway} byol.dns=${dns} byol.platform=pcbios console=tty0 console=ttyS0,115200n8 initrd=initramfs quiet || goto byol_failed
initrd --name initramfs http://10.0.2.2:8080/assets/initramfs || goto byol_failed
boot || goto byol_failed
:byol_failed
echo byol: could not load or start the installer from http://10.0.2.2:8080
echo byol: falling back to the local disk in 10 seconds
sleep 10
echo byol: booting the local disk
sanboot --no-describe --drive 0x80 || goto byol_no_local_disk
:byol_no_local_disk
echo byol: could not boot the local disk, handing back to the firmware
exit 1
";
        assert_eq!(got, want);
        let parsed = check(&got, SETTINGS, &install_shape(Platform::Pcbios)).unwrap();
        let kernel = &parsed[2];
        assert_eq!(
            kernel.words,
            [
                "kernel",
                "--name",
                "vmlinuz",
                "http://10.0.2.2:8080/assets/vmlinuz",
                "byol.server=http://10.0.2.2:8080",
                "byol.install=0b7c9f2e-5d1a-4c3b-9e8f-1a2b3c4d5e6f",
                "byol.token=6f1ed002ab5595859014ebf0951522d9",
                "byol.mac=${netX/mac}",
                "byol.ip=${netX/ip}",
                "byol.netmask=${netX/netmask}",
                "byol.gateway=${netX/gateway}",
                "byol.dns=${dns}",
                "byol.platform=pcbios",
                "console=tty0",
                "console=ttyS0,115200n8",
                "initrd=initramfs",
                "quiet",
            ]
        );
        assert_eq!(
            kernel.expansions,
            ["netX/mac", "netX/ip", "netX/netmask", "netX/gateway", "dns"]
        );
        assert_eq!(
            parsed[3].words,
            [
                "initrd",
                "--name",
                "initramfs",
                "http://10.0.2.2:8080/assets/initramfs"
            ]
        );
    }

    #[test]
    fn efi_exact() {
        let base = BaseUrl::parse("https://byol.example.com/x").unwrap();
        let got = install_script(&boot(&base, Platform::Efi, &[], &[])).unwrap();
        let want = "#!ipxe
# byol install script: boot the byol installer
echo byol: install 0b7c9f2e-5d1a-4c3b-9e8f-1a2b3c4d5e6f for ${netX/mac}: loading the installer from https://byol.example.com/x
kernel --name vmlinuz https://byol.example.com/x/assets/vmlinuz byol.server=https://byol.example.com/x byol.install=0b7c9f2e-5d1a-4c3b-9e8f-1a2b3c4d5e6f byol.token=6f1ed002ab5595859014ebf0951522d9 byol.mac=${netX/mac} byol.ip=${netX/ip} byol.netmask=${netX/netmask} byol.gateway=${netX/gateway} byol.dns=${dns} byol.platform=efi initrd=initramfs || goto byol_failed
initrd --name initramfs https://byol.example.com/x/assets/initramfs || goto byol_failed
boot || goto byol_failed
:byol_failed
echo byol: could not load or start the installer from https://byol.example.com/x
echo byol: falling back to the local disk in 10 seconds
sleep 10
echo byol: leaving iPXE so the firmware boots its next boot entry
exit 1
";
        assert_eq!(got, want);
        let parsed = check(&got, SETTINGS, &install_shape(Platform::Efi)).unwrap();
        assert_eq!(parsed[2].words.len(), 4 + 9 + 1);
        assert_eq!(
            parsed[2].words.last().map(String::as_str),
            Some("initrd=initramfs")
        );
    }

    #[test]
    fn next_server_base() {
        let base = BaseUrl::NextServer { port: 8080 };
        let console = console();
        let got = install_script(&boot(&base, Platform::Efi, &console, &[])).unwrap();
        let mut settings = SETTINGS.to_vec();
        settings.push("next-server");
        let parsed = check(&got, &settings, &install_shape(Platform::Efi)).unwrap();
        assert_eq!(
            parsed[2].words[3],
            "http://${next-server}:8080/assets/vmlinuz"
        );
        assert_eq!(parsed[2].words[4], "byol.server=http://${next-server}:8080");
        assert_eq!(
            parsed[3].words[3],
            "http://${next-server}:8080/assets/initramfs"
        );
    }

    #[test]
    fn debug_hides_the_token() {
        let base = BaseUrl::NextServer { port: 80 };
        let dbg = format!("{:?}", boot(&base, Platform::Efi, &[], &[]));
        assert!(!dbg.contains(TOKEN), "{dbg}");
        assert!(dbg.contains("<hidden>") && dbg.contains(ID), "{dbg}");
    }

    #[test]
    fn command_line_length_is_bounded() {
        let base = BaseUrl::parse("http://h").unwrap();
        let many: Vec<String> = (0..20)
            .map(|i| format!("arg{i}={}", "v".repeat(100)))
            .collect();
        let e = install_script(&boot(&base, Platform::Pcbios, &[], &many)).unwrap_err();
        assert!(
            matches!(e, RenderError::CommandLineTooLong { max: 2047, .. }),
            "{e}"
        );
        // just under the limit is fine
        let fits: Vec<String> = (0..15)
            .map(|i| format!("arg{i}={}", "v".repeat(100)))
            .collect();
        let got = install_script(&boot(&base, Platform::Pcbios, &[], &fits)).unwrap();
        check(&got, SETTINGS, &install_shape(Platform::Pcbios)).unwrap();
    }

    #[test]
    fn worst_case_counts_expansions() {
        assert_eq!(worst_case_cmdline_len("a"), 9);
        assert_eq!(worst_case_cmdline_len("byol.mac=${netX/mac}"), 8 + 9 + 17);
        assert_eq!(worst_case_cmdline_len("${dns} ${dns}"), 8 + 31);
    }
}
