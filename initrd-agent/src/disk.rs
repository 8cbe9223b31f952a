//! disk: a disk as every part of byol that touches one needs it — a block device, or a regular
//! file for tests and the host CLI. Opening (exclusively, for the image engine), its size and
//! logical sector size (ioctls; a file's length and 512), reading back, making ranges read as
//! zeroes for sure (`BLKZEROOUT`, never discard; a punched hole in a file), wiping both ends,
//! syncing. The engine's [`Target`](crate::image::target::Target), the install steps and the
//! FAT writer all use this one type.
//!
//! [`DiskView`] is the disk as it reads: a plain [`Disk`], or the engine's target with the
//! image's first MiB still held in memory; the checks before the commit and after it read
//! through it, and [`ViewReader`] gives it to libraries that want `Read + Seek` (gptman).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};
use nix::libc;

/// Zeroes to write from, where the disk cannot make them itself (in .bss: costs no memory
/// until read, and then only the kernel's zero page).
static ZEROES: [u8; 1 << 20] = [0; 1 << 20];

mod ioctl {
    use nix::libc;
    // BLKGETSIZE64 = _IOR(0x12, 114, size_t), which writes a u64 whatever size_t is.
    nix::ioctl_read_bad!(
        blkgetsize64,
        nix::request_code_read!(0x12, 114, std::mem::size_of::<libc::size_t>()),
        u64
    );
    nix::ioctl_read_bad!(blksszget, libc::BLKSSZGET, libc::c_int);
    // BLKRRPART = _IO(0x12, 95)
    nix::ioctl_none_bad!(blkrrpart, nix::request_code_none!(0x12, 95));
    // BLKZEROOUT = _IO(0x12, 127), taking a uint64_t[2] {start, length} in bytes.
    nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
}

/// An error of the disk: names the disk and the operation, with the system's reason.
#[derive(Debug, thiserror::Error)]
pub enum DiskError {
    #[error("cannot open {name}: {}{}", os_text(.cause), busy_hint(.cause))]
    Open { name: String, cause: io::Error },
    #[error(
        "{name} is neither a block device nor a regular file (it is a {kind}): give a disk such \
         as /dev/sda, or a file"
    )]
    NotADisk { name: String, kind: &'static str },
    #[error("cannot {what} of {name}: {}", os_text(.cause))]
    Query {
        name: String,
        what: &'static str,
        cause: io::Error,
    },
    #[error("cannot write {len} bytes at offset {offset} of {name}: {}", os_text(.cause))]
    Write {
        name: String,
        offset: u64,
        len: u64,
        cause: io::Error,
    },
    #[error("cannot read {len} bytes at offset {offset} of {name}: {}", os_text(.cause))]
    Read {
        name: String,
        offset: u64,
        len: u64,
        cause: io::Error,
    },
    #[error("cannot zero {len} bytes at offset {offset} of {name}: {}", os_text(.cause))]
    Zero {
        name: String,
        offset: u64,
        len: u64,
        cause: io::Error,
    },
    #[error("cannot set the length of {name} to {len} bytes: {}", os_text(.cause))]
    SetLen {
        name: String,
        len: u64,
        cause: io::Error,
    },
    #[error("cannot flush {name} to stable storage ({when}): {}", os_text(.cause))]
    Sync {
        name: String,
        when: &'static str,
        cause: io::Error,
    },
    #[error(
        "cannot {op} {len} bytes at offset {offset} of {name}: that is past its end ({size} bytes)"
    )]
    PastEnd {
        name: String,
        op: &'static str,
        offset: u64,
        len: u64,
        size: u64,
    },
}

impl DiskError {
    /// The system error behind this one, if any.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            DiskError::Open { cause, .. }
            | DiskError::Query { cause, .. }
            | DiskError::Write { cause, .. }
            | DiskError::Read { cause, .. }
            | DiskError::Zero { cause, .. }
            | DiskError::SetLen { cause, .. }
            | DiskError::Sync { cause, .. } => Some(cause),
            DiskError::NotADisk { .. } | DiskError::PastEnd { .. } => None,
        }
    }
}

