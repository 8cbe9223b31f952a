//! detect: what an image is, from its first bytes (never from its name), and the streaming
//! decompressors for raw images served compressed with zstd, xz or gzip.
//!
//! The engine peeks at the first [`PEEK_LEN`] bytes of the stream and calls [`detect`]. For a
//! compressed stream it wraps the source in [`decompressor`], peeks again inside and detects
//! again; [`check_supported`] then refuses what byol cannot install (other VM disk formats, a
//! qcow2 inside a compressed stream, bzip2, …) with a message saying what to do, and
//! [`check_expected`] compares the result with the request's `imageType` in the guide's words.
//!
//! Memory stays bounded whatever the stream: zstd windows up to [`ZSTD_WINDOW_LOG_MAX`] (zstd's
//! own default limit: everything `zstd -d` decodes without `--memory`) and xz dictionaries up to
//! 128 MiB ([`XZ_MEMLIMIT`], enough for `xz -9`); a stream that needs more is an error that says
//! so, never a huge allocation.

use std::io::{self, BufReader, Read};

use byol_spec::{ImageType, SpecError};

/// How many leading bytes [`detect`] looks at (it works with fewer, down to none).
pub const PEEK_LEN: usize = 4096;

/// The largest zstd window accepted: 2^27 = 128 MiB (`zstd --long=27`, `--ultra -22`).
pub const ZSTD_WINDOW_LOG_MAX: u32 = 27;

/// The xz decoder's memory limit: a 128 MiB dictionary and the decoder's own few MiB.
pub const XZ_MEMLIMIT: u64 = (128 + 8) << 20;

/// What the first bytes of a stream say it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Detected {
    /// qcow2 (magic `QFI\xfb`, any version but 1: the qcow2 layer checks the version).
    Qcow2,
    /// Anything not recognised below: a raw disk image.
    Raw,
    /// zstd frame (or a skippable frame first, as pzstd writes).
    Zstd,
    /// xz stream.
    Xz,
    /// gzip member.
    Gzip,
    // --- recognised only to be refused with a clear message ---
    /// bzip2 stream.
    Bzip2,
    /// lz4 frame.
    Lz4,
    /// qcow version 1 (magic `QFI\xfb`, version 1).
    Qcow1,
    /// QEMU Enhanced Disk (`QED\0`).
    Qed,
    /// VMware VMDK: a sparse extent (`KDMV`), or a text descriptor.
    Vmdk,
    /// VirtualBox VDI.
    Vdi,
    /// Hyper-V VHDX (`vhdxfile`).
    Vhdx,
    /// Virtual PC VHD, dynamic or differencing (`conectix` at the start; a fixed VHD has its
    /// footer only at the end and is detected, and written, as raw).
    Vhd,
    /// Parallels disk image.
    Parallels,
}

impl Detected {
    /// zstd, xz or gzip: a compression byol decompresses while streaming.
    pub fn is_compression(self) -> bool {
        matches!(self, Detected::Zstd | Detected::Xz | Detected::Gzip)
    }

    /// The short name of the format or compression: "qcow2", "raw", "zstd", "vmdk", …
    pub fn short_name(self) -> &'static str {
        match self {
            Detected::Qcow2 => "qcow2",
            Detected::Raw => "raw",
            Detected::Zstd => "zstd",
            Detected::Xz => "xz",
            Detected::Gzip => "gzip",
            Detected::Bzip2 => "bzip2",
            Detected::Lz4 => "lz4",
            Detected::Qcow1 => "qcow",
            Detected::Qed => "qed",
            Detected::Vmdk => "vmdk",
            Detected::Vdi => "vdi",
            Detected::Vhdx => "vhdx",
            Detected::Vhd => "vpc",
            Detected::Parallels => "parallels",
        }
    }
}

