//! image: what the written image holds, read from the disk with the image's first MiB as the
//! engine holds it before its commit ([`DiskView`]), so that a refused image never reaches the
//! disk's first MiB; and read back once committed, for the `image` event:
//! its partition table (GPT, found at LBA 1 for 512- or 4096-byte sectors, else MBR), the
//! logical sector size it was made for against the disk's, exactly one partition, and the
//! filesystem in it (ext4, xfs or btrfs, by their superblock magic). A filesystem with no
//! partition table is named as such, not misread as an MBR. Errors name what was found.

use std::path::Path;

use crate::disk::{Access, Disk, DiskView, ViewReader};

use super::ids::format_guid;

/// The partition table of the image.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TableKind {
    Gpt,
    Mbr,
}

impl TableKind {
    pub fn as_str(self) -> &'static str {
        match self {
            TableKind::Gpt => "GPT",
            TableKind::Mbr => "MBR",
        }
    }
}

/// A root filesystem byol mounts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsKind {
    /// ext2, ext3 or ext4 (mounted as ext4).
    Ext4,
    Xfs,
    Btrfs,
}

impl FsKind {
    /// The name for mount(2).
    pub fn as_str(self) -> &'static str {
        match self {
            FsKind::Ext4 => "ext4",
            FsKind::Xfs => "xfs",
            FsKind::Btrfs => "btrfs",
        }
    }
}

/// What the image holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub table: TableKind,
    /// The logical sector size the table is laid out for (= the disk's).
    pub sector_size: u32,
    /// The partition's number (GPT entry, or MBR slot 1-4).
    pub number: u32,
    /// First and last sector (inclusive).
    pub start: u64,
    pub end: u64,
    /// Its type: `Linux filesystem`, `0x83 Linux`.
    pub type_name: String,
    pub fs: FsKind,
}

impl ImageInfo {
    /// `GPT, 512-byte sectors, one partition: 1 Linux filesystem, ext4, 2.0 GiB`.
    pub fn summary(&self) -> String {
        format!(
            "{}, {}-byte sectors, one partition: {} {}, {}, {}",
            self.table.as_str(),
            self.sector_size,
            self.number,
            self.type_name,
            self.fs.as_str(),
            super::human((self.end + 1 - self.start) * u64::from(self.sector_size))
        )
    }
}

/// Reads what the image on `disk` holds. Ok: the image and the disk's size in bytes.
pub fn inspect_disk(disk: &Path) -> Result<(ImageInfo, u64), String> {
    let d = Disk::open(disk, Access::Read).map_err(|e| e.to_string())?;
    let size = d.size().map_err(|e| e.to_string())?;
    Ok((inspect(&d)?, size))
}

/// What to read at the start of the disk and of a partition.
const HEAD: usize = 128 << 10;

/// [`inspect_disk`] on a disk as it reads (the engine's target before its commit, or a disk).
pub fn inspect(v: &dyn DiskView) -> Result<ImageInfo, String> {
    let name = v.name();
    let size = v
        .size()
        .map_err(|e| format!("cannot read the size of {name}: {e}"))?;
    let sector = v.logical_sector();
    let mut head = vec![0u8; HEAD];
    let n = v
        .read_upto(&mut head, 0)
        .map_err(|e| format!("cannot read {name}: {e}"))?;
    head.truncate(n);
    let gpt_at: Vec<u32> = [512u32, 4096]
        .into_iter()
        .filter(|s| head.get(*s as usize..*s as usize + 8) == Some(b"EFI PART"))
        .collect();
    if let Some(&img_sector) = gpt_at.iter().find(|s| **s == sector).or(gpt_at.first()) {
        if img_sector != sector {
            return Err(format!(
                "the image's GPT is laid out for {img_sector}-byte sectors (its header is at \
                 byte {img_sector}) but {name} has {sector}-byte logical sectors: neither the \
                 firmware nor the kernel would find its partitions; use an image built for \
                 {sector}-byte sectors"
            ));
        }
        return inspect_gpt(v, name, size, sector);
    }
    match mbr_entries(&head) {
        Some(entries) if !entries.is_empty() && mbr_sane(&entries, size / u64::from(sector)) => {
            inspect_mbr(v, name, size, sector, &entries)
        }
        mbr => {
            if let Some(fs) = detect_fs(&head) {
                return Err(format!(
                    "the image has no partition table: it is a bare {fs} filesystem; byol needs \
                     a disk image whose partition table (MBR or GPT) holds one partition with \
                     the root filesystem"
                ));
            }
            if let Some(e) = mbr
                && e.is_empty()
            {
                return Err(
                    "the image's MBR has no partition: it must hold exactly one, with the root \
                     filesystem"
                        .into(),
                );
            }
            let first: Vec<String> = head.iter().take(16).map(|b| format!("{b:02x}")).collect();
            Err(format!(
                "the image has no partition table: no GPT header, no valid MBR and no known \
                 filesystem at its start (first bytes: {})",
                first.join(" ")
            ))
        }
    }
}

