//! httpd: a loopback HTTP/1.1 server for tests, exact about Range / 206 / Content-Range / 416,
//! ETag and Last-Modified, with the faults of real networks on demand: a connection dropped or
//! stalled after N body bytes, 5xx answers, a body truncated against its Content-Length, the
//! file changing between requests, a required header (else 401), redirects.
//!
//! std only: one thread per connection, keep-alive, binds 127.0.0.1:0, stops on drop (open
//! connections are shut down). Every request is logged (method, path, Range, headers, status,
//! body bytes sent) so that tests can assert e.g. that an ordered pass read the file once.
//!
//! ```ignore
//! let srv = Httpd::start(Config::new(data.clone()).drop_after(1 << 20, 3));
//! let url = srv.image_url();             // http://127.0.0.1:PORT/image
//! … ;
//! assert_eq!(srv.stats().body_bytes(), data.len() as u64 + 1);
//! ```
#![allow(dead_code)]

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// What the server serves at its path.
#[derive(Clone, Debug)]
pub enum Body {
    Bytes(Arc<Vec<u8>>),
    File(PathBuf),
}

impl Body {
    pub fn len(&self) -> u64 {
        match self {
            Body::Bytes(b) => b.len() as u64,
            Body::File(p) => std::fs::metadata(p).map(|m| m.len()).unwrap_or(0),
        }
    }

    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Body::Bytes(b) => {
                let start = (offset as usize).min(b.len());
                let n = buf.len().min(b.len() - start);
                buf[..n].copy_from_slice(&b[start..start + n]);
                Ok(n)
            }
            Body::File(p) => {
                let f = std::fs::File::open(p)?;
                let mut done = 0;
                while done < buf.len() {
                    let n = f.read_at(&mut buf[done..], offset + done as u64)?;
                    if n == 0 {
                        break;
                    }
                    done += n;
                }
                Ok(done)
            }
        }
    }
}

impl From<Vec<u8>> for Body {
    fn from(v: Vec<u8>) -> Self {
        Body::Bytes(Arc::new(v))
    }
}
impl From<&[u8]> for Body {
    fn from(v: &[u8]) -> Self {
        Body::Bytes(Arc::new(v.to_vec()))
    }
}
impl From<Arc<Vec<u8>>> for Body {
    fn from(v: Arc<Vec<u8>>) -> Self {
        Body::Bytes(v)
    }
}
impl From<PathBuf> for Body {
    fn from(p: PathBuf) -> Self {
        Body::File(p)
    }
}
impl From<&Path> for Body {
    fn from(p: &Path) -> Self {
        Body::File(p.to_path_buf())
    }
}

/// A fault injected into responses of the image path.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FaultKind {
    /// Close the connection after `after` body bytes (the client sees a short response).
    Drop,
    /// Send nothing for this long after `after` body bytes, then go on (the connection stays open).
    Stall(Duration),
    /// Answer with this status (and a short text body) instead of the file.
    Status(u16),
}

/// Applies `kind` to the eligible responses number `skip+1 ..= skip+times`. Eligible: for Drop
/// and Stall, a GET whose body is longer than `after` bytes (so a 1-byte Range probe is never
/// hit when `after >= 1`); for Status, any authorised GET/HEAD of the image path.
#[derive(Clone, Debug)]
pub struct Fault {
    pub kind: FaultKind,
    pub after: u64,
    pub times: u32,
    pub skip: u32,
}

