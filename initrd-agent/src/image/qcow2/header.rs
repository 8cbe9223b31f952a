//! The qcow2 header (first cluster of the file): fields, feature bits, header extensions, and
//! the refusals (backing file, encryption, external data file, corrupt, unknown features).

use std::fmt;

use super::error::{Qcow2Error, malformed, printable_name};
use super::{
    MAGIC, MAX_CLUSTER_BITS, MAX_FILE_OFFSET, MAX_L1_BYTES, MAX_REFCOUNT_TABLE_BYTES,
    MAX_SNAPSHOTS, MAX_VIRTUAL_SIZE, MIN_CLUSTER_BITS, SECTOR_SIZE,
};

const V2_HEADER_LEN: usize = 72;
const V3_MIN_HEADER_LEN: usize = 104;
/// Offset of the compression_type byte (present when header_length > 104).
const COMPRESSION_TYPE_AT: usize = 104;

const INCOMPAT_DIRTY: u64 = 1 << 0;
const INCOMPAT_CORRUPT: u64 = 1 << 1;
const INCOMPAT_DATA_FILE: u64 = 1 << 2;
const INCOMPAT_COMPRESSION: u64 = 1 << 3;
const INCOMPAT_EXTENDED_L2: u64 = 1 << 4;
const INCOMPAT_KNOWN: u64 = INCOMPAT_DIRTY
    | INCOMPAT_CORRUPT
    | INCOMPAT_DATA_FILE
    | INCOMPAT_COMPRESSION
    | INCOMPAT_EXTENDED_L2;

const EXT_END: u32 = 0;
const EXT_FEATURE_NAMES: u32 = 0x6803_f857;
const EXT_DATA_FILE: u32 = 0x4441_5441;
// Other known extensions (backing format 0xe2792aca, bitmaps 0x23852875, full disk encryption
// 0x0537be77) carry nothing an installer of a standalone unencrypted image needs: skipped.

const FEATURE_NAME_ENTRY: usize = 48;
const MAX_BACKING_NAME: u32 = 1023;

/// How compressed clusters are compressed (header field compression_type).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// Type 0, "zlib": raw deflate streams, without zlib's header or checksum.
    Zlib,
    /// Type 1: zstd frames.
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Zlib => "zlib",
            Compression::Zstd => "zstd",
        })
    }
}

/// A validated qcow2 header. Built only by [`Header::parse`], so every accessor's value has
/// been checked against the spec and byol's limits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    version: u32,
    cluster_bits: u32,
    size: u64,
    l1_size: u32,
    l1_table_offset: u64,
    refcount_table_offset: u64,
    refcount_table_clusters: u32,
    refcount_order: u32,
    nb_snapshots: u32,
    snapshots_offset: u64,
    incompatible_features: u64,
    compatible_features: u64,
    autoclear_features: u64,
    header_length: u32,
    compression: Compression,
    /// L1 entries that map the virtual disk (≤ l1_size).
    l1_entries: u64,
}

/// Big-endian reads that fail (instead of panicking) when the buffer is short.
fn be_bytes<const N: usize>(buf: &[u8], at: usize) -> Option<[u8; N]> {
    let end = at.checked_add(N)?;
    buf.get(at..end)?.try_into().ok()
}

pub(super) fn be32(buf: &[u8], at: usize) -> Option<u32> {
    be_bytes::<4>(buf, at).map(u32::from_be_bytes)
}

pub(super) fn be64(buf: &[u8], at: usize) -> Option<u64> {
    be_bytes::<8>(buf, at).map(u64::from_be_bytes)
}

fn need(buf: &[u8], needed: usize) -> Result<(), Qcow2Error> {
    if buf.len() < needed {
        Err(Qcow2Error::NeedMoreHeader {
            needed,
            got: buf.len(),
        })
    } else {
        Ok(())
    }
}

/// Extensions may fill the whole first cluster: when `buf` stops short of `end`, ask for the
/// whole cluster at once rather than a few bytes more each time.
fn need_in_cluster(buf: &[u8], end: usize, cluster_size: usize) -> Result<(), Qcow2Error> {
    if buf.len() < end {
        Err(Qcow2Error::NeedMoreHeader {
            needed: cluster_size,
            got: buf.len(),
        })
    } else {
        Ok(())
    }
}

