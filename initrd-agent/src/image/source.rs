//! source: where image bytes come from: an http(s) URL (extra headers such as Basic auth, Range
//! for random reads, transparent resume after a dropped or stalled connection) or a local file.
//!
//! Over HTTP, [`open`] sends one probe (`GET` with `Range: bytes=0-0`) to learn whether the
//! server honours Range requests, the file's length and its validators (ETag, Last-Modified).
//! Every later response is checked against those validators, so table reads done with
//! [`Source::read_at`] and the ordered pass of [`Source::stream`] are guaranteed to see the same
//! file. The ordered pass reconnects by itself with `Range: bytes=N-` after a drop, a stall or a
//! 5xx answer, with bounded retries and exponential backoff.
//!
//! The bytes handed out are exactly the bytes served: `Accept-Encoding: identity` is sent and no
//! transfer decoding is done (reqwest is built without its decompression features).
//!
//! The HTTP side is `reqwest::blocking` (it runs its own small runtime thread per source): open,
//! read and drop an [`HttpSource`] and its streams from plain std threads, never from inside an
//! async runtime context (reqwest's blocking client panics there; from async code, use
//! `tokio::task::spawn_blocking` or a std thread). TLS is rustls + ring with the webpki roots
//! compiled in, so no system CA store is needed. No proxy is used (the environment's
//! `http_proxy` & co. are ignored): the image is fetched directly, the same in the initramfs, on
//! a host and in tests.
//!
//! Secrets: header values are marked sensitive and never appear in an error; URLs are shown with
//! any `user:password@` removed, and the host a redirect went to is named, never its query.

use std::fmt::Write as _;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use byol_spec::request::redact_url;
use byol_spec::{Secret, SpecError};
use reqwest::blocking::{Client, Response};
use reqwest::header::{self, HeaderMap, HeaderName, HeaderValue};
use reqwest::{StatusCode, Url};
use thiserror::Error;

/// Redirects followed before giving up (reqwest's default too).
const MAX_REDIRECTS: usize = 10;
/// The longest wait between two attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);
/// A connection that delivered this much before failing resets the retry budget: a long
/// download over a link that drops now and then is not killed by `max_retries`.
const PROGRESS_RESETS_RETRIES: u64 = 16 << 20;

/// How to fetch an image.
#[derive(Clone, Debug)]
pub struct SourceOptions {
    /// Extra request headers (the install's `httpHeaders`), sent to the image's origin only:
    /// dropped when a redirect leads to another scheme, host or port.
    pub headers: Vec<(String, Secret)>,
    /// Attempts after a failure before giving up (per stream, per `read_at`, for the probe).
    pub max_retries: u32,
    /// No byte for this long (or no response headers for this long) = stalled → reconnect.
    pub stall_timeout: Duration,
    /// Limit on establishing a TCP (and TLS) connection.
    pub connect_timeout: Duration,
    /// First retry delay, doubling at each consecutive failure, capped at 10 s.
    pub backoff: Duration,
    /// Set when the install must stop (cancelled on the server): the next read fails.
    pub stop: crate::stop::Stop,
}

impl Default for SourceOptions {
    fn default() -> Self {
        SourceOptions {
            headers: Vec::new(),
            max_retries: 8,
            stall_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(15),
            backoff: Duration::from_millis(500),
            stop: crate::stop::Stop::default(),
        }
    }
}

/// Why image bytes could not be had. Cloneable so that a failed stream can repeat it.
#[derive(Clone, Debug, Error, PartialEq, Eq)]
pub enum SourceError {
    /// An http(s) download failed. Display is the guide's wording:
    /// ``Could not download image located : `<url>` (<cause>)``, the URL redacted.
    #[error("{}", download_text(.url, .cause))]
    Download { url: String, cause: String },
    /// The install was stopped while the image was read (the server cancelled it).
    #[error("the download was stopped: {0}")]
    Stopped(String),
    /// A local image file could not be opened or read.
    #[error("cannot {action} image file `{path}`: {cause}")]
    File {
        path: String,
        action: &'static str,
        cause: String,
    },
}

fn download_text(url: &str, cause: &str) -> String {
    SpecError::Download {
        url: url.to_string(),
        cause: cause.to_string(),
    }
    .to_string()
}

impl SourceError {
    /// The cause alone (`HTTP 404 Not Found`, `connection refused`, …).
    pub fn cause(&self) -> &str {
        match self {
            SourceError::Download { cause, .. } | SourceError::File { cause, .. } => cause,
            SourceError::Stopped(why) => why,
        }
    }

    /// The guide's error for a failed download (`None` for a local file).
    pub fn to_spec(&self) -> Option<SpecError> {
        match self {
            SourceError::Download { url, cause } => Some(SpecError::Download {
                url: url.clone(),
                cause: cause.clone(),
            }),
            SourceError::File { .. } | SourceError::Stopped(_) => None,
        }
    }