/// A server's behaviour. Build with [`Config::new`] and the chained setters, or set fields.
#[derive(Clone, Debug)]
pub struct Config {
    /// The image's path (`/image` by default); other paths get 404.
    pub path: String,
    pub body: Body,
    /// Honour `Range` (206 / 416, `Accept-Ranges: bytes`); off: always 200 with the whole file.
    pub range: bool,
    /// Send `ETag: "v<version>-<len>"`.
    pub etag: bool,
    /// Send a Last-Modified that changes with the version.
    pub last_modified: bool,
    /// `Transfer-Encoding: chunked` instead of Content-Length.
    pub chunked: bool,
    pub faults: Vec<Fault>,
    /// Never send body bytes at or past this offset of the file: the response stops there and
    /// the connection is closed (chunked: the body ends cleanly there). Every response.
    pub truncate_at: Option<u64>,
    /// After this many requests of the image path, serve the other body (new ETag, new
    /// Last-Modified).
    pub change_after: Option<(u32, Body)>,
    /// (name, value) that every request of the image path must carry, else 401.
    pub require_header: Option<(String, String)>,
    /// (path, Location): answer 302 to Location.
    pub redirects: Vec<(String, String)>,
    /// Keep connections open between requests (default true).
    pub keep_alive: bool,
}

impl Config {
    pub fn new(body: impl Into<Body>) -> Self {
        Config {
            path: "/image".into(),
            body: body.into(),
            range: true,
            etag: true,
            last_modified: true,
            chunked: false,
            faults: Vec::new(),
            truncate_at: None,
            change_after: None,
            require_header: None,
            redirects: Vec::new(),
            keep_alive: true,
        }
    }
    pub fn path(mut self, path: &str) -> Self {
        self.path = path.into();
        self
    }
    pub fn no_range(mut self) -> Self {
        self.range = false;
        self
    }
    pub fn no_etag(mut self) -> Self {
        self.etag = false;
        self
    }
    pub fn no_last_modified(mut self) -> Self {
        self.last_modified = false;
        self
    }
    pub fn chunked(mut self) -> Self {
        self.chunked = true;
        self
    }
    pub fn no_keep_alive(mut self) -> Self {
        self.keep_alive = false;
        self
    }
    pub fn fault(mut self, fault: Fault) -> Self {
        self.faults.push(fault);
        self
    }
    /// Drop the connection after `after` body bytes, for the first `times` eligible responses.
    pub fn drop_after(self, after: u64, times: u32) -> Self {
        self.fault(Fault {
            kind: FaultKind::Drop,
            after,
            times,
            skip: 0,
        })
    }
    /// Stall for `stall` after `after` body bytes, for the first `times` eligible responses.
    pub fn stall_after(self, after: u64, stall: Duration, times: u32) -> Self {
        self.fault(Fault {
            kind: FaultKind::Stall(stall),
            after,
            times,
            skip: 0,
        })
    }
    /// Answer `status` to eligible requests number `skip+1 ..= skip+times`.
    pub fn fail_status(self, status: u16, skip: u32, times: u32) -> Self {
        self.fault(Fault {
            kind: FaultKind::Status(status),
            after: 0,
            times,
            skip,
        })
    }
    pub fn truncate_at(mut self, offset: u64) -> Self {
        self.truncate_at = Some(offset);
        self
    }
    pub fn change_after(mut self, requests: u32, body: impl Into<Body>) -> Self {
        self.change_after = Some((requests, body.into()));
        self
    }
    pub fn require_header(mut self, name: &str, value: &str) -> Self {
        self.require_header = Some((name.into(), value.into()));
        self
    }
    pub fn redirect(mut self, from_path: &str, location: &str) -> Self {
        self.redirects.push((from_path.into(), location.into()));
        self
    }
}

/// One request as the server saw it.
#[derive(Clone, Debug)]
pub struct RequestLog {
    pub method: String,
    /// The request target without its query.
    pub path: String,
    pub range: Option<String>,
    /// Header names lower-cased, in order.
    pub headers: Vec<(String, String)>,
    pub status: u16,
    /// Body bytes written to the socket (file bytes, without chunk framing).
    pub body_bytes: u64,
    /// `drop`, `stall`, `status`, `truncate` when a fault hit this response.
    pub fault: Option<&'static str>,
}

