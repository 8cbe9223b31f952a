//! tftp: read-only TFTP for firmware: the iPXE binaries and `boot.ipxe`.
//!
//! This module owns the UDP side of the boot chain: it answers read requests for a fixed set of
//! files, each offered under one exact name ([`TftpFiles`]), either a file on disk (Debian's
//! `/usr/lib/ipxe/*.efi`, `undionly.kpxe`, …) or bytes held in memory (the rendered `boot.ipxe`).
//! Nothing else is reachable: names with a leading `/`, a `..` component or a backslash are
//! refused with an access-violation error, any other name that is not in the set gets
//! file-not-found, and write requests get illegal-operation. Each request is logged with
//! `tracing` (client, file, outcome, bytes).
//!
//! The protocol engine is async-tftp 0.4 (RFC 1350, options blksize, tsize, timeout and
//! windowsize). It is executor-agnostic: its I/O and timers run on async-io's reactor thread and
//! its per-transfer tasks live in an executor that [`TftpServerHandle::serve`] drives, so the
//! whole server is one task on the caller's tokio runtime; aborting or dropping that task drops
//! the executor and with it every transfer in flight.
//!
//! Timeout and retries: async-tftp ignores a client's ERROR packet sent after the option
//! acknowledgement, and UEFI PXE does exactly that (it asks for `tsize`, reads the size from the
//! OACK, then aborts and asks again for the real transfer). The server keeps resending the OACK
//! until its retries run out, so with async-tftp's defaults (3 s, 100 retries) each probe would
//! hold a task and a socket for five minutes. byol uses a 2 s timeout and 3 retries: an abandoned
//! transfer is resent at 2, 4 and 6 s and given up at 8 s, while a real client on a LAN (where a
//! lost packet is rare) still gets four chances per block. A client's
//! `timeout` option (RFC 2349, 1–255 s) is not honoured: the server's stays, so that an
//! abandoned request holds its session for seconds, not the 17 minutes a hostile 255 s would
//! give (neither iPXE nor EDK2's PXE asks for it). At most [`TftpConfig::max_sessions`]
//! transfers run at once (each holds a socket); a request beyond gets an error and the
//! firmware retries.
//! The window is capped at [`MAX_WINDOW_SIZE`] blocks so that what one transfer reads ahead
//! stays small.

use std::collections::BTreeMap;
use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use async_tftp::packet;
use async_tftp::server::{Handler, TftpServer, TftpServerBuilder};
use futures_lite::AsyncRead;
use futures_lite::io::BufReader;
use tracing::{debug, info, warn};

/// Largest window (RFC 7440) the server agrees to; a client asking for more gets this many.
pub const MAX_WINDOW_SIZE: u16 = 64;

/// How much of a file on disk a transfer reads at a time.
const FILE_READ_BUFFER: usize = 64 * 1024;

/// One file offered over TFTP.
#[derive(Clone)]
pub enum TftpFile {
    /// A file on disk, opened for each request (so a package upgrade is picked up).
    Path(PathBuf),
    /// Bytes held in memory, shared by all transfers.
    Bytes(Arc<Vec<u8>>),
}

impl fmt::Debug for TftpFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TftpFile::Path(path) => f.debug_tuple("Path").field(path).finish(),
            TftpFile::Bytes(bytes) => write!(f, "Bytes({} bytes)", bytes.len()),
        }
    }
}

/// The files offered, by exact name (e.g. `"undionly.kpxe"` ->
/// `Path("/usr/lib/ipxe/undionly.kpxe")`, `"boot.ipxe"` -> `Bytes(..)`).
///
/// A request must name one of them exactly: there is no directory behind the names, no case
/// folding and no leading-`/` stripping.
#[derive(Clone, Debug, Default)]
pub struct TftpFiles {
    files: BTreeMap<String, TftpFile>,
}

impl TftpFiles {
    /// An empty set.
    pub fn new() -> Self {
        Self::default()
    }

    /// Offers `file` under `name`; returns what was offered under that name before, if anything.
    ///
    /// A name that clients could never ask for (empty, starting with `/`, with a `..` component
    /// or a backslash) is accepted here but never served.
    pub fn insert(&mut self, name: impl AsRef<str>, file: TftpFile) -> Option<TftpFile> {
        self.files.insert(name.as_ref().to_owned(), file)
    }