    /// The `SourceError` inside an `io::Error` returned by a [`Source::stream`] reader, if any
    /// (an adapter above may have wrapped the error further: then `None`).
    pub fn from_io(err: &io::Error) -> Option<&SourceError> {
        err.get_ref()?.downcast_ref::<SourceError>()
    }

    fn file(path: &Path, action: &'static str, err: &io::Error) -> Self {
        SourceError::File {
            path: path.display().to_string(),
            action,
            cause: err.to_string(),
        }
    }
}

impl From<SourceError> for io::Error {
    fn from(e: SourceError) -> io::Error {
        io::Error::other(e)
    }
}

/// Where an image's bytes come from.
pub trait Source: Send {
    /// The redacted URL or the path, for messages.
    fn describe(&self) -> String;
    /// Total size when known (Content-Length / Content-Range / file size).
    fn len(&self) -> Option<u64>;
    /// `Some(0)`: the image is empty.
    fn is_empty(&self) -> bool {
        self.len() == Some(0)
    }
    /// Whether [`Source::read_at`] works (and, over HTTP, whether a stream can resume).
    fn supports_range(&self) -> bool;
    /// Random access read of exactly `[offset, offset+len)` (clipped at EOF), for qcow2 tables
    /// before the ordered pass. A Range request over HTTP (an error if unsupported), pread for
    /// files.
    fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, SourceError>;
    /// The ordered pass over the whole file from byte 0: a reader whose bytes are exactly the
    /// file as served. Over HTTP it reconnects by itself with `Range: bytes=N-` after a drop, a
    /// stall or a 5xx, checking that the file did not change, with bounded retries and backoff.
    /// When it gives up, the `io::Error` wraps a [`SourceError`] ([`SourceError::from_io`]).
    /// A short stream (fewer bytes than the known length) is an error, never a silent EOF.
    fn stream(&mut self) -> Result<Box<dyn Read + Send>, SourceError>;
    /// How many reconnects the last stream needed so far.
    fn resumes(&self) -> u32;
    /// The counter behind [`Source::resumes`], for live progress while a stream is read
    /// (sources that never reconnect: a counter that stays 0).
    fn resume_counter(&self) -> Arc<AtomicU32> {
        Arc::default()
    }
}

/// Opens `location`: `http://` or `https://` → [`HttpSource`] (one probe request); `file://`
/// or a plain path → [`FileSource`]. Never call from inside an async runtime context.
pub fn open(location: &str, opts: &SourceOptions) -> Result<Box<dyn Source>, SourceError> {
    let lower = location.get(..8).unwrap_or(location).to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        return Ok(Box::new(HttpSource::open(location, opts)?));
    }
    if let Some(path) = location.strip_prefix("file://") {
        return Ok(Box::new(FileSource::open(path)?));
    }
    if let Some((scheme, _)) = location.split_once("://")
        && !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"+-.".contains(&b))
    {
        return Err(SourceError::Download {
            url: redact_url(location),
            cause: format!("unsupported URL scheme `{scheme}`: use http:// or https://"),
        });
    }
    Ok(Box::new(FileSource::open(location)?))
}

// ---------------------------------------------------------------------------------------------
// HTTP

/// An image behind an http(s) URL.
pub struct HttpSource {
    http: Arc<Http>,
    len: Option<u64>,
    range: bool,
    validators: Validators,
    /// The probe's answer when it was a plain 200 (no Range support): its body is the whole
    /// file, kept unread for the first stream instead of being downloaded twice.
    pending: Option<Response>,
    resumes: Arc<AtomicU32>,
}