/// The system's text for an error, without std's " (os error N)" suffix:
/// "Input/output error".
fn os_text(e: &io::Error) -> String {
    let text = e.to_string();
    match e.raw_os_error() {
        Some(code) => match text.strip_suffix(&format!(" (os error {code})")) {
            Some(stripped) => stripped.to_string(),
            None => text,
        },
        None => text,
    }
}

fn busy_hint(e: &io::Error) -> &'static str {
    if e.raw_os_error() == Some(libc::EBUSY) {
        " (it is mounted or in use: byol opens the disk exclusively)"
    } else {
        ""
    }
}

fn errno_io(e: Errno) -> io::Error {
    io::Error::from_raw_os_error(e as i32)
}

/// How a disk is opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// Read only.
    Read,
    /// Read and write.
    ReadWrite,
    /// Read and write, a block device with `O_EXCL` (fails if it is mounted or in use; `EBUSY`
    /// from the kernel's own partition scan is waited out for 2 s); a regular file is created
    /// when missing if `create`.
    Exclusive { create: bool },
}

/// An open disk.
pub struct Disk {
    file: File,
    name: String,
    /// A block device's size (fixed); None for a regular file (its length is read each time).
    block_size: Option<u64>,
    sector: u32,
}

impl std::fmt::Debug for Disk {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Disk")
            .field("name", &self.name)
            .field("block_size", &self.block_size)
            .field("sector", &self.sector)
            .finish_non_exhaustive()
    }
}