    /// The names offered, sorted.
    pub fn names(&self) -> impl Iterator<Item = &str> + '_ {
        self.files.keys().map(String::as_str)
    }

    /// The file offered under exactly `name`.
    pub fn get(&self, name: &str) -> Option<&TftpFile> {
        self.files.get(name)
    }

    /// How many files are offered.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether no file is offered.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// Where and how the TFTP server listens.
#[derive(Clone, Debug)]
pub struct TftpConfig {
    /// Listening address; the standard port is 69 (which needs root or `CAP_NET_BIND_SERVICE`).
    pub bind: SocketAddr,
    /// How long to wait for an acknowledgement before resending (unless the client asks for its
    /// own with the `timeout` option). Default 2 s.
    pub timeout: Duration,
    /// How many times a packet is resent before the transfer is given up. Default 3.
    pub max_send_retries: u32,
    /// Transfers at once; a read request beyond gets an error ("server busy"). Default 128.
    pub max_sessions: usize,
}

impl Default for TftpConfig {
    fn default() -> Self {
        TftpConfig {
            bind: SocketAddr::from(([0, 0, 0, 0], 69)),
            timeout: Duration::from_secs(2),
            max_send_retries: 3,
            max_sessions: 128,
        }
    }
}

/// A bound TFTP server, not serving yet.
pub struct TftpServerHandle {
    server: TftpServer<FilesHandler>,
    local_addr: SocketAddr,
    names: Vec<String>,
}

impl fmt::Debug for TftpServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TftpServerHandle")
            .field("local_addr", &self.local_addr)
            .field("names", &self.names)
            .finish_non_exhaustive()
    }
}

/// Binds the TFTP socket. Fails (with the address in the message) if the address cannot be
/// bound, e.g. port 69 without root, or if not called inside a tokio runtime.
pub async fn bind(cfg: &TftpConfig, files: TftpFiles) -> anyhow::Result<TftpServerHandle> {
    if cfg.timeout.is_zero() {
        bail!("TFTP timeout must be more than zero");
    }
    let runtime = tokio::runtime::Handle::try_current()
        .context("the TFTP server must be started inside a tokio runtime")?;

    let socket = std::net::UdpSocket::bind(cfg.bind).map_err(|e| {
        let hint = if e.kind() == io::ErrorKind::PermissionDenied && cfg.bind.port() < 1024 {
            " (ports below 1024 need root or CAP_NET_BIND_SERVICE)"
        } else {
            ""
        };
        anyhow::Error::new(e).context(format!("cannot bind TFTP on udp {}{hint}", cfg.bind))
    })?;
    let local_addr = socket
        .local_addr()
        .with_context(|| format!("reading the address of TFTP socket bound on {}", cfg.bind))?;

    for (name, file) in &files.files {
        if let TftpFile::Path(path) = file
            && !path.is_file()
        {
            warn!(file = %name, path = %path.display(), "tftp: offered file is missing");
        }
    }
    let names = files.names().map(str::to_owned).collect();

    let handler = FilesHandler {
        files: Arc::new(files),
        runtime,
        give_up_after: give_up_after(cfg),
        active: Arc::new(std::sync::atomic::AtomicUsize::new(0)),
        max_sessions: cfg.max_sessions.max(1),
    };
    let server = TftpServerBuilder::with_handler(handler)
        .std_socket(socket)
        .with_context(|| format!("registering TFTP socket {local_addr}"))?
        .timeout(cfg.timeout)
        .max_send_retries(cfg.max_send_retries)
        // the server's timeout, whatever the client asks (RFC 2349 allows up to 255 s, which
        // an abandoned request would hold a session for, four times over)
        .ignore_client_timeout()
        .window_size_limit(MAX_WINDOW_SIZE)
        .build()
        .await
        .with_context(|| format!("starting TFTP on udp {local_addr}"))?;

    Ok(TftpServerHandle {
        server,
        local_addr,
        names,
    })
}

