//! Which modules an initramfs carries: the `qemu` profile (virtual hardware, the filesystems
//! images use) and the `datacenter` one (that plus the usual server HBAs and NICs). Each
//! module's whole closure comes along; built-in ones are skipped.

use std::fmt;
use std::str::FromStr;

use crate::Error;

/// A named module set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Profile {
    /// QEMU/KVM guests: virtio, e1000(e), AHCI, IDE, NVMe; filesystems.
    #[default]
    Qemu,
    /// Bare metal servers: `qemu` plus SAS/RAID HBAs and 1–100 GbE NICs (and their firmware).
    Datacenter,
}

/// Disks, NICs and filesystems of QEMU machines (pc and q35), and what the agent mounts;
/// [`byol_spec::modules::SOFTWARE_RAID`] comes with it.
const QEMU: &[&str] = &[
    // virtual hardware
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    "virtio_scsi",
    // seeds the kernel's RNG at once (without it, under TCG, https waits minutes for entropy)
    "virtio_rng",
    "e1000",
    "e1000e",
    "ahci",
    "ata_piix",
    "nvme",
    "sd_mod",
    // what images are made of, and the ESP / config-2 partitions
    "ext4",
    "xfs",
    "btrfs",
    "vfat",
    "nls_cp437",
    "nls_ascii",
    "nls_utf8",
    "nls_iso8859_1",
    "efivarfs",
    "af_packet",
    "crc32c_generic",
];

/// May be absent from a kernel (neither module nor built in) without failing the build.
const OPTIONAL: &[&str] = &[
    "ata_piix",
    "crc32c_intel",
    "hpsa",
    "nls_utf8",
    "virtio_rng",
    "linear",
];

/// Server hardware on top of `QEMU`.
const DATACENTER: &[&str] = &[
    // SAS / RAID HBAs
    "mpt3sas",
    "megaraid_sas",
    "smartpqi",
    "hpsa",
    // NICs
    "igb",
    "ixgbe",
    "i40e",
    "ice",
    "mlx4_en",
    "mlx5_core",
    "bnxt_en",
    "tg3",
    "qede",
    "crc32c_intel",
];

impl Profile {
    pub const ALL: [Profile; 2] = [Profile::Qemu, Profile::Datacenter];

    /// The requested modules (before closure).
    pub fn modules(self) -> Vec<&'static str> {
        // software RAID in both (byol_spec::modules::SOFTWARE_RAID)
        let base = QEMU.iter().chain(byol_spec::modules::SOFTWARE_RAID);
        match self {
            Profile::Qemu => base.copied().collect(),
            Profile::Datacenter => base.chain(DATACENTER).copied().collect(),
        }
    }

    /// Whether a missing `name` is only a warning.
    pub fn is_optional(name: &str) -> bool {
        OPTIONAL.contains(&name)
    }

    pub fn name(self) -> &'static str {
        match self {
            Profile::Qemu => "qemu",
            Profile::Datacenter => "datacenter",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Profile {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "qemu" => Ok(Profile::Qemu),
            "datacenter" => Ok(Profile::Datacenter),
            _ => Err(Error::Usage(format!(
                "unknown profile {s:?} (want qemu or datacenter)"
            ))),
        }
    }
}
