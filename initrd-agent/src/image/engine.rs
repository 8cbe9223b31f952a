//! engine: one pass from a source to a target. Detects the format from the bytes served,
//! checks the image against the disk before writing anything, streams qcow2 (own converter)
//! or raw (plain or zstd/xz/gzip-compressed) to the disk while a second thread hashes exactly
//! the bytes served and a third writes, verifies the checksum, and only then writes the first
//! MiB. Any failure leaves the first MiB zeroed: never a bootable half-image.
//!
//! qcow2 has two modes, chosen by the source:
//! - **range**: the server answers Range requests, so the header, the L1 and every L2 table
//!   are fetched first (few coalesced requests); the ordered pass then knows where every byte
//!   goes the moment it arrives, and holds nothing.
//! - **ordered**: no Range. Tables are learnt as they stream past; bytes that may still turn out
//!   to be data (seen before the L2 table that maps them, e.g. after `qemu-img resize` moved the
//!   L1 table to the end) are held in memory up to `memory_budget`, then spilled to a scratch
//!   area of the target past the image's end, and placed once their table arrives. Only when
//!   even that has no room does the guide's "too big to download in memory" error come.

use std::collections::BTreeMap;
use std::io::Read;
use std::ops::Range;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::JoinHandle;
use std::time::Instant;

use byol_spec::{Checksum, ImageType, SpecError};
use bytes::{Bytes, BytesMut};
use serde::Serialize;

use super::detect::{self, Detected};
use super::hash::{self, HashThread};
use super::progress::{Progress, Report};
use super::qcow2::{self, Decompressor, Extent, Header, Qcow2Error};
use super::source::{self, Source, SourceError, SourceOptions};
use super::target::{HEAD_LEN, Target, TargetError};

/// Bytes read from the source per chunk.
const CHUNK: usize = 1 << 20;
/// Write operations queued for the writer thread (each ≤ CHUNK).
const WRITE_QUEUE: usize = 16;
/// Default memory for qcow2 bytes that cannot be placed yet.
pub const DEFAULT_MEMORY_BUDGET: u64 = 16 << 20;
/// Zero runs in raw images shorter than this are written as data.
const ZERO_BLOCK: usize = 64 << 10;

#[derive(Debug, Clone)]
pub struct WriteOptions {
    /// http(s) URL or local path.
    pub source: String,
    /// Block device or file.
    pub target: PathBuf,
    /// What the user says the image is (`imageType`); None accepts qcow2 and raw.
    pub expected: Option<ImageType>,
    pub checksum: Option<Checksum>,
    pub source_opts: SourceOptions,
    /// Memory for qcow2 data that cannot be placed yet (ordered mode).
    pub memory_budget: u64,
    /// Create the target file when missing (host CLI).
    pub create_target: bool,
    /// Use Range requests for the qcow2 tables when the server allows them.
    pub use_range: bool,
    /// Called once the image is written and verified, just before its first MiB goes to the
    /// disk, with that first MiB and the target (which holds the rest): an `Err` refuses the
    /// image, and its first MiB is never written.
    pub before_commit: Option<BeforeCommit>,
}

/// See [`WriteOptions::before_commit`].
/// The check itself, given the disk as it will read once committed (the held first MiB over
/// the written rest).
pub type CommitCheck = dyn Fn(&dyn crate::disk::DiskView) -> Result<(), String> + Send + Sync;

#[derive(Clone)]
pub struct BeforeCommit(pub std::sync::Arc<CommitCheck>);

impl std::fmt::Debug for BeforeCommit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("BeforeCommit(..)")
    }
}

impl WriteOptions {
    pub fn new(source: impl Into<String>, target: impl Into<PathBuf>) -> Self {
        WriteOptions {
            source: source.into(),
            target: target.into(),
            expected: None,
            checksum: None,
            source_opts: SourceOptions::default(),
            memory_budget: DEFAULT_MEMORY_BUDGET,
            create_target: false,
            use_range: true,
            before_commit: None,
        }
    }
}

