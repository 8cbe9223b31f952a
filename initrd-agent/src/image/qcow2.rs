//! qcow2: the qcow2 on-disk format, read from byte buffers the caller hands in. Pure code: no
//! I/O, no async, no allocation sized by the file beyond the documented limits.
//!
//! Written from qemu's `docs/interop/qcow2.txt`. It owns:
//! - the header ([`Header::parse`]): versions 2 and 3, cluster sizes 512 B – 2 MiB, the dirty bit,
//!   the compression type (zlib or zstd), extended L2 entries, header extensions;
//! - the active L1 table ([`parse_l1`]) and L2 tables ([`parse_l2`]), decoded into guest-space
//!   [`Extent`]s: data, compressed, reads-as-zero and unallocated, down to subclusters;
//! - compressed clusters ([`Decompressor`], [`decompress`]): raw deflate ("zlib" in qcow2
//!   terms) and zstd, one cluster at a time;
//! - the [`Plan`]: every extent ordered by file offset, the metadata regions, and the checks that
//!   make one ordered pass over the file safe (no overlaps, nothing past the end of the file).
//!
//! It refuses, with an error telling the user what to do:
//! - backing files, external data files and encryption: byol installs one standalone image and
//!   opens nothing else named inside it, and it has no keys; `qemu-img convert -O qcow2` makes a
//!   standalone, unencrypted image;
//! - images marked corrupt and images with incompatible features it does not know, as the spec
//!   requires;
//! - anything malformed: every offset and length read from the file is checked (alignment,
//!   overflow, reserved bits, overlaps) and sizes that would need large allocations are refused
//!   (L1 table over 32 MiB, refcount table over 8 MiB, virtual size over 2^60), so that no input
//!   makes it panic or allocate without bound.
//!
//! What it ignores, because an installer does not need it: refcounts (their location is checked,
//! their content never read), internal snapshots (only the active L1 table is read), bitmaps,
//! the lazy-refcounts and other compatible/autoclear feature bits.

mod decompress;
mod error;
mod header;
mod plan;
mod tables;

pub use decompress::{Decompressor, decompress};
pub use error::Qcow2Error;
pub use header::{Compression, Header};
pub use plan::{MetadataKind, MetadataRegion, Plan};
pub use tables::{Extent, l2_tables, parse_l1, parse_l2};

/// The four magic bytes every qcow2 file starts with.
pub const MAGIC: [u8; 4] = *b"QFI\xfb";
/// Smallest cluster: 2^9 = 512 bytes.
pub const MIN_CLUSTER_BITS: u32 = 9;
/// Largest cluster qemu reads (and so writes): 2^21 = 2 MiB.
pub const MAX_CLUSTER_BITS: u32 = 21;
/// Largest active L1 table accepted, in bytes (qemu's own limit).
pub const MAX_L1_BYTES: u64 = 32 << 20;
/// Largest refcount table accepted, in bytes (qemu's own limit).
pub const MAX_REFCOUNT_TABLE_BYTES: u64 = 8 << 20;
/// Largest virtual size accepted (1 EiB).
pub const MAX_VIRTUAL_SIZE: u64 = 1 << 60;
/// Host offsets in L1/L2 entries have 56 bits: nothing in the file can start at or past 64 PiB.
pub const MAX_FILE_OFFSET: u64 = 1 << 56;
/// Largest number of internal snapshots accepted (qemu's own limit).
pub const MAX_SNAPSHOTS: u32 = 65536;
/// Compressed cluster sizes are counted in 512-byte sectors.
pub const SECTOR_SIZE: u64 = 512;