impl RequestLog {
    pub fn header(&self, name: &str) -> Option<&str> {
        let name = name.to_ascii_lowercase();
        self.headers
            .iter()
            .find(|(n, _)| *n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// All requests so far.
#[derive(Clone, Debug, Default)]
pub struct Stats {
    pub requests: Vec<RequestLog>,
}

impl Stats {
    pub fn count(&self) -> usize {
        self.requests.len()
    }
    /// Body bytes sent over all requests.
    pub fn body_bytes(&self) -> u64 {
        self.requests.iter().map(|r| r.body_bytes).sum()
    }
    /// The Range header of each request, in order.
    pub fn ranges(&self) -> Vec<Option<String>> {
        self.requests.iter().map(|r| r.range.clone()).collect()
    }
    pub fn statuses(&self) -> Vec<u16> {
        self.requests.iter().map(|r| r.status).collect()
    }
    pub fn faults(&self) -> usize {
        self.requests.iter().filter(|r| r.fault.is_some()).count()
    }
}

struct State {
    cfg: Config,
    requests: Vec<RequestLog>,
    image_requests: u32,
    version: u32,
    /// Per fault: eligible responses seen.
    seen: Vec<u32>,
}

struct Shared {
    state: Mutex<State>,
    stop: AtomicBool,
    /// Open connections (id, a handle to shut them down on drop).
    conns: Mutex<Vec<(u64, TcpStream)>>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Relaxed)
    }
}

/// A running server; stops when dropped.
pub struct Httpd {
    addr: SocketAddr,
    shared: Arc<Shared>,
    accept: Option<JoinHandle<()>>,
}

impl Httpd {
    pub fn start(cfg: Config) -> Httpd {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        let addr = listener.local_addr().expect("local addr");
        let seen = vec![0; cfg.faults.len()];
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                cfg,
                requests: Vec::new(),
                image_requests: 0,
                version: 1,
                seen,
            }),
            stop: AtomicBool::new(false),
            conns: Mutex::new(Vec::new()),
        });
        let sh = shared.clone();
        let accept = std::thread::Builder::new()
            .name("httpd-accept".into())
            .spawn(move || {
                for (id, conn) in (0u64..).zip(listener.incoming()) {
                    if sh.stopped() {
                        break;
                    }
                    let Ok(conn) = conn else { continue };
                    let _ = conn.set_nodelay(true);
                    if let Ok(c) = conn.try_clone() {
                        sh.conns
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .push((id, c));
                    }
                    let sh = sh.clone();
                    let _ = std::thread::Builder::new()
                        .name("httpd-conn".into())
                        .spawn(move || serve_conn(conn, id, &sh));
                }
            })
            .expect("spawn httpd");
        Httpd {
            addr,
            shared,
            accept: Some(accept),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// The URL of the image path.
    pub fn image_url(&self) -> String {
        let path = self.shared.lock().cfg.path.clone();
        self.url(&path)
    }

    pub fn stats(&self) -> Stats {
        Stats {
            requests: self.shared.lock().requests.clone(),
        }
    }

    pub fn reset_stats(&self) {
        self.shared.lock().requests.clear();
    }

    /// Changes the behaviour of a running server (fault counters restart).
    pub fn update(&self, f: impl FnOnce(&mut Config)) {
        let mut st = self.shared.lock();
        f(&mut st.cfg);
        st.seen = vec![0; st.cfg.faults.len()];
    }
}

