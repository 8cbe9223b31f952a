//! fat: FAT filesystems made by byol (fatfs): the ESP (FAT32) and `config-2` (FAT16), on their
//! partition devices. What was on the partition before is zeroed at both ends first, so that
//! blkid finds only the new FAT (an old ext4 or md signature next to it would make the probe
//! ambiguous and hide the label). The volume id is fstab's `UUID=ABCD-1234`.
//!
//! fatfs 0.3 writes a long-name entry before the `.` and `..` entries of every directory it
//! makes, which fsck.fat reports as damage: [`fix_dot_entries`] puts them right afterwards.

use std::fs::{File, OpenOptions};
use std::io::{Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::Path;

use fatfs::{FatType, FormatVolumeOptions};

use super::blockdev::WIPE_LEN;
use crate::disk::{Access, Disk, read_upto};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FatKind {
    Fat16,
    Fat32,
}

/// `ABCD-1234`: a FAT volume id as blkid and fstab show it.
pub fn volume_uuid(id: u32) -> String {
    format!("{:04X}-{:04X}", id >> 16, id & 0xffff)
}

/// The 11-byte volume label field: the label, padded with spaces.
pub fn label_field(label: &str) -> [u8; 11] {
    let mut l = [b' '; 11];
    for (d, s) in l.iter_mut().zip(label.bytes()) {
        *d = s;
    }
    l
}

/// Writes `files` (paths with `/`, directories made as needed, files replaced) on the FAT at
/// `dev`, then puts the directories' `.` entries right ([`fix_dot_entries`]).
pub fn write_files(dev: &Path, files: &[(&str, &[u8])]) -> Result<(), String> {
    use std::io::Write as _;
    let name = dev.display();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("cannot open {name}: {e}"))?;
    let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new())
        .map_err(|e| format!("cannot open the FAT on {name}: {e}"))?;
    {
        let root = fs.root_dir();
        for (path, data) in files {
            let (dirs, base) = path.rsplit_once('/').unwrap_or(("", path));
            let mut dir = root.clone();
            for part in dirs.split('/').filter(|p| !p.is_empty()) {
                // opens the directory when it is there already
                dir = dir
                    .create_dir(part)
                    .map_err(|e| format!("cannot make {part}/ on {name}: {e}"))?;
            }
            let mut out = dir
                .create_file(base)
                .map_err(|e| format!("cannot create {path} on {name}: {e}"))?;
            out.truncate()
                .and_then(|()| out.write_all(data))
                .and_then(|()| out.flush())
                .map_err(|e| format!("cannot write {path} on {name}: {e}"))?;
        }
    }
    fs.unmount()
        .map_err(|e| format!("cannot close the FAT on {name}: {e}"))?;
    fix_dot_entries(dev)?;
    Ok(())
}

/// The most an ESP copy holds in memory ([`read_files`]).
pub const READ_FILES_MAX: u64 = 128 << 20;

/// Every file on the FAT at `dev` (paths with `/`), for copying one ESP to another; more than
/// [`READ_FILES_MAX`] in all is an error.
pub fn read_files(dev: &Path) -> Result<Vec<(String, Vec<u8>)>, String> {
    use std::io::Read as _;
    let name = dev.display();
    let f = File::open(dev).map_err(|e| format!("cannot open {name}: {e}"))?;
    let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new())
        .map_err(|e| format!("cannot open the FAT on {name}: {e}"))?;
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut todo = vec![(String::new(), fs.root_dir())];
    while let Some((prefix, dir)) = todo.pop() {
        for e in dir.iter() {
            let e = e.map_err(|e| format!("cannot read a directory of {name}: {e}"))?;
            let n = e.file_name();
            if n == "." || n == ".." {
                continue;
            }
            let path = if prefix.is_empty() {
                n.clone()
            } else {
                format!("{prefix}/{n}")
            };
            if e.is_dir() {
                if todo.len() > 4096 {
                    return Err(format!("{name}: too many directories"));
                }
                todo.push((path, e.to_dir()));
                continue;
            }
            total += e.len();
            if total > READ_FILES_MAX {
                return Err(format!(
                    "{name} holds more than {} of files: not an ESP byol copies",
                    super::human(READ_FILES_MAX)
                ));
            }
            let mut data = Vec::with_capacity(e.len() as usize);
            e.to_file()
                .read_to_end(&mut data)
                .map_err(|e| format!("cannot read {path} on {name}: {e}"))?;
            out.push((path, data));
        }
    }
    out.sort();
    Ok(out)
}