/// What one write did (the CLI prints it as one JSON line).
#[derive(Debug, Clone, Serialize)]
pub struct Summary {
    pub format: String,
    /// `range`, `ordered` (qcow2) or `stream` (raw).
    pub mode: String,
    pub bytes_read: u64,
    pub bytes_written: u64,
    pub virtual_size: u64,
    pub seconds: f64,
    pub checksum_type: Option<String>,
    pub checksum: Option<String>,
    pub resumes: u32,
    /// Most bytes held in memory at once (ordered qcow2).
    pub held_peak: u64,
    /// Bytes spilled to the target's scratch area (ordered qcow2).
    pub spilled: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// Errors with the OVH guide's wording (format mismatch, size, checksum, download…).
    #[error("{0}")]
    Spec(#[from] SpecError),
    #[error("{0}")]
    Source(#[from] SourceError),
    /// The image was written and verified, but [`WriteOptions::before_commit`] refused it.
    #[error("{0}")]
    Refused(String),
    /// The image cannot be converted or written: the guide's "Can't write qcow2 on disk".
    #[error("Can't write {format} on disk ({cause})")]
    Write { format: &'static str, cause: String },
    #[error("{0}")]
    Other(String),
}

impl EngineError {
    fn qcow2(e: impl std::fmt::Display) -> Self {
        EngineError::Write {
            format: "qcow2",
            cause: e.to_string(),
        }
    }
}

/// Streams the image to the target. On error the target's first MiB is zeroed.
pub fn write_image(
    opts: &WriteOptions,
    progress: &mut dyn Progress,
) -> Result<Summary, EngineError> {
    let t0 = Instant::now();
    let mut src = source::open(&opts.source, &opts.source_opts)?;
    let target = Target::open(&opts.target, opts.create_target)
        .map_err(|e| EngineError::Other(e.to_string()))?;
    let mut run = Run::new(opts, target, t0);
    let res = run.go(&mut *src, progress);
    let target = match run.writer.take() {
        Some(w) => {
            let (t, err) = w.finish();
            match (res, err) {
                (Ok(_), Some(e)) => {
                    invalidate(t);
                    return Err(write_err(run.format, e));
                }
                (r, _) => (t, r),
            }
        }
        None => match run.target.take() {
            Some(t) => (t, res),
            None => return Err(EngineError::Other("internal: the target was lost".into())),
        },
    };
    match target {
        (t, Ok(mut summary)) => {
            if !t.is_block_device() {
                // a file ends exactly at the image's size (scratch area and trailing zeroes)
                set_file_len(&opts.target, summary.virtual_size).map_err(|e| {
                    EngineError::Write {
                        format: run.format,
                        cause: e,
                    }
                })?;
            }
            if let Some(check) = &opts.before_commit
                && let Err(m) = (check.0)(&t)
            {
                invalidate(t);
                return Err(EngineError::Refused(m));
            }
            t.commit().map_err(|e| write_err(run.format, e))?;
            summary.seconds = t0.elapsed().as_secs_f64();
            summary.resumes = src.resumes();
            progress.note(&format!(
                "image written and verified in {:.1} s",
                summary.seconds
            ));
            Ok(summary)
        }
        (t, Err(e)) => {
            invalidate(t);
            Err(e)
        }
    }
}

fn set_file_len(path: &std::path::Path, len: u64) -> Result<(), String> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .and_then(|f| f.set_len(len))
        .map_err(|e| format!("cannot set the size of {} to {len}: {e}", path.display()))
}

fn invalidate(t: Target) {
    if let Err(e) = t.invalidate() {
        eprintln!("byol-agent: could not zero the first MiB after a failure: {e}");
    }
}

fn write_err(format: &'static str, e: TargetError) -> EngineError {
    EngineError::Write {
        format,
        cause: e.to_string(),
    }
}

/// State of one write.
struct Run<'a> {
    opts: &'a WriteOptions,
    target: Option<Target>,
    writer: Option<Writer>,
    format: &'static str,
    t0: Instant,
}

impl<'a> Run<'a> {
    fn new(opts: &'a WriteOptions, target: Target, t0: Instant) -> Self {
        Run {
            opts,
            target: Some(target),
            writer: None,
            format: "qcow2",
            t0,
        }
    }

    fn go(
        &mut self,
        src: &mut dyn Source,
        progress: &mut dyn Progress,
    ) -> Result<Summary, EngineError> {
        // With Range, the head and the qcow2 tables are read first and the ordered pass opens
        // after; without, the ordered pass opens now and its first bytes are the head.
        let range_ok = self.opts.use_range && src.supports_range();
        let mut chunks = if range_ok {
            None
        } else {
            Some(self.open_stream(src)?)
        };
        let first = match &mut chunks {
            Some(c) => c.peek()?,
            None => Bytes::from(src.read_at(0, 4096)?),
        };
        let found = detect::detect(&first);
        // what a compression holds: only raw is supported inside one
        let inside = found.is_compression().then(|| {
            let mut d = detect::decompressor(found, Box::new(std::io::Cursor::new(first.to_vec())));
            let mut buf = vec![0u8; detect::PEEK_LEN];
            let n = read_full(&mut d, &mut buf).unwrap_or(0);
            detect::detect(&buf[..n])
        });
        let inner = inside.unwrap_or(found);
        if let Some(expected) = self.opts.expected {
            detect::check_expected(expected, found)?;
        }
        detect::check_supported(found, inside).map_err(|e| EngineError::Other(e.to_string()))?;
        progress.note(&format!("image format: {}", detect::format_name(found)));
        match inner {
            Detected::Qcow2 => self.qcow2(src, chunks, progress),
            Detected::Raw => {
                self.format = "raw";
                let chunks = match chunks {
                    Some(c) => c,
                    None => self.open_stream(src)?,
                };
                self.raw(found, chunks, progress)
            }
            other => Err(EngineError::Other(format!(
                "{} images are not supported: convert it with `qemu-img convert -O qcow2`",
                detect::format_name(other)
            ))),
        }
    }

    fn open_stream(&self, src: &mut dyn Source) -> Result<Chunks, EngineError> {
        let hasher = self
            .opts
            .checksum
            .as_ref()
            .map(|c| HashThread::spawn(c.kind));
        let stream = src.stream()?;
        Ok(Chunks::new(
            stream,
            hasher,
            src.len(),
            self.t0,
            src.resume_counter(),
        ))
    }

    fn start_writer(&mut self) -> Result<(), EngineError> {
        let t = self
            .target
            .take()
            .ok_or_else(|| EngineError::Other("target already taken".into()))?;
        self.writer = Some(Writer::spawn(t)?);
        Ok(())
    }

    fn target_ref(&self) -> &Target {
        self.target
            .as_ref()
            .expect("target present before the writer starts")
    }

