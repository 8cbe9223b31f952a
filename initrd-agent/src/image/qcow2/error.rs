//! The errors of the qcow2 format layer: each says what was found and what the user can do.

use super::header::Compression;

/// Everything that can be wrong with a qcow2 image, or with how its bytes were handed in.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Qcow2Error {
    /// The first bytes are not qcow2's magic.
    #[error("not a qcow2 image: it starts with {found} instead of the qcow2 magic `QFI\\xfb`")]
    NotQcow2 {
        /// The first bytes found, in hex.
        found: String,
    },
    /// The buffer given to [`super::Header::parse`] is too short: call again with `needed` bytes
    /// (or the whole file, if it is shorter than that: then the image is truncated).
    #[error(
        "the qcow2 header needs the first {needed} bytes of the image, only {got} were given \
         (if the file is that short, it is truncated)"
    )]
    NeedMoreHeader {
        /// How many bytes from the start of the file to give next time.
        needed: usize,
        /// How many were given.
        got: usize,
    },
    /// Only versions 2 and 3 exist (and are read).
    #[error(
        "qcow2 version {0} is not supported (byol reads versions 2 and 3): convert the image with \
         `qemu-img convert -O qcow2`"
    )]
    UnsupportedVersion(u32),
    /// cluster_bits outside 9..=21.
    #[error(
        "qcow2 cluster_bits {0} is not supported (byol reads clusters of 512 B to 2 MiB, \
         cluster_bits 9 to 21, like qemu): convert the image with `qemu-img convert -O qcow2`"
    )]
    UnsupportedClusterSize(u32),
    /// The image names a backing file.
    #[error(
        "qcow2 image has a backing file{}: byol installs standalone images only; flatten it with \
         `qemu-img convert -O qcow2`",
        quoted(.name)
    )]
    BackingFile {
        /// The backing file's name as written in the image, when it could be read.
        name: Option<String>,
    },
    /// crypt_method is not 0.
    #[error(
        "qcow2 image is encrypted ({method}): byol cannot decrypt images; write a decrypted copy \
         with `qemu-img convert -O qcow2` (giving it the key)"
    )]
    Encrypted {
        /// "AES", "LUKS" or "method N".
        method: String,
    },
    /// Incompatible feature bit 2, or the external data file name extension.
    #[error(
        "qcow2 image keeps its data in an external data file{}: byol installs standalone images \
         only; make one with `qemu-img convert -O qcow2`",
        quoted(.name)
    )]
    ExternalDataFile {
        /// The data file's name from the header extension, when present.
        name: Option<String>,
    },
    /// Incompatible feature bit 1.
    #[error(
        "qcow2 image is marked corrupt (incompatible feature bit 1): repair it with \
         `qemu-img check -r all` or rebuild it, then try again"
    )]
    MarkedCorrupt,
    /// Incompatible feature bits this reader does not know.
    #[error(
        "qcow2 image uses incompatible features byol does not know ({names}): convert it with \
         `qemu-img convert -O qcow2`"
    )]
    UnknownFeatures {
        /// The unknown bits.
        bits: u64,
        /// Their names from the image's feature name table, or "bit N".
        names: String,
    },
    /// compression_type is neither zlib (0) nor zstd (1).
    #[error(
        "qcow2 compression type {0} is unknown (byol reads zlib (0) and zstd (1)): convert the \
         image with `qemu-img convert -O qcow2`"
    )]
    UnknownCompressionType(u8),
    /// A size in the header is beyond byol's limits.
    #[error("qcow2 {what} is too large: {value} (byol's limit is {limit})")]
    TooLarge {
        /// Which size.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The limit.
        limit: u64,
    },
    /// A field or table entry breaks the format's rules.
    #[error("qcow2 image is damaged: {0}; check it with `qemu-img check`")]
    Malformed(String),
    /// A table handed in is shorter than it must be.
    #[error("qcow2 {what} is truncated: it needs {needed} bytes, only {got} were given")]
    Truncated {
        /// Which table.
        what: String,
        /// Bytes it needs.
        needed: u64,
        /// Bytes given.
        got: u64,
    },
    /// Two things in the file claim the same bytes.
    #[error("qcow2 image is damaged: {first} overlaps {second}; check it with `qemu-img check`")]
    Overlap {
        /// The one that starts first.
        first: String,
        /// The other one.
        second: String,
    },
    /// Something the image needs lies past the end of the file.
    #[error(
        "qcow2 image is truncated: {what} ends at byte {end} but the file has only {file_len} \
         bytes (incomplete download or copy?)"
    )]
    PastEnd {
        /// What lies past the end.
        what: String,
        /// Where it ends.
        end: u64,
        /// The file's length.
        file_len: u64,
    },
    /// [`super::Plan::new`] was not given the extents of an allocated L2 table.
    #[error("the L2 table of L1 entry {l1_index} (at byte {offset}) was not read")]
    MissingL2Table {
        /// Index in the L1 table.
        l1_index: usize,
        /// Where the L2 table is in the file.
        offset: u64,
    },
    /// A compressed cluster does not decompress to exactly one cluster.
    #[error(
        "qcow2 compressed cluster ({compression}) is damaged: {detail}; check the image with \
         `qemu-img check`"
    )]
    Decompress {
        /// Compression type of the image.
        compression: Compression,
        /// What went wrong.
        detail: String,
    },
    /// The caller handed in something inconsistent (a bug in the caller, not in the image).
    #[error("qcow2 reader misuse: {0}")]
    InvalidArgument(String),
}

fn quoted(name: &Option<String>) -> String {
    match name {
        Some(n) => format!(" (`{n}`)"),
        None => String::new(),
    }
}

/// Shorthand for [`Qcow2Error::Malformed`].
pub(super) fn malformed(msg: impl Into<String>) -> Qcow2Error {
    Qcow2Error::Malformed(msg.into())
}

/// A name read from the file, made safe to show: lossy UTF-8, control characters escaped,
/// at most 1023 bytes in.
pub(super) fn printable_name(bytes: &[u8]) -> String {
    let bytes = &bytes[..bytes.len().min(1023)];
    String::from_utf8_lossy(bytes)
        .chars()
        .flat_map(|c| {
            if c.is_control() {
                c.escape_default().collect::<Vec<_>>()
            } else {
                vec![c]
            }
        })
        .collect()
}