impl Disk {
    /// Opens `path`, a block device or a regular file (anything else is refused).
    pub fn open(path: &Path, access: Access) -> Result<Disk, DiskError> {
        let name = path.display().to_string();
        let open_err = |cause: io::Error| DiskError::Open {
            name: name.clone(),
            cause,
        };
        let create = matches!(access, Access::Exclusive { create: true });
        let meta = match std::fs::metadata(path) {
            Ok(m) => Some(m),
            Err(e) if e.kind() == io::ErrorKind::NotFound && create => None,
            Err(e) => return Err(open_err(e)),
        };
        let block = meta
            .as_ref()
            .is_some_and(|m| m.file_type().is_block_device());
        if let Some(m) = &meta
            && !block
            && !m.is_file()
        {
            return Err(DiskError::NotADisk {
                name,
                kind: kind_name(&m.file_type()),
            });
        }
        let mut opts = OpenOptions::new();
        opts.read(true).custom_flags(libc::O_CLOEXEC);
        match access {
            Access::Read => {}
            Access::ReadWrite => {
                opts.write(true);
            }
            Access::Exclusive { create } => {
                opts.write(true);
                if block {
                    opts.custom_flags(libc::O_CLOEXEC | libc::O_EXCL);
                } else {
                    opts.create(create);
                }
            }
        }
        let exclusive = block && matches!(access, Access::Exclusive { .. });
        // The kernel holds a disk exclusively for a moment while it scans its partitions (at
        // discovery, after BLKRRPART): EBUSY is retried for up to 2 s before it is an error.
        let mut waited = 0;
        let file = loop {
            match opts.open(path) {
                Err(e) if exclusive && e.raw_os_error() == Some(libc::EBUSY) && waited < 20 => {
                    waited += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                r => break r.map_err(open_err)?,
            }
        };
        // What was opened, not what was looked at: the path may have changed in between.
        let ft = file.metadata().map_err(open_err)?.file_type();
        if ft.is_block_device() != block || !(ft.is_block_device() || ft.is_file()) {
            return Err(DiskError::NotADisk {
                name,
                kind: kind_name(&ft),
            });
        }
        Disk::from_file(file, name)
    }

    /// A disk over a file already open (a block device or a regular file).
    pub fn from_file(file: File, name: String) -> Result<Disk, DiskError> {
        let query = |what, cause| DiskError::Query {
            name: name.clone(),
            what,
            cause,
        };
        let ft = file
            .metadata()
            .map_err(|c| query("read the type", c))?
            .file_type();
        let (block_size, sector) = if ft.is_block_device() {
            let size = block_size(&file).map_err(|c| query("read the size (BLKGETSIZE64)", c))?;
            let sector = logical_sector(&file)
                .map_err(|c| query("read the logical sector size (BLKSSZGET)", c))?;
            (Some(size), sector)
        } else {
            (None, 512)
        };
        Ok(Disk {
            file,
            name,
            block_size,
            sector,
        })
    }

    /// "/dev/sda", or the file's path, as given to [`Disk::open`].
    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn is_block_device(&self) -> bool {
        self.block_size.is_some()
    }

    /// A block device's size in bytes; None for a regular file (it grows).
    pub fn block_size(&self) -> Option<u64> {
        self.block_size
    }

    /// The size in bytes: a block device's, or a file's length now.
    pub fn size(&self) -> Result<u64, DiskError> {
        match self.block_size {
            Some(s) => Ok(s),
            None => self.file_len(),
        }
    }

    /// The logical sector size (BLKSSZGET); 512 for a file.
    pub fn logical_sector(&self) -> u32 {
        self.sector
    }

    /// Fills as much of `buf` as the disk has at `offset`.
    pub fn read_upto(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        read_upto(&self.file, buf, offset)
    }

    pub fn write_all_at(&self, data: &[u8], offset: u64) -> Result<(), DiskError> {
        self.file
            .write_all_at(data, offset)
            .map_err(|cause| DiskError::Write {
                name: self.name.clone(),
                offset,
                len: data.len() as u64,
                cause,
            })
    }

    pub fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> Result<(), DiskError> {
        self.file
            .read_exact_at(buf, offset)
            .map_err(|cause| DiskError::Read {
                name: self.name.clone(),
                offset,
                len: buf.len() as u64,
                cause,
            })
    }

    /// Makes `[start, end)` read as zeroes, for sure: on a block device BLKZEROOUT over the
    /// sector-aligned middle (the kernel writes zeroes where the device cannot zero by itself)
    /// and written zeroes at the edges, or everywhere if the ioctl is refused; in a regular
    /// file a punched hole over what it holds and a longer file past its end.
    pub fn zero(&self, start: u64, end: u64) -> Result<(), DiskError> {
        if start >= end {
            return Ok(());
        }
        if self.is_block_device() {
            self.zero_block(start, end)
        } else {
            self.zero_file(start, end)
        }
    }

    /// Zeroes the first and last `len` bytes (MBR, primary and backup GPT, boot code, md and
    /// filesystem labels at either end), then syncs. A regular file keeps its length.
    pub fn wipe_ends(&self, len: u64) -> Result<(), DiskError> {
        let size = self.size()?;
        let head = len.min(size);
        self.zero(0, head)?;
        let tail = size.saturating_sub(len).max(head);
        self.zero(tail, size)?;
        self.sync("after zeroing both ends")
    }

    /// Asks the kernel to re-read a block device's partition table (BLKRRPART), once; a
    /// regular file has none. `EBUSY` while a partition is in use: the caller decides.
    pub fn reread_partitions(&self) -> io::Result<()> {
        if !self.is_block_device() {
            return Ok(());
        }
        // SAFETY: BLKRRPART takes no argument; the fd is open.
        unsafe { ioctl::blkrrpart(self.file.as_raw_fd()) }
            .map(|_| ())
            .map_err(errno_io)
    }

    pub fn sync(&self, when: &'static str) -> Result<(), DiskError> {
        self.file.sync_all().map_err(|cause| DiskError::Sync {
            name: self.name.clone(),
            when,
            cause,
        })
    }

    pub fn set_len(&self, len: u64) -> Result<(), DiskError> {
        self.file.set_len(len).map_err(|cause| DiskError::SetLen {
            name: self.name.clone(),
            len,
            cause,
        })
    }

    fn file_len(&self) -> Result<u64, DiskError> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|cause| DiskError::Query {
                name: self.name.clone(),
                what: "read the length",
                cause,
            })
    }

    fn zero_block(&self, start: u64, end: u64) -> Result<(), DiskError> {
        let align = u64::from(self.sector.max(512));
        let mid_start = start.div_ceil(align).saturating_mul(align);
        let mid_end = end / align * align;
        if mid_start >= mid_end {
            return self.write_zero_bytes(start, end);
        }
        self.write_zero_bytes(start, mid_start)?;
        let range = [mid_start, mid_end - mid_start];
        // SAFETY: the fd is open for the whole call and `range` lives across it.
        match unsafe { ioctl::blkzeroout(self.file.as_raw_fd(), &range) } {
            Ok(_) => {}
            Err(Errno::EINVAL | Errno::EOPNOTSUPP | Errno::ENOTTY | Errno::ENOSYS) => {
                self.write_zero_bytes(mid_start, mid_end)?;
            }
            Err(e) => {
                return Err(DiskError::Zero {
                    name: self.name.clone(),
                    offset: mid_start,
                    len: mid_end - mid_start,
                    cause: errno_io(e),
                });
            }
        }
        self.write_zero_bytes(mid_end, end)
    }

    fn zero_file(&self, start: u64, end: u64) -> Result<(), DiskError> {
        let current = self.file_len()?;
        let punch_end = end.min(current);
        if start < punch_end {
            let punched = match (i64::try_from(start), i64::try_from(punch_end - start)) {
                (Ok(off), Ok(len)) => fallocate(
                    &self.file,
                    FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE,
                    off,
                    len,
                ),
                _ => Err(Errno::EINVAL),
            };
            match punched {
                Ok(()) => {}
                Err(Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EINVAL) => {
                    self.write_zero_bytes(start, punch_end)?;
                }
                Err(e) => {
                    return Err(DiskError::Zero {
                        name: self.name.clone(),
                        offset: start,
                        len: punch_end - start,
                        cause: errno_io(e),
                    });
                }
            }
        }
        if end > current {
            self.set_len(end)?;
        }
        Ok(())
    }

    /// Writes zeroes over `[start, end)`, a MiB at a time.
    pub fn write_zero_bytes(&self, start: u64, end: u64) -> Result<(), DiskError> {
        let mut at = start;
        while at < end {
            let n = (end - at).min(ZEROES.len() as u64);
            self.file
                .write_all_at(&ZEROES[..n as usize], at)
                .map_err(|cause| DiskError::Zero {
                    name: self.name.clone(),
                    offset: at,
                    len: n,
                    cause,
                })?;
            at += n;
        }
        Ok(())
    }
}