/// One used MBR slot.
#[derive(Debug, Clone, Copy)]
struct MbrEntry {
    slot: u32,
    boot: u8,
    sys: u8,
    start: u64,
    sectors: u64,
}

/// The used slots of an MBR, or None without the boot signature.
fn mbr_entries(head: &[u8]) -> Option<Vec<MbrEntry>> {
    if head.len() < 512 || head[510] != 0x55 || head[511] != 0xaa {
        return None;
    }
    let mut v = Vec::new();
    for slot in 0..4u32 {
        let e = &head[446 + 16 * slot as usize..446 + 16 * (slot as usize + 1)];
        let sys = e[4];
        let start = u64::from(u32::from_le_bytes([e[8], e[9], e[10], e[11]]));
        let sectors = u64::from(u32::from_le_bytes([e[12], e[13], e[14], e[15]]));
        if sys == 0 || sectors == 0 {
            continue;
        }
        v.push(MbrEntry {
            slot: slot + 1,
            boot: e[0],
            sys,
            start,
            sectors,
        });
    }
    Some(v)
}

/// Whether the slots look like a partition table rather than boot code: boot flags 0 or 0x80,
/// partitions after sector 0 (a protective 0xee entry always is).
fn mbr_sane(entries: &[MbrEntry], _disk_sectors: u64) -> bool {
    entries
        .iter()
        .all(|e| (e.boot == 0 || e.boot == 0x80) && e.start >= 1)
}

fn mbr_type_name(sys: u8) -> String {
    let name = match sys {
        0x83 => "Linux",
        0x82 => "Linux swap",
        0x8e => "Linux LVM",
        0xfd => "Linux RAID",
        0xef => "EFI System",
        0xee => "GPT protective",
        0x05 | 0x0f | 0x85 => "extended",
        0x0b | 0x0c => "FAT32",
        0x06 | 0x0e => "FAT16",
        0x07 => "NTFS/exFAT",
        _ => "",
    };
    if name.is_empty() {
        format!("0x{sys:02x}")
    } else {
        format!("0x{sys:02x} {name}")
    }
}

/// Names of the usual GPT partition types.
pub fn gpt_type_name(g: &[u8; 16]) -> String {
    let s = format_guid(g);
    let name = match s.as_str() {
        "0FC63DAF-8483-4772-8E79-3D69D8477DE4" => "Linux filesystem",
        "4F68BCE3-E8CD-4DB1-96E7-FBCAF984B709" => "Linux root (x86-64)",
        "B921B045-1DF0-41C3-AF44-4C6F280D3FAE" => "Linux root (ARM64)",
        "BC13C2FF-59E6-4262-A352-B275FD6F7172" => "Linux extended boot",
        "0657FD6D-A4AB-43C4-84E5-0933C84B4F4F" => "Linux swap",
        "E6D6D379-F507-44C2-A23C-238F2A3DF928" => "Linux LVM",
        "A19D880F-05FC-4D3B-A006-743F0F84911E" => "Linux RAID",
        "C12A7328-F81F-11D2-BA4B-00A0C93EC93B" => "EFI System",
        "21686148-6449-6E6F-744E-656564454649" => "BIOS boot",
        "EBD0A0A2-B9E5-4433-87C0-68B6B72699C7" => "Microsoft basic data",
        _ => return s,
    };
    name.to_string()
}

