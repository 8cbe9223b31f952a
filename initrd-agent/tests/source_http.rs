//! The image source over a real loopback HTTP server (tests/common/httpd.rs): whole reads,
//! Range reads, resume after drops and stalls, the guide's error texts, secrets kept out of
//! them; and the local file source.

mod common;

use std::io::{self, Read};
use std::net::TcpListener;
use std::time::{Duration, Instant};

use byol_agent::image::source::{self, Source, SourceError, SourceOptions};
use byol_spec::Secret;
use common::httpd::{Config, Httpd};

const MIB: usize = 1 << 20;

/// Deterministic pseudo-random bytes (xorshift64).
fn random(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Quick retries, a generous stall limit (tests run in parallel on few cores).
fn opts() -> SourceOptions {
    SourceOptions {
        backoff: Duration::from_millis(1),
        stall_timeout: Duration::from_secs(5),
        connect_timeout: Duration::from_secs(5),
        ..SourceOptions::default()
    }
}

fn open(url: &str, opts: &SourceOptions) -> Box<dyn Source> {
    match source::open(url, opts) {
        Ok(s) => s,
        Err(e) => panic!("open {url}: {e}"),
    }
}

fn open_err(url: &str, opts: &SourceOptions) -> SourceError {
    match source::open(url, opts) {
        Ok(_) => panic!("open {url} succeeded"),
        Err(e) => e,
    }
}

fn read_all(src: &mut dyn Source) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    src.stream()
        .map_err(io::Error::from)?
        .read_to_end(&mut out)?;
    Ok(out)
}

/// The `SourceError` a failed stream gave up with.
fn stream_err(src: &mut dyn Source) -> SourceError {
    match read_all(src) {
        Ok(v) => panic!("stream succeeded with {} bytes", v.len()),
        Err(e) => SourceError::from_io(&e)
            .unwrap_or_else(|| panic!("not a SourceError: {e}"))
            .clone(),
    }
}

fn guide(url: &str, cause: &str) -> String {
    format!("Could not download image located : `{url}` ({cause})")
}

#[test]
fn full_stream_equals_file() {
    let data = random(5 * MIB, 1);
    let srv = Httpd::start(Config::new(data.clone()));
    let mut src = open(&srv.image_url(), &opts());
    assert_eq!(src.len(), Some(data.len() as u64));
    assert!(src.supports_range());
    assert_eq!(src.describe(), srv.image_url());
    assert!(read_all(&mut *src).unwrap() == data);
    assert_eq!(src.resumes(), 0);
    let st = srv.stats();
    // the 1-byte probe, then the file exactly once
    assert_eq!(st.body_bytes(), data.len() as u64 + 1);
    assert_eq!(
        st.ranges(),
        vec![Some("bytes=0-0".to_string()), Some("bytes=0-".to_string())]
    );
    assert!(
        st.requests
            .iter()
            .all(|r| r.header("accept-encoding") == Some("identity"))
    );
}

#[test]
fn read_at_returns_exact_ranges_clipped_at_eof() {
    let data = random(MIB, 2);
    let len = data.len() as u64;
    let srv = Httpd::start(Config::new(data.clone()));
    let mut src = open(&srv.image_url(), &opts());
    assert_eq!(src.read_at(0, 512).unwrap(), &data[..512]);
    assert_eq!(src.read_at(1000, 4096).unwrap(), &data[1000..5096]);
    assert_eq!(
        src.read_at(len - 100, 1000).unwrap(),
        &data[data.len() - 100..]
    );
    assert!(src.read_at(len, 10).unwrap().is_empty());
    assert!(src.read_at(len + 5, 10).unwrap().is_empty());
    assert!(src.read_at(7, 0).unwrap().is_empty());
    let ranges = srv.stats().ranges();
    assert_eq!(
        ranges,
        [
            "bytes=0-0",
            "bytes=0-511",
            "bytes=1000-5095",
            "bytes=1048476-1048575"
        ]
        .map(|r| Some(r.to_string()))
    );
    // the stream after table reads still gives the whole file
    assert!(read_all(&mut *src).unwrap() == data);
}

