//! target: the disk the image is written to (a block device, or a regular file for tests and
//! the host CLI), and the rule that no half-written disk is ever bootable.
//!
//! How a [`Target`] keeps that rule:
//! - Nothing is written by [`Target::open`] or [`Target::check_fits`]: an image refused before
//!   writing leaves the disk exactly as it was.
//! - The *start wipe*, done by [`Target::prepare`] (or by the first write, if the engine writes
//!   without preparing, e.g. a compressed raw image of unknown size): a block device gets its
//!   first MiB zeroed, and its last MiB too (an old backup GPT, md or ZFS labels: nothing of an
//!   old system must be found by a firmware or by the new system), then fsync; a regular file is
//!   truncated to nothing (and set to the virtual size by `prepare`). From then on the disk is
//!   unbootable until [`Target::commit`].
//! - The image's bytes in `[0, HEAD_LEN)` (partition table, boot code) are kept in a 1 MiB
//!   buffer in memory and go to the disk only in [`Target::commit`], after the body is synced,
//!   and the engine commits only after the checksum is verified.
//! - [`Target::invalidate`] (failure path) zeroes the first MiB again and syncs. Dropping a
//!   `Target` without either leaves the disk as the start wipe left it: unbootable.
//!
//! Writes are plain buffered `pwrite`s (no O_DIRECT, no alignment needed). Zeroes are made
//! for sure: `BLKZEROOUT` on a block device (which the kernel completes by writing zeroes where
//! the device cannot zero by itself; discard is never trusted to zero), a punched hole in a file.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::Path;

use byol_spec::SpecError;
use nix::errno::Errno;
use nix::fcntl::{FallocateFlags, fallocate};
use nix::libc;

/// The head of the disk held back until [`Target::commit`]: 1 MiB, which holds the MBR or the
/// GPT header and entries, and the boot code before the first partition.
pub const HEAD_LEN: u64 = 1 << 20;

/// How much of the end of a block device the start wipe zeroes.
pub const TAIL_WIPE_LEN: u64 = 1 << 20;

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
    // BLKZEROOUT = _IO(0x12, 127), taking a uint64_t[2] {start, length} in bytes.
    nix::ioctl_write_ptr_bad!(blkzeroout, nix::request_code_none!(0x12, 127), [u64; 2]);
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

/// An error of the disk: names the disk and the operation, with the system's reason.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
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