impl TftpServerHandle {
    /// The address actually bound (the real port when the configured one was 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Serves forever. Returns only if receiving on the socket fails. Dropping or aborting the
    /// task running this stops the server and every transfer in progress, and closes the socket.
    pub async fn serve(self) -> anyhow::Result<()> {
        info!(addr = %self.local_addr, files = ?self.names, "tftp: serving");
        let addr = self.local_addr;
        self.server
            .serve()
            .await
            .with_context(|| format!("TFTP server on udp {addr} stopped"))
    }
}

/// Shortest time a transfer can sit without reading before async-tftp gives it up: every resend
/// waits at least the smaller of the server's timeout and 1 s (the least a client can ask for).
/// A transfer that read the whole file but ended that long after its last read was given up,
/// not acknowledged.
fn give_up_after(cfg: &TftpConfig) -> Duration {
    let one_wait = cfg.timeout.min(Duration::from_secs(1));
    // (retries + 1) waits, less a tenth of one for timer jitter.
    one_wait
        .saturating_mul(cfg.max_send_retries)
        .saturating_add(one_wait * 9 / 10)
}

/// Why a requested name is refused before the file set is even looked at.
fn refuse_reason(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        Some("empty name")
    } else if name.starts_with('/') {
        Some("absolute path")
    } else if name.contains('\\') {
        Some("backslash in name")
    } else if name.split('/').any(|part| part == "..") {
        Some("parent directory component")
    } else {
        None
    }
}

/// async-tftp handler serving a [`TftpFiles`] set.
struct FilesHandler {
    files: Arc<TftpFiles>,
    /// The runtime `bind` ran in: tokio's file I/O needs it, and async-tftp polls our readers
    /// from its own executor.
    runtime: tokio::runtime::Handle,
    give_up_after: Duration,
    /// Transfers in progress (each holds a socket), and the most allowed.
    active: Arc<std::sync::atomic::AtomicUsize>,
    max_sessions: usize,
}

/// One transfer's place in [`FilesHandler::active`], given back when its reader drops.
struct SessionSlot(Arc<std::sync::atomic::AtomicUsize>);

impl Drop for SessionSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Handler for FilesHandler {
    type Reader = TftpReader;
    type Writer = futures_lite::io::Sink;

    async fn read_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
    ) -> Result<(TftpReader, Option<u64>), packet::Error> {
        // async-tftp builds the path from a UTF-8 string, so this never fails in practice.
        let Some(name) = path.to_str() else {
            warn!(%client, file = ?path, outcome = "refused", reason = "name is not UTF-8",
                bytes = 0u64, "tftp: read request");
            return Err(packet::Error::PermissionDenied);
        };
        if let Some(reason) = refuse_reason(name) {
            warn!(%client, file = ?name, outcome = "refused", reason, bytes = 0u64,
                "tftp: read request");
            return Err(packet::Error::PermissionDenied);
        }
        let Some(file) = self.files.get(name) else {
            info!(%client, file = ?name, outcome = "not found", bytes = 0u64,
                "tftp: read request");
            return Err(packet::Error::FileNotFound);
        };
        let used = self
            .active
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let slot = SessionSlot(self.active.clone());
        if used >= self.max_sessions {
            warn!(%client, file = %name, outcome = "refused", reason = "too many transfers",
                max = self.max_sessions, bytes = 0u64, "tftp: read request");
            return Err(packet::Error::Msg(format!(
                "server busy: {} transfers in progress, try again",
                self.max_sessions
            )));
        }

        let (source, size) = match file {
            TftpFile::Bytes(bytes) => (
                Source::Memory {
                    data: Arc::clone(bytes),
                    pos: 0,
                },
                bytes.len() as u64,
            ),
            TftpFile::Path(path) => match self.open(path).await {
                Ok((file, size)) => (
                    Source::File(BufReader::with_capacity(
                        FILE_READ_BUFFER,
                        TokioFile {
                            file,
                            runtime: self.runtime.clone(),
                        },
                    )),
                    size,
                ),
                Err(e) => {
                    warn!(%client, file = %name, path = %path.display(), outcome = "not found",
                        error = %e, bytes = 0u64, "tftp: read request: offered file cannot be read");
                    return Err(packet::Error::FileNotFound);
                }
            },
        };

        debug!(%client, file = %name, size, "tftp: read request accepted");
        let now = Instant::now();
        Ok((
            TftpReader {
                source,
                _slot: slot,
                log: TransferLog {
                    client: *client,
                    name: name.to_owned(),
                    size,
                    bytes: 0,
                    reached_end: false,
                    started: now,
                    last_read: now,
                    give_up_after: self.give_up_after,
                },
            },
            Some(size),
        ))
    }

    async fn write_req_open(
        &mut self,
        client: &SocketAddr,
        path: &Path,
        _size: Option<u64>,
    ) -> Result<futures_lite::io::Sink, packet::Error> {
        warn!(%client, file = ?path, outcome = "refused", reason = "write request",
            bytes = 0u64, "tftp: write request");
        Err(packet::Error::IllegalOperation)
    }
}

