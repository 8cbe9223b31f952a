//! blockdev: the disk as the kernel sees it. Its size and logical sector size (ioctls; a
//! regular file's length and 512 for tests), partition device names (`vda2`, `nvme0n1p2`,
//! `loop0p2`), telling the kernel the new table, and the failure path's wipe.
//!
//! Telling the kernel: BLKRRPART (re-read the table), retried while the disk is busy; then each
//! partition is checked in sysfs against the layout and, where the kernel did not read it
//! (a kernel without the partition parsers, a disk still busy), declared with BLKPG (what
//! `partx`/`addpart` do). Then the device nodes devtmpfs creates are waited for (made with
//! mknod if they do not come).

use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use nix::errno::Errno;

use super::super::console::say;
use crate::disk::{Access, Disk};

/// What the failure path zeroes at each end of the disk.
pub const WIPE_LEN: u64 = 1 << 20;

mod ioctl {
    // BLKPG = _IO(0x12, 105), taking a struct blkpg_ioctl_arg.
    nix::ioctl_write_ptr_bad!(blkpg, nix::request_code_none!(0x12, 105), super::BlkpgArg);
}

/// `struct blkpg_ioctl_arg` (linux/blkpg.h).
#[repr(C)]
pub struct BlkpgArg {
    op: libc::c_int,
    flags: libc::c_int,
    datalen: libc::c_int,
    data: *mut libc::c_void,
}

/// `struct blkpg_partition`: start and length in bytes.
#[repr(C)]
struct BlkpgPartition {
    start: libc::c_longlong,
    length: libc::c_longlong,
    pno: libc::c_int,
    devname: [libc::c_char; 64],
    volname: [libc::c_char; 64],
}

const BLKPG_ADD_PARTITION: libc::c_int = 1;
const BLKPG_DEL_PARTITION: libc::c_int = 2;

/// The kernel name of a disk (`/dev/vda` → `vda`), following symlinks.
pub fn kernel_name(disk: &Path) -> String {
    let real = std::fs::canonicalize(disk).unwrap_or_else(|_| disk.to_path_buf());
    real.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// The kernel name of partition `n` of `disk` (a kernel name): `vda2`, `sda2`, `nvme0n1p2`,
/// `mmcblk0p2`, `loop0p2`.
pub fn partition_name(disk: &str, n: u32) -> String {
    if disk.ends_with(|c: char| c.is_ascii_digit()) {
        format!("{disk}p{n}")
    } else {
        format!("{disk}{n}")
    }
}

/// Whether the first MiB of `disk` reads as zeroes (or cannot be read).
pub fn head_is_zero(disk: &Path) -> bool {
    let Ok(d) = Disk::open(disk, Access::Read) else {
        return true;
    };
    let mut buf = vec![0u8; WIPE_LEN as usize];
    let n = d.read_upto(&mut buf, 0).unwrap_or(0);
    buf[..n].iter().all(|b| *b == 0)
}

/// The failure path: zeroes the first and last MiB of the disk (MBR, primary and backup GPT,
/// boot code), syncs, and asks the kernel to forget the partitions. A regular file keeps its
/// length.
pub fn wipe_ends(disk: &Path) -> Result<(), String> {
    let d = Disk::open(disk, Access::ReadWrite).map_err(|e| e.to_string())?;
    d.wipe_ends(WIPE_LEN).map_err(|e| e.to_string())?;
    let _ = d.reread_partitions();
    Ok(())
}

/// A partition the kernel must know: number, start and length in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelPart {
    pub number: u32,
    pub start: u64,
    pub len: u64,
}

/// How long the kernel and devtmpfs get.
const BUSY_WAIT: Duration = Duration::from_secs(10);
const NODE_WAIT: Duration = Duration::from_secs(10);

/// Makes the kernel know exactly `parts` on `disk` and returns their device nodes, in order.
pub fn expose(disk: &Path, parts: &[KernelPart]) -> Result<Vec<PathBuf>, String> {
    expose_in(disk, parts, Path::new("/sys"), Path::new("/dev"))
}

