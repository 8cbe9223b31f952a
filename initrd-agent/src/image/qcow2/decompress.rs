//! Compressed clusters: raw deflate ("zlib" in qcow2) and zstd, one cluster at a time.
//!
//! As qemu does, decompression runs until the output cluster is full: the stream may be
//! followed by garbage up to the end of its last sector (or by the next compressed cluster),
//! and a stream that ends before filling the cluster is an error. Memory is bounded by the
//! cluster size: the output is the caller's buffer, and zstd's window is capped.

use flate2::{Decompress, FlushDecompress, Status};
use zstd::stream::raw::{DParameter, Decoder, InBuffer, Operation, OutBuffer};

use super::error::Qcow2Error;
use super::header::{Compression, Header};

/// Largest zstd window accepted (8 MiB): a cluster is at most 2 MiB, and qemu's frames
/// declare a window no larger than their content.
const ZSTD_WINDOW_LOG_MAX: u32 = 23;

/// Reusable decompression state for one image: create it once, call
/// [`Decompressor::decompress`] for each compressed cluster.
pub struct Decompressor {
    compression: Compression,
    cluster_size: usize,
    zlib: Option<Decompress>,
    zstd: Option<Decoder<'static>>,
}

impl std::fmt::Debug for Decompressor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decompressor")
            .field("compression", &self.compression)
            .field("cluster_size", &self.cluster_size)
            .finish_non_exhaustive()
    }
}

impl Decompressor {
    /// A decompressor for the image's compression type and cluster size.
    pub fn new(h: &Header) -> Decompressor {
        Decompressor {
            compression: h.compression(),
            // ≤ 2 MiB.
            cluster_size: h.cluster_size() as usize,
            zlib: None,
            zstd: None,
        }
    }

    /// Decompresses one cluster from `compressed` (the bytes from the extent's file offset,
    /// up to its `comp_len` or the end of the file, whichever comes first) into `out`, which
    /// must be exactly one cluster long. Fails if the stream is damaged or does not fill the
    /// cluster.
    pub fn decompress(&mut self, compressed: &[u8], out: &mut [u8]) -> Result<(), Qcow2Error> {
        if out.len() != self.cluster_size {
            return Err(Qcow2Error::InvalidArgument(format!(
                "decompression output of {} bytes, the cluster size is {}",
                out.len(),
                self.cluster_size
            )));
        }
        match self.compression {
            Compression::Zlib => self.inflate(compressed, out),
            Compression::Zstd => self.unzstd(compressed, out),
        }
        .map_err(|detail| Qcow2Error::Decompress {
            compression: self.compression,
            detail,
        })
    }

    fn inflate(&mut self, input: &[u8], out: &mut [u8]) -> Result<(), String> {
        let z = self.zlib.get_or_insert_with(|| Decompress::new(false));
        z.reset(false);
        let (mut read, mut written) = (0usize, 0usize);
        loop {
            let (in_before, out_before) = (z.total_in(), z.total_out());
            let status = z
                .decompress(&input[read..], &mut out[written..], FlushDecompress::Finish)
                .map_err(|e| format!("invalid deflate data ({e})"))?;
            // Progress is bounded by the slices given, so these fit in usize.
            read += (z.total_in() - in_before) as usize;
            written += (z.total_out() - out_before) as usize;
            if written == out.len() {
                return Ok(());
            }
            let progressed = z.total_in() != in_before || z.total_out() != out_before;
            if status == Status::StreamEnd {
                return Err(format!(
                    "the deflate stream ends after {written} of {} bytes",
                    out.len()
                ));
            }
            if !progressed {
                return Err(format!(
                    "the deflate stream is cut short after {written} of {} bytes",
                    out.len()
                ));
            }
        }
    }

    fn unzstd(&mut self, input: &[u8], out: &mut [u8]) -> Result<(), String> {
        let d = match &mut self.zstd {
            Some(d) => d,
            slot => {
                let mut d = Decoder::new().map_err(|e| format!("zstd: {e}"))?;
                d.set_parameter(DParameter::WindowLogMax(ZSTD_WINDOW_LOG_MAX))
                    .map_err(|e| format!("zstd: {e}"))?;
                slot.insert(d)
            }
        };
        d.reinit().map_err(|e| format!("zstd: {e}"))?;
        let out_len = out.len();
        let mut input = InBuffer::around(input);
        let mut output = OutBuffer::around(out);
        // The cluster may hold several frames: go on until it is full.
        let mut hint = 0;
        while output.pos() < output.capacity() {
            let (in_before, out_before) = (input.pos(), output.pos());
            hint = d
                .run(&mut input, &mut output)
                .map_err(|e| format!("invalid zstd data ({e})"))?;
            if input.pos() == in_before && output.pos() == out_before {
                return Err(format!(
                    "the zstd stream is cut short after {} of {} bytes",
                    output.pos(),
                    output.capacity()
                ));
            }
        }
        if hint != 0 {
            // The cluster is full but the frame is not finished: let the decoder read what
            // is left of it (its end, or a checksum) without room for more output.
            let mut no_room = OutBuffer::around(&mut [][..]);
            hint = d
                .run(&mut input, &mut no_room)
                .map_err(|e| format!("invalid zstd data ({e})"))?;
        }
        if hint != 0 {
            // The frame wants to produce more than one cluster, or is cut short.
            return Err(format!(
                "the zstd frame does not end after one cluster ({} bytes)",
                out_len
            ));
        }
        Ok(())
    }
}

/// Decompresses one cluster: a one-off [`Decompressor`]. Prefer a `Decompressor` kept for the
/// whole image when there are many clusters.
pub fn decompress(h: &Header, compressed: &[u8], out: &mut [u8]) -> Result<(), Qcow2Error> {
    Decompressor::new(h).decompress(compressed, out)
}
