//! The cluster mapping: the active L1 table and the L2 tables, decoded into guest-space
//! extents (standard, compressed, zero and unallocated clusters; subclusters with extended L2).

use std::ops::Range;

use super::error::{Qcow2Error, malformed};
use super::header::{Header, be64};
use super::{MAX_FILE_OFFSET, SECTOR_SIZE};

/// Bits 9–55 of an L1 entry or standard L2 entry: the host offset.
const OFFSET_MASK: u64 = 0x00ff_ffff_ffff_fe00;
/// L1 entry: bits 0–8 and 56–62 are reserved (bit 63 is the "copied" flag, ignored).
const L1_RESERVED: u64 = 0x7f00_0000_0000_01ff;
/// L2 entry bit 62: compressed cluster.
const L2_COMPRESSED: u64 = 1 << 62;
/// Standard cluster descriptor bit 0: reads as zeros (version 3, not with extended L2).
const L2_ZERO: u64 = 1;
/// Standard cluster descriptor: bits 1–8 and 56–61 are reserved.
const L2_STANDARD_RESERVED: u64 = 0x3f00_0000_0000_01fe;
/// Subclusters per cluster with extended L2 entries.
const SUBCLUSTERS: u64 = 32;

/// A run of the guest disk and where its content comes from.
///
/// `guest` and `len` are guest (virtual disk) byte offsets and lengths, already clipped to the
/// virtual size. `file` is a byte offset in the qcow2 file.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Extent {
    /// The guest bytes are stored as is at `file..file + len`.
    Data {
        /// Guest offset.
        guest: u64,
        /// File offset.
        file: u64,
        /// Length (same in both spaces).
        len: u64,
    },
    /// One compressed cluster: the compressed stream starts at `file`, and lies within
    /// `file..file + comp_len` (an upper bound from the descriptor's sector count; the stream
    /// may end before, and the last bytes may be past the end of the file). It decompresses to
    /// one whole cluster, of which the first `len` bytes belong to the guest (`len` is less
    /// than a cluster only for a last, partial cluster).
    Compressed {
        /// Guest offset (cluster-aligned).
        guest: u64,
        /// Guest bytes (a cluster, or less at the end of the disk).
        len: u64,
        /// File offset of the compressed stream (any byte alignment).
        file: u64,
        /// Upper bound of the compressed stream's length (at most two clusters).
        comp_len: u64,
    },
    /// Reads as zeros (zero flag or zero subcluster bits).
    Zero {
        /// Guest offset.
        guest: u64,
        /// Length.
        len: u64,
    },
    /// Not allocated. With no backing file (the only case byol accepts) it reads as zeros;
    /// kept apart from [`Extent::Zero`] for reporting.
    Unallocated {
        /// Guest offset.
        guest: u64,
        /// Length.
        len: u64,
    },
}

impl Extent {
    /// Guest offset where the extent starts.
    pub fn guest(&self) -> u64 {
        match *self {
            Extent::Data { guest, .. }
            | Extent::Compressed { guest, .. }
            | Extent::Zero { guest, .. }
            | Extent::Unallocated { guest, .. } => guest,
        }
    }

    /// Guest bytes covered.
    pub fn len(&self) -> u64 {
        match *self {
            Extent::Data { len, .. }
            | Extent::Compressed { len, .. }
            | Extent::Zero { len, .. }
            | Extent::Unallocated { len, .. } => len,
        }
    }

    /// Whether it covers no guest bytes (never true for extents from [`parse_l2`]).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Guest byte range covered.
    pub fn guest_range(&self) -> Range<u64> {
        let start = self.guest();
        start..start.saturating_add(self.len())
    }

    /// File bytes to read for it: `None` for zero and unallocated extents. For compressed
    /// extents this is the descriptor's upper bound (see [`Extent::Compressed`]).
    pub fn file_range(&self) -> Option<Range<u64>> {
        match *self {
            Extent::Data { file, len, .. } => Some(file..file.saturating_add(len)),
            Extent::Compressed { file, comp_len, .. } => Some(file..file.saturating_add(comp_len)),
            Extent::Zero { .. } | Extent::Unallocated { .. } => None,
        }
    }

    /// Whether the guest range reads as zeros without reading the file.
    pub fn reads_as_zero(&self) -> bool {
        matches!(self, Extent::Zero { .. } | Extent::Unallocated { .. })
    }

