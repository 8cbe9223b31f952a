//! mbr: the image's MBR fixed for the disk, with mbrman: within its 4 primary slots and the
//! 2^32 sectors it can address (2 TiB with 512-byte sectors; past that the rest of the disk
//! stays unused, with a warning), the image's partition grown, the ESP (type 0xEF, UEFI) and
//! `config-2` (type 0x0E, FAT16 LBA) added in free slots. Boot code, disk signature (the
//! `PARTUUID`s of the image's fstab) and the root's slot are kept; on legacy BIOS the root is
//! marked active when nothing is, for the BIOSes that boot only a disk with an active partition.

use crate::disk::Disk;

use mbrman::{CHS, MBR, MBRPartitionEntry};

use super::Firmware;
use super::image::{ImageInfo, TableKind};
use super::layout::{self, Layout, Part, Role};

pub const ESP_TYPE: u8 = 0xef;
pub const FAT16_LBA_TYPE: u8 = 0x0e;
/// An MBR addresses at most this many sectors.
pub const MAX_SECTORS: u64 = 1 << 32;

/// The CHS address of `lba` for the usual 255 heads × 63 sectors geometry, or the "use LBA"
/// maximum past what CHS can say.
pub fn chs(lba: u64) -> CHS {
    const HEADS: u64 = 255;
    const SECTORS: u64 = 63;
    let cylinder = lba / (HEADS * SECTORS);
    if cylinder > 1023 {
        return CHS {
            cylinder: 1023,
            head: 254,
            sector: 63,
        };
    }
    CHS {
        cylinder: cylinder as u16,
        head: ((lba / SECTORS) % HEADS) as u8,
        sector: (lba % SECTORS + 1) as u8,
    }
}

/// Rewrites the MBR of the disk `f` (`size` bytes) for `firmware`.
pub fn apply(
    disk: &Disk,
    size: u64,
    img: &ImageInfo,
    firmware: Firmware,
) -> Result<Layout, String> {
    let ss = u64::from(img.sector_size);
    let name = disk.name();
    let mut r = disk.file();
    let mut mbr = MBR::read_from(&mut r, img.sector_size)
        .map_err(|e| format!("the image's MBR cannot be read: {e}"))?;
    let disk_sectors = size / ss;
    let mut warnings = Vec::new();
    let limit = if disk_sectors > MAX_SECTORS {
        warnings.push(format!(
            "an MBR addresses only the first {} of this {} disk: the rest stays unused (a GPT \
             image would use it all)",
            super::human(MAX_SECTORS * ss),
            super::human(size)
        ));
        format!(
            "an MBR can only address the first {} of the disk",
            super::human(MAX_SECTORS * ss)
        )
    } else {
        format!("the disk ends at {}", super::human(size))
    };
    let usable_end = disk_sectors.min(MAX_SECTORS);
    let extras = layout::extras(TableKind::Mbr, firmware);
    let (root_end, placed) = layout::plan_end(img, usable_end, &extras, name, &limit)?;

    let slot = img.number as usize;
    let any_active = mbr.header.iter().any(|(_, p)| p.is_used() && p.is_active());
    let root = mbr
        .header
        .get_mut(slot)
        .filter(|p| p.is_used())
        .ok_or_else(|| format!("the image's MBR slot {slot} is empty"))?;
    root.sectors = u32::try_from(root_end + 1 - img.start)
        .map_err(|_| format!("the root partition does not fit in an MBR entry on {name}"))?;
    root.last_chs = chs(root_end);
    if firmware == Firmware::Bios && !any_active {
        root.boot = 0x80;
    }
    let free: Vec<usize> = mbr
        .header
        .iter()
        .filter(|(i, p)| p.is_unused() && *i != slot)
        .map(|(i, _)| i)
        .collect();
    if free.len() < placed.len() {
        return Err(format!(
            "the image's MBR has {} free slot{} but byol needs {} for {}",
            free.len(),
            if free.len() == 1 { "" } else { "s" },
            placed.len(),
            placed
                .iter()
                .map(|(r, _, _)| r.as_str())
                .collect::<Vec<_>>()
                .join(" and ")
        ));
    }
    let mut parts = vec![Part {
        number: img.number,
        role: Role::Root,
        start: img.start,
        sectors: root_end + 1 - img.start,
    }];
    for ((role, start, sectors), i) in placed.into_iter().zip(free) {
        let entry = MBRPartitionEntry {
            boot: 0,
            first_chs: chs(start),
            sys: if role == Role::Esp {
                ESP_TYPE
            } else {
                FAT16_LBA_TYPE
            },
            last_chs: chs(start + sectors - 1),
            starting_lba: u32::try_from(start).map_err(|_| "MBR start past 2^32".to_string())?,
            sectors: u32::try_from(sectors).map_err(|_| "MBR size past 2^32".to_string())?,
        };
        if let Some(e) = mbr.header.get_mut(i) {
            *e = entry;
        }
        parts.push(Part {
            number: i as u32,
            role,
            start,
            sectors,
        });
    }
    mbr.write_into(&mut r)
        .map_err(|e| format!("cannot write the MBR to {name}: {e}"))?;
    Ok(Layout {
        table: TableKind::Mbr,
        sector_size: img.sector_size,
        disk_bytes: size,
        parts,
        root_was: img.end + 1 - img.start,
        warnings,
    })
}