impl HttpSource {
    /// Builds the client and probes the URL.
    pub fn open(location: &str, opts: &SourceOptions) -> Result<Self, SourceError> {
        let shown = redact_url(location);
        let fail = |cause: String| SourceError::Download {
            url: shown.clone(),
            cause,
        };
        let url = Url::parse(location.trim()).map_err(|e| fail(format!("invalid URL: {e}")))?;
        if url.host_str().is_none_or(str::is_empty) {
            return Err(fail("invalid URL: no host".into()));
        }
        let mut headers = Vec::with_capacity(opts.headers.len());
        for (name, value) in &opts.headers {
            let name = HeaderName::from_bytes(name.trim().as_bytes())
                .map_err(|_| fail(format!("`{name}` is not a valid HTTP header name")))?;
            if name == header::RANGE || name == header::IF_RANGE {
                continue; // byol sets these itself
            }
            let mut value = HeaderValue::from_str(value.expose())
                .map_err(|_| fail(format!("the value of HTTP header `{name}` is not valid")))?;
            value.set_sensitive(true);
            headers.push((name, value));
        }
        let client = Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .referer(false)
            .no_proxy()
            .timeout(opts.stall_timeout)
            .connect_timeout(opts.connect_timeout)
            .tcp_keepalive(Duration::from_secs(30))
            .user_agent(concat!("byol-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| fail(format!("cannot set up the HTTP client: {}", error_text(&e))))?;
        let http = Arc::new(Http {
            client,
            url,
            shown,
            headers,
            opts: opts.clone(),
        });
        let probe = http.probe()?;
        Ok(HttpSource {
            http,
            len: probe.len,
            range: probe.range,
            validators: probe.validators,
            pending: probe.pending,
            resumes: Arc::new(AtomicU32::new(0)),
        })
    }
}

impl Source for HttpSource {
    fn describe(&self) -> String {
        self.http.shown.clone()
    }

    fn len(&self) -> Option<u64> {
        self.len
    }

    fn supports_range(&self) -> bool {
        self.range
    }

    fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, SourceError> {
        if !self.range {
            return Err(self
                .http
                .error("server does not support Range requests, cannot read parts of the file"));
        }
        let end = match self.len {
            Some(total) => offset.saturating_add(len as u64).min(total),
            None => offset.saturating_add(len as u64),
        };
        if end <= offset {
            return Ok(Vec::new());
        }
        let want = (end - offset) as usize;
        let mut out = Vec::with_capacity(want.min(64 << 20));
        let mut retry = Retry::new(&self.http.opts);
        while out.len() < want {
            if let Some(why) = self.http.opts.stop.reason() {
                return Err(SourceError::Stopped(why.to_string()));
            }
            let at = offset + out.len() as u64;
            let spec = format!("bytes={at}-{}", end - 1);
            let failure = match self.http.get(Some(&spec)) {
                Err(f) if f.fatal_always() => return Err(self.http.error(f.cause)),
                Err(f) => f.cause,
                Ok(resp) => match self.range_answer(resp, at, Some(end - 1), &spec)? {
                    Answer::Retry(cause) => cause,
                    Answer::Body(resp) => {
                        let before = out.len();
                        let mut body = resp.take((want - before) as u64);
                        match body.read_to_end(&mut out) {
                            Ok(_) if out.len() == want => break,
                            Ok(_) => format!(
                                "stream ended at byte {} of {end}",
                                offset + out.len() as u64
                            ),
                            Err(e) => read_failure(&e, &self.http.opts),
                        }
                    }
                },
            };
            retry.failed(&self.http, &failure, || {
                format!("at byte {}", offset + out.len() as u64)
            })?;
        }
        Ok(out)
    }

    fn stream(&mut self) -> Result<Box<dyn Read + Send>, SourceError> {
        self.resumes.store(0, Ordering::Relaxed);
        if self.len == Some(0) {
            return Ok(Box::new(io::empty()));
        }
        Ok(Box::new(HttpStream {
            http: self.http.clone(),
            resp: self.pending.take(),
            pos: 0,
            total: self.len,
            range: self.range,
            validators: self.validators.clone(),
            retry: Retry::new(&self.http.opts),
            conn_bytes: 0,
            resumes: self.resumes.clone(),
            failed: None,
        }))
    }

    fn resumes(&self) -> u32 {
        self.resumes.load(Ordering::Relaxed)
    }

    fn resume_counter(&self) -> Arc<AtomicU32> {
        self.resumes.clone()
    }
}

impl HttpSource {
    /// Checks the answer to a Range request for `[at, last]` (`last` None: to the end).
    fn range_answer(
        &self,
        resp: Response,
        at: u64,
        last: Option<u64>,
        spec: &str,
    ) -> Result<Answer, SourceError> {
        let status = resp.status();
        if status == StatusCode::PARTIAL_CONTENT {
            let (start, end, total) = content_range(&resp)
                .ok_or_else(|| self.http.error("206 answer without a valid Content-Range"))?;
            let end_ok = match last {
                Some(l) => end == l,
                None => total.is_none_or(|t| end + 1 == t),
            };
            if start != at || !end_ok {
                return Err(self.http.error(format!(
                    "asked for `{spec}`, the server sent bytes {start}-{end}"
                )));
            }
            self.validators
                .check(&Validators::of(&resp, total))
                .map_err(|c| self.http.error(c))?;
            return Ok(Answer::Body(resp));
        }
        match classify_status(status) {
            StatusClass::Retry => Ok(Answer::Retry(status_text(status))),
            _ if status.is_success() => Err(self.http.error(format!(
                "server ignored the Range request `{spec}` (HTTP {})",
                status.as_u16()
            ))),
            _ => Err(self.http.error(self.http.status_cause(status, resp.url()))),
        }
    }
}

enum Answer {
    Body(Response),
    Retry(String),
}

/// The shared, immutable part of an HTTP source.
struct Http {
    client: Client,
    url: Url,
    shown: String,
    headers: Vec<(HeaderName, HeaderValue)>,
    opts: SourceOptions,
}

/// Whether a redirect from `from` to `to` may be followed: http(s) only, and never from https
/// down to plain http (what TLS protected would travel in clear).
pub fn redirect_allowed(from: &Url, to: &Url) -> Result<(), String> {
    if !matches!(to.scheme(), "http" | "https") {
        return Err(format!(
            "redirected to an unsupported `{}:` URL",
            to.scheme()
        ));
    }
    if from.scheme() == "https" && to.scheme() == "http" {
        return Err(format!(
            "redirected from https to plain http (`{}`): refused, the image would travel \
             unprotected",
            to.host_str().unwrap_or("?")
        ));
    }
    Ok(())
}

/// A failed request, before any HTTP status.
struct NetFailure {
    cause: String,
    kind: NetKind,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum NetKind {
    Dns,
    Refused,
    Tls,
    Redirect,
    Other,
}

impl NetFailure {
    /// Never worth retrying (a certificate, a redirect loop).
    fn fatal_always(&self) -> bool {
        matches!(self.kind, NetKind::Tls | NetKind::Redirect)
    }
    /// Not worth retrying before anything was downloaded: the address is wrong.
    fn fatal_at_start(&self) -> bool {
        self.fatal_always() || matches!(self.kind, NetKind::Dns | NetKind::Refused)
    }
}

struct Probe {
    len: Option<u64>,
    range: bool,
    validators: Validators,
    pending: Option<Response>,
}

impl Http {
    fn error(&self, cause: impl Into<String>) -> SourceError {
        SourceError::Download {
            url: self.shown.clone(),
            cause: cause.into(),
        }
    }

    /// One GET of the image (following redirects by hand so that the user's headers never
    /// leave the image's origin), with `range` as the Range header when given.
    fn get(&self, range: Option<&str>) -> Result<Response, NetFailure> {
        let mut url = self.url.clone();
        for _ in 0..=MAX_REDIRECTS {
            let same_origin = url.origin() == self.url.origin();
            let mut map = HeaderMap::new();
            if same_origin {
                for (name, value) in &self.headers {
                    map.append(name.clone(), value.clone());
                }
                if url != self.url && !self.url.username().is_empty() {
                    // keep the URL's user:password across a redirect within its origin
                    let _ = url.set_username(self.url.username());
                    let _ = url.set_password(self.url.password());
                }
            }
            map.insert(
                header::ACCEPT_ENCODING,
                HeaderValue::from_static("identity"),
            );
            if let Some(r) = range
                && let Ok(v) = HeaderValue::from_str(r)
            {
                map.insert(header::RANGE, v);
            }
            let resp = self
                .client
                .get(url.clone())
                .headers(map)
                .send()
                .map_err(|e| self.net_failure(&e, &url))?;
            if !matches!(resp.status().as_u16(), 301 | 302 | 303 | 307 | 308) {
                return Ok(resp);
            }
            let Some(next) = resp
                .headers()
                .get(header::LOCATION)
                .and_then(|l| l.to_str().ok())
                .and_then(|l| url.join(l).ok())
            else {
                return Err(NetFailure {
                    cause: format!("{} without a valid Location", status_text(resp.status())),
                    kind: NetKind::Redirect,
                });
            };
            if let Err(cause) = redirect_allowed(&url, &next) {
                return Err(NetFailure {
                    cause,
                    kind: NetKind::Redirect,
                });
            }
            url = next;
        }
        Err(NetFailure {
            cause: format!("more than {MAX_REDIRECTS} redirects"),
            kind: NetKind::Redirect,
        })
    }

    /// Names what went wrong with a request that got no HTTP answer.
    fn net_failure(&self, e: &reqwest::Error, url: &Url) -> NetFailure {
        let host = url.host_str().unwrap_or_default();
        let mut refused = false;
        let mut dns = false;
        for err in chain(e) {
            if let Some(tls) = err.downcast_ref::<rustls::Error>() {
                return NetFailure {
                    cause: format!("TLS: {tls}"),
                    kind: NetKind::Tls,
                };
            }
            if let Some(io) = err.downcast_ref::<io::Error>()
                && io.kind() == io::ErrorKind::ConnectionRefused
            {
                refused = true;
            }
            dns |= err.to_string() == "dns error";
        }
        let (cause, kind) = if dns {
            (format!("cannot resolve host `{host}`"), NetKind::Dns)
        } else if refused {
            ("connection refused".to_string(), NetKind::Refused)
        } else if e.is_timeout() && e.is_connect() {
            (
                format!(
                    "cannot connect to `{host}` within {}",
                    fmt_duration(self.opts.connect_timeout)
                ),
                NetKind::Other,
            )
        } else if e.is_timeout() {
            (
                format!(
                    "no answer for {} (stalled)",
                    fmt_duration(self.opts.stall_timeout)
                ),
                NetKind::Other,
            )
        } else {
            (error_text(e), NetKind::Other)
        };
        let cause = if url.origin() != self.url.origin() {
            format!("{cause}, after a redirect to `{host}`")
        } else {
            cause
        };
        NetFailure { cause, kind }
    }

    /// `HTTP 404 Not Found`, with a hint for auth failures and the host of a redirect.
    fn status_cause(&self, status: StatusCode, final_url: &Url) -> String {
        let mut cause = status_text(status);
        if matches!(status.as_u16(), 401 | 403) {
            cause.push_str(": check the httpHeaders");
        }
        if final_url.origin() != self.url.origin() {
            let _ = write!(
                cause,
                ", after a redirect to `{}`",
                final_url.host_str().unwrap_or_default()
            );
        }
        cause
    }

    /// `GET Range: bytes=0-0`: Range support, length and validators, without the body.
    fn probe(&self) -> Result<Probe, SourceError> {
        let mut retry = Retry::new(&self.opts);
        loop {
            let failure = match self.get(Some("bytes=0-0")) {
                Err(f) if f.fatal_at_start() => return Err(self.error(f.cause)),
                Err(f) => f.cause,
                Ok(resp) => match self.probe_answer(resp)? {
                    Ok(probe) => return Ok(probe),
                    Err(cause) => cause,
                },
            };
            retry.failed(self, &failure, || "before the first byte".into())?;
        }
    }

    /// A probe result, or the cause of a failure worth retrying.
    fn probe_answer(&self, mut resp: Response) -> Result<Result<Probe, String>, SourceError> {
        let status = resp.status();
        match status.as_u16() {
            206 => {
                let Some((0, end, total)) = content_range(&resp) else {
                    return Err(
                        self.error("206 answer to `bytes=0-0` without a valid Content-Range")
                    );
                };
                let validators = Validators::of(&resp, total);
                if end < 1 << 16 {
                    // read the byte so that the connection goes back to the pool
                    let _ = io::copy(&mut (&mut resp).take(1 << 16), &mut io::sink());
                }
                Ok(Ok(Probe {
                    len: total,
                    range: true,
                    validators,
                    pending: None,
                }))
            }
            200 => {
                let len = content_length(&resp);
                Ok(Ok(Probe {
                    len,
                    range: false,
                    validators: Validators::of(&resp, len),
                    pending: Some(resp),
                }))
            }
            416 => {
                // `bytes=0-0` unsatisfiable: an empty file (Content-Range: bytes */0)
                match unsatisfied_range_total(&resp) {
                    Some(0) => Ok(Ok(Probe {
                        len: Some(0),
                        range: true,
                        validators: Validators::of(&resp, Some(0)),
                        pending: None,
                    })),
                    // no length said: make no guess, the stream will be a plain GET
                    None => Ok(Ok(Probe {
                        len: None,
                        range: false,
                        validators: Validators::default(),
                        pending: None,
                    })),
                    Some(t) => Err(self.error(format!(
                        "server refused `Range: bytes=0-0` of a {t}-byte file (HTTP 416)"
                    ))),
                }
            }
            _ => match classify_status(status) {
                StatusClass::Retry => Ok(Err(status_text(status))),
                _ => Err(self.error(self.status_cause(status, resp.url()))),
            },
        }
    }
}

/// Bounded retries with exponential backoff.
struct Retry {
    failures: u32,
    max: u32,
    backoff: Duration,
    /// Of `failures`, how many were answers (an HTTP status worth retrying), by status.
    answers: Vec<(String, u32)>,
}

impl Retry {
    fn new(opts: &SourceOptions) -> Self {
        Retry {
            failures: 0,
            max: opts.max_retries,
            backoff: opts.backoff,
            answers: Vec::new(),
        }
    }

    /// Counts a failure: sleeps before the next attempt, or gives up saying what happened:
    /// `the server answered HTTP 500 … 9 times <where>, giving up` when every attempt got an
    /// answer, `connection dropped N times <where>, giving up (last: <cause>)` when none did,
    /// and both counts when it was some of each. `last` is [`status_text`] for an answer.
    fn failed(
        &mut self,
        http: &Http,
        last: &str,
        at: impl FnOnce() -> String,
    ) -> Result<(), SourceError> {
        self.failures += 1;
        if last.starts_with("HTTP ") {
            match self.answers.iter_mut().find(|(s, _)| s == last) {
                Some((_, n)) => *n += 1,
                None => self.answers.push((last.to_string(), 1)),
            }
        }
        if self.failures > self.max {
            let n = self.failures;
            let times = |n: u32| match n {
                1 => "once".to_string(),
                2 => "twice".to_string(),
                n => format!("{n} times"),
            };
            let answered: u32 = self.answers.iter().map(|(_, c)| c).sum();
            let said: Vec<String> = self
                .answers
                .iter()
                .map(|(s, c)| format!("{s} {}", times(*c)))
                .collect();
            let cause = if answered == n {
                format!(
                    "the server answered {} {}, giving up",
                    said.join(", then "),
                    at()
                )
            } else if answered == 0 {
                let count = if n == 1 {
                    String::new()
                } else {
                    format!("{n} ")
                };
                let t = if n == 1 { "once" } else { "times" };
                format!(
                    "connection dropped {count}{t} {}, giving up (last: {last})",
                    at()
                )
            } else {
                format!(
                    "{n} attempts failed {}: the server answered {}, the connection dropped {}; \
                     giving up (last: {last})",
                    at(),
                    said.join(", "),
                    times(n - answered)
                )
            };
            return Err(http.error(cause));
        }
        let doublings = (self.failures - 1).min(16);
        let delay = self.backoff.saturating_mul(1 << doublings).min(MAX_BACKOFF);
        std::thread::sleep(delay);
        Ok(())
    }

    /// A connection made progress: the next failures are counted afresh.
    fn reset(&mut self) {
        self.failures = 0;
        self.answers.clear();
    }
}

/// The ordered pass over an HTTP image.
struct HttpStream {
    http: Arc<Http>,
    resp: Option<Response>,
    pos: u64,
    total: Option<u64>,
    range: bool,
    validators: Validators,
    retry: Retry,
    conn_bytes: u64,
    resumes: Arc<AtomicU32>,
    failed: Option<SourceError>,
}

impl Read for HttpStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if let Some(e) = &self.failed {
            return Err(e.clone().into());
        }
        if buf.is_empty() {
            return Ok(0);
        }
        if let Some(why) = self.http.opts.stop.reason() {
            let e = SourceError::Stopped(why.to_string());
            self.resp = None;
            self.failed = Some(e.clone());
            return Err(e.into());
        }
        self.read_inner(buf).map_err(|e| {
            self.resp = None;
            self.failed = Some(e.clone());
            e.into()
        })
    }
}

impl HttpStream {
    fn read_inner(&mut self, buf: &mut [u8]) -> Result<usize, SourceError> {
        loop {
            let failure = match self.resp.as_mut() {
                None => {
                    if self.total == Some(self.pos) {
                        return Ok(0);
                    }
                    match self.connect()? {
                        Ok(resp) => {
                            self.resp = Some(resp);
                            self.conn_bytes = 0;
                            continue;
                        }
                        Err(cause) => cause,
                    }
                }
                Some(resp) => match resp.read(buf) {
                    Ok(0) => {
                        self.resp = None;
                        match self.total {
                            Some(t) if self.pos < t => {
                                format!("stream ended at byte {} of {t}", self.pos)
                            }
                            _ => return Ok(0),
                        }
                    }
                    Ok(n) => {
                        let n64 = n as u64;
                        if let Some(t) = self.total
                            && self.pos + n64 > t
                        {
                            return Err(self.http.error(format!(
                                "the server sent more than the announced {t} bytes"
                            )));
                        }
                        self.pos += n64;
                        self.conn_bytes += n64;
                        if self.conn_bytes >= PROGRESS_RESETS_RETRIES {
                            self.retry.reset();
                        }
                        return Ok(n);
                    }
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => {
                        self.resp = None;
                        read_failure(&e, &self.http.opts)
                    }
                },
            };
            if !self.range && self.pos > 0 {
                return Err(self.http.error(format!(
                    "server does not support Range requests, cannot resume after a dropped \
                     connection at byte {} ({failure})",
                    self.pos
                )));
            }
            let (pos, total) = (self.pos, self.total);
            self.retry.failed(&self.http, &failure, || match total {
                Some(t) => format!("at byte {pos} of {t}"),
                None => format!("at byte {pos}"),
            })?;
            self.resumes.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// A new response from `self.pos`, or the cause of a failure worth retrying.
    fn connect(&mut self) -> Result<Result<Response, String>, SourceError> {
        let spec = self.range.then(|| format!("bytes={}-", self.pos));
        let resp = match self.http.get(spec.as_deref()) {
            Ok(r) => r,
            Err(f) if f.fatal_always() => return Err(self.http.error(f.cause)),
            Err(f) => return Ok(Err(f.cause)),
        };
        let status = resp.status();
        if status == StatusCode::OK && self.pos == 0 {
            // a whole file (no Range asked, or the server stopped honouring it at byte 0)
            let len = content_length(&resp);
            self.validators
                .check(&Validators::of(&resp, len))
                .map_err(|c| self.http.error(c))?;
            self.total = self.total.or(len);
            return Ok(Ok(resp));
        }
        if status == StatusCode::PARTIAL_CONTENT
            && let Some(spec) = &spec
        {
            let Some((start, end, total)) = content_range(&resp) else {
                return Err(self.http.error("206 answer without a valid Content-Range"));
            };
            if start != self.pos || total.is_some_and(|t| end + 1 != t) {
                return Err(self.http.error(format!(
                    "asked for `{spec}`, the server sent bytes {start}-{end}"
                )));
            }
            self.validators
                .check(&Validators::of(&resp, total))
                .map_err(|c| self.http.error(c))?;
            self.total = self.total.or(total);
            return Ok(Ok(resp));
        }
        match classify_status(status) {
            StatusClass::Retry => Ok(Err(status_text(status))),
            _ if status.is_success() => Err(self.http.error(format!(
                "server ignored the Range request (HTTP {}), cannot resume after a dropped \
                 connection at byte {}",
                status.as_u16(),
                self.pos
            ))),
            _ if status == StatusCode::RANGE_NOT_SATISFIABLE => Err(self.http.error(format!(
                "server refused `Range: bytes={}-` (HTTP 416), cannot resume",
                self.pos
            ))),
            _ => Err(self.http.error(self.http.status_cause(status, resp.url()))),
        }
    }
}

/// What identifies one version of the file: the ETag, else Last-Modified, and the length.
#[derive(Clone, Debug, Default)]
struct Validators {
    etag: Option<String>,
    last_modified: Option<String>,
    total: Option<u64>,
}

impl Validators {
    fn of(resp: &Response, total: Option<u64>) -> Self {
        let text = |name| {
            resp.headers()
                .get(name)
                .and_then(|v| v.to_str().ok())
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
        };
        Validators {
            etag: text(header::ETAG),
            last_modified: text(header::LAST_MODIFIED),
            total,
        }
    }

    /// Same file? `now` must match `self` (the probe's view).
    fn check(&self, now: &Validators) -> Result<(), String> {
        let changed = |what: &str, a: &str, b: &str| {
            format!("the file changed on the server while downloading ({what} `{a}` became `{b}`)")
        };
        if let (Some(a), Some(b)) = (&self.etag, &now.etag) {
            if a != b {
                return Err(changed("ETag", a, b));
            }
        } else if let (Some(a), Some(b)) = (&self.last_modified, &now.last_modified)
            && a != b
        {
            return Err(changed("Last-Modified", a, b));
        }
        if let (Some(a), Some(b)) = (self.total, now.total)
            && a != b
        {
            return Err(changed("size", &a.to_string(), &b.to_string()));
        }
        Ok(())
    }
}

enum StatusClass {
    Retry,
    Final,
}

/// 5xx, 408 and 429 are worth another try; anything else is the answer.
fn classify_status(status: StatusCode) -> StatusClass {
    if status.is_server_error() || matches!(status.as_u16(), 408 | 429) {
        StatusClass::Retry
    } else {
        StatusClass::Final
    }
}

/// `HTTP 404 Not Found`.
fn status_text(status: StatusCode) -> String {
    match status.canonical_reason() {
        Some(reason) => format!("HTTP {} {reason}", status.as_u16()),
        None => format!("HTTP {}", status.as_u16()),
    }
}

/// `Content-Range: bytes S-E/T` → (S, E, Some(T)); `T` may be `*` → None.
fn content_range(resp: &Response) -> Option<(u64, u64, Option<u64>)> {
    let v = resp.headers().get(header::CONTENT_RANGE)?.to_str().ok()?;
    let rest = v.trim().strip_prefix("bytes")?.trim_start();
    let (span, total) = rest.split_once('/')?;
    let (s, e) = span.trim().split_once('-')?;
    let (s, e): (u64, u64) = (s.trim().parse().ok()?, e.trim().parse().ok()?);
    let total = match total.trim() {
        "*" => None,
        t => Some(t.parse().ok()?),
    };
    (s <= e && total.is_none_or(|t| e < t)).then_some((s, e, total))
}

/// `Content-Range: bytes */T` of a 416 answer.
fn unsatisfied_range_total(resp: &Response) -> Option<u64> {
    let v = resp.headers().get(header::CONTENT_RANGE)?.to_str().ok()?;
    v.trim()
        .strip_prefix("bytes")?
        .trim()
        .strip_prefix("*/")?
        .trim()
        .parse()
        .ok()
}

fn content_length(resp: &Response) -> Option<u64> {
    resp.headers()
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Why reading a response body failed: a stall or a drop.
fn read_failure(e: &io::Error, opts: &SourceOptions) -> String {
    let timed_out = e.kind() == io::ErrorKind::TimedOut
        || e.get_ref()
            .and_then(|i| i.downcast_ref::<reqwest::Error>())
            .is_some_and(reqwest::Error::is_timeout);
    if timed_out {
        format!("stalled: no data for {}", fmt_duration(opts.stall_timeout))
    } else {
        error_text(e)
    }
}

/// An error and its causes, looking inside `io::Error`s (whose `source()` skips a level).
fn chain<'a>(
    e: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(e), |err| {
        if let Some(io) = err.downcast_ref::<io::Error>()
            && let Some(inner) = io.get_ref()
        {
            let inner: &(dyn std::error::Error + 'static) = inner;
            return Some(inner);
        }
        err.source()
    })
}

/// What a failed exchange says, in a few words and without any URL (reqwest's own text holds
/// it): the usual cases named, else the innermost cause.
fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    const CLOSED: &str = "connection closed before the end of the response";
    let mut innermost = None;
    for err in chain(e) {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::UnexpectedEof => return CLOSED.into(),
                io::ErrorKind::ConnectionReset => return "connection reset by the server".into(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionAborted => {
                    return "connection closed by the server".into();
                }
                _ => {}
            }
        }
        let text = err.to_string();
        if text.contains("connection closed before message completed") {
            return CLOSED.into();
        }
        if !err.is::<reqwest::Error>() && !text.is_empty() {
            innermost = Some(text);
        }
    }
    innermost.unwrap_or_else(|| "connection lost".into())
}

/// `300 ms`, `30 s`.
fn fmt_duration(d: Duration) -> String {
    if d.subsec_millis() == 0 && d.as_secs() > 0 {
        format!("{} s", d.as_secs())
    } else {
        format!("{} ms", d.as_millis())
    }
}

// ---------------------------------------------------------------------------------------------
// Local file

/// An image in a local file (or block device).
pub struct FileSource {
    file: Arc<File>,
    path: PathBuf,
    len: Option<u64>,
}

impl FileSource {
    pub fn open(path: impl AsRef<Path>) -> Result<Self, SourceError> {
        let path = path.as_ref().to_path_buf();
        let file = File::open(&path).map_err(|e| SourceError::file(&path, "open", &e))?;
        let meta = file
            .metadata()
            .map_err(|e| SourceError::file(&path, "open", &e))?;
        if meta.is_dir() {
            return Err(SourceError::File {
                path: path.display().to_string(),
                action: "open",
                cause: "it is a directory".into(),
            });
        }
        // seek to the end rather than metadata: a block device's metadata says 0
        let len = (&file).seek(SeekFrom::End(0)).ok();
        Ok(FileSource {
            file: Arc::new(file),
            path,
            len,
        })
    }
}

impl Source for FileSource {
    fn describe(&self) -> String {
        self.path.display().to_string()
    }