#[test]
fn resumes_after_five_drops() {
    let data = random(5 * MIB, 3);
    let srv = Httpd::start(Config::new(data.clone()).drop_after(700_000, 5));
    let mut src = open(&srv.image_url(), &opts());
    assert!(read_all(&mut *src).unwrap() == data);
    assert_eq!(src.resumes(), 5);
    let st = srv.stats();
    assert_eq!(st.faults(), 5);
    // each resume starts where the drop happened: the file crossed the wire once
    assert_eq!(st.body_bytes(), data.len() as u64 + 1);
    let ranges: Vec<String> = st.ranges().into_iter().flatten().collect();
    assert_eq!(
        ranges,
        [
            "bytes=0-0",
            "bytes=0-",
            "bytes=700000-",
            "bytes=1400000-",
            "bytes=2100000-",
            "bytes=2800000-",
            "bytes=3500000-"
        ]
    );
}

#[test]
fn resumes_after_a_stall() {
    let data = random(3 * MIB, 4);
    let srv =
        Httpd::start(Config::new(data.clone()).stall_after(MIB as u64, Duration::from_secs(4), 1));
    let o = SourceOptions {
        stall_timeout: Duration::from_millis(300),
        ..opts()
    };
    let mut src = open(&srv.image_url(), &o);
    let t = Instant::now();
    assert!(read_all(&mut *src).unwrap() == data);
    let took = t.elapsed();
    assert_eq!(src.resumes(), 1);
    assert!(took >= Duration::from_millis(300), "{took:?}");
    assert!(
        took < Duration::from_secs(3),
        "did not give up the stall: {took:?}"
    );
    assert_eq!(srv.stats().ranges()[2].as_deref(), Some("bytes=1048576-"));
}

#[test]
fn gives_up_after_max_retries() {
    let data = random(MIB, 5);
    let srv = Httpd::start(Config::new(data).drop_after(100_000, 100));
    let o = SourceOptions {
        max_retries: 3,
        ..opts()
    };
    let mut src = open(&srv.image_url(), &o);
    let e = stream_err(&mut *src);
    assert_eq!(
        e.to_string(),
        guide(
            &srv.image_url(),
            "connection dropped 4 times at byte 400000 of 1048576, giving up \
             (last: connection closed before the end of the response)"
        )
    );
    assert_eq!(src.resumes(), 3);
    // the guide's error, for the engine
    assert_eq!(e.to_spec().unwrap().to_string(), e.to_string());
}

#[test]
fn file_changed_during_download_is_an_error() {
    let data = random(2 * MIB, 6);
    let other = random(2 * MIB, 7);
    // request 1 is the probe, 2 the stream (dropped), 3 the resume: the file has changed
    let srv = Httpd::start(
        Config::new(data.clone())
            .drop_after(MIB as u64, 1)
            .change_after(2, other.clone()),
    );
    let mut src = open(&srv.image_url(), &opts());
    let e = stream_err(&mut *src);
    assert_eq!(
        e.to_string(),
        guide(
            &srv.image_url(),
            "the file changed on the server while downloading \
             (ETag `\"v1-2097152\"` became `\"v2-2097152\"`)"
        )
    );

    // without ETag: Last-Modified (and the length) tell
    let srv = Httpd::start(
        Config::new(data)
            .no_etag()
            .drop_after(MIB as u64, 1)
            .change_after(2, other),
    );
    let mut src = open(&srv.image_url(), &opts());
    let e = stream_err(&mut *src);
    assert!(
        e.cause().contains(
            "(Last-Modified `Mon, 01 Jan 2024 00:00:01 GMT` became `Mon, 01 Jan 2024 00:00:02 GMT`)"
        ),
        "{e}"
    );

    // read_at after a change: refused too
    let srv = Httpd::start(Config::new(random(MIB, 8)).change_after(1, random(MIB + 1, 9)));
    let mut src = open(&srv.image_url(), &opts());
    let e = src.read_at(0, 100).unwrap_err();
    assert!(
        e.cause().starts_with("the file changed on the server"),
        "{e}"
    );
}