/// The most partition entries byol reads (128 is what every tool writes; 4096 entries are
/// 512 KiB of table).
pub const MAX_GPT_ENTRIES: u32 = 4096;

/// Where a GPT's partition entries may end at the latest: 8 EiB, past any disk and within
/// what a seek can reach.
const MAX_GPT_END: u64 = i64::MAX as u64;

/// Checks the primary GPT header at LBA 1, and its entries, before any library reads the
/// table: a hostile image can announce 2^32 entries (gptman would allocate them), entries of
/// another size than 128 bytes (gptman asserts on them, which would end PID 1) or entries at
/// an LBA whose byte offset overflows. And the primary must be whole (revision 1.0, 92 bytes,
/// both CRC32s right): gptman reads the backup header at the disk's last LBA when the primary
/// is damaged, and that one is not checked here — so a damaged primary is refused instead.
/// Ok when gptman can be given it.
pub fn check_gpt_header<R: std::io::Read + std::io::Seek>(
    r: &mut R,
    sector: u64,
) -> Result<(), String> {
    let mut h = [0u8; 92];
    r.seek(std::io::SeekFrom::Start(sector))
        .and_then(|_| r.read_exact(&mut h))
        .map_err(|e| format!("the image's GPT header cannot be read: {e}"))?;
    if &h[..8] != b"EFI PART" {
        return Err("the image's primary GPT header is missing or damaged (no `EFI PART` signature at LBA 1)".into());
    }
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let header_size = u32_at(12);
    if header_size < 92 || u64::from(header_size) > sector {
        return Err(format!(
            "the image's GPT header says it is {header_size} bytes long: it must be 92 to {sector}"
        ));
    }
    let entry_size = u32_at(84);
    if entry_size != 128 {
        return Err(format!(
            "the image's GPT has {entry_size}-byte partition entries: byol reads only the \
             128-byte entries every partitioning tool writes"
        ));
    }
    let entries = u32_at(80);
    if entries == 0 || entries > MAX_GPT_ENTRIES {
        return Err(format!(
            "the image's GPT announces {entries} partition entries: byol reads 1 to \
             {MAX_GPT_ENTRIES} (tools write 128)"
        ));
    }
    // gptman seeks to `lba * sector` unchecked: an LBA whose byte offset overflows would wrap
    // (found by `cargo xtask fuzz`); the entries follow the header, inside any real disk
    let lba = u64::from_le_bytes(h[72..80].try_into().unwrap_or_default());
    let in_reach = lba
        .checked_mul(sector)
        .and_then(|o| o.checked_add(u64::from(entries) * 128))
        .is_some_and(|end| end <= MAX_GPT_END);
    if lba < 2 || !in_reach {
        return Err(format!(
            "the image's GPT says its partition entries start at LBA {lba}: they follow the \
             header (LBA 2 on every tool's table); the table is damaged"
        ));
    }
    let damaged = |what: &str| {
        format!(
            "the image's primary GPT header is damaged ({what}): byol does not fall back to the \
             backup header; repair the image's table (sgdisk -v, then gdisk's recovery menu)"
        )
    };
    if h[8..12] != [0, 0, 1, 0] || header_size != 92 {
        return Err(damaged("not a revision 1.0 header of 92 bytes"));
    }
    let crc = |bytes: &[u8]| {
        let mut c = flate2::Crc::new();
        c.update(bytes);
        c.sum()
    };
    let mut zeroed = h;
    zeroed[16..20].fill(0);
    if crc(&zeroed) != u32_at(16) {
        return Err(damaged("its CRC32 does not match"));
    }
    let mut table = vec![0u8; entries as usize * 128];
    r.seek(std::io::SeekFrom::Start(lba * sector))
        .and_then(|_| r.read_exact(&mut table))
        .map_err(|e| format!("the image's GPT partition entries cannot be read: {e}"))?;
    if crc(&table) != u32_at(88) {
        return Err(damaged("the CRC32 of its partition entries does not match"));
    }
    Ok(())
}

