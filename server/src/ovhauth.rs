//! ovhauth: OVH's request signing, so OVH's own clients (python-ovh, the Go and JS clients,
//! Terraform's provider) work against byol with only their endpoint changed.
//!
//! An application (`byol api-key create`) has an application key (public) and secret; a
//! consumer key stands for what the application may do (its access rules), usable once an
//! operator validated it. A signed request carries `X-Ovh-Application`, `X-Ovh-Consumer`,
//! `X-Ovh-Timestamp` and `X-Ovh-Signature` = `"$1$" + hex(sha1(AS + "+" + CK + "+" + METHOD +
//! "+" + full URL + "+" + body + "+" + timestamp))`. The server checks, in this order: the
//! application, the consumer key and its state, the timestamp (±5 min of the server's
//! clock, `GET /auth/time`), the signature, that the signature was not used before (a
//! signed POST, PUT or DELETE is good once: a captured one cannot be sent again; GETs are
//! not recorded, since OVH's clients sign two identical GETs of one second identically), and
//! the access rules.
//! Refusals carry OVH's `errorCode` (the clients map them to their exception types).
//!
//! The full URL is the one the client called: scheme, the `Host` header and the path as sent
//! (`/1.0/...` included). Both schemes are tried (a TLS-terminating proxy in front changes
//! it; the secret, not the scheme, is what the signature proves), and `--public-url` too.

use axum::http::{HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use rand::RngCore as _;
use serde_json::json;

use crate::http::Shared;
use crate::store::{AccessRule, CredentialState};

/// How far a request's timestamp may be from the server's clock, either way.
pub const MAX_SKEW_SECONDS: i64 = 300;

/// An OVH-style refusal: HTTP status, OVH's `errorCode` and a message.
#[derive(Debug)]
pub struct Refused {
    pub status: StatusCode,
    pub code: &'static str,
    pub message: String,
}

impl Refused {
    fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Refused {
            status,
            code,
            message: message.into(),
        }
    }
}

impl IntoResponse for Refused {
    fn into_response(self) -> Response {
        let body = json!({
            "errorCode": self.code,
            "httpCode": format!("{} {}", self.status.as_u16(),
                self.status.canonical_reason().unwrap_or("")),
            "message": self.message,
        });
        (self.status, axum::Json(body)).into_response()
    }
}

/// Who a signed request came from (for the log).
#[derive(Debug, Clone)]
pub struct Caller {
    pub app_name: String,
    pub credential_id: i64,
}

/// Random key material, OVH-like: `len` characters of [A-Za-z0-9].
pub fn random_key(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut out = String::with_capacity(len);
    let mut b = [0u8; 1];
    while out.len() < len {
        rand::rng().fill_bytes(&mut b);
        // 62 * 4 = 248: bytes above are thrown away, so every character is equally likely
        if b[0] < 248 {
            out.push(ALPHABET[(b[0] % 62) as usize] as char);
        }
    }
    out
}

/// The seal context of an application's secret.
pub fn secret_context(app_key: &str) -> String {
    format!("api-app:{app_key}")
}

/// `"$1$" + hex(sha1(AS+CK+METHOD+URL+BODY+TS))`.
pub fn signature(secret: &str, ck: &str, method: &str, url: &str, body: &[u8], ts: &str) -> String {
    let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
    for (i, part) in [
        secret.as_bytes(),
        ck.as_bytes(),
        method.as_bytes(),
        url.as_bytes(),
    ]
    .iter()
    .enumerate()
    {
        if i > 0 {
            ctx.update(b"+");
        }
        ctx.update(part);
    }
    ctx.update(b"+");
    ctx.update(body);
    ctx.update(b"+");
    ctx.update(ts.as_bytes());
    format!("$1${}", hex::encode(ctx.finish()))
}

fn header<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::trim)
}

/// The request as the signature saw it.
pub struct Signed<'a> {
    pub method: &'a Method,
    /// Path and query as sent (the `/1.0` prefix included).
    pub path_and_query: &'a str,
    /// The path the rules are matched against (no `/1.0`, no query).
    pub route_path: &'a str,
    pub headers: &'a HeaderMap,
    pub body: &'a [u8],
}