/// What the header extensions said (only what matters here).
#[derive(Default)]
struct Extensions {
    data_file: Option<String>,
    /// (feature type, bit, name) from the feature name table.
    feature_names: Vec<(u8, u8, String)>,
}

impl Header {
    /// Bytes to read first: enough for the header and the extensions of every image qemu makes.
    /// If [`Header::parse`] answers [`Qcow2Error::NeedMoreHeader`], give it `needed` bytes.
    pub const PROBE_LEN: usize = 4096;
    /// No header ever needs more than this many bytes (its first cluster at most).
    pub const MAX_LEN: usize = 1 << MAX_CLUSTER_BITS;

    /// Parses and validates the header from the first bytes of the file.
    ///
    /// `buf` is a prefix of the file: [`Header::PROBE_LEN`] bytes are enough for images made by
    /// qemu. When more is needed (long header extensions), the error is
    /// [`Qcow2Error::NeedMoreHeader`] with the length to give next time (at most one cluster,
    /// [`Header::MAX_LEN`]); if the file is shorter than that, it is truncated.
    pub fn parse(buf: &[u8]) -> Result<Header, Qcow2Error> {
        if buf.len() < MAGIC.len() {
            return Err(Qcow2Error::NeedMoreHeader {
                needed: V2_HEADER_LEN,
                got: buf.len(),
            });
        }
        if buf[..MAGIC.len()] != MAGIC {
            let shown: String = buf.iter().take(8).map(|b| format!("{b:02x}")).collect();
            return Err(Qcow2Error::NotQcow2 {
                found: format!("bytes {shown}"),
            });
        }
        need(buf, V2_HEADER_LEN)?;
        let u32_at = |at: usize| be32(buf, at).ok_or_else(|| truncated_header(buf));
        let u64_at = |at: usize| be64(buf, at).ok_or_else(|| truncated_header(buf));

        let version = u32_at(4)?;
        if version != 2 && version != 3 {
            return Err(Qcow2Error::UnsupportedVersion(version));
        }
        let cluster_bits = u32_at(20)?;
        if !(MIN_CLUSTER_BITS..=MAX_CLUSTER_BITS).contains(&cluster_bits) {
            return Err(Qcow2Error::UnsupportedClusterSize(cluster_bits));
        }
        let cluster_size = 1usize << cluster_bits;

        // Refusals that do not depend on the rest come first: they are what the user must fix.
        let backing_file_offset = u64_at(8)?;
        if backing_file_offset != 0 {
            let backing_file_size = u32_at(16)?;
            return Err(Qcow2Error::BackingFile {
                name: backing_name(buf, backing_file_offset, backing_file_size),
            });
        }
        let crypt_method = u32_at(32)?;
        if crypt_method != 0 {
            let method = match crypt_method {
                1 => "AES".to_string(),
                2 => "LUKS".to_string(),
                n => format!("method {n}"),
            };
            return Err(Qcow2Error::Encrypted { method });
        }

        let (header_length, incompatible, compatible, autoclear, refcount_order) = if version == 2 {
            (V2_HEADER_LEN, 0, 0, 0, 4)
        } else {
            need(buf, V3_MIN_HEADER_LEN)?;
            let header_length = u32_at(100)?;
            if (header_length as usize) < V3_MIN_HEADER_LEN || !header_length.is_multiple_of(8) {
                return Err(malformed(format!(
                    "header_length {header_length} (version 3 needs a multiple of 8, at least \
                     {V3_MIN_HEADER_LEN})"
                )));
            }
            if header_length as usize > cluster_size {
                return Err(malformed(format!(
                    "header_length {header_length} is larger than the first cluster \
                     ({cluster_size} bytes)"
                )));
            }
            (
                header_length as usize,
                u64_at(72)?,
                u64_at(80)?,
                u64_at(88)?,
                u32_at(96)?,
            )
        };
        need(buf, header_length)?;

        let ext = parse_extensions(buf, header_length, cluster_size)?;

        if incompatible & INCOMPAT_CORRUPT != 0 {
            return Err(Qcow2Error::MarkedCorrupt);
        }
        if incompatible & INCOMPAT_DATA_FILE != 0 || ext.data_file.is_some() {
            return Err(Qcow2Error::ExternalDataFile {
                name: ext.data_file,
            });
        }
        let unknown = incompatible & !INCOMPAT_KNOWN;
        if unknown != 0 {
            return Err(Qcow2Error::UnknownFeatures {
                bits: unknown,
                names: feature_names(unknown, &ext.feature_names),
            });
        }

        let compression_type = if header_length > COMPRESSION_TYPE_AT {
            buf.get(COMPRESSION_TYPE_AT)
                .copied()
                .ok_or_else(|| truncated_header(buf))?
        } else {
            0
        };
        let compression = if incompatible & INCOMPAT_COMPRESSION != 0 {
            match compression_type {
                0 => {
                    return Err(malformed(
                        "the compression type feature bit is set but compression_type is 0 (zlib)",
                    ));
                }
                1 => Compression::Zstd,
                n => return Err(Qcow2Error::UnknownCompressionType(n)),
            }
        } else if compression_type != 0 {
            return Err(malformed(format!(
                "compression_type is {compression_type} but the compression type feature bit \
                 is not set"
            )));
        } else {
            Compression::Zlib
        };

        let extended_l2 = incompatible & INCOMPAT_EXTENDED_L2 != 0;
        if extended_l2 && cluster_bits < 14 {
            return Err(malformed(format!(
                "extended L2 entries need clusters of at least 16 KiB, this image has \
                 {cluster_size}-byte clusters"
            )));
        }
        if refcount_order > 6 {
            return Err(malformed(format!(
                "refcount_order {refcount_order} (at most 6)"
            )));
        }

        let raw_size = u64_at(24)?;
        if raw_size > MAX_VIRTUAL_SIZE {
            return Err(Qcow2Error::TooLarge {
                what: "virtual size",
                value: raw_size,
                limit: MAX_VIRTUAL_SIZE,
            });
        }
        // qemu counts the disk in 512-byte sectors: a size that is not a multiple of 512 is
        // rounded down, and so is what `qemu-img convert` writes.
        let size = raw_size - raw_size % SECTOR_SIZE;

        let cluster_size = cluster_size as u64;
        let entry_size: u64 = if extended_l2 { 16 } else { 8 };
        // Bytes of guest disk one L1 entry (one L2 table) maps: at most 2^39, never overflows.
        let l1_span = (cluster_size / entry_size) * cluster_size;
        let l1_entries = size.div_ceil(l1_span);

        let l1_size = u32_at(36)?;
        let l1_table_offset = u64_at(40)?;
        let l1_bytes = u64::from(l1_size) * 8;
        if l1_bytes > MAX_L1_BYTES {
            return Err(Qcow2Error::TooLarge {
                what: "L1 table",
                value: l1_bytes,
                limit: MAX_L1_BYTES,
            });
        }
        if u64::from(l1_size) < l1_entries {
            return Err(malformed(format!(
                "the L1 table has {l1_size} entries but a virtual size of {size} bytes needs \
                 {l1_entries}"
            )));
        }
        if l1_size > 0 {
            check_table("L1 table", l1_table_offset, l1_bytes, cluster_size)?;
        }

        let refcount_table_offset = u64_at(48)?;
        let refcount_table_clusters = u32_at(56)?;
        if refcount_table_clusters == 0 {
            return Err(malformed("the image has no refcount table"));
        }
        let refcount_bytes = u64::from(refcount_table_clusters) * cluster_size;
        if refcount_bytes > MAX_REFCOUNT_TABLE_BYTES {
            return Err(Qcow2Error::TooLarge {
                what: "refcount table",
                value: refcount_bytes,
                limit: MAX_REFCOUNT_TABLE_BYTES,
            });
        }
        check_table(
            "refcount table",
            refcount_table_offset,
            refcount_bytes,
            cluster_size,
        )?;

        let nb_snapshots = u32_at(60)?;
        let snapshots_offset = u64_at(64)?;
        if nb_snapshots > MAX_SNAPSHOTS {
            return Err(Qcow2Error::TooLarge {
                what: "number of snapshots",
                value: u64::from(nb_snapshots),
                limit: u64::from(MAX_SNAPSHOTS),
            });
        }
        if nb_snapshots > 0 {
            // Each snapshot table entry is at least 40 bytes.
            check_table(
                "snapshot table",
                snapshots_offset,
                u64::from(nb_snapshots) * 40,
                cluster_size,
            )?;
        }

        Ok(Header {
            version,
            cluster_bits,
            size,
            l1_size,
            l1_table_offset,
            refcount_table_offset,
            refcount_table_clusters,
            refcount_order,
            nb_snapshots,
            snapshots_offset,
            incompatible_features: incompatible,
            compatible_features: compatible,
            autoclear_features: autoclear,
            header_length: header_length as u32,
            compression,
            l1_entries,
        })
    }