/// The size in bytes of the block device `f` (BLKGETSIZE64).
pub fn block_size(f: &File) -> io::Result<u64> {
    let mut size = 0u64;
    // SAFETY: the fd is open for the whole call and `size` is a valid u64 to write to.
    unsafe { ioctl::blkgetsize64(f.as_raw_fd(), &mut size) }.map_err(errno_io)?;
    Ok(size)
}

/// The logical sector size of the block device `f` (BLKSSZGET; 512 when it says less).
pub fn logical_sector(f: &File) -> io::Result<u32> {
    let mut ssz: libc::c_int = 0;
    // SAFETY: as above, with a valid c_int.
    unsafe { ioctl::blksszget(f.as_raw_fd(), &mut ssz) }.map_err(errno_io)?;
    Ok(u32::try_from(ssz).ok().filter(|s| *s >= 512).unwrap_or(512))
}

/// Fills as much of `buf` as `f` has at `offset` (short only at its end).
pub fn read_upto(f: &File, buf: &mut [u8], offset: u64) -> io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match f.read_at(&mut buf[n..], offset + n as u64) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

fn kind_name(ft: &std::fs::FileType) -> &'static str {
    if ft.is_dir() {
        "directory"
    } else if ft.is_char_device() {
        "character device"
    } else if ft.is_fifo() {
        "fifo"
    } else if ft.is_socket() {
        "socket"
    } else if ft.is_symlink() {
        "symbolic link"
    } else if ft.is_block_device() {
        "block device"
    } else if ft.is_file() {
        "regular file"
    } else {
        "special file"
    }
}

/// A disk as it reads.
pub trait DiskView {
    /// Fills as much of `buf` as the disk has at `offset` (short only at its end).
    fn read_upto(&self, buf: &mut [u8], offset: u64) -> io::Result<usize>;
    /// Its size in bytes.
    fn size(&self) -> io::Result<u64>;
    fn logical_sector(&self) -> u32;
    fn name(&self) -> &str;
}