/// Formats the device (or file) `dev` as FAT of `kind` with `label` and volume id `id`, for
/// `sector`-byte logical sectors.
pub fn format(dev: &Path, kind: FatKind, label: &str, id: u32, sector: u32) -> Result<(), String> {
    let name = dev.display();
    let disk = Disk::open(dev, Access::ReadWrite).map_err(|e| e.to_string())?;
    disk.wipe_ends(WIPE_LEN).map_err(|e| e.to_string())?;
    let size = disk.size().map_err(|e| e.to_string())?;
    let mut f = disk.file();
    let total = u32::try_from(size / u64::from(sector))
        .map_err(|_| format!("{name} is too large for FAT"))?;
    let sector16 = u16::try_from(sector).map_err(|_| format!("sector size {sector} for FAT"))?;
    let opts = FormatVolumeOptions::new()
        .fat_type(match kind {
            FatKind::Fat16 => FatType::Fat16,
            FatKind::Fat32 => FatType::Fat32,
        })
        .bytes_per_sector(sector16)
        .total_sectors(total)
        .volume_id(id)
        .volume_label(label_field(label));
    f.seek(SeekFrom::Start(0))
        .map_err(|e| format!("cannot seek {name}: {e}"))?;
    fatfs::format_volume(f, opts).map_err(|e| {
        format!(
            "cannot make a {} filesystem on {name} ({}): {e}",
            match kind {
                FatKind::Fat16 => "FAT16",
                FatKind::Fat32 => "FAT32",
            },
            super::human(size)
        )
    })?;
    f.sync_all()
        .map_err(|e| format!("cannot flush {name}: {e}"))
}

/// A directory entry's size.
const ENTRY: usize = 32;
/// The attribute byte of a long-name entry.
const LFN_ATTR: u8 = 0x0f;
const DIR_ATTR: u8 = 0x10;

/// The geometry of a FAT volume, from its boot sector.
struct Bpb {
    cluster: u64,
    fat_start: u64,
    /// FAT16: the fixed root directory region (offset, length); FAT32: None.
    root_region: Option<(u64, u64)>,
    root_cluster: u32,
    data_start: u64,
    fat32: bool,
}

impl Bpb {
    fn read(f: &File) -> Result<Bpb, String> {
        let mut b = [0u8; 512];
        read_upto(f, &mut b, 0).map_err(|e| format!("cannot read the boot sector: {e}"))?;
        let u16_at = |o: usize| u64::from(u16::from_le_bytes([b[o], b[o + 1]]));
        let u32_at = |o: usize| u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]]);
        let sector = u16_at(11);
        let cluster = u64::from(b[13]) * sector;
        let reserved = u16_at(14);
        let fats = u64::from(b[16]);
        let root_entries = u16_at(17);
        let fat16_size = u16_at(22);
        let fat32 = fat16_size == 0;
        let fat_size = if fat32 {
            u64::from(u32_at(36))
        } else {
            fat16_size
        };
        if sector < 512 || cluster == 0 || b[510] != 0x55 || b[511] != 0xaa {
            return Err("not a FAT boot sector".into());
        }
        let fat_start = reserved * sector;
        let root_start = fat_start + fats * fat_size * sector;
        let root_len = (root_entries * ENTRY as u64).div_ceil(sector) * sector;
        Ok(Bpb {
            cluster,
            fat_start,
            root_region: (!fat32).then_some((root_start, root_len)),
            root_cluster: if fat32 { u32_at(44) } else { 0 },
            data_start: root_start + root_len,
            fat32,
        })
    }

    fn cluster_offset(&self, c: u32) -> u64 {
        self.data_start + u64::from(c.saturating_sub(2)) * self.cluster
    }

    /// The next cluster of a chain, or None at its end.
    fn next(&self, f: &File, c: u32) -> Option<u32> {
        let (off, width) = if self.fat32 {
            (self.fat_start + u64::from(c) * 4, 4)
        } else {
            (self.fat_start + u64::from(c) * 2, 2)
        };
        let mut b = [0u8; 4];
        read_upto(f, &mut b[..width], off).ok()?;
        let n = if self.fat32 {
            u32::from_le_bytes(b) & 0x0fff_ffff
        } else {
            u32::from(u16::from_le_bytes([b[0], b[1]]))
        };
        let end = if self.fat32 { 0x0fff_fff8 } else { 0xfff8 };
        (n >= 2 && n < end).then_some(n)
    }

    /// The byte ranges of a directory: the root region, or its cluster chain (bounded).
    fn dir_ranges(&self, f: &File, first: Option<u32>) -> Vec<(u64, u64)> {
        match (first, self.root_region) {
            (None, Some(r)) => vec![r],
            (None, None) => self.chain(f, self.root_cluster),
            (Some(c), _) => self.chain(f, c),
        }
    }

    fn chain(&self, f: &File, first: u32) -> Vec<(u64, u64)> {
        let mut v = Vec::new();
        let mut c = Some(first);
        while let Some(x) = c.filter(|_| v.len() < 4096) {
            v.push((self.cluster_offset(x), self.cluster));
            c = self.next(f, x);
        }
        v
    }
}

