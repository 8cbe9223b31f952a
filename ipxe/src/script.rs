//! A small writer for iPXE script text (header, comment, commands, labels), and the pieces the
//! scripts share: label names and the local-disk fallback for each platform.

use crate::platform::Platform;
use crate::safe::PLATFORM;

/// Jumped to when loading something fails.
pub(crate) const LABEL_FAILED: &str = "byol_failed";
/// Jumped to when `sanboot` of the local disk fails (legacy BIOS).
pub(crate) const LABEL_NO_LOCAL_DISK: &str = "byol_no_local_disk";

/// The legacy BIOS local-disk boot: the first BIOS drive, without describing it to the OS as a SAN disk.
pub(crate) const SANBOOT_LOCAL_DISK: &str = "sanboot --no-describe --drive 0x80";

/// Leave iPXE with a failure status. Under UEFI a non-zero status makes the firmware try its next
/// boot entry (EDK2 shows its boot manager menu on success instead); under BIOS the PXE ROM hands
/// back to the BIOS, which tries its next boot device.
pub(crate) const EXIT_TO_FIRMWARE: &str = "exit 1";

/// Script text under construction. Every line ends with `\n`; nothing else is ever a line break.
pub(crate) struct Script {
    text: String,
}

impl Script {
    /// `#!ipxe` and one comment line (a constant: values never go into comments).
    pub(crate) fn new(comment: &'static str) -> Script {
        let mut s = Script {
            text: String::from("#!ipxe\n"),
        };
        s.push(&format!("# {comment}"));
        s
    }

    /// A command line, built only from constants and values the caller has already checked.
    pub(crate) fn cmd(&mut self, line: &str) {
        debug_assert!(!line.starts_with([':', '#']), "{line:?}");
        self.push(line);
    }

    pub(crate) fn label(&mut self, name: &'static str) {
        self.push(&format!(":{name}"));
    }

    pub(crate) fn finish(self) -> String {
        self.text
    }

    fn push(&mut self, line: &str) {
        debug_assert!(
            line.bytes().all(|b| (0x20..0x7f).contains(&b)) && !line.contains('\\'),
            "unsafe line {line:?}"
        );
        self.text.push_str(line);
        self.text.push('\n');
    }
}

/// Boot the local disk on a known platform: `sanboot` of drive 0x80 for BIOS (and, if that fails,
/// back to the firmware), back to the firmware for UEFI.
pub(crate) fn push_local_boot(s: &mut Script, platform: Platform) {
    match platform {
        Platform::Pcbios => push_sanboot_local_disk(s),
        Platform::Efi => {
            s.cmd("echo byol: leaving iPXE so the firmware boots its next boot entry");
            s.cmd(EXIT_TO_FIRMWARE);
        }
    }
}

/// Message, pause, then the local-disk boot for a platform known when rendering.
pub(crate) fn push_fallback(s: &mut Script, platform: Platform, secs: u32) {
    s.cmd(&format!(
        "echo byol: falling back to the local disk in {secs} seconds"
    ));
    s.cmd(&format!("sleep {secs}"));
    push_local_boot(s, platform);
}

/// Message, pause, then the local-disk boot for the platform iPXE reports at run time.
pub(crate) fn push_fallback_any_platform(s: &mut Script, secs: u32) {
    s.cmd(&format!(
        "echo byol: falling back to the local disk in {secs} seconds"
    ));
    s.cmd(&format!("sleep {secs}"));
    s.cmd(&format!("iseq {PLATFORM} efi && {EXIT_TO_FIRMWARE} ||"));
    push_sanboot_local_disk(s);
}

fn push_sanboot_local_disk(s: &mut Script) {
    s.cmd("echo byol: booting the local disk");
    s.cmd(&format!(
        "{SANBOOT_LOCAL_DISK} || goto {LABEL_NO_LOCAL_DISK}"
    ));
    s.label(LABEL_NO_LOCAL_DISK);
    s.cmd("echo byol: could not boot the local disk, handing back to the firmware");
    s.cmd(EXIT_TO_FIRMWARE);
}