fn inspect_gpt(v: &dyn DiskView, name: &str, size: u64, sector: u32) -> Result<ImageInfo, String> {
    let mut r = ViewReader::new(v);
    check_gpt_header(&mut r, u64::from(sector))?;
    let gpt = gptman::GPT::read_from(&mut r, u64::from(sector))
        .map_err(|e| format!("the image's GPT cannot be read: {e}"))?;
    if !gpt.header.is_primary() {
        return Err("the image's primary GPT header is damaged".into());
    }
    let used: Vec<(u32, &gptman::GPTPartitionEntry)> =
        gpt.iter().filter(|(_, p)| p.is_used()).collect();
    let ss = u64::from(sector);
    if used.len() != 1 {
        let list: Vec<String> = used
            .iter()
            .map(|(n, p)| {
                format!(
                    "{n}: {}, {}",
                    gpt_type_name(&p.partition_type_guid),
                    super::human((p.ending_lba + 1).saturating_sub(p.starting_lba) * ss)
                )
            })
            .collect();
        return Err(one_partition_error("GPT", &list));
    }
    let (number, p) = used[0];
    check_bounds(p.starting_lba, p.ending_lba, size / ss, name)?;
    let fs = partition_fs(v, p.starting_lba * ss, number)?;
    Ok(ImageInfo {
        table: TableKind::Gpt,
        sector_size: sector,
        number,
        start: p.starting_lba,
        end: p.ending_lba,
        type_name: gpt_type_name(&p.partition_type_guid),
        fs,
    })
}

fn inspect_mbr(
    v: &dyn DiskView,
    name: &str,
    size: u64,
    sector: u32,
    entries: &[MbrEntry],
) -> Result<ImageInfo, String> {
    if let Some(e) = entries.iter().find(|e| e.sys == 0xee) {
        return Err(format!(
            "the image's MBR has a GPT protective partition (slot {}) but no GPT header at LBA 1 \
             (for 512- or 4096-byte sectors): its GPT is damaged",
            e.slot
        ));
    }
    if entries.len() != 1 {
        let list: Vec<String> = entries
            .iter()
            .map(|e| {
                format!(
                    "{}: {}, {}",
                    e.slot,
                    mbr_type_name(e.sys),
                    super::human(e.sectors * u64::from(sector))
                )
            })
            .collect();
        return Err(one_partition_error("MBR", &list));
    }
    let e = entries[0];
    if matches!(e.sys, 0x05 | 0x0f | 0x85) {
        return Err(format!(
            "the image's only MBR partition is an extended one (slot {}): the root filesystem \
             must be in a primary partition, the image's only one",
            e.slot
        ));
    }
    let end = e.start + e.sectors - 1;
    // An MBR does not say its sector size: the filesystem must be where the disk's sectors put it.
    let fs = match partition_fs(v, e.start * u64::from(sector), e.slot) {
        Ok(fs) => fs,
        Err(err) => {
            let other = if sector == 512 { 4096u32 } else { 512 };
            let mut probe = vec![0u8; HEAD];
            let n = v
                .read_upto(&mut probe, e.start * u64::from(other))
                .unwrap_or(0);
            if let Some(found) = detect_fs(&probe[..n]).filter(|x| root_fs(x).is_some()) {
                return Err(format!(
                    "the image's MBR partition starts at sector {}: with {name}'s {sector}-byte \
                     logical sectors that holds no filesystem, with {other}-byte sectors it holds \
                     {found}: the image is laid out for {other}-byte sectors; use an image built \
                     for {sector}-byte sectors",
                    e.start
                ));
            }
            return Err(err);
        }
    };
    check_bounds(e.start, end, size / u64::from(sector), name)?;
    Ok(ImageInfo {
        table: TableKind::Mbr,
        sector_size: sector,
        number: e.slot,
        start: e.start,
        end,
        type_name: mbr_type_name(e.sys),
        fs,
    })
}