impl TargetError {
    /// The system error behind this one, if any.
    pub fn io_error(&self) -> Option<&io::Error> {
        match self {
            TargetError::Open { cause, .. }
            | TargetError::Query { cause, .. }
            | TargetError::Write { cause, .. }
            | TargetError::Read { cause, .. }
            | TargetError::Zero { cause, .. }
            | TargetError::SetLen { cause, .. }
            | TargetError::Sync { cause, .. } => Some(cause),
            TargetError::NotADisk { .. } | TargetError::PastEnd { .. } => None,
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

/// The disk being written.
pub struct Target {
    file: File,
    name: String,
    block: bool,
    /// Block device size in bytes.
    size: Option<u64>,
    sector: u32,
    /// The image's first [`HEAD_LEN`] bytes, held back until `commit`.
    head: Vec<u8>,
    /// The start wipe is done.
    started: bool,
    /// Regular file: the length set by `prepare` (commit cuts anything written past it).
    prepared_len: Option<u64>,
    /// One past the highest byte written or zeroed so far.
    end: u64,
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Target")
            .field("name", &self.name)
            .field("block", &self.block)
            .field("size", &self.size)
            .field("sector", &self.sector)
            .field("started", &self.started)
            .field("prepared_len", &self.prepared_len)
            .field("end", &self.end)
            .finish_non_exhaustive()
    }
}

impl Target {
    /// Opens a block device (read-write, exclusively: `O_EXCL` fails if it is mounted or in
    /// use) or a regular file (created if missing when `create` is true). Writes nothing.
    pub fn open(path: &Path, create: bool) -> Result<Target, TargetError> {
        let name = path.display().to_string();
        let open_err = |cause: io::Error| TargetError::Open {
            name: name.clone(),
            cause,
        };
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
            return Err(TargetError::NotADisk {
                name,
                kind: kind_name(&m.file_type()),
            });
        }

        let mut opts = OpenOptions::new();
        opts.read(true).write(true);
        if block {
            opts.custom_flags(libc::O_EXCL);
        } else {
            opts.create(create);
        }
        // The kernel holds a disk exclusively for a moment while it scans its partitions (at
        // discovery, after BLKRRPART): EBUSY is retried for up to 2 s before it is an error.
        let mut waited = 0;
        let file = loop {
            match opts.open(path) {
                Err(e) if block && e.raw_os_error() == Some(libc::EBUSY) && waited < 20 => {
                    waited += 1;
                    std::thread::sleep(std::time::Duration::from_millis(100));
                }
                r => break r.map_err(open_err)?,
            }
        };
        // What was opened, not what was looked at: the path may have changed in between.
        let ft = file.metadata().map_err(open_err)?.file_type();
        if ft.is_block_device() != block || !(ft.is_block_device() || ft.is_file()) {
            return Err(TargetError::NotADisk {
                name,
                kind: kind_name(&ft),
            });
        }

        let (size, sector) = if block {
            let size = block_size(&file).map_err(|cause| TargetError::Query {
                name: name.clone(),
                what: "read the size (BLKGETSIZE64)",
                cause,
            })?;
            let sector = logical_sector(&file).map_err(|cause| TargetError::Query {
                name: name.clone(),
                what: "read the logical sector size (BLKSSZGET)",
                cause,
            })?;
            (Some(size), sector)
        } else {
            (None, 512)
        };

        Ok(Target {
            file,
            name,
            block,
            size,
            sector,
            head: vec![0; HEAD_LEN as usize],
            started: false,
            prepared_len: None,
            end: 0,
        })
    }

    /// "/dev/sda", or the file's path, as given to [`Target::open`].
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A block device's size in bytes; `None` for a regular file (it grows).
    /// The image's first MiB as held back until [`Target::commit`] (shorter for a smaller image).
    pub fn held_head(&self) -> &[u8] {
        &self.head
    }

    /// The open target.
    pub fn file(&self) -> &File {
        &self.file
    }

    pub fn size(&self) -> Option<u64> {
        self.size
    }

    /// A block device's logical sector size (BLKSSZGET); 512 for a file.
    pub fn logical_sector_size(&self) -> u32 {
        self.sector
    }

    pub fn is_block_device(&self) -> bool {
        self.block
    }

    /// Checks, before anything is written, that an image of `virtual_size` bytes fits:
    /// ``image provided has a size of `n` bytes which is larger than `/dev/…` of `m` bytes``.
    /// A regular file always fits.
    pub fn check_fits(&self, virtual_size: u64) -> Result<(), SpecError> {
        match self.size {
            Some(disk) if virtual_size > disk => Err(SpecError::ImageTooLarge {
                image: virtual_size,
                device: self.name.clone(),
                disk,
            }),
            _ => Ok(()),
        }
    }

    /// Does the start wipe (see the module comment) and, for a regular file, sets its length
    /// to `virtual_size` (sparse: it reads as zeroes until written); [`Target::commit`] then
    /// cuts the file back to that length, dropping anything parked past the image's end.
    /// `virtual_size` 0 means "not known yet" (a compressed raw image): the file is emptied,
    /// grows with the writes and is not cut. Call it after [`Target::check_fits`] and before
    /// the first write.
    pub fn prepare(&mut self, virtual_size: u64) -> Result<(), TargetError> {
        self.start()?;
        if !self.block && virtual_size > 0 {
            self.set_len(virtual_size)?;
            self.prepared_len = Some(virtual_size);
            self.end = self.end.max(virtual_size);
        }
        Ok(())
    }

    /// Writes `data` at guest offset `offset`. The part in `[0, HEAD_LEN)` goes to the head
    /// buffer, the rest to the disk. The first write does the start wipe if `prepare` did not.
    pub fn write_at(&mut self, offset: u64, data: &[u8]) -> Result<(), TargetError> {
        if data.is_empty() {
            return Ok(());
        }
        let len = data.len() as u64;
        let end = self.check_range("write", offset, len)?;
        self.start()?;
        let mut rest = data;
        let mut at = offset;
        if at < HEAD_LEN {
            let head_end = end.min(HEAD_LEN);
            let n = (head_end - at) as usize;
            self.head[at as usize..head_end as usize].copy_from_slice(&rest[..n]);
            rest = &rest[n..];
            at = head_end;
        }
        if !rest.is_empty() {
            self.file
                .write_all_at(rest, at)
                .map_err(|cause| TargetError::Write {
                    name: self.name.clone(),
                    offset: at,
                    len: rest.len() as u64,
                    cause,
                })?;
        }
        self.end = self.end.max(end);
        Ok(())
    }

    /// Makes `[offset, offset + len)` read as zeroes: `BLKZEROOUT` on a block device (bytes
    /// written one by one only at the unaligned edges, or if the ioctl is refused), a punched
    /// hole in a file (zeroes written if the filesystem cannot punch). The head part is zeroed
    /// in the head buffer.
    pub fn write_zeroes(&mut self, offset: u64, len: u64) -> Result<(), TargetError> {
        if len == 0 {
            return Ok(());
        }
        let end = self.check_range("zero", offset, len)?;
        self.start()?;
        let mut at = offset;
        if at < HEAD_LEN {
            let head_end = end.min(HEAD_LEN);
            self.head[at as usize..head_end as usize].fill(0);
            at = head_end;
        }
        if at < end {
            if self.block {
                self.zero_block(at, end)?;
            } else {
                self.zero_file(at, end)?;
            }
        }
        self.end = self.end.max(end);
        Ok(())
    }

    /// Reads back `buf.len()` bytes at guest offset `offset`: the head from the buffer, the
    /// rest from the disk (e.g. data the engine parked past the image's end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        let len = buf.len() as u64;
        let end = self.check_range("read", offset, len)?;
        let mut at = offset;
        let mut rest = buf;
        if at < HEAD_LEN && !rest.is_empty() {
            let head_end = end.min(HEAD_LEN);
            let n = (head_end - at) as usize;
            rest[..n].copy_from_slice(&self.head[at as usize..head_end as usize]);
            rest = &mut rest[n..];
            at = head_end;
        }
        if !rest.is_empty() {
            let n = rest.len() as u64;
            self.file
                .read_exact_at(rest, at)
                .map_err(|cause| TargetError::Read {
                    name: self.name.clone(),
                    offset: at,
                    len: n,
                    cause,
                })?;
        }
        Ok(())
    }