#[test]
fn without_range_support() {
    let data = random(3 * MIB, 10);
    // a clean download: the probe's 200 answer is the stream, the file crosses the wire once
    let srv = Httpd::start(Config::new(data.clone()).no_range());
    let mut src = open(&srv.image_url(), &opts());
    assert!(!src.supports_range());
    assert_eq!(src.len(), Some(data.len() as u64));
    assert!(read_all(&mut *src).unwrap() == data);
    assert_eq!(srv.stats().count(), 1);
    assert_eq!(srv.stats().body_bytes(), data.len() as u64);
    let e = src.read_at(0, 10).unwrap_err();
    assert_eq!(
        e.cause(),
        "server does not support Range requests, cannot read parts of the file"
    );

    // a drop cannot be resumed: the error says why
    let srv = Httpd::start(Config::new(data).no_range().drop_after(MIB as u64, 1));
    let mut src = open(&srv.image_url(), &opts());
    let e = stream_err(&mut *src);
    assert_eq!(
        e.to_string(),
        guide(
            &srv.image_url(),
            "server does not support Range requests, cannot resume after a dropped connection \
             at byte 1048576 (connection closed before the end of the response)"
        )
    );
}

#[test]
fn http_status_errors_use_the_guide_wording() {
    let srv = Httpd::start(Config::new(random(1000, 11)).require_header("Authorization", "x"));
    let url = srv.url("/missing.qcow2");
    assert_eq!(
        open_err(&url, &opts()).to_string(),
        guide(&url, "HTTP 404 Not Found")
    );
    assert_eq!(
        open_err(&srv.image_url(), &opts()).to_string(),
        guide(
            &srv.image_url(),
            "HTTP 401 Unauthorized: check the httpHeaders"
        )
    );
}

#[test]
fn headers_are_sent_and_never_shown() {
    let secret = "Basic c2VjcmV0LXZhbHVlLTQy";
    let data = random(100_000, 12);
    let srv = Httpd::start(Config::new(data.clone()).require_header("Authorization", secret));
    let with = |v: &str| SourceOptions {
        headers: vec![("Authorization".into(), Secret::new(v))],
        ..opts()
    };
    let mut src = open(&srv.image_url(), &with(secret));
    assert!(read_all(&mut *src).unwrap() == data);
    assert!(
        srv.stats()
            .requests
            .iter()
            .all(|r| r.header("authorization") == Some(secret))
    );

    let wrong = "Basic d3Jvbmctc2VjcmV0LTk5";
    let o = with(wrong);
    let e = open_err(&srv.image_url(), &o);
    let shown = format!("{e} {e:?} {o:?}");
    assert!(
        !shown.contains(wrong) && !shown.contains("d3Jvbmct"),
        "{shown}"
    );
    assert!(
        e.to_string()
            .ends_with("(HTTP 401 Unauthorized: check the httpHeaders)")
    );
}

#[test]
fn url_credentials_are_sent_as_basic_auth_and_redacted() {
    let data = random(10_000, 13);
    // user:pass → Basic dXNlcjpwYXNz
    let srv = Httpd::start(
        Config::new(data.clone()).require_header("Authorization", "Basic dXNlcjpwYXNz"),
    );
    let port = srv.addr().port();
    let mut src = open(&format!("http://user:pass@127.0.0.1:{port}/image"), &opts());
    assert_eq!(
        src.describe(),
        format!("http://<redacted>@127.0.0.1:{port}/image")
    );
    assert!(read_all(&mut *src).unwrap() == data);

    let e = open_err(&format!("http://user:pass@127.0.0.1:{port}/nope"), &opts());
    assert_eq!(
        e.to_string(),
        guide(
            &format!("http://<redacted>@127.0.0.1:{port}/nope"),
            "HTTP 404 Not Found"
        )
    );
    assert!(!format!("{e:?}").contains("pass"));
}

