//! files: `/assets/*` (installer kernel and initramfs) and `/images/*` (images for small labs),
//! served from folders by tower-http's ServeDir (Content-Length, single Range requests, 206)
//! plus what ServeDir lacks: a strong ETag from the file's size, mtime and inode, so a
//! resuming client can check the file did not change between its requests.

use std::path::{Component, Path, PathBuf};

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt as _;
use tower_http::services::{ServeDir, ServeFile};

/// Bytes read from the file per step of a response. ServeDir's default (64 KiB) costs one
/// blocking-pool task and its thread wake-ups per 64 KiB: serving a 2 GB image that way kept
/// a whole core busy and ran at 1.1 GB/s on loopback. 1 MiB steps cut that work 16-fold, at
/// 1 MiB of memory per download in flight.
pub const READ_CHUNK: usize = 1 << 20;

/// Serves `req` (its path relative to the folder) from `dir`.
pub async fn serve(dir: PathBuf, octet_stream: bool, req: Request) -> Response {
    let etag = relative(req.uri().path()).and_then(|rel| etag_of(&dir.join(rel)));
    let res = match ServeDir::new(&dir)
        .with_buf_chunk_size(READ_CHUNK)
        .oneshot(req)
        .await
    {
        Ok(r) => r.map(Body::new).into_response(),
        Err(e) => match e {},
    };
    finish(res, etag, octet_stream)
}

/// Serves one file (the installer's kernel and initramfs, wherever they are).
pub async fn serve_file(path: PathBuf, req: Request) -> Response {
    let etag = etag_of(&path);
    let res = match ServeFile::new(&path)
        .with_buf_chunk_size(READ_CHUNK)
        .oneshot(req)
        .await
    {
        Ok(r) => r.map(Body::new).into_response(),
        Err(e) => match e {},
    };
    finish(res, etag, true)
}

fn finish(mut res: Response, etag: Option<String>, octet_stream: bool) -> Response {
    if res.status().is_success() {
        if let Some(tag) = etag.and_then(|t| HeaderValue::from_str(&t).ok()) {
            res.headers_mut().insert(header::ETAG, tag);
        }
        if octet_stream {
            res.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
        }
    }
    res
}

/// The request path as a relative path with only normal components (ServeDir refuses the rest).
fn relative(uri_path: &str) -> Option<PathBuf> {
    let decoded = percent_decode(uri_path.trim_start_matches('/'))?;
    let p = Path::new(&decoded);
    p.components()
        .all(|c| matches!(c, Component::Normal(_)))
        .then(|| p.to_path_buf())
}

fn percent_decode(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = std::str::from_utf8(b.get(i + 1..i + 3)?).ok()?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn etag_of(p: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt as _;
    let m = std::fs::metadata(p).ok()?;
    m.is_file().then(|| {
        format!(
            "\"{:x}-{:x}.{:x}-{:x}\"",
            m.len(),
            m.mtime(),
            m.mtime_nsec(),
            m.ino()
        )
    })
}