    /// Success path, once the checksum is verified: syncs the body, writes the head (and, for a
    /// prepared file, cuts anything written past the virtual size), syncs again.
    pub fn commit(mut self) -> Result<(), TargetError> {
        self.start()?;
        if let Some(len) = self.prepared_len {
            let current = self.file_len()?;
            if current > len {
                self.set_len(len)?;
            }
            self.end = len;
        }
        self.sync("the image body, before its first MiB")?;
        let head_len = self.head_len_on_disk()?;
        let head = &self.head[..head_len as usize];
        self.file
            .write_all_at(head, 0)
            .map_err(|cause| TargetError::Write {
                name: self.name.clone(),
                offset: 0,
                len: head_len,
                cause,
            })?;
        self.sync("the first MiB: partition table and boot code")
    }

    /// Failure path: zeroes the first MiB on the disk so that nothing boots a half image, then
    /// syncs. If nothing was ever written (not even the start wipe), the disk is left as it
    /// was. Tries the sync even if the zeroing failed; returns the first error. Never panics.
    pub fn invalidate(self) -> Result<(), TargetError> {
        if !self.started {
            return Ok(());
        }
        let zeroed = self.head_len_on_disk().and_then(|len| {
            self.file
                .write_all_at(&ZEROES[..len as usize], 0)
                .map_err(|cause| TargetError::Zero {
                    name: self.name.clone(),
                    offset: 0,
                    len,
                    cause,
                })
        });
        let synced = self.sync("after zeroing the first MiB");
        zeroed.and(synced)
    }

