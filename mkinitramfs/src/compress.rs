//! Compression of the archive in the formats Debian's kernel unpacks (CONFIG_RD_ZSTD, _XZ,
//! _GZIP), each set for the same bytes from the same input: zstd level 19 single-threaded,
//! xz with a CRC32 check (the kernel's xz decoder knows no other), gzip with no name or mtime.

use std::fmt;
use std::io::Write as _;
use std::str::FromStr;

use crate::Error;

/// How the cpio archive is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Compression {
    #[default]
    Zstd,
    Xz,
    Gzip,
    None,
}

/// zstd level: 19 is the highest without `--ultra` windows the kernel may refuse.
pub const ZSTD_LEVEL: i32 = 19;
/// xz dictionary: large enough for a whole initramfs, small for the kernel to allocate.
pub const XZ_DICT: u32 = 32 << 20;

impl Compression {
    /// File-name suffix: `.zst`, `.xz`, `.gz` or nothing.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Zstd => ".zst",
            Compression::Xz => ".xz",
            Compression::Gzip => ".gz",
            Compression::None => "",
        }
    }

    /// Compresses `data` (deterministic: same input, same output).
    pub fn compress(self, data: &[u8]) -> Result<Vec<u8>, Error> {
        let err = |e: std::io::Error| Error::Compress(format!("{self}: {e}"));
        match self {
            Compression::None => Ok(data.to_vec()),
            Compression::Zstd => {
                let mut c = zstd::bulk::Compressor::new(ZSTD_LEVEL).map_err(err)?;
                c.include_checksum(true).map_err(err)?;
                c.compress(data).map_err(err)
            }
            Compression::Xz => {
                let mut opts =
                    liblzma::stream::LzmaOptions::new_preset(9).map_err(|e| err(e.into()))?;
                opts.dict_size(XZ_DICT);
                let mut filters = liblzma::stream::Filters::new();
                filters.lzma2(&opts);
                let stream = liblzma::stream::Stream::new_stream_encoder(
                    &filters,
                    liblzma::stream::Check::Crc32,
                )
                .map_err(|e| err(e.into()))?;
                let mut w = liblzma::write::XzEncoder::new_stream(Vec::new(), stream);
                w.write_all(data).map_err(err)?;
                w.finish().map_err(err)
            }
            Compression::Gzip => {
                let mut w = flate2::GzBuilder::new()
                    .mtime(0)
                    .write(Vec::new(), flate2::Compression::best());
                w.write_all(data).map_err(err)?;
                w.finish().map_err(err)
            }
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::Gzip => "gzip",
            Compression::None => "none",
        })
    }
}

impl FromStr for Compression {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        match s {
            "zstd" | "zst" => Ok(Compression::Zstd),
            "xz" => Ok(Compression::Xz),
            "gzip" | "gz" => Ok(Compression::Gzip),
            "none" => Ok(Compression::None),
            _ => Err(Error::Usage(format!(
                "unknown compression {s:?} (want zstd, xz, gzip or none)"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read as _;

    #[test]
    fn each_format_is_deterministic_and_decodes() {
        let data: Vec<u8> = (0..200_000u32)
            .flat_map(|i| (i % 251).to_le_bytes())
            .collect();
        for c in [
            Compression::Zstd,
            Compression::Xz,
            Compression::Gzip,
            Compression::None,
        ] {
            let a = c.compress(&data).unwrap();
            assert_eq!(a, c.compress(&data).unwrap(), "{c} not reproducible");
            let mut back = Vec::new();
            match c {
                Compression::Zstd => {
                    zstd::stream::read::Decoder::new(a.as_slice())
                        .unwrap()
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Compression::Xz => {
                    // CRC32 check: byte 7 of the stream header is the check id (1)
                    assert_eq!(a[7], 1);
                    liblzma::read::XzDecoder::new(a.as_slice())
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Compression::Gzip => {
                    assert_eq!(&a[4..8], &[0, 0, 0, 0], "gzip mtime");
                    flate2::read::GzDecoder::new(a.as_slice())
                        .read_to_end(&mut back)
                        .unwrap();
                }
                Compression::None => back = a.clone(),
            }
            assert_eq!(back, data, "{c}");
            assert_eq!(c.to_string().parse::<Compression>().unwrap(), c);
        }
    }
}