/// A human name for logs and progress: "qcow2", "raw", "zstd-compressed raw", "VMDK", …
/// (For a compression, the name assumes the usual raw content; the engine detects it again
/// inside.)
pub fn format_name(d: Detected) -> &'static str {
    match d {
        Detected::Qcow2 => "qcow2",
        Detected::Raw => "raw",
        Detected::Zstd => "zstd-compressed raw",
        Detected::Xz => "xz-compressed raw",
        Detected::Gzip => "gzip-compressed raw",
        Detected::Bzip2 => "bzip2-compressed data",
        Detected::Lz4 => "lz4-compressed data",
        Detected::Qcow1 => "qcow (version 1)",
        Detected::Qed => "QED",
        Detected::Vmdk => "VMDK",
        Detected::Vdi => "VDI",
        Detected::Vhdx => "VHDX",
        Detected::Vhd => "VHD",
        Detected::Parallels => "Parallels",
    }
}

fn be32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

fn le32(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at.checked_add(4)?)?;
    Some(u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Detects the format from the first bytes of a stream (up to [`PEEK_LEN`] are used; fewer
/// are fine: a stream too short to hold a magic is raw).
pub fn detect(first_bytes: &[u8]) -> Detected {
    let b = &first_bytes[..first_bytes.len().min(PEEK_LEN)];
    let starts = |magic: &[u8]| b.starts_with(magic);

    if starts(b"QFI\xfb") {
        return match be32(b, 4) {
            Some(1) => Detected::Qcow1,
            _ => Detected::Qcow2,
        };
    }
    if starts(&[0x28, 0xb5, 0x2f, 0xfd]) {
        return Detected::Zstd;
    }
    // zstd skippable frame: magic 0x184D2A50..=0x184D2A5F, little-endian.
    if le32(b, 0).is_some_and(|m| m & 0xffff_fff0 == 0x184d_2a50) {
        return Detected::Zstd;
    }
    if starts(&[0xfd, b'7', b'z', b'X', b'Z', 0x00]) {
        return Detected::Xz;
    }
    // gzip: magic and compression method 8 (deflate), the only one defined.
    if starts(&[0x1f, 0x8b, 0x08]) {
        return Detected::Gzip;
    }
    // bzip2: "BZh", block size '1'..='9', then a block or end-of-stream magic.
    if starts(b"BZh")
        && b.get(3).is_some_and(|c| (b'1'..=b'9').contains(c))
        && b.get(4..10).is_some_and(|m| {
            m == [0x31, 0x41, 0x59, 0x26, 0x53, 0x59] || m == [0x17, 0x72, 0x45, 0x38, 0x50, 0x90]
        })
    {
        return Detected::Bzip2;
    }
    if starts(&[0x04, 0x22, 0x4d, 0x18]) {
        return Detected::Lz4;
    }
    if starts(b"QED\0") {
        return Detected::Qed;
    }
    if starts(b"KDMV") || starts(b"COWD") || starts(b"# Disk DescriptorFile") {
        return Detected::Vmdk;
    }
    // VDI: a text banner, then the signature 0xbeda107f (little-endian) at offset 0x40.
    if le32(b, 0x40) == Some(0xbeda_107f) {
        return Detected::Vdi;
    }
    if starts(b"vhdxfile") {
        return Detected::Vhdx;
    }
    if starts(b"conectix") {
        return Detected::Vhd;
    }
    if starts(b"WithoutFreeSpace") || starts(b"WithouFreSpacExt") {
        return Detected::Parallels;
    }
    Detected::Raw
}

/// What byol cannot install, found by [`check_supported`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetectError {
    /// A qcow2 served inside zstd, xz or gzip: the qcow2 layer needs to read it in place.
    #[error(
        "qcow2 inside {compression} is not supported: serve the .qcow2 uncompressed (qcow2 can \
         compress its clusters itself, qemu-img convert -c)"
    )]
    CompressedQcow2 {
        /// "zstd", "xz" or "gzip".
        compression: &'static str,
    },
    /// Compressed twice (e.g. gzip inside zstd).
    #[error(
        "image is {inner} inside {outer}: byol decompresses one layer only; serve the raw image \
         compressed once (zstd, xz or gzip)"
    )]
    NestedCompression {
        /// The outer compression.
        outer: &'static str,
        /// What was found inside it.
        inner: &'static str,
    },
    /// bzip2 or lz4.
    #[error(
        "image is {name}: byol decompresses only zstd, xz and gzip; recompress the raw image with \
         one of them (e.g. `zstd -T0 -19`), or serve a qcow2"
    )]
    UnsupportedCompression {
        /// "bzip2-compressed data" or "lz4-compressed data".
        name: &'static str,
    },
    /// Another VM disk format.
    #[error(
        "image is a {name} disk image{inside}: byol installs qcow2 or raw images only; convert \
         it with `qemu-img convert -O qcow2 {short}-image disk.qcow2`"
    )]
    ForeignFormat {
        /// Its human name ("VMDK", "VDI", …).
        name: &'static str,
        /// qemu-img's name for it ("vmdk", "vdi", …).
        short: &'static str,
        /// " inside zstd" etc. when it was found inside a compressed stream, else empty.
        inside: String,
    },
}