    // --- internals ---

    /// Checks `[offset, offset + len)` against the end of a block device (and u64 overflow);
    /// returns the end.
    fn check_range(&self, op: &'static str, offset: u64, len: u64) -> Result<u64, TargetError> {
        let past = |size: u64| TargetError::PastEnd {
            name: self.name.clone(),
            op,
            offset,
            len,
            size,
        };
        let end = offset.checked_add(len).ok_or_else(|| past(u64::MAX))?;
        match self.size {
            Some(size) if end > size => Err(past(size)),
            _ => Ok(end),
        }
    }

    /// The start wipe, once.
    fn start(&mut self) -> Result<(), TargetError> {
        if self.started {
            return Ok(());
        }
        if let Some(size) = self.size {
            self.zero_block(0, HEAD_LEN.min(size))?;
            if size > HEAD_LEN {
                let tail = size.saturating_sub(TAIL_WIPE_LEN).max(HEAD_LEN);
                self.zero_block(tail, size)?;
            }
        } else {
            self.set_len(0)?;
        }
        self.sync("after zeroing the old first MiB")?;
        self.started = true;
        Ok(())
    }

    /// How many head bytes exist on the disk: the whole head on a block device (or the
    /// device, if smaller), up to the file's length for a file.
    fn head_len_on_disk(&self) -> Result<u64, TargetError> {
        Ok(match self.size {
            Some(size) => HEAD_LEN.min(size),
            None => HEAD_LEN.min(self.file_len()?.max(self.end)),
        })
    }

    fn file_len(&self) -> Result<u64, TargetError> {
        self.file
            .metadata()
            .map(|m| m.len())
            .map_err(|cause| TargetError::Query {
                name: self.name.clone(),
                what: "read the length",
                cause,
            })
    }

    fn set_len(&self, len: u64) -> Result<(), TargetError> {
        self.file.set_len(len).map_err(|cause| TargetError::SetLen {
            name: self.name.clone(),
            len,
            cause,
        })
    }

    fn sync(&self, when: &'static str) -> Result<(), TargetError> {
        self.file.sync_all().map_err(|cause| TargetError::Sync {
            name: self.name.clone(),
            when,
            cause,
        })
    }

    /// Zeroes `[start, end)` of the block device: BLKZEROOUT over the sector-aligned middle,
    /// written zeroes at the edges (or everywhere, if the ioctl is refused).
    fn zero_block(&self, start: u64, end: u64) -> Result<(), TargetError> {
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
                return Err(TargetError::Zero {
                    name: self.name.clone(),
                    offset: mid_start,
                    len: mid_end - mid_start,
                    cause: errno_io(e),
                });
            }
        }
        self.write_zero_bytes(mid_end, end)
    }

    /// Zeroes `[start, end)` of a regular file: a punched hole over what the file holds, a
    /// longer file past its end (which reads as zeroes).
    fn zero_file(&self, start: u64, end: u64) -> Result<(), TargetError> {
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
                    return Err(TargetError::Zero {
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
    fn write_zero_bytes(&self, start: u64, end: u64) -> Result<(), TargetError> {
        let mut at = start;
        while at < end {
            let n = (end - at).min(ZEROES.len() as u64);
            self.file
                .write_all_at(&ZEROES[..n as usize], at)
                .map_err(|cause| TargetError::Zero {
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
