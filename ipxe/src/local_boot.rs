//! The script for a machine with nothing to install (or an unknown MAC): boot the local disk.
//!
//! ```text
//! #!ipxe                                         #!ipxe
//! # byol local boot script: …                    # byol local boot script: …
//! echo byol: REASON                              echo byol: REASON
//! echo byol: booting the local disk              echo byol: leaving iPXE so the firmware …
//! sanboot --no-describe --drive 0x80 || goto …   exit 1
//! :byol_no_local_disk                            (UEFI)
//! echo byol: could not boot the local disk, …
//! exit 1
//! (legacy BIOS)
//! ```
//!
//! `REASON` is free text and goes through [`echo_safe`](crate::echo_safe): it can never expand a
//! setting, add a command or end the line.

use crate::platform::Platform;
use crate::safe::echo_safe;
use crate::script::{Script, push_local_boot};

/// Boots the local disk. BIOS: `sanboot --no-describe --drive 0x80` (and back to the firmware if
/// that fails); UEFI: `exit 1`, so the firmware boots its next boot entry. `reason` (e.g. "no
/// install pending for 52:54:00:12:34:56") is shown with `echo` after [`echo_safe`].
pub fn local_boot_script(platform: Platform, reason: &str) -> String {
    let reason = echo_safe(reason);
    let reason = if reason.is_empty() {
        "no reason given".to_string()
    } else {
        reason
    };
    let mut s = Script::new("byol local boot script: nothing to install, boot the local disk");
    s.cmd(&format!("echo byol: {reason}"));
    push_local_boot(&mut s, platform);
    s.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::{check, local_boot_shape};

    #[test]
    fn bios_exact() {
        let got = local_boot_script(Platform::Pcbios, "no install pending for 52:54:00:12:34:56");
        let want = "#!ipxe
# byol local boot script: nothing to install, boot the local disk
echo byol: no install pending for 52:54:00:12:34:56
echo byol: booting the local disk
sanboot --no-describe --drive 0x80 || goto byol_no_local_disk
:byol_no_local_disk
echo byol: could not boot the local disk, handing back to the firmware
exit 1
";
        assert_eq!(got, want);
        let parsed = check(&got, &[], &local_boot_shape(Platform::Pcbios)).unwrap();
        assert_eq!(
            parsed[3].words,
            ["sanboot", "--no-describe", "--drive", "0x80"]
        );
    }

    #[test]
    fn efi_exact() {
        let got = local_boot_script(Platform::Efi, "no install pending for 52:54:00:12:34:56");
        let want = "#!ipxe
# byol local boot script: nothing to install, boot the local disk
echo byol: no install pending for 52:54:00:12:34:56
echo byol: leaving iPXE so the firmware boots its next boot entry
exit 1
";
        assert_eq!(got, want);
        let parsed = check(&got, &[], &local_boot_shape(Platform::Efi)).unwrap();
        assert_eq!(parsed[3].words, ["exit", "1"]);
    }

    #[test]
    fn empty_reason() {
        for p in [Platform::Pcbios, Platform::Efi] {
            let got = local_boot_script(p, " \t ");
            assert!(got.contains("\necho byol: _\n"), "{got}");
            let got = local_boot_script(p, "");
            assert!(got.contains("\necho byol: no reason given\n"), "{got}");
            check(&got, &[], &local_boot_shape(p)).unwrap();
        }
    }
}