    /// 2 or 3.
    pub fn version(&self) -> u32 {
        self.version
    }

    /// log2 of the cluster size, 9..=21.
    pub fn cluster_bits(&self) -> u32 {
        self.cluster_bits
    }

    /// Cluster size in bytes, 512 B – 2 MiB.
    pub fn cluster_size(&self) -> u64 {
        1 << self.cluster_bits
    }

    /// Size of the guest disk in bytes (the header's size rounded down to 512 bytes, as qemu
    /// does).
    pub fn virtual_size(&self) -> u64 {
        self.size
    }

    /// How compressed clusters are compressed.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Whether the image uses extended L2 entries (32 subclusters per cluster).
    pub fn extended_l2(&self) -> bool {
        self.incompatible_features & INCOMPAT_EXTENDED_L2 != 0
    }

    /// Whether the dirty bit is set (refcounts may be stale; the mapping is still valid).
    pub fn is_dirty(&self) -> bool {
        self.incompatible_features & INCOMPAT_DIRTY != 0
    }

    /// Bytes of one L2 entry: 8, or 16 with extended L2 entries.
    pub fn l2_entry_size(&self) -> u64 {
        if self.extended_l2() { 16 } else { 8 }
    }

    /// Entries in one L2 table.
    pub fn l2_entries(&self) -> u64 {
        self.cluster_size() / self.l2_entry_size()
    }