/// [`expose`] with the sysfs and /dev roots given.
pub fn expose_in(
    disk: &Path,
    parts: &[KernelPart],
    sysfs: &Path,
    dev: &Path,
) -> Result<Vec<PathBuf>, String> {
    let name = kernel_name(disk);
    let disk_ref = Disk::open(disk, Access::Read).map_err(|e| e.to_string())?;
    let f = disk_ref.file();
    // Re-read, retried while busy (udev or a late close may hold a partition for a moment).
    let t = Instant::now();
    let reread = loop {
        match disk_ref.reread_partitions() {
            Ok(()) => break Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) && t.elapsed() < BUSY_WAIT => {
                std::thread::sleep(Duration::from_millis(250))
            }
            Err(e) => break Err(e),
        }
    };
    if let Err(e) = reread {
        say(format!(
            "the kernel did not re-read the partition table of {} ({e}): declaring the \
             partitions one by one",
            disk.display()
        ));
    }
    let block = sysfs.join("class/block");
    // Partitions the kernel has that the layout does not: dropped.
    for n in existing_partitions(&block, &name) {
        if !parts.iter().any(|p| p.number == n) {
            let _ = blkpg(f, BLKPG_DEL_PARTITION, n, 0, 0);
        }
    }
    let mut declared = Vec::new();
    for p in parts {
        let pname = partition_name(&name, p.number);
        match sysfs_range(&block.join(&pname)) {
            Some((s, l)) if s == p.start && l == p.len => continue,
            Some(_) => {
                blkpg(f, BLKPG_DEL_PARTITION, p.number, 0, 0).map_err(|e| {
                    format!(
                        "the kernel has an old {pname} that does not match the new table and \
                         cannot drop it ({e}): is it mounted?"
                    )
                })?;
            }
            None => {}
        }
        blkpg(f, BLKPG_ADD_PARTITION, p.number, p.start, p.len).map_err(|e| {
            format!(
                "cannot declare partition {pname} ({} bytes at {}) to the kernel: {e}",
                p.len, p.start
            )
        })?;
        declared.push(pname);
    }
    if !declared.is_empty() {
        say(format!(
            "declared to the kernel with BLKPG: {}",
            declared.join(", ")
        ));
    }
    // The device nodes.
    let mut nodes = Vec::new();
    for p in parts {
        let pname = partition_name(&name, p.number);
        nodes.push(wait_node(&block.join(&pname), &dev.join(&pname))?);
    }
    Ok(nodes)
}

/// Calls BLKPG for partition `pno`.
fn blkpg(f: &File, op: libc::c_int, pno: u32, start: u64, len: u64) -> Result<(), Errno> {
    let mut part = BlkpgPartition {
        start: i64::try_from(start).map_err(|_| Errno::EINVAL)?,
        length: i64::try_from(len).map_err(|_| Errno::EINVAL)?,
        pno: i32::try_from(pno).map_err(|_| Errno::EINVAL)?,
        devname: [0; 64],
        volname: [0; 64],
    };
    let arg = BlkpgArg {
        op,
        flags: 0,
        datalen: std::mem::size_of::<BlkpgPartition>() as libc::c_int,
        data: (&mut part as *mut BlkpgPartition).cast(),
    };
    // SAFETY: `arg` points at `part`, both live across the call.
    unsafe { ioctl::blkpg(f.as_raw_fd(), &arg) }.map(|_| ())
}

/// Numbers of the partitions the kernel shows for disk `name`.
fn existing_partitions(block: &Path, name: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir(block.join(name)) else {
        return Vec::new();
    };
    rd.flatten()
        .filter(|e| e.path().join("partition").exists())
        .filter_map(|e| std::fs::read_to_string(e.path().join("partition")).ok())
        .filter_map(|s| s.trim().parse().ok())
        .collect()
}

/// A partition's start and length in bytes from sysfs (which counts 512-byte units).
fn sysfs_range(dir: &Path) -> Option<(u64, u64)> {
    let num = |f: &str| -> Option<u64> {
        std::fs::read_to_string(dir.join(f))
            .ok()?
            .trim()
            .parse()
            .ok()
    };
    Some((num("start")? * 512, num("size")? * 512))
}

/// Waits for the device node of the partition whose sysfs dir is `sys`; makes it with mknod if
/// devtmpfs does not.
fn wait_node(sys: &Path, node: &Path) -> Result<PathBuf, String> {
    let t = Instant::now();
    loop {
        let want = std::fs::read_to_string(sys.join("dev"))
            .ok()
            .and_then(|s| parse_devnum(s.trim()));
        if let Some(rdev) = want {
            if let Ok(m) = std::fs::metadata(node)
                && m.file_type().is_block_device()
                && m.rdev() == rdev
            {
                return Ok(node.to_path_buf());
            }
            if t.elapsed() >= NODE_WAIT {
                let _ = std::fs::remove_file(node);
                nix::sys::stat::mknod(
                    node,
                    nix::sys::stat::SFlag::S_IFBLK,
                    nix::sys::stat::Mode::from_bits_truncate(0o600),
                    rdev,
                )
                .map_err(|e| format!("cannot make the device node {}: {e}", node.display()))?;
                return Ok(node.to_path_buf());
            }
        } else if t.elapsed() >= NODE_WAIT {
            return Err(format!(
                "the kernel shows no {} after {} s",
                sys.file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
                NODE_WAIT.as_secs()
            ));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// `259:3` → the dev_t.
fn parse_devnum(s: &str) -> Option<u64> {
    let (ma, mi) = s.split_once(':')?;
    Some(nix::sys::stat::makedev(ma.parse().ok()?, mi.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_names() {
        assert_eq!(partition_name("vda", 2), "vda2");
        assert_eq!(partition_name("sda", 1), "sda1");
        assert_eq!(partition_name("nvme0n1", 3), "nvme0n1p3");
        assert_eq!(partition_name("mmcblk0", 1), "mmcblk0p1");
        assert_eq!(partition_name("loop7", 2), "loop7p2");
        assert_eq!(parse_devnum("259:3"), Some(nix::sys::stat::makedev(259, 3)));
        assert_eq!(parse_devnum("x"), None);
    }
}