/// Checks a signed request (see the module's doc for the order).
pub fn verify(st: &Shared, req: &Signed<'_>) -> Result<Caller, Refused> {
    let forbidden = StatusCode::FORBIDDEN;
    let app_key = header(req.headers, "x-ovh-application").unwrap_or("");
    let store = |e: crate::store::StoreError| {
        tracing::error!(error = %e, "store failure while checking a signed request");
        Refused::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "INTERNAL_ERROR",
            "internal error in the server's store: see the server log",
        )
    };
    let app = crate::http::db(|| st.store.app(app_key))
        .map_err(store)?
        .filter(|a| a.revoked_at.is_none())
        .ok_or_else(|| Refused::new(forbidden, "INVALID_KEY", "Invalid application key"))?;
    let Some(ck) = header(req.headers, "x-ovh-consumer").filter(|c| !c.is_empty()) else {
        return Err(Refused::new(
            StatusCode::UNAUTHORIZED,
            "NOT_AUTHENTICATED",
            "You must login first: send X-Ovh-Consumer with a consumer key \
             (byol api-key create NAME makes one)",
        ));
    };
    let cred = crate::http::db(|| st.store.credential_by_hash(&crate::auth::hash_token(ck)))
        .map_err(store)?
        .filter(|c| c.app_key == app.app_key)
        .ok_or_else(|| {
            Refused::new(
                forbidden,
                "INVALID_CREDENTIAL",
                "This credential does not exist",
            )
        })?;
    match cred.state {
        CredentialState::Validated => {}
        CredentialState::PendingValidation => {
            return Err(Refused::new(
                forbidden,
                "NOT_CREDENTIAL",
                format!(
                    "This credential is not valid: credential {} waits for an operator \
                     (byol api-key validate {})",
                    cred.credential_id, cred.credential_id
                ),
            ));
        }
        CredentialState::Revoked => {
            return Err(Refused::new(
                forbidden,
                "INVALID_CREDENTIAL",
                "This credential is not valid: it was revoked",
            ));
        }
    }
    let ts_text = header(req.headers, "x-ovh-timestamp").unwrap_or("");
    let ts: i64 = ts_text.parse().map_err(|_| {
        Refused::new(
            StatusCode::BAD_REQUEST,
            "INVALID_SIGNATURE",
            "Invalid signature: X-Ovh-Timestamp is not a number of seconds",
        )
    })?;
    let now = crate::store::now_ms() / 1000;
    if (ts - now).abs() > MAX_SKEW_SECONDS {
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "QUERY_TIME_OUT",
            format!(
                "Query out of time: X-Ovh-Timestamp is {} s from the server's clock (at most \
                 {MAX_SKEW_SECONDS} s either way); clients take the server's time from GET /auth/time",
                ts - now
            ),
        ));
    }
    let sent = header(req.headers, "x-ovh-signature").unwrap_or("");
    let secret = st
        .seal
        .open(&secret_context(&app.app_key), &app.sealed_secret)
        .map_err(|e| {
            tracing::error!(app = %app.name, error = %e, "application secret does not open");
            Refused::new(
                StatusCode::INTERNAL_SERVER_ERROR,
                "INTERNAL_ERROR",
                "internal error: this application's secret cannot be read (see the server log)",
            )
        })?;
    let secret = String::from_utf8_lossy(&secret);
    let method = req.method.as_str();
    let host = header(req.headers, "host").unwrap_or("");
    let mut urls = vec![
        format!("http://{host}{}", req.path_and_query),
        format!("https://{host}{}", req.path_and_query),
    ];
    if let Some(base) = &st.cfg.public_url {
        urls.push(format!(
            "{}{}",
            base.trim_end_matches('/'),
            req.path_and_query
        ));
    }
    let good = urls.iter().any(|u| {
        let want = signature(&secret, ck, method, u, req.body, ts_text);
        crate::auth::same(want.as_bytes(), sent.as_bytes())
    });
    if !good {
        tracing::warn!(app = %app.name, credential = cred.credential_id, path = %req.route_path,
            "signed request refused: wrong signature");
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "INVALID_SIGNATURE",
            "Invalid signature",
        ));
    }
    // A GET is not recorded: python-ovh and the others sign two identical GETs of one second
    // identically (a task polled twice), and a GET changes nothing a replay could repeat.
    let changes = *req.method != Method::GET && *req.method != Method::HEAD;
    if changes && !crate::http::db(|| st.store.use_signature(sent)).map_err(store)? {
        tracing::warn!(app = %app.name, credential = cred.credential_id, path = %req.route_path,
            "signed request refused: replayed");
        return Err(Refused::new(
            StatusCode::BAD_REQUEST,
            "INVALID_SIGNATURE",
            "Invalid signature: this signature was already used (a signed POST, PUT or DELETE \
             is good once; a client sending the same one twice in one second must wait a second)",
        ));
    }
    if !cred.rules.iter().any(|r| r.grants(method, req.route_path)) {
        return Err(Refused::new(
            forbidden,
            "NOT_GRANTED_CALL",
            format!(
                "This call has not been granted: credential {} has no rule for {method} {}",
                cred.credential_id, req.route_path
            ),
        ));
    }
    Ok(Caller {
        app_name: app.name,
        credential_id: cred.credential_id,
    })
}

/// A new application with one validated consumer key of `rules`: (application key, secret,
/// consumer key).
pub fn create_key(
    st: &Shared,
    name: &str,
    rules: &[AccessRule],
) -> crate::store::Result<(String, String, String)> {
    let app_key = random_key(16);
    let secret = random_key(32);
    let ck = random_key(32);
    let sealed = st.seal.seal(&secret_context(&app_key), secret.as_bytes());
    st.store.add_app(name, &app_key, &sealed)?;
    st.store.add_credential(
        &app_key,
        &crate::auth::hash_token(&ck),
        rules,
        CredentialState::Validated,
    )?;
    Ok((app_key, secret, ck))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signature_is_ovhs() {
        // python-ovh's construction, by hand:
        // sha1("AS+CK+GET+https://eu.api.ovh.com/1.0/auth/time++1457018875")
        let s = signature(
            "AS",
            "CK",
            "GET",
            "https://eu.api.ovh.com/1.0/auth/time",
            b"",
            "1457018875",
        );
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA1_FOR_LEGACY_USE_ONLY);
        ctx.update(b"AS+CK+GET+https://eu.api.ovh.com/1.0/auth/time++1457018875");
        assert_eq!(s, format!("$1${}", hex::encode(ctx.finish())));
        assert_eq!(s.len(), 3 + 40);
    }

    #[test]
    fn random_keys_use_the_alphabet() {
        let k = random_key(32);
        assert_eq!(k.len(), 32);
        assert!(k.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(random_key(32), k);
    }
}