    /// `self` followed by `next`, as one extent, when they continue each other in guest space
    /// and (for data) in file space.
    pub(super) fn merged(&self, next: &Extent) -> Option<Extent> {
        match (*self, *next) {
            (
                Extent::Data { guest, file, len },
                Extent::Data {
                    guest: g2,
                    file: f2,
                    len: l2,
                },
            ) if guest.checked_add(len) == Some(g2) && file.checked_add(len) == Some(f2) => {
                Some(Extent::Data {
                    guest,
                    file,
                    len: len + l2,
                })
            }
            (Extent::Zero { guest, len }, Extent::Zero { guest: g2, len: l2 })
                if guest.checked_add(len) == Some(g2) =>
            {
                Some(Extent::Zero {
                    guest,
                    len: len + l2,
                })
            }
            (Extent::Unallocated { guest, len }, Extent::Unallocated { guest: g2, len: l2 })
                if guest.checked_add(len) == Some(g2) =>
            {
                Some(Extent::Unallocated {
                    guest,
                    len: len + l2,
                })
            }
            _ => None,
        }
    }
}

/// Appends `ext`, merging it into the last extent when they continue each other.
pub(super) fn push_merged(out: &mut Vec<Extent>, ext: Extent) {
    if let Some(last) = out.last_mut()
        && let Some(m) = last.merged(&ext)
    {
        *last = m;
        return;
    }
    out.push(ext);
}

/// Decodes the active L1 table into L2 table offsets (0 = unallocated: the L2 table and all
/// its clusters read as zeros).
///
/// `bytes` holds the table from its start, at least [`Header::l1_range`]'s length; only the
/// entries that map the virtual disk ([`Header::l1_entries`]) are returned. Entries with
/// reserved bits set or with offsets not aligned to a cluster are refused.
pub fn parse_l1(h: &Header, bytes: &[u8]) -> Result<Vec<u64>, Qcow2Error> {
    let (_, needed) = h.l1_range();
    if (bytes.len() as u64) < needed {
        return Err(Qcow2Error::Truncated {
            what: "L1 table".into(),
            needed,
            got: bytes.len() as u64,
        });
    }
    let cluster_size = h.cluster_size();
    let mut l1 = Vec::with_capacity(h.l1_entries());
    for (i, chunk) in bytes.chunks_exact(8).take(h.l1_entries()).enumerate() {
        let entry = be64(chunk, 0).ok_or_else(|| malformed("short L1 entry"))?;
        if entry & L1_RESERVED != 0 {
            return Err(malformed(format!(
                "L1 entry {i} ({entry:#018x}) has reserved bits set"
            )));
        }
        let offset = entry & OFFSET_MASK;
        if !offset.is_multiple_of(cluster_size) {
            return Err(malformed(format!(
                "L1 entry {i} points to an L2 table at {offset:#x}, not aligned to the cluster \
                 size ({cluster_size})"
            )));
        }
        l1.push(offset);
    }
    Ok(l1)
}

/// The allocated L2 tables: (L1 index, file offset), sorted by file offset, so that they can be
/// fetched in one ordered pass (or coalesced into few range requests).
pub fn l2_tables(l1: &[u64]) -> Vec<(usize, u64)> {
    let mut tables: Vec<(usize, u64)> = l1
        .iter()
        .enumerate()
        .filter(|&(_, &off)| off != 0)
        .map(|(i, &off)| (i, off))
        .collect();
    tables.sort_by_key(|&(i, off)| (off, i));
    tables
}

/// Decodes the L2 table of L1 entry `l1_index` into guest-space extents, in guest order,
/// adjacent runs of the same kind merged (data only when contiguous in the file too).
///
/// `bytes` holds the table from its start, at least [`Header::l2_table_bytes`]. Entries for
/// clusters past the virtual size are ignored; the last cluster is clipped to it.
pub fn parse_l2(h: &Header, l1_index: usize, bytes: &[u8]) -> Result<Vec<Extent>, Qcow2Error> {
    if l1_index >= h.l1_entries() {
        return Err(Qcow2Error::InvalidArgument(format!(
            "L1 index {l1_index} is past the {} entries that map the virtual disk",
            h.l1_entries()
        )));
    }
    let table_bytes = h.l2_table_bytes();
    if (bytes.len() as u64) < table_bytes {
        return Err(Qcow2Error::Truncated {
            what: format!("L2 table of L1 entry {l1_index}"),
            needed: table_bytes,
            got: bytes.len() as u64,
        });
    }
    let cluster_size = h.cluster_size();
    let size = h.virtual_size();
    let entry_size = h.l2_entry_size() as usize;
    let extended = h.extended_l2();
    // l1_index < l1_entries ≤ 2^22 and the span ≤ 2^39: no overflow.
    let base = l1_index as u64 * h.l1_entry_span();

    let mut out = Vec::new();
    for i in 0..h.l2_entries() {
        let guest = base + i * cluster_size;
        if guest >= size {
            break;
        }
        let len = cluster_size.min(size - guest);
        let at = i as usize * entry_size;
        let entry = be64(bytes, at).ok_or_else(|| malformed("short L2 entry"))?;
        let bitmap = if extended {
            be64(bytes, at + 8).ok_or_else(|| malformed("short extended L2 entry"))?
        } else {
            0
        };
        let ctx = L2Ctx {
            h,
            l1_index,
            index: i,
            guest,
            len,
        };
        if entry & L2_COMPRESSED != 0 {
            push_merged(&mut out, ctx.compressed(entry, bitmap)?);
        } else if extended {
            ctx.subclusters(entry, bitmap, &mut out)?;
        } else {
            push_merged(&mut out, ctx.standard(entry)?);
        }
    }
    Ok(out)
}