impl FilesHandler {
    /// Opens a regular file on the blocking pool; returns it with its size.
    async fn open(&self, path: &Path) -> io::Result<(tokio::fs::File, u64)> {
        let path = path.to_owned();
        let opened = self
            .runtime
            .spawn_blocking(move || {
                let file = std::fs::File::open(&path)?;
                let meta = file.metadata()?;
                if !meta.is_file() {
                    return Err(io::Error::other("not a regular file"));
                }
                Ok((file, meta.len()))
            })
            .await
            .map_err(io::Error::other)?;
        let (file, size) = opened?;
        Ok((tokio::fs::File::from_std(file), size))
    }
}

/// What one transfer reads from, and its log line when it ends.
struct TftpReader {
    source: Source,
    _slot: SessionSlot,
    log: TransferLog,
}

enum Source {
    File(BufReader<TokioFile>),
    Memory { data: Arc<Vec<u8>>, pos: usize },
}

impl AsyncRead for TftpReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let read = match &mut this.source {
            Source::File(reader) => match Pin::new(reader).poll_read(cx, buf) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            },
            Source::Memory { data, pos } => {
                let rest = data.get(*pos..).unwrap_or_default();
                let n = rest.len().min(buf.len());
                buf[..n].copy_from_slice(&rest[..n]);
                *pos += n;
                n
            }
        };
        this.log.record(read, buf.len());
        Poll::Ready(Ok(read))
    }
}

/// A tokio file read through futures' `AsyncRead`, inside the runtime it belongs to.
struct TokioFile {
    file: tokio::fs::File,
    runtime: tokio::runtime::Handle,
}

impl AsyncRead for TokioFile {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut [u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        let _runtime = this.runtime.enter();
        let mut read_buf = tokio::io::ReadBuf::new(buf);
        match tokio::io::AsyncRead::poll_read(Pin::new(&mut this.file), cx, &mut read_buf) {
            Poll::Ready(Ok(())) => Poll::Ready(Ok(read_buf.filled().len())),
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => Poll::Pending,
        }
    }
}

/// Facts about one transfer, logged when async-tftp drops its reader (transfer over).
///
/// async-tftp does not report how a transfer ended, so the outcome is inferred: a transfer that
/// did not read to the end was abandoned; one that did was acknowledged unless it ended only
/// after the server could have given up waiting. Every UEFI tsize probe ends "abandoned".
struct TransferLog {
    client: SocketAddr,
    name: String,
    size: u64,
    /// Bytes handed to the transfer (read ahead of acknowledgements by up to one window).
    bytes: u64,
    reached_end: bool,
    started: Instant,
    last_read: Instant,
    give_up_after: Duration,
}

impl TransferLog {
    fn record(&mut self, read: usize, asked: usize) {
        self.bytes += read as u64;
        self.last_read = Instant::now();
        if read == 0 && asked > 0 {
            self.reached_end = true;
        }
    }
}

impl Drop for TftpReader {
    fn drop(&mut self) {
        let log = &self.log;
        let idle = log.last_read.elapsed();
        let elapsed_ms = millis(log.started.elapsed());
        if log.reached_end && idle < log.give_up_after {
            info!(client = %log.client, file = %log.name, outcome = "sent", bytes = log.bytes,
                elapsed_ms, "tftp: read request");
        } else {
            info!(client = %log.client, file = %log.name, outcome = "abandoned",
                bytes = log.bytes, size = log.size, elapsed_ms,
                idle_ms = millis(idle), "tftp: read request");
        }
    }
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