    /// Bytes of one L2 table (one cluster).
    pub fn l2_table_bytes(&self) -> u64 {
        self.cluster_size()
    }

    /// Bytes of guest disk mapped by one L1 entry.
    pub fn l1_entry_span(&self) -> u64 {
        self.l2_entries() * self.cluster_size()
    }

    /// Number of L1 entries that map the virtual disk: what [`super::parse_l1`] returns.
    pub fn l1_entries(&self) -> usize {
        // ≤ MAX_L1_BYTES / 8, so it fits any usize of 32 bits or more.
        self.l1_entries as usize
    }

    /// The part of the active L1 table to read: (file offset, length in bytes). It covers the
    /// entries that map the virtual disk; the table may have more entries (see
    /// [`Header::l1_table_range`]), which map nothing.
    pub fn l1_range(&self) -> (u64, u64) {
        (self.l1_table_offset, self.l1_entries * 8)
    }

    /// The whole active L1 table as stored: (file offset, length in bytes), ≤ 32 MiB.
    pub fn l1_table_range(&self) -> (u64, u64) {
        (self.l1_table_offset, u64::from(self.l1_size) * 8)
    }

    /// The refcount table: (file offset, length in bytes), ≤ 8 MiB. Its content is not used.
    pub fn refcount_table_range(&self) -> (u64, u64) {
        (
            self.refcount_table_offset,
            u64::from(self.refcount_table_clusters) * self.cluster_size(),
        )
    }

    /// Width of a refcount in bits (1 << refcount_order).
    pub fn refcount_bits(&self) -> u32 {
        1 << self.refcount_order
    }

    /// Length of the header structure (72 for version 2, header_length for version 3).
    pub fn header_length(&self) -> u32 {
        self.header_length
    }

    /// Number of internal snapshots (ignored: only the active L1 table is read).
    pub fn snapshot_count(&self) -> u32 {
        self.nb_snapshots
    }

    /// Where the snapshot table is (meaningful when [`Header::snapshot_count`] > 0).
    pub fn snapshots_offset(&self) -> u64 {
        self.snapshots_offset
    }

    /// The raw incompatible feature bits (all known to this reader).
    pub fn incompatible_features(&self) -> u64 {
        self.incompatible_features
    }

    /// The raw compatible feature bits (ignored).
    pub fn compatible_features(&self) -> u64 {
        self.compatible_features
    }

