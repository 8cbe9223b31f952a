//! The plan of an image: all its extents ordered by file offset, its metadata regions, and the
//! checks that make one ordered pass over the file safe.
//!
//! Built from the header, the L1 table and the extents of every allocated L2 table. An ordered
//! pass asks [`Plan::extents_in`] what to do with the file bytes it holds, writes zeros (or
//! nothing, on a zeroed target) for [`Plan::zero_extents`], and can stop at [`Plan::read_end`].

use std::fmt;
use std::ops::Range;

use super::SECTOR_SIZE;
use super::error::Qcow2Error;
use super::header::Header;
use super::tables::{Extent, push_merged};

/// What a metadata region of the file holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum MetadataKind {
    /// The first cluster: header, header extensions.
    Header,
    /// The whole active L1 table.
    L1Table,
    /// The refcount table (its refcount blocks are not located: their content is not needed).
    RefcountTable,
    /// An L2 table (one cluster).
    L2Table {
        /// Its index in the L1 table.
        l1_index: usize,
    },
}

impl fmt::Display for MetadataKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MetadataKind::Header => f.write_str("the header cluster"),
            MetadataKind::L1Table => f.write_str("the L1 table"),
            MetadataKind::RefcountTable => f.write_str("the refcount table"),
            MetadataKind::L2Table { l1_index } => write!(f, "the L2 table of L1 entry {l1_index}"),
        }
    }
}

/// A region of the file holding metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct MetadataRegion {
    /// What it holds.
    pub kind: MetadataKind,
    /// File offset.
    pub offset: u64,
    /// Length in bytes.
    pub len: u64,
}

impl MetadataRegion {
    /// File byte range.
    pub fn range(&self) -> Range<u64> {
        self.offset..self.end()
    }

    fn end(&self) -> u64 {
        self.offset.saturating_add(self.len)
    }

    fn describe(&self) -> String {
        format!(
            "{} (file bytes {:#x}..{:#x})",
            self.kind,
            self.offset,
            self.end()
        )
    }
}

fn describe(e: &Extent) -> String {
    let what = match e {
        Extent::Data { .. } => "the data",
        Extent::Compressed { .. } => "the compressed cluster",
        Extent::Zero { .. } | Extent::Unallocated { .. } => "the zero run",
    };
    match e.file_range() {
        Some(r) => format!(
            "{what} of guest offset {:#x} (file bytes {:#x}..{:#x})",
            e.guest(),
            r.start,
            r.end
        ),
        None => format!("{what} of guest offset {:#x}", e.guest()),
    }
}

fn file_start(e: &Extent) -> u64 {
    e.file_range().map_or(0, |r| r.start)
}

fn file_end(e: &Extent) -> u64 {
    e.file_range().map_or(0, |r| r.end)
}

/// Everything needed to turn the file into the guest disk in one ordered pass.
///
/// Invariants (checked by [`Plan::new`]): the extents tile the guest disk exactly; data extents
/// overlap nothing; compressed extents overlap no data or metadata and each other only within
/// one shared 512-byte sector; metadata regions do not overlap; so the extents sorted by file
/// start also have non-decreasing file ends.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    virtual_size: u64,
    cluster_size: u64,
    /// Data and compressed extents, by file offset; data merged when contiguous in both spaces.
    by_file: Vec<Extent>,
    /// Zero and unallocated extents, in guest order, merged.
    holes: Vec<Extent>,
    /// Sorted by offset.
    metadata: Vec<MetadataRegion>,
}

