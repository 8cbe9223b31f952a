//! hash: the image's checksum (md5, sha1, sha256 or sha512), computed on its own thread over
//! exactly the bytes of the file as served, so that hashing overlaps the download and the writes
//! (sha512 runs at only about 0.3 GB/s on one core), and the comparison with the expected value
//! with the guide's error text.
//!
//! The engine hands each chunk it reads to [`HashThread::feed`] as a [`Bytes`] (a reference-counted
//! view: no copy). The channel to the thread holds at most [`QUEUE_CHUNKS`] chunks, so memory
//! stays bounded: when the hasher falls behind, `feed` blocks until it catches up.

use std::sync::mpsc::{SyncSender, sync_channel};
use std::thread::JoinHandle;

pub use byol_spec::ChecksumType;
use byol_spec::SpecError;
use bytes::Bytes;
use md5::Digest as _;

/// How many chunks may wait for the hasher before [`HashThread::feed`] blocks.
pub const QUEUE_CHUNKS: usize = 16;

/// One running digest of any of the four kinds.
/// md5 from the md-5 crate; the SHA family from ring, whose assembly (from OpenSSL) is about
/// 20 % faster than the sha2 crate's AVX2 code for sha512 on this CPU, which matters because
/// sha512 is the slowest stage of the whole pipeline.
enum Hasher {
    Md5(md5::Md5),
    Ring(ring::digest::Context),
}

impl Hasher {
    fn new(kind: ChecksumType) -> Hasher {
        let ring = |alg| Hasher::Ring(ring::digest::Context::new(alg));
        match kind {
            ChecksumType::Md5 => Hasher::Md5(md5::Md5::new()),
            ChecksumType::Sha1 => ring(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY),
            ChecksumType::Sha256 => ring(&ring::digest::SHA256),
            ChecksumType::Sha512 => ring(&ring::digest::SHA512),
        }
    }

    fn update(&mut self, data: &[u8]) {
        match self {
            Hasher::Md5(h) => h.update(data),
            Hasher::Ring(c) => c.update(data),
        }
    }

    fn finish_hex(self) -> String {
        match self {
            Hasher::Md5(h) => hex::encode(h.finalize()),
            Hasher::Ring(c) => hex::encode(c.finish().as_ref()),
        }
    }
}

pub fn digest_hex(kind: ChecksumType, data: &[u8]) -> String {
    let mut h = Hasher::new(kind);
    h.update(data);
    h.finish_hex()
}

/// A checksum computed on a thread of its own, fed chunk by chunk in stream order.
pub struct HashThread {
    kind: ChecksumType,
    tx: SyncSender<Bytes>,
    handle: JoinHandle<String>,
}

impl HashThread {
    /// Starts the hashing thread, with a queue of [`QUEUE_CHUNKS`] chunks.
    pub fn spawn(kind: ChecksumType) -> HashThread {
        let (tx, rx) = sync_channel::<Bytes>(QUEUE_CHUNKS);
        let handle = std::thread::Builder::new()
            .name(format!("hash-{}", kind.as_str()))
            .spawn(move || {
                // The hash is the slowest stage (sha512 ≈ 0.45 GB/s here): it goes first when
                // the download, the writes and the server compete for the cores. Needs root
                // (the agent is PID 1); elsewhere it quietly stays at the normal priority.
                // SAFETY: plain syscalls on the calling thread, no memory handed over.
                unsafe {
                    let tid = libc::gettid();
                    libc::setpriority(libc::PRIO_PROCESS, tid as libc::id_t, -10);
                }
                let mut h = Hasher::new(kind);
                for chunk in rx {
                    h.update(&chunk);
                }
                h.finish_hex()
            })
            // Only fails when the system cannot create a thread at all (out of memory or
            // processes): nothing sensible can go on then.
            .unwrap_or_else(|e| panic!("cannot start the {} hashing thread: {e}", kind.as_str()));
        HashThread { kind, tx, handle }
    }

    /// Which digest this thread computes.
    pub fn kind(&self) -> ChecksumType {
        self.kind
    }

    /// Hands the next bytes of the stream to the hasher. Cloning a [`Bytes`] is cheap (a
    /// reference count); this blocks while [`QUEUE_CHUNKS`] chunks are already waiting.
    /// Empty chunks are skipped.
    pub fn feed(&self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        // The receiver only goes away if the thread died, which `finish` reports.
        let _ = self.tx.send(chunk);
    }

    /// Waits for the hasher to take in every chunk fed so far and returns the lowercase hex
    /// digest of the whole stream.
    pub fn finish(self) -> String {
        let HashThread { tx, handle, .. } = self;
        drop(tx);
        match handle.join() {
            Ok(hex) => hex,
            Err(panic) => std::panic::resume_unwind(panic),
        }
    }
}

/// Compares a computed digest with the expected one (case-insensitively, surrounding blanks
/// ignored). A mismatch is the guide's
/// ``Bad `sha512` for downloaded file, got : `…` while expecting `…`.``
pub fn verify(kind: ChecksumType, got_hex: &str, expected_hex: &str) -> Result<(), SpecError> {
    let got = got_hex.trim();
    let expected = expected_hex.trim();
    if got.eq_ignore_ascii_case(expected) && !got.is_empty() {
        Ok(())
    } else {
        Err(SpecError::BadChecksum {
            kind: kind.as_str().to_string(),
            got: got.to_ascii_lowercase(),
            expected: expected.to_string(),
        })
    }
}