/// Where an L2 entry sits, for decoding it and for error messages.
struct L2Ctx<'a> {
    h: &'a Header,
    l1_index: usize,
    index: u64,
    guest: u64,
    len: u64,
}

impl L2Ctx<'_> {
    fn bad(&self, what: String) -> Qcow2Error {
        malformed(format!(
            "L2 entry {} of L1 entry {} (guest offset {:#x}): {what}",
            self.index, self.l1_index, self.guest
        ))
    }

    fn compressed(&self, entry: u64, bitmap: u64) -> Result<Extent, Qcow2Error> {
        if bitmap != 0 {
            return Err(self.bad(format!(
                "compressed cluster with a nonzero subcluster bitmap {bitmap:#018x}"
            )));
        }
        // x = 62 - (cluster_bits - 8): bits 0..x are the offset, x..62 the extra sector count.
        let sector_bits = self.h.cluster_bits() - 8;
        let x = 62 - sector_bits;
        let offset = entry & ((1u64 << x) - 1);
        let extra_sectors = (entry >> x) & ((1u64 << sector_bits) - 1);
        if offset >= MAX_FILE_OFFSET {
            return Err(self.bad(format!(
                "compressed cluster offset {offset:#x} is past 2^56"
            )));
        }
        if offset < self.h.cluster_size() {
            return Err(self.bad(format!(
                "compressed cluster offset {offset:#x} is inside the header cluster"
            )));
        }
        // From the offset to the end of its last sector: at most 2^(cluster_bits+1) bytes.
        let comp_len = (extra_sectors + 1) * SECTOR_SIZE - offset % SECTOR_SIZE;
        Ok(Extent::Compressed {
            guest: self.guest,
            len: self.len,
            file: offset,
            comp_len,
        })
    }

    fn host_offset(&self, entry: u64) -> Result<u64, Qcow2Error> {
        let offset = entry & OFFSET_MASK;
        let cluster_size = self.h.cluster_size();
        if !offset.is_multiple_of(cluster_size) {
            return Err(self.bad(format!(
                "cluster offset {offset:#x} is not aligned to the cluster size ({cluster_size})"
            )));
        }
        Ok(offset)
    }

    fn standard(&self, entry: u64) -> Result<Extent, Qcow2Error> {
        if entry & L2_STANDARD_RESERVED != 0 {
            return Err(self.bad(format!("reserved bits set in {entry:#018x}")));
        }
        let offset = self.host_offset(entry)?;
        let (guest, len) = (self.guest, self.len);
        if entry & L2_ZERO != 0 {
            if self.h.version() < 3 {
                return Err(self.bad("zero flag in a version 2 image".into()));
            }
            // A preallocated offset may remain: it is never read.
            return Ok(Extent::Zero { guest, len });
        }
        Ok(if offset == 0 {
            Extent::Unallocated { guest, len }
        } else {
            Extent::Data {
                guest,
                file: offset,
                len,
            }
        })
    }

    fn subclusters(
        &self,
        entry: u64,
        bitmap: u64,
        out: &mut Vec<Extent>,
    ) -> Result<(), Qcow2Error> {
        // Bit 0 is not a zero flag with extended L2 entries: reserved like bits 1–8.
        if entry & (L2_STANDARD_RESERVED | L2_ZERO) != 0 {
            return Err(self.bad(format!("reserved bits set in {entry:#018x}")));
        }
        let offset = self.host_offset(entry)?;
        let allocated = bitmap & 0xffff_ffff;
        let zero = bitmap >> 32;
        if allocated & zero != 0 {
            return Err(self.bad(format!(
                "subclusters both allocated and zero (bitmap {bitmap:#018x})"
            )));
        }
        if allocated != 0 && offset == 0 {
            return Err(self.bad("allocated subclusters but no cluster offset".into()));
        }
        let sub = self.h.cluster_size() / SUBCLUSTERS;
        for j in 0..SUBCLUSTERS {
            let sub_guest = self.guest + j * sub;
            let sub_len = sub.min((self.guest + self.len).saturating_sub(sub_guest));
            if sub_len == 0 {
                break;
            }
            let ext = if allocated & (1 << j) != 0 {
                Extent::Data {
                    guest: sub_guest,
                    file: offset + j * sub,
                    len: sub_len,
                }
            } else if zero & (1 << j) != 0 {
                Extent::Zero {
                    guest: sub_guest,
                    len: sub_len,
                }
            } else {
                Extent::Unallocated {
                    guest: sub_guest,
                    len: sub_len,
                }
            };
            push_merged(out, ext);
        }
        Ok(())
    }
}