    /// Raw, plain or compressed: bytes go to the disk in order; runs of zero blocks become
    /// write-zeroes.
    fn raw(
        &mut self,
        found: Detected,
        mut chunks: Chunks,
        progress: &mut dyn Progress,
    ) -> Result<Summary, EngineError> {
        let plain = found == Detected::Raw;
        let known = if plain { chunks.total } else { None };
        if let Some(len) = known {
            self.target_ref().check_fits(len)?;
        }
        let disk = self.target_ref().size();
        let name = self.target_ref().name().to_string();
        if let Some(t) = self.target.as_mut() {
            t.prepare(known.unwrap_or(0))
                .map_err(|e| write_err("raw", e))?;
        }
        self.start_writer()?;
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| EngineError::Other("writer missing".into()))?;
        let mut out = RawOut {
            pos: 0,
            zero_from: None,
            disk,
            name,
        };
        if plain {
            while let Some(c) = chunks.next()? {
                out.put(w, c)?;
                chunks.report(progress, Some(w));
            }
        } else {
            let written = w.written.clone();
            let mut d = detect::decompressor(
                found,
                Box::new(ChunkRead {
                    chunks: &mut chunks,
                    cur: Bytes::new(),
                    progress,
                    written,
                }),
            );
            loop {
                let mut buf = BytesMut::zeroed(CHUNK);
                let n = read_full(&mut d, &mut buf).map_err(io_to_engine)?;
                if n == 0 {
                    break;
                }
                buf.truncate(n);
                out.put(w, buf.freeze())?;
            }
        }
        out.flush_zeroes(w)?;
        w.barrier()?;
        let size = out.pos;
        let checksum = self.finish_hash(&mut chunks)?;
        let format = if plain {
            "raw"
        } else {
            detect::format_name(found)
        };
        Ok(self.summary(format, "stream", &chunks, size, checksum, 0, 0))
    }

    fn finish_hash(&mut self, chunks: &mut Chunks) -> Result<Option<String>, EngineError> {
        let (Some(h), Some(want)) = (chunks.hasher.take(), self.opts.checksum.as_ref()) else {
            return Ok(None);
        };
        let got = h.finish();
        hash::verify(want.kind, &got, &want.hex)?;
        Ok(Some(got))
    }

    #[allow(clippy::too_many_arguments)]
    fn summary(
        &self,
        format: &str,
        mode: &str,
        chunks: &Chunks,
        vsize: u64,
        checksum: Option<String>,
        held_peak: u64,
        spilled: u64,
    ) -> Summary {
        Summary {
            format: format.into(),
            mode: mode.into(),
            bytes_read: chunks.pos,
            bytes_written: self
                .writer
                .as_ref()
                .map_or(0, |w| w.written.load(Ordering::Relaxed)),
            virtual_size: vsize,
            seconds: self.t0.elapsed().as_secs_f64(),
            checksum_type: self
                .opts
                .checksum
                .as_ref()
                .map(|c| c.kind.as_str().to_string()),
            checksum,
            resumes: 0,
            held_peak,
            spilled,
        }
    }

    fn qcow2(
        &mut self,
        src: &mut dyn Source,
        chunks: Option<Chunks>,
        progress: &mut dyn Progress,
    ) -> Result<Summary, EngineError> {
        let range_mode = chunks.is_none();
        let mut chunks = chunks;
        // The header: from a Range read, or from the ordered pass's first bytes (more if it asks).
        let mut want = qcow2::Header::PROBE_LEN;
        let h = loop {
            let head = match &mut chunks {
                Some(c) => {
                    c.peek_more(want)?;
                    c.peek()?
                }
                None => Bytes::from(src.read_at(0, want)?),
            };
            match Header::parse(&head) {
                Ok(h) => break h,
                Err(Qcow2Error::NeedMoreHeader { needed, .. }) if needed > want => want = needed,
                Err(e) => return Err(EngineError::qcow2(e)),
            }
        };
        let vsize = h.virtual_size();
        self.target_ref().check_fits(vsize)?;
        let mut q = QState::new(&h, self.opts.memory_budget);
        let range_mode = range_mode && q.preload(src, &h)?;
        if range_mode {
            progress.note(&format!(
                "qcow2 tables read with Range requests: {} L2 tables",
                q.l2_count
            ));
        } else {
            q = QState::new(&h, self.opts.memory_budget);
            progress.note("the qcow2 tables are learnt while streaming");
        }
        let disk = self.target_ref().size();
        q.held.spill_area = vsize.div_ceil(HEAD_LEN) * HEAD_LEN..disk.unwrap_or(u64::MAX);
        q.held.read_path = Some(self.opts.target.clone());
        if let Some(t) = self.target.as_mut() {
            t.prepare(vsize).map_err(|e| write_err("qcow2", e))?;
        }
        let mut chunks = match chunks {
            Some(c) => c,
            None => self.open_stream(src)?,
        };
        self.start_writer()?;
        let w = self
            .writer
            .as_mut()
            .ok_or_else(|| EngineError::Other("writer missing".into()))?;
        while let Some(c) = chunks.next()? {
            q.feed(w, c)?;
            chunks.report(progress, Some(w));
        }
        let total = chunks.pos;
        q.finish(w, total)?;
        let checksum = self.finish_hash(&mut chunks)?;
        let (peak, spilled) = (q.held.peak, q.held.spilled_total);
        Ok(self.summary(
            "qcow2",
            if range_mode { "range" } else { "ordered" },
            &chunks,
            vsize,
            checksum,
            peak,
            spilled,
        ))
    }
}

// ---------------------------------------------------------------- reading, hashing

/// The ordered pass as chunks of up to CHUNK bytes, each fed to the hash thread as it is read.
struct Chunks {
    inner: Box<dyn Read + Send>,
    hasher: Option<HashThread>,
    total: Option<u64>,
    /// Bytes handed out by next().
    pos: u64,
    /// Bytes read ahead by peek(), not handed out yet.
    peeked: Option<Bytes>,
    eof: bool,
    t0: Instant,
    last_report: Option<Instant>,
    /// The source's reconnect count, for the progress reports.
    resumes: Arc<std::sync::atomic::AtomicU32>,
}

