//! gpt: the image's GPT fixed for the disk, with gptman (which keeps entry numbers, GUIDs and
//! names as they are): the backup header and entries moved to the disk's last sectors (the
//! image's old backup, now inside the disk, zeroed), the image's partition grown, the ESP or
//! BIOS boot partition and `config-2` added in the first free entries, and the protective MBR
//! made to cover the whole disk, its boot code kept, marked active on legacy BIOS (some BIOSes
//! boot only a disk with an active partition) and not on UEFI (some UEFI firmwares then refuse
//! the GPT).

use std::io::{Seek, SeekFrom};

use gptman::{GPT, GPTPartitionEntry};

use super::Firmware;
use super::ids::{parse_guid, random_guid};
use super::image::{ImageInfo, TableKind};
use super::layout::{self, Layout, Part, Role};
use crate::disk::Disk;

pub const ESP_TYPE: &str = "C12A7328-F81F-11D2-BA4B-00A0C93EC93B";
pub const BIOS_BOOT_TYPE: &str = "21686148-6449-6E6F-744E-656564454649";
/// config-2 is FAT: Microsoft basic data, as for any FAT data partition.
pub const BASIC_DATA_TYPE: &str = "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7";

fn type_of(role: Role) -> [u8; 16] {
    let s = match role {
        Role::Esp => ESP_TYPE,
        Role::BiosBoot => BIOS_BOOT_TYPE,
        Role::ConfigDrive | Role::Root => BASIC_DATA_TYPE,
    };
    parse_guid(s).unwrap_or([0; 16])
}

/// Rewrites the GPT of the disk `f` (`size` bytes) for `firmware`.
pub fn apply(
    disk: &Disk,
    size: u64,
    img: &ImageInfo,
    firmware: Firmware,
) -> Result<Layout, String> {
    let ss = u64::from(img.sector_size);
    let name = disk.name();
    let mut r = disk.file();
    super::image::check_gpt_header(&mut r, ss)?;
    let mut gpt =
        GPT::read_from(&mut r, ss).map_err(|e| format!("the image's GPT cannot be read: {e}"))?;
    let old_backup = gpt.header.backup_lba;
    let old_last_usable = gpt.header.last_usable_lba;
    gpt.header
        .update_from(&mut r, ss)
        .map_err(|e| format!("cannot size the GPT for {name}: {e}"))?;
    let usable_end = gpt.header.last_usable_lba + 1;
    let extras = layout::extras(TableKind::Gpt, firmware);
    let limit = format!("the disk ends at {}", super::human(size));
    let (root_end, placed) = layout::plan_end(img, usable_end, &extras, name, &limit)?;

    let root_was = img.end + 1 - img.start;
    gpt[img.number].ending_lba = root_end;
    let free: Vec<u32> = gpt
        .iter()
        .filter(|(n, p)| p.is_unused() && *n != img.number)
        .map(|(n, _)| n)
        .collect();
    if free.len() < placed.len() {
        return Err(format!(
            "the image's GPT has no free entry for the {} partitions byol adds",
            placed.len()
        ));
    }
    let mut parts = vec![Part {
        number: img.number,
        role: Role::Root,
        start: img.start,
        sectors: root_end + 1 - img.start,
    }];
    for ((role, start, sectors), n) in placed.into_iter().zip(free) {
        gpt[n] = GPTPartitionEntry {
            partition_type_guid: type_of(role),
            unique_partition_guid: random_guid(),
            starting_lba: start,
            ending_lba: start + sectors - 1,
            attribute_bits: 0,
            partition_name: role.gpt_name().into(),
        };
        parts.push(Part {
            number: n,
            role,
            start,
            sectors,
        });
    }

    // The image's own backup header and entries, now in the middle of the disk.
    if old_backup < gpt.header.backup_lba && old_last_usable < old_backup {
        let from = (old_last_usable + 1) * ss;
        disk.zero(from, (old_backup + 1) * ss)
            .map_err(|e| format!("cannot zero the image's old backup GPT: {e}"))?;
    }
    gpt.write_into(&mut r)
        .map_err(|e| format!("cannot write the GPT to {name}: {e}"))?;
    r.seek(SeekFrom::Start(0))
        .map_err(|e| format!("cannot seek {name}: {e}"))?;
    let pmbr = if firmware == Firmware::Bios {
        GPT::write_bootable_protective_mbr_into(&mut r, ss)
    } else {
        GPT::write_protective_mbr_into(&mut r, ss)
    };
    pmbr.map_err(|e| format!("cannot write the protective MBR to {name}: {e}"))?;
    Ok(Layout {
        table: TableKind::Gpt,
        sector_size: img.sector_size,
        disk_bytes: size,
        parts,
        root_was,
        warnings: Vec::new(),
    })
}
