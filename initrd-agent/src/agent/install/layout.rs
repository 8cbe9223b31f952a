//! layout: the disk's partitions after the install, planned from the image's table and the
//! firmware, and written by [`super::gpt`] or [`super::mbr`].
//!
//! The image's one partition keeps its start and its number and grows to fill the disk, minus
//! what byol adds at the end, 1 MiB-aligned, in this order:
//! - UEFI: an EFI System Partition, FAT32, [`ESP_SIZE`] (260 MiB: FAT32 needs 65525 clusters,
//!   which 4096-byte sectors only reach from 260 MiB);
//! - legacy BIOS on GPT: a [`BIOS_BOOT_SIZE`] (1 MiB) BIOS boot partition for GRUB's core
//!   (on MBR GRUB uses the gap before the first partition);
//! - always, last: `config-2`, [`CONFIG_SIZE`] (64 MiB), FAT, the ConfigDrive.

use std::path::Path;

use super::Firmware;
use super::blockdev::KernelPart;
use super::image::{ImageInfo, TableKind};
use crate::disk::{Access, Disk};

pub const ALIGN: u64 = 1 << 20;
pub const ESP_SIZE: u64 = 260 << 20;
pub const BIOS_BOOT_SIZE: u64 = 1 << 20;
pub const CONFIG_SIZE: u64 = 64 << 20;

/// What a partition is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The image's partition.
    Root,
    Esp,
    BiosBoot,
    ConfigDrive,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Esp => "ESP",
            Role::BiosBoot => "BIOS boot",
            Role::ConfigDrive => "config-2",
        }
    }
    /// The GPT partition name.
    pub fn gpt_name(self) -> &'static str {
        match self {
            Role::Root => "root",
            Role::Esp => "EFI System Partition",
            Role::BiosBoot => "BIOS boot partition",
            Role::ConfigDrive => "config-2",
        }
    }
}

/// One partition of the layout (sectors of the disk's logical size).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Part {
    pub number: u32,
    pub role: Role,
    pub start: u64,
    pub sectors: u64,
}

/// The disk's partitions after the fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub table: TableKind,
    pub sector_size: u32,
    pub disk_bytes: u64,
    /// In the disk's order: the root first, config-2 last.
    pub parts: Vec<Part>,
    /// The root partition's size in the image, sectors.
    pub root_was: u64,
    pub warnings: Vec<String>,
}

impl Layout {
    /// The partitions as the kernel must know them (bytes).
    pub fn kernel_parts(&self) -> Vec<KernelPart> {
        let ss = u64::from(self.sector_size);
        self.parts
            .iter()
            .map(|p| KernelPart {
                number: p.number,
                start: p.start * ss,
                len: p.sectors * ss,
            })
            .collect()
    }

    pub fn part(&self, role: Role) -> Option<&Part> {
        self.parts.iter().find(|p| p.role == role)
    }

    /// `GPT on 20.0 GiB: /dev/vda1 root 19.7 GiB (grown from 2.0 GiB), /dev/vda2 ESP 260.0 MiB,
    /// /dev/vda3 config-2 64.0 MiB; backup GPT header at the disk's end`.
    pub fn summary(&self, devices: &[std::path::PathBuf], disk: String) -> String {
        let ss = u64::from(self.sector_size);
        let parts: Vec<String> = self
            .parts
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let dev = devices
                    .get(i)
                    .map(|d| d.display().to_string())
                    .unwrap_or_else(|| format!("#{}", p.number));
                let mut s = format!("{dev} {} {}", p.role.as_str(), super::human(p.sectors * ss));
                if p.role == Role::Root {
                    s.push_str(&format!(
                        " (grown from {})",
                        super::human(self.root_was * ss)
                    ));
                }
                if p.role == Role::Esp {
                    s.push_str(" FAT32");
                }
                s
            })
            .collect();
        let mut s = format!("{} on {disk}: {}", self.table.as_str(), parts.join(", "));
        if self.table == TableKind::Gpt {
            s.push_str("; backup GPT header at the disk's end");
        }
        for w in &self.warnings {
            s.push_str(&format!("; warning: {w}"));
        }
        s
    }
}

/// What byol adds at the end, in order, with sizes in bytes.
pub fn extras(table: TableKind, firmware: Firmware) -> Vec<(Role, u64)> {
    let mut v = Vec::new();
    match (firmware, table) {
        (Firmware::Uefi, _) => v.push((Role::Esp, ESP_SIZE)),
        (Firmware::Bios, TableKind::Gpt) => v.push((Role::BiosBoot, BIOS_BOOT_SIZE)),
        (Firmware::Bios, TableKind::Mbr) => {}
    }
    v.push((Role::ConfigDrive, CONFIG_SIZE));
    v
}

/// An added partition's role, first sector and length in sectors.
pub type Placed = (Role, u64, u64);

/// Places `extras` at the end of the usable sectors (`usable_end` is one past the last) and
/// grows the root up to them. Ok: the root's new last sector and the extras' (role, start,
/// sectors). `limit` says where and why the usable space ends, for the error ("the disk ends
/// at 200.0 MiB").
pub fn plan_end(
    img: &ImageInfo,
    usable_end: u64,
    extras: &[(Role, u64)],
    disk: &str,
    limit: &str,
) -> Result<(u64, Vec<Placed>), String> {
    let ss = u64::from(img.sector_size);
    let align = (ALIGN / ss).max(1);
    let total: u64 = extras.iter().map(|(_, b)| b / ss).sum();
    let end = usable_end / align * align;
    let too_small = || {
        let names: Vec<String> = extras
            .iter()
            .map(|(r, b)| format!("{} {}", r.as_str(), super::human(*b)))
            .collect();
        format!(
            "{disk} is too small: the image's partition ends at {} and byol adds {} after it \
             ({}), but {limit}",
            super::human((img.end + 1) * ss),
            super::human(total * ss),
            names.join(", ")
        )
    };
    let first = end.checked_sub(total).ok_or_else(too_small)?;
    if first < img.end + 1 {
        return Err(too_small());
    }
    let mut placed = Vec::new();
    let mut at = first;
    for (role, bytes) in extras {
        let n = bytes / ss;
        placed.push((*role, at, n));
        at += n;
    }
    Ok((first - 1, placed))
}

/// Fixes the table of the image written on `disk` for `firmware`, syncs. Ok: the new layout.
pub fn fix_disk(disk: &Path, img: &ImageInfo, firmware: Firmware) -> Result<Layout, String> {
    let d = Disk::open(disk, Access::ReadWrite).map_err(|e| e.to_string())?;
    let size = d.size().map_err(|e| e.to_string())?;
    let layout = match img.table {
        TableKind::Gpt => super::gpt::apply(&d, size, img, firmware)?,
        TableKind::Mbr => super::mbr::apply(&d, size, img, firmware)?,
    };
    d.sync("the new partition table")
        .map_err(|e| e.to_string())?;
    Ok(layout)
}