/// Rewrites the start of every directory fatfs made, `[LFN] . [LFN] ..`, as `. .. <free>
/// <free>`, the layout fsck.fat and every FAT driver expect. Ok: the directories fixed.
pub fn fix_dot_entries(dev: &Path) -> Result<usize, String> {
    let name = dev.display();
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .map_err(|e| format!("cannot open {name}: {e}"))?;
    let bpb = Bpb::read(&f).map_err(|e| format!("{name}: {e}"))?;
    let mut fixed = 0;
    let mut todo: Vec<Option<u32>> = vec![None];
    let mut seen = 0;
    while let Some(dir) = todo.pop() {
        seen += 1;
        if seen > 1024 {
            break;
        }
        for (off, len) in bpb.dir_ranges(&f, dir) {
            let mut buf = vec![0u8; len as usize];
            read_upto(&f, &mut buf, off).map_err(|e| format!("cannot read {name}: {e}"))?;
            for e in buf.chunks(ENTRY) {
                if e[0] == 0 {
                    break;
                }
                let is_dot = &e[..11] == b".          " || &e[..11] == b"..         ";
                if e[0] == 0xe5 || e[11] == LFN_ATTR || e[11] & DIR_ATTR == 0 || is_dot {
                    continue;
                }
                let mut first = u32::from(u16::from_le_bytes([e[26], e[27]]));
                if bpb.fat32 {
                    first |= u32::from(u16::from_le_bytes([e[20], e[21]])) << 16;
                }
                if first >= 2 {
                    todo.push(Some(first));
                }
            }
        }
        let Some(c) = dir else { continue };
        let at = bpb.cluster_offset(c);
        let mut head = [0u8; 4 * ENTRY];
        read_upto(&f, &mut head, at).map_err(|e| format!("cannot read {name}: {e}"))?;
        let entry = |i: usize| &head[i * ENTRY..(i + 1) * ENTRY];
        if entry(0)[11] == LFN_ATTR
            && &entry(1)[..11] == b".          "
            && entry(2)[11] == LFN_ATTR
            && &entry(3)[..11] == b"..         "
        {
            let mut out = [0u8; 4 * ENTRY];
            out[..ENTRY].copy_from_slice(entry(1));
            out[ENTRY..2 * ENTRY].copy_from_slice(entry(3));
            out[2 * ENTRY..3 * ENTRY].copy_from_slice(entry(2));
            out[3 * ENTRY..].copy_from_slice(entry(0));
            out[2 * ENTRY] = 0xe5;
            out[3 * ENTRY] = 0xe5;
            f.write_all_at(&out, at)
                .map_err(|e| format!("cannot write {name}: {e}"))?;
            fixed += 1;
        }
    }
    f.sync_all()
        .map_err(|e| format!("cannot flush {name}: {e}"))?;
    Ok(fixed)
}