impl DiskView for Disk {
    fn read_upto(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        Disk::read_upto(self, buf, offset)
    }
    fn size(&self) -> io::Result<u64> {
        Disk::size(self).map_err(io::Error::other)
    }
    fn logical_sector(&self) -> u32 {
        self.sector
    }
    fn name(&self) -> &str {
        &self.name
    }
}

/// A [`DiskView`] as `Read + Seek`, from its start.
pub struct ViewReader<'a> {
    view: &'a dyn DiskView,
    pos: u64,
}

impl<'a> ViewReader<'a> {
    pub fn new(view: &'a dyn DiskView) -> Self {
        ViewReader { view, pos: 0 }
    }
}

impl io::Read for ViewReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.view.read_upto(buf, self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl io::Seek for ViewReader<'_> {
    fn seek(&mut self, to: io::SeekFrom) -> io::Result<u64> {
        let base = match to {
            io::SeekFrom::Start(n) => Some(n),
            io::SeekFrom::Current(d) => self.pos.checked_add_signed(d),
            io::SeekFrom::End(d) => self.view.size()?.checked_add_signed(d),
        };
        self.pos = base
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidInput, "seek before the start"))?;
        Ok(self.pos)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read as _, Seek as _};

    fn file_disk(len: usize, byte: u8) -> (tempfile::TempDir, Disk) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("disk");
        std::fs::write(&p, vec![byte; len]).unwrap();
        let disk = Disk::open(&p, Access::ReadWrite).unwrap();
        (d, disk)
    }

    #[test]
    fn wipe_ends_zeroes_both_ends_and_keeps_the_length() {
        let (_d, disk) = file_disk(5 << 20, 0xab);
        disk.wipe_ends(1 << 20).unwrap();
        let mut all = vec![0u8; 5 << 20];
        assert_eq!(disk.read_upto(&mut all, 0).unwrap(), 5 << 20);
        assert!(all[..1 << 20].iter().all(|b| *b == 0));
        assert!(all[4 << 20..].iter().all(|b| *b == 0));
        assert!(all[1 << 20..4 << 20].iter().all(|b| *b == 0xab));
        assert_eq!(disk.size().unwrap(), 5 << 20);
    }

    #[test]
    fn wipe_ends_of_a_disk_smaller_than_the_wipe() {
        let (_d, disk) = file_disk(4096, 0xab);
        disk.wipe_ends(1 << 20).unwrap();
        let mut all = vec![1u8; 4096];
        disk.read_upto(&mut all, 0).unwrap();
        assert!(all.iter().all(|b| *b == 0));
    }

    #[test]
    fn zero_past_the_end_of_a_file_grows_it() {
        let (_d, disk) = file_disk(1000, 7);
        disk.zero(500, 3000).unwrap();
        assert_eq!(disk.size().unwrap(), 3000);
        let mut b = vec![9u8; 3000];
        disk.read_upto(&mut b, 0).unwrap();
        assert!(b[..500].iter().all(|x| *x == 7) && b[500..].iter().all(|x| *x == 0));
    }

    #[test]
    fn a_view_reads_and_seeks_like_a_file() {
        let (_d, disk) = file_disk(10, 3);
        let mut r = ViewReader::new(&disk);
        assert_eq!(r.seek(io::SeekFrom::End(-4)).unwrap(), 6);
        let mut b = Vec::new();
        r.read_to_end(&mut b).unwrap();
        assert_eq!(b, vec![3; 4]);
        assert!(r.seek(io::SeekFrom::Current(-20)).is_err());
    }

    #[test]
    fn anything_but_a_disk_or_a_file_is_refused() {
        let d = tempfile::tempdir().unwrap();
        let e = Disk::open(d.path(), Access::Read).unwrap_err();
        assert!(
            matches!(
                e,
                DiskError::NotADisk {
                    kind: "directory",
                    ..
                }
            ),
            "{e}"
        );
    }
}
