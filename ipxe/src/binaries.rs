//! Where the iPXE binaries come from: Debian's `ipxe` package, and the ones byol serves over TFTP.
//!
//! - `undionly.kpxe`: legacy BIOS PXE; drives the NIC through the PXE ROM's UNDI stack.
//! - `ipxe.efi`: UEFI, with iPXE's own NIC drivers (Debian installs it as a link to `/boot/ipxe.efi`).
//! - `snponly.efi`: UEFI, using the firmware's network stack (SNP); for NICs iPXE has no driver for.
//!
//! Debian's build is iPXE 1.0.0+git-20190125; the scripts in this crate only use commands and
//! options that build has (`chain --replace`, `kernel`/`initrd --name`, `sanboot --no-describe
//! --drive`, `iseq`, `sleep`, `exit <code>`).

use std::path::PathBuf;

/// Where Debian's `ipxe` package puts its binaries.
pub const IPXE_BINARY_DIR: &str = "/usr/lib/ipxe";

/// The files byol serves over TFTP, all from [`IPXE_BINARY_DIR`].
pub const IPXE_BINARIES: &[&str] = &["undionly.kpxe", "ipxe.efi", "snponly.efi"];

/// The path of one of [`IPXE_BINARIES`] by its exact name; `None` for any other name (so a TFTP
/// request can never reach another file).
pub fn ipxe_binary_path(name: &str) -> Option<PathBuf> {
    IPXE_BINARIES
        .iter()
        .find(|&&known| known == name)
        .map(|known| PathBuf::from(IPXE_BINARY_DIR).join(known))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_names_only() {
        assert_eq!(
            ipxe_binary_path("undionly.kpxe"),
            Some(PathBuf::from("/usr/lib/ipxe/undionly.kpxe"))
        );
        assert_eq!(
            ipxe_binary_path("snponly.efi"),
            Some(PathBuf::from("/usr/lib/ipxe/snponly.efi"))
        );
        for bad in [
            "",
            "../ipxe.efi",
            "/usr/lib/ipxe/ipxe.efi",
            "IPXE.EFI",
            "ipxe.lkrn",
            "qemu/pxe-virtio.rom",
        ] {
            assert_eq!(ipxe_binary_path(bad), None, "{bad:?}");
        }
    }
}