impl Chunks {
    fn new(
        inner: Box<dyn Read + Send>,
        hasher: Option<HashThread>,
        total: Option<u64>,
        t0: Instant,
        resumes: Arc<std::sync::atomic::AtomicU32>,
    ) -> Self {
        Chunks {
            inner,
            hasher,
            total,
            pos: 0,
            peeked: None,
            eof: false,
            t0,
            last_report: None,
            resumes,
        }
    }

    fn read_raw(&mut self, want: usize) -> Result<Bytes, EngineError> {
        let mut buf = BytesMut::zeroed(want);
        let n = read_full(&mut self.inner, &mut buf).map_err(io_to_engine)?;
        if n < want {
            self.eof = true;
        }
        buf.truncate(n);
        let b = buf.freeze();
        if let Some(h) = self.hasher.as_ref().filter(|_| !b.is_empty()) {
            h.feed(b.clone());
        }
        Ok(b)
    }

    /// The first bytes of the stream (at least one chunk, or all of a small file).
    fn peek(&mut self) -> Result<Bytes, EngineError> {
        if self.peeked.is_none() {
            let b = self.read_raw(CHUNK)?;
            self.peeked = Some(b);
        }
        Ok(self.peeked.clone().unwrap_or_default())
    }

    /// Extends the peeked head to at least `len` bytes (qcow2 headers up to one cluster).
    fn peek_more(&mut self, len: usize) -> Result<(), EngineError> {
        let have = self.peek()?;
        if have.len() >= len || self.eof {
            return Ok(());
        }
        let more = self.read_raw(len - have.len())?;
        let mut joined = BytesMut::with_capacity(have.len() + more.len());
        joined.extend_from_slice(&have);
        joined.extend_from_slice(&more);
        self.peeked = Some(joined.freeze());
        Ok(())
    }

    fn next(&mut self) -> Result<Option<Bytes>, EngineError> {
        let b = match self.peeked.take() {
            Some(b) => b,
            None if self.eof => return Ok(None),
            None => self.read_raw(CHUNK)?,
        };
        if b.is_empty() {
            return Ok(None);
        }
        self.pos += b.len() as u64;
        Ok(Some(b))
    }

    fn report(&mut self, progress: &mut dyn Progress, w: Option<&Writer>) {
        let now = Instant::now();
        if self
            .last_report
            .is_some_and(|l| now.duration_since(l).as_millis() < 250)
        {
            return;
        }
        self.last_report = Some(now);
        progress.report(&Report {
            read: self.pos,
            total: self.total,
            written: w.map_or(0, |w| w.written.load(Ordering::Relaxed)),
            elapsed: self.t0.elapsed().as_secs_f64(),
            resumes: self.resumes.load(Ordering::Relaxed),
        });
    }
}

/// `Read` over the chunks (for the decompressors), reporting progress as it goes.
struct ChunkRead<'a> {
    chunks: &'a mut Chunks,
    cur: Bytes,
    progress: &'a mut dyn Progress,
    written: Arc<AtomicU64>,
}

impl Read for ChunkRead<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.cur.is_empty() {
            match self.chunks.next() {
                Ok(Some(b)) => {
                    self.cur = b;
                    let now = Instant::now();
                    if self
                        .chunks
                        .last_report
                        .is_none_or(|l| now.duration_since(l).as_millis() >= 250)
                    {
                        self.chunks.last_report = Some(now);
                        self.progress.report(&Report {
                            read: self.chunks.pos,
                            total: self.chunks.total,
                            written: self.written.load(Ordering::Relaxed),
                            elapsed: self.chunks.t0.elapsed().as_secs_f64(),
                            resumes: self.chunks.resumes.load(Ordering::Relaxed),
                        });
                    }
                }
                Ok(None) => return Ok(0),
                Err(e) => return Err(std::io::Error::other(e)),
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        let _ = self.cur.split_to(n);
        Ok(n)
    }
}