    fn len(&self) -> Option<u64> {
        self.len
    }

    fn supports_range(&self) -> bool {
        self.len.is_some()
    }

    fn read_at(&mut self, offset: u64, len: usize) -> Result<Vec<u8>, SourceError> {
        let Some(total) = self.len else {
            return Err(SourceError::File {
                path: self.describe(),
                action: "read",
                cause: "it is not seekable".into(),
            });
        };
        let end = offset.saturating_add(len as u64).min(total);
        let mut out = vec![0u8; end.saturating_sub(offset) as usize];
        let mut done = 0;
        while done < out.len() {
            match self.file.read_at(&mut out[done..], offset + done as u64) {
                Ok(0) => break,
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SourceError::file(&self.path, "read", &e)),
            }
        }
        out.truncate(done);
        Ok(out)
    }

    fn stream(&mut self) -> Result<Box<dyn Read + Send>, SourceError> {
        Ok(Box::new(FileStream {
            file: self.file.clone(),
            path: self.path.clone(),
            pos: 0,
            len: self.len,
        }))
    }

    fn resumes(&self) -> u32 {
        0
    }
}

/// The ordered pass over a file, with its own position (pread), so that streams and
/// `read_at` never disturb each other.
struct FileStream {
    file: Arc<File>,
    path: PathBuf,
    pos: u64,
    len: Option<u64>,
}

