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
//! Writes are plain buffered `pwrite`s (no O_DIRECT, no alignment needed). The disk itself
//! (opening, sizes, zeroing for sure, syncing) is [`crate::disk::Disk`]; a `Target` is a disk
//! with the held head over it, and reads as the disk will once committed ([`DiskView`]).

use std::io;
use std::path::Path;

use byol_spec::SpecError;

use crate::disk::{Access, Disk, DiskView};

/// The head of the disk held back until [`Target::commit`]: 1 MiB, which holds the MBR or the
/// GPT header and entries, and the boot code before the first partition.
pub const HEAD_LEN: u64 = 1 << 20;

/// How much of the end of a block device the start wipe zeroes.
pub const TAIL_WIPE_LEN: u64 = 1 << 20;

/// The disk's errors (the engine names them as the target's).
pub use crate::disk::DiskError as TargetError;

/// The disk being written.
pub struct Target {
    disk: Disk,
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
            .field("disk", &self.disk)
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
        Ok(Target {
            disk: Disk::open(path, Access::Exclusive { create })?,
            head: vec![0; HEAD_LEN as usize],
            started: false,
            prepared_len: None,
            end: 0,
        })
    }

    /// "/dev/sda", or the file's path, as given to [`Target::open`].
    pub fn name(&self) -> &str {
        self.disk.name()
    }

    /// A block device's size in bytes; `None` for a regular file (it grows).
    /// The image's first MiB as held back until [`Target::commit`] (shorter for a smaller image).
    pub fn held_head(&self) -> &[u8] {
        &self.head
    }

    /// The disk under the held head.
    pub fn disk(&self) -> &Disk {
        &self.disk
    }

    pub fn size(&self) -> Option<u64> {
        self.disk.block_size()
    }

    /// A block device's logical sector size (BLKSSZGET); 512 for a file.
    pub fn logical_sector_size(&self) -> u32 {
        self.disk.logical_sector()
    }

    pub fn is_block_device(&self) -> bool {
        self.disk.is_block_device()
    }

    /// Checks, before anything is written, that an image of `virtual_size` bytes fits:
    /// ``image provided has a size of `n` bytes which is larger than `/dev/…` of `m` bytes``.
    /// A regular file always fits.
    pub fn check_fits(&self, virtual_size: u64) -> Result<(), SpecError> {
        match self.size() {
            Some(disk) if virtual_size > disk => Err(SpecError::ImageTooLarge {
                image: virtual_size,
                device: self.name().to_string(),
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
        if !self.is_block_device() && virtual_size > 0 {
            self.disk.set_len(virtual_size)?;
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
            self.disk.write_all_at(rest, at)?;
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
            self.disk.zero(at, end)?;
        }
        self.end = self.end.max(end);
        Ok(())
    }

    /// Reads back `buf.len()` bytes at guest offset `offset`: the head from the buffer, the
    /// rest from the disk (e.g. data the engine parked past the image's end).
    pub fn read_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), TargetError> {
        let len = buf.len() as u64;
        self.check_range("read", offset, len)?;
        // the one overlay of the held head: the target's DiskView
        let read = |n: usize, cause: io::Error| TargetError::Read {
            name: self.name().to_string(),
            offset: offset + n as u64,
            len: len - n as u64,
            cause,
        };
        match DiskView::read_upto(self, buf, offset) {
            Ok(n) if n == buf.len() => Ok(()),
            Ok(n) => Err(read(
                n,
                io::Error::new(io::ErrorKind::UnexpectedEof, "failed to fill whole buffer"),
            )),
            Err(e) => Err(read(0, e)),
        }
    }

    /// Success path, once the checksum is verified: syncs the body, writes the head (and, for a
    /// prepared file, cuts anything written past the virtual size), syncs again.
    pub fn commit(mut self) -> Result<(), TargetError> {
        self.start()?;
        if let Some(len) = self.prepared_len {
            if self.disk.size()? > len {
                self.disk.set_len(len)?;
            }
            self.end = len;
        }
        self.disk.sync("the image body, before its first MiB")?;
        let head_len = self.head_len_on_disk()?;
        self.disk.write_all_at(&self.head[..head_len as usize], 0)?;
        self.disk
            .sync("the first MiB: partition table and boot code")
    }

    /// Failure path: zeroes the first MiB on the disk so that nothing boots a half image, then
    /// syncs. If nothing was ever written (not even the start wipe), the disk is left as it
    /// was. Tries the sync even if the zeroing failed; returns the first error. Never panics.
    pub fn invalidate(self) -> Result<(), TargetError> {
        if !self.started {
            return Ok(());
        }
        let zeroed = self
            .head_len_on_disk()
            .and_then(|len| self.disk.write_zero_bytes(0, len));
        let synced = self.disk.sync("after zeroing the first MiB");
        zeroed.and(synced)
    }

    // --- internals ---

    /// Checks `[offset, offset + len)` against the end of a block device (and u64 overflow);
    /// returns the end.
    fn check_range(&self, op: &'static str, offset: u64, len: u64) -> Result<u64, TargetError> {
        let past = |size: u64| TargetError::PastEnd {
            name: self.name().to_string(),
            op,
            offset,
            len,
            size,
        };
        let end = offset.checked_add(len).ok_or_else(|| past(u64::MAX))?;
        match self.size() {
            Some(size) if end > size => Err(past(size)),
            _ => Ok(end),
        }
    }

    /// The start wipe, once.
    fn start(&mut self) -> Result<(), TargetError> {
        if self.started {
            return Ok(());
        }
        if let Some(size) = self.size() {
            self.disk.zero(0, HEAD_LEN.min(size))?;
            if size > HEAD_LEN {
                let tail = size.saturating_sub(TAIL_WIPE_LEN).max(HEAD_LEN);
                self.disk.zero(tail, size)?;
            }
        } else {
            self.disk.set_len(0)?;
        }
        self.disk.sync("after zeroing the old first MiB")?;
        self.started = true;
        Ok(())
    }

    /// How many head bytes exist on the disk: the whole head on a block device (or the
    /// device, if smaller), up to the file's length for a file.
    fn head_len_on_disk(&self) -> Result<u64, TargetError> {
        Ok(match self.size() {
            Some(size) => HEAD_LEN.min(size),
            None => HEAD_LEN.min(self.disk.size()?.max(self.end)),
        })
    }
}

/// The target as the disk will read once committed: the held head over what was written.
impl DiskView for Target {
    fn read_upto(&self, buf: &mut [u8], offset: u64) -> io::Result<usize> {
        let mut n = 0;
        if offset < HEAD_LEN {
            let from = &self.head[offset as usize..];
            n = from.len().min(buf.len());
            buf[..n].copy_from_slice(&from[..n]);
        }
        if n < buf.len() {
            n += self.disk.read_upto(&mut buf[n..], offset + n as u64)?;
        }
        Ok(n)
    }
    fn size(&self) -> io::Result<u64> {
        self.disk.size().map_err(io::Error::other)
    }
    fn logical_sector(&self) -> u32 {
        self.disk.logical_sector()
    }
    fn name(&self) -> &str {
        self.disk.name()
    }
}