impl Plan {
    /// Builds the plan from the header, the L1 table ([`super::parse_l1`]) and the extents
    /// ([`super::parse_l2`]) of every allocated L2 table (those of [`super::l2_tables`]), in any
    /// order, and checks it ([`Plan::check`] without a file length).
    ///
    /// Fails if an allocated L2 table's extents are missing, if extents overlap in guest space,
    /// or if the layout is unsafe (see [`Plan::check`]).
    pub fn new(h: &Header, l1: &[u64], mut extents: Vec<Extent>) -> Result<Plan, Qcow2Error> {
        if l1.len() != h.l1_entries() {
            return Err(Qcow2Error::InvalidArgument(format!(
                "an L1 table of {} entries, the image maps its disk with {}",
                l1.len(),
                h.l1_entries()
            )));
        }
        let size = h.virtual_size();
        let cluster_size = h.cluster_size();
        let span = h.l1_entry_span();

        let mut metadata = vec![MetadataRegion {
            kind: MetadataKind::Header,
            offset: 0,
            len: cluster_size,
        }];
        let (l1_offset, l1_len) = h.l1_table_range();
        if l1_len > 0 {
            metadata.push(MetadataRegion {
                kind: MetadataKind::L1Table,
                offset: l1_offset,
                len: l1_len,
            });
        }
        let (rt_offset, rt_len) = h.refcount_table_range();
        metadata.push(MetadataRegion {
            kind: MetadataKind::RefcountTable,
            offset: rt_offset,
            len: rt_len,
        });
        for (l1_index, &offset) in l1.iter().enumerate() {
            if offset != 0 {
                metadata.push(MetadataRegion {
                    kind: MetadataKind::L2Table { l1_index },
                    offset,
                    len: cluster_size,
                });
            }
        }
        metadata.sort_unstable_by_key(|m| (m.offset, m.len));

        // Every extent must lie in the disk, under an allocated L2 table.
        for e in &extents {
            let r = e.guest_range();
            if e.is_empty() || r.end > size || r.end < r.start {
                return Err(Qcow2Error::InvalidArgument(format!(
                    "extent {e:?} is empty or outside the virtual disk of {size} bytes"
                )));
            }
            if !e.reads_as_zero() {
                // guest < size ≤ 2^60, span ≥ 2^14: the index is < l1.len().
                let l1_index = (r.start / span) as usize;
                if l1.get(l1_index).copied().unwrap_or(0) == 0 {
                    return Err(Qcow2Error::InvalidArgument(format!(
                        "extent {e:?} is under L1 entry {l1_index}, which has no L2 table"
                    )));
                }
            }
        }

        // Guest order: find the gaps (unallocated L1 entries) and collect the zero runs.
        extents.sort_unstable_by_key(|e| e.guest());
        let mut holes = Vec::new();
        let mut cursor = 0u64;
        for e in &extents {
            let start = e.guest();
            if start < cursor {
                return Err(Qcow2Error::InvalidArgument(format!(
                    "extents overlap in guest space at {start:#x} (an L2 table given twice?)"
                )));
            }
            if start > cursor {
                fill_gap(l1, span, cursor, start, &mut holes)?;
            }
            cursor = start + e.len();
            if e.reads_as_zero() {
                push_merged(&mut holes, *e);
            }
        }
        if cursor < size {
            fill_gap(l1, span, cursor, size, &mut holes)?;
        }

        // File order, in place (the plan is the largest allocation of the engine): data and
        // compressed extents only, data merged when contiguous in both spaces.
        let mut by_file = extents;
        by_file.retain(|e| !e.reads_as_zero());
        by_file.sort_unstable_by_key(|e| (file_start(e), e.guest()));
        by_file.dedup_by(|next, prev| match prev.merged(next) {
            Some(m) => {
                *prev = m;
                true
            }
            None => false,
        });
        by_file.shrink_to_fit();
        holes.shrink_to_fit();

        let plan = Plan {
            virtual_size: size,
            cluster_size,
            by_file,
            holes,
            metadata,
        };
        plan.check(None)?;
        Ok(plan)
    }

    /// Checks the layout: refuses metadata regions that overlap each other, data or compressed
    /// extents that overlap each other (compressed clusters may share one 512-byte sector, as
    /// the spec allows) or overlap metadata; and, when the file's length is known, anything
    /// past its end (a compressed cluster's upper bound may pass it within the last sector:
    /// read up to the end of the file).
    pub fn check(&self, file_len: Option<u64>) -> Result<(), Qcow2Error> {
        let overlap = |first: String, second: String| Qcow2Error::Overlap { first, second };

        let mut prev: Option<&MetadataRegion> = None;
        for m in &self.metadata {
            if let Some(p) = prev
                && m.offset < p.end()
            {
                return Err(overlap(p.describe(), m.describe()));
            }
            prev = Some(m);
        }

        let mut prev: Option<&Extent> = None;
        for e in &self.by_file {
            let (start, end) = (file_start(e), file_end(e));
            if let Some(p) = prev {
                let p_end = file_end(p);
                let shares_sector = matches!(p, Extent::Compressed { .. })
                    && matches!(e, Extent::Compressed { .. })
                    && start >= p_end.saturating_sub(SECTOR_SIZE);
                if (start < p_end && !shares_sector) || end < p_end {
                    return Err(overlap(describe(p), describe(e)));
                }
            }
            prev = Some(e);

            let i = self.metadata.partition_point(|m| m.end() <= start);
            if let Some(m) = self.metadata.get(i)
                && m.offset < end
            {
                return Err(overlap(m.describe(), describe(e)));
            }
        }

        if let Some(file_len) = file_len {
            let past = |what: String, end: u64| Qcow2Error::PastEnd {
                what,
                end,
                file_len,
            };
            for m in &self.metadata {
                if m.kind != MetadataKind::Header && m.end() > file_len {
                    return Err(past(m.kind.to_string(), m.end()));
                }
            }
            let sector_end = file_len.div_ceil(SECTOR_SIZE).saturating_mul(SECTOR_SIZE);
            for e in &self.by_file {
                let (start, end) = (file_start(e), file_end(e));
                let beyond = match e {
                    Extent::Compressed { .. } => start >= file_len || end > sector_end,
                    _ => end > file_len,
                };
                if beyond {
                    return Err(past(describe(e), end));
                }
            }
        }
        Ok(())
    }