fn read_full(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

/// A read error from the source carries a SourceError (the guide's download wording), one
/// from ChunkRead an EngineError: give them back as they were.
fn io_to_engine(e: std::io::Error) -> EngineError {
    let kind_known = e
        .get_ref()
        .is_some_and(|i| i.is::<SourceError>() || i.is::<EngineError>());
    if !kind_known {
        return EngineError::Other(format!("reading the image: {e}"));
    }
    match e.into_inner().map(|i| i.downcast::<SourceError>()) {
        Some(Ok(se)) => EngineError::Source(*se),
        Some(Err(other)) => match other.downcast::<EngineError>() {
            Ok(ee) => *ee,
            Err(other) => EngineError::Other(format!("reading the image: {other}")),
        },
        None => EngineError::Other("reading the image failed".into()),
    }
}

// ---------------------------------------------------------------- writing

enum Op {
    Write(u64, Bytes),
    Zero(u64, u64),
    /// Answered once every earlier op is done.
    Barrier(SyncSender<()>),
}

/// The target, on its own thread: the disk's latency does not stall the download.
struct Writer {
    tx: Option<SyncSender<Op>>,
    handle: Option<JoinHandle<(Target, Option<TargetError>)>>,
    /// Set when the thread stopped on an error: the target and the error (reported once).
    stopped: Option<(Target, Option<TargetError>)>,
    written: Arc<AtomicU64>,
}

impl Writer {
    fn spawn(mut t: Target) -> Result<Writer, EngineError> {
        let (tx, rx): (SyncSender<Op>, Receiver<Op>) = sync_channel(WRITE_QUEUE);
        let written = Arc::new(AtomicU64::new(0));
        let w = written.clone();
        let handle = std::thread::Builder::new()
            .name("byol-writer".into())
            .spawn(move || {
                for op in rx {
                    let r = match op {
                        Op::Write(off, b) => {
                            let r = t.write_at(off, &b);
                            w.fetch_add(b.len() as u64, Ordering::Relaxed);
                            r
                        }
                        Op::Zero(off, len) => t.write_zeroes(off, len),
                        Op::Barrier(done) => {
                            let _ = done.send(());
                            Ok(())
                        }
                    };
                    if let Err(e) = r {
                        return (t, Some(e));
                    }
                }
                (t, None)
            })
            .map_err(|e| EngineError::Other(format!("cannot start the writer thread: {e}")))?;
        Ok(Writer {
            tx: Some(tx),
            handle: Some(handle),
            stopped: None,
            written,
        })
    }

    fn send(&mut self, op: Op) -> Result<(), EngineError> {
        if self.tx.as_ref().is_some_and(|tx| tx.send(op).is_ok()) {
            return Ok(());
        }
        // the writer stopped on an error: take its target and report the error
        self.tx = None;
        if let Some(h) = self.handle.take() {
            match h.join() {
                Ok(stopped) => self.stopped = Some(stopped),
                Err(_) => return Err(EngineError::Other("the writer thread panicked".into())),
            }
        }
        let cause = match &mut self.stopped {
            Some((_, e)) => e
                .take()
                .map_or_else(|| "the writer stopped".to_string(), |e| e.to_string()),
            None => "the writer stopped".into(),
        };
        Err(EngineError::Write {
            format: "image",
            cause,
        })
    }

    fn write(&mut self, off: u64, b: Bytes) -> Result<(), EngineError> {
        if b.is_empty() {
            return Ok(());
        }
        self.send(Op::Write(off, b))
    }

    fn zero(&mut self, off: u64, len: u64) -> Result<(), EngineError> {
        if len == 0 {
            return Ok(());
        }
        self.send(Op::Zero(off, len))
    }

    /// Returns once every op sent before is done.
    fn barrier(&mut self) -> Result<(), EngineError> {
        let (tx, rx) = sync_channel(1);
        self.send(Op::Barrier(tx))?;
        rx.recv()
            .map_err(|_| EngineError::Other("the writer thread stopped".into()))
    }

    /// Stops the thread: the target, and the error it stopped on if not reported yet.
    fn finish(mut self) -> (Target, Option<TargetError>) {
        self.tx = None;
        if let Some(stopped) = self.stopped.take() {
            return stopped;
        }
        match self.handle.take().map(JoinHandle::join) {
            Some(Ok(r)) => r,
            // unreachable in practice: the thread only calls Target methods, which do not panic
            _ => std::process::abort(),
        }
    }
}

/// Raw output with zero-run detection.
struct RawOut {
    pos: u64,
    zero_from: Option<u64>,
    disk: Option<u64>,
    name: String,
}

impl RawOut {
    fn put(&mut self, w: &mut Writer, c: Bytes) -> Result<(), EngineError> {
        if let Some(disk) = self.disk {
            let end = self.pos + c.len() as u64;
            if end > disk {
                return Err(SpecError::ImageTooLarge {
                    image: end,
                    device: self.name.clone(),
                    disk,
                }
                .into());
            }
        }
        let mut i = 0;
        while i < c.len() {
            let n = ZERO_BLOCK.min(c.len() - i);
            let block = &c[i..i + n];
            let off = self.pos + i as u64;
            if is_zero(block) {
                self.zero_from.get_or_insert(off);
            } else {
                self.flush_zeroes_to(w, off)?;
                // extend to the end of this run of data blocks
                let mut j = i + n;
                while j < c.len() {
                    let m = ZERO_BLOCK.min(c.len() - j);
                    if is_zero(&c[j..j + m]) {
                        break;
                    }
                    j += m;
                }
                w.write(off, c.slice(i..j))?;
                i = j;
                continue;
            }
            i += n;
        }
        self.pos += c.len() as u64;
        Ok(())
    }

    fn flush_zeroes_to(&mut self, w: &mut Writer, end: u64) -> Result<(), EngineError> {
        if let Some(z) = self.zero_from.take() {
            w.zero(z, end - z)?;
        }
        Ok(())
    }

    fn flush_zeroes(&mut self, w: &mut Writer) -> Result<(), EngineError> {
        let end = self.pos;
        self.flush_zeroes_to(w, end)
    }
}

fn is_zero(b: &[u8]) -> bool {
    let mut it = b.chunks_exact(16);
    it.by_ref()
        .all(|c| u128::from_ne_bytes(c.try_into().unwrap_or([1; 16])) == 0)
        && it.remainder().iter().all(|&x| x == 0)
}

// ---------------------------------------------------------------- qcow2 streaming

/// An extent whose file bytes have not all streamed past yet.
struct Active {
    ext: Extent,
    /// Compressed: the bytes gathered so far.
    buf: Vec<u8>,
}

struct QState {
    h: Header,
    dec: Decompressor,
    /// Bytes of the file seen so far.
    pos: u64,
    l1: Option<Vec<u64>>,
    l1_buf: Vec<u8>,
    /// L2 tables known from L1 and not yet complete: file offset → (L1 index, bytes so far).
    l2_pending: BTreeMap<u64, (usize, Vec<u8>)>,
    l2_count: usize,
    /// Extents not yet complete, by (file start, guest).
    active: BTreeMap<(u64, u64), Active>,
    /// Every extent (checked as a Plan at the end).
    all: Vec<Extent>,
    zeros: Vec<Range<u64>>,
    held: Held,
    cluster: Vec<u8>,
}

impl QState {
    fn new(h: &Header, budget: u64) -> Self {
        QState {
            h: h.clone(),
            dec: Decompressor::new(h),
            pos: 0,
            l1: None,
            l1_buf: Vec::new(),
            l2_pending: BTreeMap::new(),
            l2_count: 0,
            active: BTreeMap::new(),
            all: Vec::new(),
            zeros: Vec::new(),
            held: Held::new(budget),
            cluster: vec![0u8; h.cluster_size() as usize],
        }
    }

    /// Range mode: L1 and every L2 table before the ordered pass, in few coalesced requests.
    /// Returns false (nothing learnt) when the tables are so many and so spread (small
    /// clusters) that fetching them would cost more than learning them in the ordered pass.
    fn preload(&mut self, src: &mut dyn Source, h: &Header) -> Result<bool, EngineError> {
        let (off, len) = h.l1_range();
        let l1_bytes = src.read_at(off, len as usize)?;
        let l1 = qcow2::parse_l1(h, &l1_bytes).map_err(EngineError::qcow2)?;
        let tables = qcow2::l2_tables(&l1);
        let cs = h.l2_table_bytes();
        // groups of neighbouring tables, read as one request of at most 8 MiB
        let mut groups: Vec<(usize, usize, u64, u64)> = Vec::new(); // table indices i..j, file range
        let mut i = 0;
        while i < tables.len() {
            let start = tables[i].1;
            let mut j = i + 1;
            while j < tables.len()
                && tables[j].1 + cs - start <= 8 << 20
                && tables[j].1.saturating_sub(tables[j - 1].1 + cs) <= 64 << 10
            {
                j += 1;
            }
            groups.push((i, j, start, tables[j - 1].1 + cs));
            i = j;
        }
        let fetch: u64 = groups.iter().map(|g| g.3 - g.2).sum();
        let file_len = src.len().unwrap_or(u64::MAX);
        if groups.len() > 256 || fetch > file_len / 8 + (1 << 20) {
            return Ok(false);
        }
        self.l2_count = tables.len();
        for (i, j, start, end) in groups {
            let bytes = src.read_at(start, (end - start) as usize)?;
            for &(idx, t) in &tables[i..j] {
                let a = (t - start) as usize;
                let b = bytes.get(a..a + cs as usize).ok_or_else(|| {
                    EngineError::qcow2(format!(
                        "the L2 table at offset {t} is past the end of the file"
                    ))
                })?;
                let exts = qcow2::parse_l2(h, idx, b).map_err(EngineError::qcow2)?;
                self.add_known(exts);
            }
        }
        self.add_unallocated_l1(&l1);
        self.l1 = Some(l1);
        Ok(true)
    }

    fn add_unallocated_l1(&mut self, l1: &[u64]) {
        let span = self.h.l1_entry_span();
        let vsize = self.h.virtual_size();
        for (i, &e) in l1.iter().enumerate() {
            if e == 0 {
                let g = i as u64 * span;
                self.zeros.push(g..(g + span).min(vsize));
            }
        }
    }

    /// Extents known before any byte streams (range mode).
    fn add_known(&mut self, exts: Vec<Extent>) {
        for e in exts {
            self.all.push(e);
            match e {
                Extent::Zero { guest, len } | Extent::Unallocated { guest, len } => {
                    self.zeros.push(guest..guest + len)
                }
                Extent::Data { guest, file, .. } | Extent::Compressed { guest, file, .. } => {
                    self.active.insert(
                        (file, guest),
                        Active {
                            ext: e,
                            buf: Vec::new(),
                        },
                    );
                }
            }
        }
    }

    fn all_known(&self) -> bool {
        self.l1.is_some() && self.l2_pending.is_empty()
    }

    /// Places a newly learnt extent: bytes already streamed come from the held store.
    fn learn(&mut self, w: &mut Writer, exts: Vec<Extent>) -> Result<(), EngineError> {
        for e in exts {
            self.all.push(e);
            let (guest, fr) = match e {
                Extent::Zero { guest, len } | Extent::Unallocated { guest, len } => {
                    self.zeros.push(guest..guest + len);
                    continue;
                }
                Extent::Data { guest, .. } | Extent::Compressed { guest, .. } => {
                    (guest, e.file_range().unwrap_or(0..0))
                }
            };
            let mut a = Active {
                ext: e,
                buf: Vec::new(),
            };
            if fr.start < self.pos {
                let seen = fr.start..fr.end.min(self.pos);
                let prefix = self.held.get(w, seen.clone()).map_err(EngineError::qcow2)?;
                match e {
                    Extent::Data { guest, .. } => w.write(guest, Bytes::from(prefix))?,
                    _ => a.buf = prefix,
                }
            }
            if fr.end <= self.pos {
                self.complete(w, a)?;
            } else {
                self.active.insert((fr.start, guest), a);
            }
        }
        Ok(())
    }

    fn complete(&mut self, w: &mut Writer, a: Active) -> Result<(), EngineError> {
        if let Extent::Compressed { guest, len, .. } = a.ext {
            self.dec
                .decompress(&a.buf, &mut self.cluster)
                .map_err(EngineError::qcow2)?;
            w.write(guest, Bytes::copy_from_slice(&self.cluster[..len as usize]))?;
        }
        Ok(())
    }

    fn finish_l1(&mut self, w: &mut Writer) -> Result<(), EngineError> {
        let l1 = qcow2::parse_l1(&self.h, &self.l1_buf).map_err(EngineError::qcow2)?;
        self.l1_buf = Vec::new();
        let cs = self.h.l2_table_bytes();
        let tables = qcow2::l2_tables(&l1);
        self.l2_count = tables.len();
        self.add_unallocated_l1(&l1);
        self.l1 = Some(l1);
        for (idx, off) in tables {
            let seen = off..(off + cs).min(self.pos);
            let buf = if seen.start < seen.end {
                self.held.get(w, seen).map_err(EngineError::qcow2)?
            } else {
                Vec::new()
            };
            if off + cs <= self.pos {
                let exts = qcow2::parse_l2(&self.h, idx, &buf).map_err(EngineError::qcow2)?;
                self.learn(w, exts)?;
            } else {
                self.l2_pending.insert(off, (idx, buf));
            }
        }
        Ok(())
    }

    /// One chunk of the ordered pass. It is cut where a table completes, so bytes after a
    /// table in the same chunk are placed with what that table says.
    fn feed(&mut self, w: &mut Writer, c: Bytes) -> Result<(), EngineError> {
        let start = self.pos;
        let end = start + c.len() as u64;
        let mut cur = start;
        while cur < end {
            let b = self.next_boundary(cur, end);
            self.feed_part(
                w,
                c.slice((cur - start) as usize..(b - start) as usize),
                cur,
            )?;
            cur = b;
        }
        Ok(())
    }

    /// The end of the current piece: the chunk's end, or where the L1 or an L2 table completes.
    fn next_boundary(&self, cur: u64, end: u64) -> u64 {
        let mut b = end;
        if self.l1.is_none() {
            let (off, len) = self.h.l1_range();
            if off + len > cur {
                b = b.min(off + len);
            }
        }
        let cs = self.h.l2_table_bytes();
        if let Some((&off, _)) = self.l2_pending.range((cur + 1).saturating_sub(cs)..).next() {
            b = b.min(off + cs);
        }
        b.max(cur + 1).min(end)
    }

    fn feed_part(&mut self, w: &mut Writer, c: Bytes, start: u64) -> Result<(), EngineError> {
        let end = start + c.len() as u64;
        let part = start..end;
        let slice = |r: &Range<u64>| c.slice((r.start - start) as usize..(r.end - start) as usize);
        // the header cluster is never data
        let mut covered: Vec<Range<u64>> = vec![overlap(&(0..self.h.cluster_size()), &part)];
        if self.l1.is_none() {
            let (off, len) = self.h.l1_range();
            let ov = overlap(&(off..off + len), &part);
            if !ov.is_empty() {
                self.l1_buf.extend_from_slice(&slice(&ov));
                covered.push(ov);
            }
        }
        let cs = self.h.l2_table_bytes();
        let keys: Vec<u64> = self.l2_pending.range(..end).map(|(&k, _)| k).collect();
        for off in keys {
            let ov = overlap(&(off..off + cs), &part);
            if ov.is_empty() {
                continue;
            }
            if let Some((_, buf)) = self.l2_pending.get_mut(&off) {
                buf.extend_from_slice(&slice(&ov));
            }
            covered.push(ov);
        }
        let mut finished = Vec::new();
        for (key, a) in self.active.range_mut(..(end, 0)) {
            let fr = a.ext.file_range().unwrap_or(0..0);
            let ov = overlap(&fr, &part);
            if ov.is_empty() {
                continue;
            }
            match a.ext {
                Extent::Data { guest, file, .. } => {
                    w.write(guest + (ov.start - file), slice(&ov))?;
                    covered.push(ov);
                }
                _ => {
                    a.buf.extend_from_slice(&slice(&ov));
                    // the last sector of a compressed cluster's range may hold the start of
                    // the next one, whose table may still be ahead: it stays uncovered
                    let last_sector = (fr.end - 1) / qcow2::SECTOR_SIZE * qcow2::SECTOR_SIZE;
                    covered.push(overlap(&ov, &(fr.start..last_sector)));
                }
            }
            if fr.end <= end {
                finished.push(*key);
            }
        }
        for key in finished {
            if let Some(a) = self.active.remove(&key) {
                self.complete(w, a)?;
            }
        }
        if !self.all_known() {
            self.hold_uncovered(w, &c, start, &mut covered)?;
        }
        self.pos = end;
        // tables that complete here
        if self.l1.is_none() {
            let (off, len) = self.h.l1_range();
            if end >= off + len {
                self.finish_l1(w)?;
            }
        }
        let done: Vec<u64> = self
            .l2_pending
            .range(..end)
            .map(|(&o, _)| o)
            .filter(|o| o + cs <= end)
            .collect();
        for off in done {
            if let Some((idx, buf)) = self.l2_pending.remove(&off) {
                let exts = qcow2::parse_l2(&self.h, idx, &buf).map_err(EngineError::qcow2)?;
                self.learn(w, exts)?;
            }
        }
        if self.all_known() {
            self.held.clear();
        }
        Ok(())
    }

    /// Keeps the bytes of `c` that no table or known extent claimed: they may be data whose L2
    /// table is still ahead.
    fn hold_uncovered(
        &mut self,
        w: &mut Writer,
        c: &Bytes,
        start: u64,
        covered: &mut [Range<u64>],
    ) -> Result<(), EngineError> {
        let end = start + c.len() as u64;
        covered.sort_by_key(|r| r.start);
        let mut at = start;
        let mut gaps = Vec::new();
        for r in covered.iter().filter(|r| !r.is_empty()) {
            if r.start > at {
                gaps.push(at..r.start.min(end));
            }
            at = at.max(r.end);
        }
        if at < end {
            gaps.push(at..end);
        }
        for g in gaps.into_iter().filter(|g| !g.is_empty()) {
            self.held.put(
                w,
                g.start,
                c.slice((g.start - start) as usize..(g.end - start) as usize),
            )?;
        }
        Ok(())
    }

    fn finish(&mut self, w: &mut Writer, total: u64) -> Result<(), EngineError> {
        if self.l1.is_none() {
            return Err(EngineError::qcow2(format!(
                "the file ends at byte {total} before its L1 table"
            )));
        }
        if let Some((&off, _)) = self.l2_pending.iter().next() {
            return Err(EngineError::qcow2(format!(
                "the file ends at byte {total} before the L2 table at offset {off}"
            )));
        }
        // compressed clusters whose upper bound runs past the end: decompress what there is
        let rest: Vec<_> = std::mem::take(&mut self.active).into_values().collect();
        for a in rest {
            match a.ext {
                Extent::Compressed { .. } => self.complete(w, a)?,
                _ => {
                    return Err(EngineError::qcow2(format!(
                        "the file ends at byte {total}, inside data it maps at offset {}",
                        a.ext.file_range().map_or(0, |r| r.start)
                    )));
                }
            }
        }
        // the whole layout, checked once more as a plan (overlaps, past the end)
        let l1 = self.l1.clone().unwrap_or_default();
        let plan = qcow2::Plan::new(&self.h, &l1, std::mem::take(&mut self.all))
            .map_err(EngineError::qcow2)?;
        plan.check(Some(total)).map_err(EngineError::qcow2)?;
        // zeroes where the image has no data, coalesced
        let mut z = std::mem::take(&mut self.zeros);
        z.sort_by_key(|r| r.start);
        let mut cur: Option<Range<u64>> = None;
        for r in z {
            match &mut cur {
                Some(c) if r.start <= c.end => c.end = c.end.max(r.end),
                _ => {
                    if let Some(c) = cur.take() {
                        w.zero(c.start, c.end - c.start)?;
                    }
                    cur = Some(r);
                }
            }
        }
        if let Some(c) = cur {
            w.zero(c.start, c.end - c.start)?;
        }
        // the scratch area goes back to zeroes
        if self.held.spilled_total > 0 {
            let a = self.held.spill_area.start;
            w.zero(a, self.held.spill_used_max)?;
        }
        self.held.clear();
        w.barrier()
    }
}

fn overlap(a: &Range<u64>, b: &Range<u64>) -> Range<u64> {
    let s = a.start.max(b.start);
    let e = a.end.min(b.end);
    if s < e { s..e } else { s..s }
}

/// Bytes held until their L2 table arrives: memory first, then the target's scratch area.
struct Held {
    mem: BTreeMap<u64, Bytes>,
    mem_bytes: u64,
    budget: u64,
    /// file offset → (scratch offset, length)
    spilled: BTreeMap<u64, (u64, u64)>,
    spill_area: Range<u64>,
    spill_used: u64,
    spill_used_max: u64,
    spilled_total: u64,
    read_path: Option<PathBuf>,
    peak: u64,
}

impl Held {
    fn new(budget: u64) -> Self {
        Held {
            mem: BTreeMap::new(),
            mem_bytes: 0,
            budget,
            spilled: BTreeMap::new(),
            spill_area: 0..0,
            spill_used: 0,
            spill_used_max: 0,
            spilled_total: 0,
            read_path: None,
            peak: 0,
        }
    }

    fn put(&mut self, w: &mut Writer, off: u64, b: Bytes) -> Result<(), EngineError> {
        let len = b.len() as u64;
        if self.mem_bytes + len <= self.budget {
            self.mem_bytes += len;
            self.peak = self.peak.max(self.mem_bytes);
            self.mem.insert(off, b);
            return Ok(());
        }
        let at = self.spill_area.start + self.spill_used;
        if at.checked_add(len).is_none_or(|e| e > self.spill_area.end) {
            return Err(SpecError::TooBigForMemory.into());
        }
        w.write(at, b)?;
        self.spilled.insert(off, (at, len));
        self.spill_used += len;
        self.spill_used_max = self.spill_used_max.max(self.spill_used);
        self.spilled_total += len;
        Ok(())
    }

    /// The held bytes of `r`, which must all be there.
    fn get(&mut self, w: &mut Writer, r: Range<u64>) -> Result<Vec<u8>, String> {
        let mut out = vec![0u8; (r.end - r.start) as usize];
        let mut filled: Vec<Range<u64>> = Vec::new();
        for (&o, b) in self.mem.range(..r.end) {
            let ov = overlap(&(o..o + b.len() as u64), &r);
            if ov.is_empty() {
                continue;
            }
            out[(ov.start - r.start) as usize..(ov.end - r.start) as usize]
                .copy_from_slice(&b[(ov.start - o) as usize..(ov.end - o) as usize]);
            filled.push(ov);
        }
        let spilled: Vec<(u64, u64, u64)> = self
            .spilled
            .range(..r.end)
            .filter_map(|(&o, &(at, len))| {
                let ov = overlap(&(o..o + len), &r);
                (!ov.is_empty()).then_some((ov.start, ov.end, at + (ov.start - o)))
            })
            .collect();
        if !spilled.is_empty() {
            w.barrier().map_err(|e| e.to_string())?;
            let path = self.read_path.as_ref().ok_or("no scratch area")?;
            let f = std::fs::File::open(path)
                .map_err(|e| format!("reading back the scratch area of {}: {e}", path.display()))?;
            for (s, e, at) in spilled {
                let dst = &mut out[(s - r.start) as usize..(e - r.start) as usize];
                std::os::unix::fs::FileExt::read_exact_at(&f, dst, at).map_err(|e| {
                    format!("reading back the scratch area of {}: {e}", path.display())
                })?;
                filled.push(s..e);
            }
        }
        filled.sort_by_key(|f| f.start);
        let mut at = r.start;
        for f in &filled {
            if f.start > at {
                break;
            }
            at = at.max(f.end);
        }
        if at < r.end {
            return Err(format!(
                "bytes {}..{} of the file are needed but were not kept (inconsistent qcow2 tables)",
                at, r.end
            ));
        }
        Ok(out)
    }

    fn clear(&mut self) {
        self.mem.clear();
        self.mem_bytes = 0;
        self.spilled.clear();
        self.spill_used = 0;
    }
}