impl Read for FileStream {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        let n = loop {
            let r = match self.len {
                Some(_) => self.file.read_at(buf, self.pos),
                None => (&*self.file).read(buf),
            };
            match r {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(SourceError::file(&self.path, "read", &e).into()),
            }
        };
        if n == 0
            && let Some(len) = self.len
            && self.pos < len
        {
            return Err(SourceError::File {
                path: self.path.display().to_string(),
                action: "read",
                cause: format!(
                    "it ended at byte {} of {len} (did it shrink while being read?)",
                    self.pos
                ),
            }
            .into());
        }
        self.pos += n as u64;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redirects_never_go_down_to_plain_http() {
        let u = |s: &str| Url::parse(s).unwrap();
        assert!(redirect_allowed(&u("http://a/x"), &u("https://b/y")).is_ok());
        assert!(redirect_allowed(&u("https://a/x"), &u("https://b/y")).is_ok());
        assert!(redirect_allowed(&u("http://a/x"), &u("http://b/y")).is_ok());
        assert_eq!(
            redirect_allowed(&u("https://a/x"), &u("http://cdn.example/y?sig=1")).unwrap_err(),
            "redirected from https to plain http (`cdn.example`): refused, the image would \
             travel unprotected"
        );
        assert_eq!(
            redirect_allowed(&u("http://a/x"), &u("ftp://b/y")).unwrap_err(),
            "redirected to an unsupported `ftp:` URL"
        );
    }
}