    /// Size of the guest disk in bytes.
    pub fn virtual_size(&self) -> u64 {
        self.virtual_size
    }

    /// Cluster size of the image (the output size of one decompression).
    pub fn cluster_size(&self) -> u64 {
        self.cluster_size
    }

    /// Data and compressed extents sorted by file offset, data extents merged where contiguous
    /// in both spaces. Their file ends are non-decreasing too.
    pub fn extents_by_file_offset(&self) -> &[Extent] {
        &self.by_file
    }

    /// The data and compressed extents whose file bytes intersect `file`: what to do with the
    /// file bytes `file.start..file.end`. An extent may begin before or end after the range
    /// (keep the bytes until it is whole, or write the part in hand); a compressed extent
    /// may share its first or last sector with its neighbour.
    pub fn extents_in(&self, file: Range<u64>) -> &[Extent] {
        let lo = self.by_file.partition_point(|e| file_end(e) <= file.start);
        let hi = self.by_file.partition_point(|e| file_start(e) < file.end);
        self.by_file.get(lo..hi).unwrap_or(&[])
    }

    /// Metadata regions sorted by offset: the header cluster, the L1 table, the refcount table,
    /// the L2 tables. Bytes in none of them and in no extent are unused (refcount blocks,
    /// snapshot tables, free clusters, padding).
    pub fn metadata(&self) -> &[MetadataRegion] {
        &self.metadata
    }

    /// The metadata regions intersecting the file bytes `file`.
    pub fn metadata_in(&self, file: Range<u64>) -> &[MetadataRegion] {
        let lo = self.metadata.partition_point(|m| m.end() <= file.start);
        let hi = self.metadata.partition_point(|m| m.offset < file.end);
        self.metadata.get(lo..hi).unwrap_or(&[])
    }

    /// Guest runs that read as zeros (zero clusters and unallocated ones), in guest order,
    /// merged. With [`Plan::extents_by_file_offset`] they tile the guest disk exactly.
    pub fn zero_extents(&self) -> &[Extent] {
        &self.holes
    }

    /// The file offset past which nothing is needed: the end of the last extent or metadata
    /// region (a compressed cluster's bound may pass the end of the file by less than a
    /// sector).
    pub fn read_end(&self) -> u64 {
        let data = self.by_file.last().map_or(0, file_end);
        let meta = self
            .metadata
            .iter()
            .map(MetadataRegion::end)
            .max()
            .unwrap_or(0);
        data.max(meta)
    }

    /// Approximate heap bytes held by the plan: about 40 bytes per extent and metadata region.
    /// Data extents merge when contiguous, so an image written in order costs little; every
    /// compressed cluster and every run of subclusters costs one extent.
    pub fn heap_bytes(&self) -> usize {
        (self.by_file.capacity() + self.holes.capacity()) * std::mem::size_of::<Extent>()
            + self.metadata.capacity() * std::mem::size_of::<MetadataRegion>()
    }

    /// Guest bytes stored in the file (data and compressed extents).
    pub fn stored_bytes(&self) -> u64 {
        self.by_file.iter().map(Extent::len).sum()
    }
}

/// Guest bytes `from..to` had no extent: fine only under unallocated L1 entries.
fn fill_gap(
    l1: &[u64],
    span: u64,
    from: u64,
    to: u64,
    holes: &mut Vec<Extent>,
) -> Result<(), Qcow2Error> {
    // from < to ≤ size ≤ 2^60 and span ≥ 2^14: indices are < l1.len() ≤ 2^22.
    for l1_index in (from / span)..=((to - 1) / span) {
        let l1_index = l1_index as usize;
        let offset = l1.get(l1_index).copied().unwrap_or(0);
        if offset != 0 {
            return Err(Qcow2Error::MissingL2Table { l1_index, offset });
        }
    }
    push_merged(
        holes,
        Extent::Unallocated {
            guest: from,
            len: to - from,
        },
    );
    Ok(())
}