impl Drop for Httpd {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let _ = TcpStream::connect(self.addr);
        if let Some(h) = self.accept.take() {
            let _ = h.join();
        }
        for c in self
            .shared
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
            .map(|(_, c)| c)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

struct Request {
    method: String,
    path: String,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

fn read_request(r: &mut BufReader<TcpStream>) -> io::Result<Option<Request>> {
    let mut line = String::new();
    loop {
        line.clear();
        if r.by_ref().take(16 << 10).read_line(&mut line)? == 0 {
            return Ok(None);
        }
        if !line.trim().is_empty() {
            break; // tolerate stray CRLF between requests
        }
    }
    let mut parts = line.split_whitespace();
    let (Some(method), Some(target)) = (parts.next(), parts.next()) else {
        return Err(io::Error::other("bad request line"));
    };
    let method = method.to_string();
    let path = target.split('?').next().unwrap_or("").to_string();
    let mut headers = Vec::new();
    loop {
        let mut h = String::new();
        if r.by_ref().take(16 << 10).read_line(&mut h)? == 0 {
            return Ok(None);
        }
        let h = h.trim_end_matches(['\r', '\n']);
        if h.is_empty() {
            break;
        }
        if let Some((n, v)) = h.split_once(':') {
            headers.push((n.trim().to_ascii_lowercase(), v.trim().to_string()));
        }
        if headers.len() > 200 {
            return Err(io::Error::other("too many headers"));
        }
    }
    let req = Request {
        method,
        path,
        headers,
    };
    if let Some(n) = req
        .header("content-length")
        .and_then(|v| v.parse::<u64>().ok())
    {
        io::copy(&mut r.by_ref().take(n), &mut io::sink())?;
    }
    Ok(Some(req))
}

fn serve_conn(conn: TcpStream, id: u64, shared: &Shared) {
    let Ok(read_half) = conn.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = conn;
    while let Ok(Some(req)) = read_request(&mut reader) {
        if shared.stopped() {
            break;
        }
        let keep = handle(&req, &mut out, shared).unwrap_or(false);
        if !keep || shared.stopped() {
            break;
        }
    }
    let _ = out.shutdown(Shutdown::Both);
    shared
        .conns
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .retain(|(i, _)| *i != id);
}

enum RangeAnswer {
    Full,
    Partial(u64, u64),
    Unsatisfiable,
}

/// A single `bytes=` range against a file of `len` bytes; multi-range and bad syntax: Full.
fn parse_range(spec: &str, len: u64) -> RangeAnswer {
    let Some(set) = spec.trim().strip_prefix("bytes=") else {
        return RangeAnswer::Full;
    };
    if set.contains(',') {
        return RangeAnswer::Full;
    }
    let Some((a, b)) = set.trim().split_once('-') else {
        return RangeAnswer::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        // suffix: the last n bytes
        let Ok(n) = b.parse::<u64>() else {
            return RangeAnswer::Full;
        };
        if n == 0 || len == 0 {
            return RangeAnswer::Unsatisfiable;
        }
        return RangeAnswer::Partial(len.saturating_sub(n), len - 1);
    }
    let Ok(start) = a.parse::<u64>() else {
        return RangeAnswer::Full;
    };
    let end = if b.is_empty() {
        u64::MAX
    } else {
        match b.parse::<u64>() {
            Ok(e) if e >= start => e,
            _ => return RangeAnswer::Full,
        }
    };
    if start >= len {
        return RangeAnswer::Unsatisfiable;
    }
    RangeAnswer::Partial(start, end.min(len - 1))
}

struct Plan {
    status: u16,
    headers: Vec<(String, String)>,
    /// File bytes [start, end) to send (empty for HEAD and errors).
    body: Option<(Body, u64, u64)>,
    text: Option<String>,
    fault: Option<(FaultKind, u64)>,
    truncate_at: Option<u64>,
    chunked: bool,
    keep_alive: bool,
    log: usize,
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        302 => "Found",
        401 => "Unauthorized",
        404 => "Not Found",
        405 => "Method Not Allowed",
        416 => "Range Not Satisfiable",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        _ => "Status",
    }
}

/// Decides the answer under the lock, then sends it without.
fn plan(req: &Request, st: &mut State) -> Plan {
    let keep_alive = st.cfg.keep_alive
        && !req
            .header("connection")
            .is_some_and(|c| c.eq_ignore_ascii_case("close"));
    st.requests.push(RequestLog {
        method: req.method.clone(),
        path: req.path.clone(),
        range: req.header("range").map(str::to_string),
        headers: req.headers.clone(),
        status: 0,
        body_bytes: 0,
        fault: None,
    });
    let log = st.requests.len() - 1;
    let mut p = Plan {
        status: 200,
        headers: Vec::new(),
        body: None,
        text: None,
        fault: None,
        truncate_at: None,
        chunked: false,
        keep_alive,
        log,
    };
    let text = |p: &mut Plan, status: u16, t: &str| {
        p.status = status;
        p.text = Some(t.to_string());
        p.headers.push(("Content-Type".into(), "text/plain".into()));
    };
    if let Some((_, loc)) = st.cfg.redirects.iter().find(|(from, _)| *from == req.path) {
        p.headers.push(("Location".into(), loc.clone()));
        text(&mut p, 302, "redirect\n");
        return p;
    }
    if req.path != st.cfg.path {
        text(&mut p, 404, "not found\n");
        return p;
    }
    if let Some((name, value)) = &st.cfg.require_header
        && req.header(&name.to_ascii_lowercase()) != Some(value.as_str())
    {
        p.headers.push((
            "WWW-Authenticate".into(),
            "Basic realm=\"byol-test\"".into(),
        ));
        text(&mut p, 401, "unauthorized\n");
        return p;
    }
    let head = req.method == "HEAD";
    if !head && req.method != "GET" {
        p.headers.push(("Allow".into(), "GET, HEAD".into()));
        text(&mut p, 405, "method not allowed\n");
        return p;
    }
    st.image_requests += 1;
    if let Some((n, _)) = &st.cfg.change_after
        && st.image_requests > *n
        && let Some((_, body)) = st.cfg.change_after.take()
    {
        st.cfg.body = body;
        st.version += 1;
    }
    // Status faults
    for i in 0..st.cfg.faults.len() {
        let f = st.cfg.faults[i].clone();
        if let FaultKind::Status(code) = f.kind {
            st.seen[i] += 1;
            if st.seen[i] > f.skip && st.seen[i] <= f.skip.saturating_add(f.times) {
                st.requests[log].fault = Some("status");
                text(&mut p, code, "injected failure\n");
                return p;
            }
        }
    }
    let len = st.cfg.body.len();
    let etag = format!("\"v{}-{len}\"", st.version);
    if st.cfg.etag {
        p.headers.push(("ETag".into(), etag.clone()));
    }
    if st.cfg.last_modified {
        p.headers.push((
            "Last-Modified".into(),
            format!("Mon, 01 Jan 2024 00:00:{:02} GMT", st.version % 60),
        ));
    }
    p.headers
        .push(("Content-Type".into(), "application/octet-stream".into()));
    if st.cfg.range {
        p.headers.push(("Accept-Ranges".into(), "bytes".into()));
    }
    let if_range_ok = req
        .header("if-range")
        .is_none_or(|v| st.cfg.etag && v == etag);
    let answer = match req.header("range") {
        Some(spec) if st.cfg.range && if_range_ok => parse_range(spec, len),
        _ => RangeAnswer::Full,
    };
    let (start, end) = match answer {
        RangeAnswer::Unsatisfiable => {
            p.headers
                .push(("Content-Range".into(), format!("bytes */{len}")));
            text(&mut p, 416, "");
            p.text = None;
            return p;
        }
        RangeAnswer::Full => (0, len),
        RangeAnswer::Partial(s, e) => {
            p.status = 206;
            p.headers
                .push(("Content-Range".into(), format!("bytes {s}-{e}/{len}")));
            (s, e + 1)
        }
    };
    p.chunked = st.cfg.chunked;
    if !p.chunked {
        p.headers
            .push(("Content-Length".into(), (end - start).to_string()));
    }
    if head {
        return p;
    }
    for i in 0..st.cfg.faults.len() {
        let f = st.cfg.faults[i].clone();
        if matches!(f.kind, FaultKind::Status(_)) || end - start <= f.after {
            continue;
        }
        st.seen[i] += 1;
        if st.seen[i] > f.skip && st.seen[i] <= f.skip.saturating_add(f.times) {
            p.fault = Some((f.kind, f.after));
            break;
        }
    }
    p.truncate_at = st.cfg.truncate_at;
    p.body = Some((st.cfg.body.clone(), start, end));
    p
}

/// Answers one request; Ok(true) when the connection may serve another.
fn handle(req: &Request, out: &mut TcpStream, shared: &Shared) -> io::Result<bool> {
    let p = plan(req, &mut shared.lock());
    let set_log = |f: &dyn Fn(&mut RequestLog)| {
        if let Some(r) = shared.lock().requests.get_mut(p.log) {
            f(r);
        }
    };
    set_log(&|r| r.status = p.status);
    let mut keep = p.keep_alive;
    let mut head = format!("HTTP/1.1 {} {}\r\n", p.status, reason(p.status));
    for (n, v) in &p.headers {
        head.push_str(&format!("{n}: {v}\r\n"));
    }
    if let Some(t) = &p.text {
        head.push_str(&format!("Content-Length: {}\r\n", t.len()));
    } else if p.status == 416 || (p.body.is_none() && !p.chunked && p.status >= 300) {
        head.push_str("Content-Length: 0\r\n");
    }
    if p.chunked {
        head.push_str("Transfer-Encoding: chunked\r\n");
    }
    head.push_str(if keep {
        "Connection: keep-alive\r\n\r\n"
    } else {
        "Connection: close\r\n\r\n"
    });
    out.write_all(head.as_bytes())?;
    if let Some(t) = &p.text {
        out.write_all(t.as_bytes())?;
    }
    let Some((body, start, end)) = p.body else {
        if p.chunked && req.method == "HEAD" {
            return Ok(keep);
        }
        out.flush()?;
        return Ok(keep);
    };
    // where the body stops early: a fault point or the truncation
    let fault_at = p.fault.as_ref().map(|(_, after)| start + after);
    let trunc = p.truncate_at.filter(|&t| t < end).map(|t| t.max(start));
    let mut pos = start;
    let mut buf = vec![0u8; 256 << 10];
    let mut stalled = false;
    loop {
        let mut stop_at = end;
        if let Some(t) = trunc {
            stop_at = stop_at.min(t);
        }
        if let Some(f) = fault_at
            && !stalled
        {
            stop_at = stop_at.min(f);
        }
        if pos >= stop_at {
            if !stalled
                && let (Some((kind, _)), Some(f)) = (&p.fault, fault_at)
                && pos == f
            {
                match kind {
                    FaultKind::Drop => {
                        set_log(&|r| r.fault = Some("drop"));
                        out.flush()?;
                        return Ok(false);
                    }
                    FaultKind::Stall(d) => {
                        set_log(&|r| r.fault = Some("stall"));
                        out.flush()?;
                        let until = Instant::now() + *d;
                        while Instant::now() < until && !shared.stopped() {
                            std::thread::sleep(Duration::from_millis(10));
                        }
                        stalled = true;
                        continue;
                    }
                    FaultKind::Status(_) => {}
                }
            }
            if trunc == Some(pos) && pos < end {
                set_log(&|r| r.fault = Some("truncate"));
                if p.chunked {
                    out.write_all(b"0\r\n\r\n")?;
                    out.flush()?;
                    return Ok(keep);
                }
                out.flush()?;
                return Ok(false);
            }
            break;
        }
        let want = ((stop_at - pos) as usize).min(buf.len());
        let n = body.read_at(pos, &mut buf[..want])?;
        if n == 0 {
            // the file is shorter than announced (it changed on disk)
            keep = false;
            break;
        }
        if p.chunked {
            out.write_all(format!("{n:x}\r\n").as_bytes())?;
            out.write_all(&buf[..n])?;
            out.write_all(b"\r\n")?;
        } else {
            out.write_all(&buf[..n])?;
        }
        pos += n as u64;
        set_log(&|r| r.body_bytes += n as u64);
        if shared.stopped() {
            return Ok(false);
        }
    }
    if p.chunked && keep {
        out.write_all(b"0\r\n\r\n")?;
    }
    out.flush()?;
    Ok(keep)
}