    /// The raw autoclear feature bits (ignored).
    pub fn autoclear_features(&self) -> u64 {
        self.autoclear_features
    }
}

fn truncated_header(buf: &[u8]) -> Qcow2Error {
    Qcow2Error::NeedMoreHeader {
        needed: V3_MIN_HEADER_LEN,
        got: buf.len(),
    }
}

/// A table's offset must be cluster-aligned, past the header cluster, and the table must end
/// before 2^56.
fn check_table(what: &str, offset: u64, len: u64, cluster_size: u64) -> Result<(), Qcow2Error> {
    if !offset.is_multiple_of(cluster_size) {
        return Err(malformed(format!(
            "the {what} offset {offset:#x} is not aligned to the cluster size ({cluster_size})"
        )));
    }
    if offset == 0 {
        return Err(malformed(format!(
            "the {what} is at offset 0, over the header"
        )));
    }
    match offset.checked_add(len) {
        Some(end) if end <= MAX_FILE_OFFSET => Ok(()),
        _ => Err(malformed(format!(
            "the {what} at offset {offset:#x} ({len} bytes) ends past the largest possible file \
             offset (2^56)"
        ))),
    }
}

/// The backing file name, if it lies within `buf` and has a sane length.
fn backing_name(buf: &[u8], offset: u64, size: u32) -> Option<String> {
    if size == 0 || size > MAX_BACKING_NAME {
        return None;
    }
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(size as usize)?;
    buf.get(start..end).map(printable_name)
}

/// Walks the header extensions from the end of the header to the end marker (or the end of
/// the first cluster).
fn parse_extensions(
    buf: &[u8],
    header_length: usize,
    cluster_size: usize,
) -> Result<Extensions, Qcow2Error> {
    let mut ext = Extensions::default();
    let mut at = header_length;
    // Each extension takes at least 8 bytes, so this loop ends within cluster_size / 8 steps.
    while at < cluster_size {
        if at + 8 > cluster_size {
            return Err(malformed(
                "a header extension starts in the last 8 bytes of the first cluster",
            ));
        }
        need_in_cluster(buf, at + 8, cluster_size)?;
        let kind = be32(buf, at).ok_or_else(|| truncated_header(buf))?;
        let len = be32(buf, at + 4).ok_or_else(|| truncated_header(buf))? as usize;
        if kind == EXT_END {
            break;
        }
        let data_start = at + 8;
        let data_end = match data_start.checked_add(len) {
            Some(end) if end <= cluster_size => end,
            _ => {
                return Err(malformed(format!(
                    "header extension {kind:#010x} ({len} bytes at offset {at}) runs past the \
                     first cluster"
                )));
            }
        };
        need_in_cluster(buf, data_end, cluster_size)?;
        let data = buf
            .get(data_start..data_end)
            .ok_or_else(|| truncated_header(buf))?;
        match kind {
            EXT_DATA_FILE => ext.data_file = Some(printable_name(data)),
            EXT_FEATURE_NAMES => {
                for entry in data.chunks_exact(FEATURE_NAME_ENTRY) {
                    let name_bytes = &entry[2..];
                    let name_len = name_bytes
                        .iter()
                        .position(|&b| b == 0)
                        .unwrap_or(name_bytes.len());
                    ext.feature_names.push((
                        entry[0],
                        entry[1],
                        printable_name(&name_bytes[..name_len]),
                    ));
                }
            }
            _ => {}
        }
        // Padding to a multiple of 8; data_end ≤ cluster_size ≤ 2 MiB, so no overflow.
        at = data_start + len.div_ceil(8) * 8;
    }
    Ok(ext)
}

/// "name (bit N), …" for each set bit, from the image's own feature name table.
fn feature_names(bits: u64, table: &[(u8, u8, String)]) -> String {
    (0..64u8)
        .filter(|bit| bits & (1u64 << bit) != 0)
        .map(
            |bit| match table.iter().find(|(kind, b, _)| *kind == 0 && *b == bit) {
                Some((_, _, name)) if !name.is_empty() => {
                    format!("`{name}`, incompatible bit {bit}")
                }
                _ => format!("incompatible bit {bit}"),
            },
        )
        .collect::<Vec<_>>()
        .join("; ")
}