fn one_partition_error(table: &str, found: &[String]) -> String {
    let what = if found.is_empty() {
        "none".to_string()
    } else {
        format!("{}: {}", found.len(), found.join("; "))
    };
    format!(
        "the image must hold exactly one partition, with the root filesystem (byol adds the ESP, \
         BIOS boot and config-2 partitions itself), but its {table} has {what}"
    )
}

fn check_bounds(start: u64, end: u64, disk_sectors: u64, name: &str) -> Result<(), String> {
    if start == 0 || end < start || end >= disk_sectors {
        return Err(format!(
            "the image's partition (sectors {start}-{end}) does not fit in {name} \
             ({disk_sectors} sectors)"
        ));
    }
    Ok(())
}

/// The root filesystem at `offset`, or an error naming what is there.
fn partition_fs(v: &dyn DiskView, offset: u64, number: u32) -> Result<FsKind, String> {
    let mut buf = vec![0u8; HEAD];
    let n = v
        .read_upto(&mut buf, offset)
        .map_err(|e| format!("cannot read the image's partition {number}: {e}"))?;
    let found = detect_fs(&buf[..n]);
    match found.and_then(root_fs) {
        Some(fs) => Ok(fs),
        None => Err(format!(
            "the image's partition {number} holds {}: the root filesystem must be ext4, xfs or \
             btrfs",
            found.map_or("no filesystem byol knows".to_string(), |x| format!(
                "a {x} volume"
            ))
        )),
    }
}

fn root_fs(name: &str) -> Option<FsKind> {
    match name {
        "ext4" => Some(FsKind::Ext4),
        "xfs" => Some(FsKind::Xfs),
        "btrfs" => Some(FsKind::Btrfs),
        _ => None,
    }
}

/// What the bytes at the start of a volume are, by magic: `ext4` (ext2/3/4), `xfs`, `btrfs`,
/// `vfat`, `LUKS`, `LVM2`, `swap`, `iso9660`.
pub fn detect_fs(b: &[u8]) -> Option<&'static str> {
    let at = |off: usize, magic: &[u8]| b.get(off..off + magic.len()) == Some(magic);
    // ext: magic 0xEF53 at 1024 + 56, a sane block size (log ≤ 6) and revision (≤ 1).
    if at(1080, &[0x53, 0xef]) && b.get(1048).is_some_and(|v| *v <= 6) && b[1049..1052] == [0, 0, 0]
    {
        let rev = b
            .get(1100..1104)
            .map(|r| u32::from_le_bytes([r[0], r[1], r[2], r[3]]));
        if rev.is_some_and(|r| r <= 1) {
            return Some("ext4");
        }
    }
    if at(0, b"XFSB") {
        return Some("xfs");
    }
    if at(65536 + 64, b"_BHRfS_M") {
        return Some("btrfs");
    }
    if at(0, b"LUKS\xba\xbe") {
        return Some("LUKS");
    }
    if at(512, b"LABELONE") && at(536, b"LVM2 001") {
        return Some("LVM2");
    }
    if at(4096 - 10, b"SWAPSPACE2") || at(4096 - 10, b"SWAP-SPACE") {
        return Some("swap");
    }
    if at(32769, b"CD001") {
        return Some("iso9660");
    }
    if at(510, &[0x55, 0xaa]) && (at(82, b"FAT32   ") || at(54, b"FAT16   ") || at(54, b"FAT12   "))
    {
        return Some("vfat");
    }
    None
}