/// Refuses what byol cannot install. `outer` is what the stream starts with; `inner` what was
/// detected inside the decompressor when `outer` is a compression (`None` otherwise, or when the
/// engine has not looked inside yet).
pub fn check_supported(outer: Detected, inner: Option<Detected>) -> Result<(), DetectError> {
    let foreign = |d: Detected, inside: String| DetectError::ForeignFormat {
        name: format_name(d),
        short: d.short_name(),
        inside,
    };
    match outer {
        Detected::Qcow2 | Detected::Raw => Ok(()),
        Detected::Bzip2 | Detected::Lz4 => Err(DetectError::UnsupportedCompression {
            name: format_name(outer),
        }),
        Detected::Zstd | Detected::Xz | Detected::Gzip => match inner {
            None | Some(Detected::Raw) => Ok(()),
            Some(Detected::Qcow2) => Err(DetectError::CompressedQcow2 {
                compression: outer.short_name(),
            }),
            Some(
                i @ (Detected::Zstd
                | Detected::Xz
                | Detected::Gzip
                | Detected::Bzip2
                | Detected::Lz4),
            ) => Err(DetectError::NestedCompression {
                outer: outer.short_name(),
                inner: format_name(i),
            }),
            Some(i) => Err(foreign(i, format!(" inside {}", outer.short_name()))),
        },
        other => Err(foreign(other, String::new())),
    }
}

/// Compares what was found with the request's `imageType`, in the guide's words:
/// ``image provided format is `raw` which does not match expected qcow2 format``.
/// A compressed raw image counts as raw; another VM format never matches (its qemu-img name is
/// given as the found format).
pub fn check_expected(expected: ImageType, found: Detected) -> Result<(), SpecError> {
    let found_name = match found {
        Detected::Qcow2 => "qcow2",
        Detected::Raw | Detected::Zstd | Detected::Xz | Detected::Gzip => "raw",
        other => other.short_name(),
    };
    if found_name == expected.as_str() {
        Ok(())
    } else {
        Err(SpecError::FormatMismatch {
            found: found_name.to_string(),
            expected: expected.as_str().to_string(),
        })
    }
}

/// Wraps a stream in the streaming decompressor for `kind`: zstd (every frame, skippable frames
/// skipped), xz (concatenated streams and padding), gzip (every member). Any other kind is
/// returned as it is. The decompressor's errors (corrupt data, a truncated stream, a window or
/// dictionary over the memory bound) come out of `read`, as [`io::Error`]s that say which
/// compression failed and why.
pub fn decompressor<'a>(
    kind: Detected,
    inner: Box<dyn Read + Send + 'a>,
) -> Box<dyn Read + Send + 'a> {
    let what = match kind {
        Detected::Zstd => "zstd",
        Detected::Xz => "xz",
        Detected::Gzip => "gzip",
        _ => return inner,
    };
    let source = FromSource(inner);
    let decoder: io::Result<Box<dyn Read + Send + 'a>> = match kind {
        Detected::Zstd => zstd_decoder(source).map(|d| Box::new(d) as Box<dyn Read + Send + 'a>),
        Detected::Xz => {
            liblzma::stream::Stream::new_stream_decoder(XZ_MEMLIMIT, liblzma::stream::CONCATENATED)
                .map(|stream| {
                    Box::new(liblzma::read::XzDecoder::new_stream(source, stream))
                        as Box<dyn Read + Send + 'a>
                })
                .map_err(io::Error::from)
        }
        _ => Ok(Box::new(flate2::bufread::MultiGzDecoder::new(
            BufReader::with_capacity(64 << 10, source),
        ))),
    };
    match decoder {
        Ok(d) => Box::new(Explained::new(what, d)),
        Err(e) => Box::new(Failed(Some(explain(what, e)))),
    }
}