#[test]
fn redirects_keep_headers_within_the_origin() {
    let data = random(50_000, 14);
    let other = Httpd::start(Config::new(data.clone()));
    let srv = Httpd::start(
        Config::new(data.clone())
            .redirect("/old", "/image")
            .redirect("/elsewhere", &other.image_url()),
    );
    let o = SourceOptions {
        headers: vec![("X-Token".into(), Secret::new("tok-123"))],
        ..opts()
    };
    // same origin: followed with the header
    let mut src = open(&srv.url("/old"), &o);
    assert!(read_all(&mut *src).unwrap() == data);
    assert!(
        srv.stats()
            .requests
            .iter()
            .all(|r| r.header("x-token") == Some("tok-123"))
    );

    // another origin (port): followed without it
    let mut src = open(&srv.url("/elsewhere"), &o);
    assert!(read_all(&mut *src).unwrap() == data);
    let st = other.stats();
    assert_eq!(st.count(), 2);
    assert!(st.requests.iter().all(|r| r.header("x-token").is_none()));

    // a redirect loop ends
    let srv = Httpd::start(Config::new(data).redirect("/a", "/b").redirect("/b", "/a"));
    let e = open_err(&srv.url("/a"), &o);
    assert_eq!(e.cause(), "more than 10 redirects");
}

#[test]
fn truncated_stream_is_an_error() {
    let data = random(2 * MIB, 15);
    let o = SourceOptions {
        max_retries: 2,
        ..opts()
    };
    // Content-Length says 2 MiB, every response stops at 1.5 MiB and closes
    let srv = Httpd::start(Config::new(data.clone()).truncate_at(1_572_864));
    let mut src = open(&srv.image_url(), &o);
    let e = stream_err(&mut *src);
    assert!(
        e.cause()
            .starts_with("connection dropped 3 times at byte 1572864 of 2097152, giving up"),
        "{e}"
    );

    // chunked, ending cleanly but early: still an error
    let srv = Httpd::start(Config::new(data.clone()).chunked().truncate_at(1_572_864));
    let mut src = open(&srv.image_url(), &o);
    let e = stream_err(&mut *src);
    assert_eq!(
        e.cause(),
        "connection dropped 3 times at byte 1572864 of 2097152, giving up \
         (last: stream ended at byte 1572864 of 2097152)"
    );

    // no Range, Content-Length: the short body is an error, not an end
    let srv = Httpd::start(Config::new(data).no_range().truncate_at(1_572_864));
    let mut src = open(&srv.image_url(), &o);
    let e = stream_err(&mut *src);
    assert!(e.cause().contains("at byte 1572864"), "{e}");
}

#[test]
fn transient_5xx_is_retried() {
    let data = random(200_000, 16);
    // the probe passes, the stream's first two attempts get 503
    let srv = Httpd::start(Config::new(data.clone()).fail_status(503, 1, 2));
    let mut src = open(&srv.image_url(), &opts());
    assert!(read_all(&mut *src).unwrap() == data);
    assert_eq!(src.resumes(), 2);

    // a 503 that does not go away
    let srv = Httpd::start(Config::new(data).fail_status(503, 0, 100));
    let o = SourceOptions {
        max_retries: 2,
        ..opts()
    };
    let e = open_err(&srv.image_url(), &o);
    assert_eq!(
        e.cause(),
        "the server answered HTTP 503 Service Unavailable 3 times before the first byte, \
         giving up"
    );
}

#[test]
fn answers_that_will_not_change_are_not_retried() {
    let data = random(200_000, 17);
    for (status, text) in [
        (401, "HTTP 401 Unauthorized"),
        (403, "HTTP 403 Forbidden"),
        (404, "HTTP 404 Not Found"),
        (410, "HTTP 410 Gone"),
    ] {
        let srv = Httpd::start(Config::new(data.clone()).fail_status(status, 0, 100));
        let t = std::time::Instant::now();
        let o = SourceOptions {
            backoff: std::time::Duration::from_secs(2),
            ..opts()
        };
        let e = open_err(&srv.image_url(), &o);
        assert!(e.cause().starts_with(text), "{status}: {e}");
        // one request, no backoff sleep
        assert!(
            t.elapsed() < std::time::Duration::from_secs(2),
            "{status}: {:?}",
            t.elapsed()
        );
    }
}