fn zstd_decoder<'a>(
    inner: FromSource<'a>,
) -> io::Result<zstd::stream::read::Decoder<'static, BufReader<FromSource<'a>>>> {
    let mut d = zstd::stream::read::Decoder::with_buffer(BufReader::with_capacity(
        zstd::zstd_safe::DCtx::in_size(),
        inner,
    ))?;
    d.window_log_max(ZSTD_WINDOW_LOG_MAX)?;
    Ok(d)
}

/// Turns a decompressor's terse error into one that says which compression failed and, for the
/// memory bounds, what to do.
fn explain(what: &str, e: io::Error) -> io::Error {
    let msg = e.to_string();
    let lower = msg.to_ascii_lowercase();
    if what == "zstd"
        && (lower.contains("too much memory")
            || (lower.contains("window") && lower.contains("large")))
    {
        return io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "zstd frame needs a window larger than {} MiB ({msg}): byol bounds its memory; \
                 recompress without `--long` above 27 (e.g. `zstd -T0 -19`)",
                1u64 << (ZSTD_WINDOW_LOG_MAX - 20)
            ),
        );
    }
    if what == "xz" && lower.contains("memory limit") {
        return io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "xz stream needs more than {} MiB of memory to decompress (a dictionary over 128 \
                 MiB): byol bounds its memory; recompress with `xz -9` or less",
                XZ_MEMLIMIT >> 20
            ),
        );
    }
    let kind = match e.kind() {
        io::ErrorKind::Other | io::ErrorKind::InvalidInput => io::ErrorKind::InvalidData,
        k => k,
    };
    let text = if e.kind() == io::ErrorKind::UnexpectedEof {
        format!("{what}-compressed stream is truncated ({msg})")
    } else {
        format!("{what}-compressed stream is corrupt: {msg}")
    };
    io::Error::new(kind, text)
}

/// A decompressing reader whose own errors are explained (see [`explain`]); errors of the
/// stream underneath (tagged by [`FromSource`] on their way in) come out exactly as they were.
struct Explained<R> {
    what: &'static str,
    inner: R,
}

impl<R> Explained<R> {
    fn new(what: &'static str, inner: R) -> Self {
        Explained { what, inner }
    }
}

impl<R: Read> Read for Explained<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf).map_err(|e| {
            if e.get_ref().is_some_and(|r| r.is::<SourceError>()) {
                let kind = e.kind();
                match e.into_inner().map(|r| r.downcast::<SourceError>()) {
                    Some(Ok(src)) => src.0,
                    // Unreachable: the check above saw a SourceError.
                    _ => io::Error::new(kind, "error of the image stream"),
                }
            } else {
                explain(self.what, e)
            }
        })
    }
}

/// The stream under a decompressor: its errors are wrapped in [`SourceError`] so that
/// [`Explained`] can tell them from the decoder's own and hand them back untouched.
struct FromSource<'a>(Box<dyn Read + Send + 'a>);

impl Read for FromSource<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), SourceError(e)))
    }
}

#[derive(Debug)]
struct SourceError(io::Error);

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// A reader that fails on its first read: a decompressor that could not even start.
struct Failed(Option<io::Error>);

impl Read for Failed {
    fn read(&mut self, _buf: &mut [u8]) -> io::Result<usize> {
        Err(self
            .0
            .take()
            .unwrap_or_else(|| io::Error::other("decompressor failed to start")))
    }
}