#[test]
fn empty_file() {
    let srv = Httpd::start(Config::new(Vec::new()));
    let mut src = open(&srv.image_url(), &opts());
    assert_eq!(src.len(), Some(0));
    assert!(read_all(&mut *src).unwrap().is_empty());
    assert_eq!(srv.stats().statuses(), [416]);
}

#[test]
fn network_errors_are_named() {
    // connection refused: a port nobody listens on
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("http://127.0.0.1:{port}/image");
    assert_eq!(
        open_err(&url, &opts()).to_string(),
        guide(&url, "connection refused")
    );

    // TLS: a server that answers in plain text
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        if let Ok((mut c, _)) = listener.accept() {
            use std::io::Write;
            let _ = c.write_all(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    let e = open_err(&format!("https://{addr}/image"), &opts());
    assert!(e.cause().starts_with("TLS: "), "{e}");

    // DNS (`.invalid` never resolves)
    let e = open_err("http://byol-test.invalid/image", &opts());
    assert_eq!(e.cause(), "cannot resolve host `byol-test.invalid`");

    // not a URL byol can fetch
    let e = open_err("ftp://h/x", &opts());
    assert_eq!(
        e.to_string(),
        guide(
            "ftp://h/x",
            "unsupported URL scheme `ftp`: use http:// or https://"
        )
    );
}

#[test]
fn local_file_source() {
    let data = random(300_000, 17);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img.raw");
    std::fs::write(&path, &data).unwrap();
    let p = path.to_str().unwrap();
    for loc in [p.to_string(), format!("file://{p}")] {
        let mut src = open(&loc, &opts());
        assert_eq!(src.describe(), p);
        assert_eq!(src.len(), Some(data.len() as u64));
        assert!(src.supports_range());
        assert_eq!(src.read_at(1000, 10).unwrap(), &data[1000..1010]);
        assert_eq!(src.read_at(299_990, 100).unwrap(), &data[299_990..]);
        assert!(src.read_at(400_000, 1).unwrap().is_empty());
        assert!(read_all(&mut *src).unwrap() == data);
        assert_eq!(src.resumes(), 0);
    }
    let missing = dir.path().join("nope.qcow2");
    let e = open_err(missing.to_str().unwrap(), &opts());
    assert_eq!(
        e.to_string(),
        format!(
            "cannot open image file `{}`: No such file or directory (os error 2)",
            missing.display()
        )
    );
    let e = open_err(dir.path().to_str().unwrap(), &opts());
    assert!(e.to_string().ends_with(": it is a directory"), "{e}");
}

#[test]
fn the_server_can_serve_a_file() {
    let data = random(400_000, 18);
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("img");
    std::fs::write(&path, &data).unwrap();
    let srv = Httpd::start(Config::new(path).path("/img.qcow2"));
    let mut src = open(&srv.url("/img.qcow2"), &opts());
    assert_eq!(src.read_at(10, 20).unwrap(), &data[10..30]);
    assert!(read_all(&mut *src).unwrap() == data);
}

#[test]
fn a_stop_ends_the_stream_and_range_reads_at_once() {
    let data = random(8 * MIB, 9);
    let srv = Httpd::start(Config::new(data.clone()));
    let o = opts();
    let mut src = open(&srv.image_url(), &o);
    let mut s = src.stream().unwrap();
    let mut buf = vec![0u8; MIB];
    s.read_exact(&mut buf).unwrap();
    o.stop
        .stop("install X is cancelled (cancelled by the operator): the agent stops");
    let e = s.read(&mut buf).unwrap_err();
    assert_eq!(
        SourceError::from_io(&e).unwrap().to_string(),
        "the download was stopped: install X is cancelled (cancelled by the operator): the agent stops"
    );
    let e = src.read_at(0, 512).unwrap_err();
    assert!(matches!(e, SourceError::Stopped(_)), "{e}");
}
