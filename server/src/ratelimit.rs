//! ratelimit: requests per minute per source address on the routes anyone on the
//! provisioning network can call without a secret: boot scripts (`/boot.ipxe`, `/ipxe/…`) and
//! the agent API. A token bucket per address (the rate per minute, a burst of a quarter of it,
//! at least 5); over it the answer is 429 with `Retry-After`, which the agent waits for. The
//! table keeps at most [`MAX_ADDRESSES`] addresses, forgetting those idle longest.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::Mutex;
use std::time::Instant;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use crate::http::{ApiError, Shared};

/// Addresses remembered at most.
pub const MAX_ADDRESSES: usize = 10_000;

/// Which routes a request counts against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Class {
    Boot,
    Agent,
}

impl Class {
    pub fn of(path: &str) -> Option<Class> {
        if path == "/boot.ipxe" || path.starts_with("/ipxe/") {
            Some(Class::Boot)
        } else if path.starts_with("/agent/") {
            Some(Class::Agent)
        } else {
            None
        }
    }
}

struct Bucket {
    tokens: f64,
    at: Instant,
}

/// The buckets of every address.
#[derive(Default)]
pub struct Limiter {
    buckets: Mutex<HashMap<(IpAddr, Class), Bucket>>,
}

impl Limiter {
    /// Takes one request from `ip`'s bucket at `per_minute`: Ok, or the seconds to wait.
    pub fn take(&self, ip: IpAddr, class: Class, per_minute: u32) -> Result<(), u64> {
        let rate = f64::from(per_minute) / 60.0;
        let burst = (f64::from(per_minute) / 4.0).max(5.0);
        let now = Instant::now();
        let mut b = self.buckets.lock().unwrap_or_else(|p| p.into_inner());
        if b.len() >= MAX_ADDRESSES && !b.contains_key(&(ip, class)) {
            // forget the address idle longest
            if let Some(k) = b.iter().min_by_key(|(_, v)| v.at).map(|(k, _)| *k) {
                b.remove(&k);
            }
        }
        let e = b.entry((ip, class)).or_insert(Bucket {
            tokens: burst,
            at: now,
        });
        e.tokens = (e.tokens + now.duration_since(e.at).as_secs_f64() * rate).min(burst);
        e.at = now;
        if e.tokens >= 1.0 {
            e.tokens -= 1.0;
            Ok(())
        } else {
            Err(((1.0 - e.tokens) / rate).ceil().max(1.0) as u64)
        }
    }
}

/// The middleware: 429 over the address's rate.
pub async fn limit(State(st): State<Shared>, req: Request, next: Next) -> Response {
    let Some(class) = Class::of(req.uri().path()) else {
        return next.run(req).await;
    };
    let per_minute = match class {
        Class::Boot => st.cfg.boot_rate,
        Class::Agent => st.cfg.agent_rate,
    };
    let ip = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip().to_canonical());
    let (Some(ip), Some(per_minute)) = (ip, per_minute) else {
        return next.run(req).await;
    };
    match st.limiter.take(ip, class, per_minute) {
        Ok(()) => next.run(req).await,
        Err(wait) => {
            st.metrics.rate_limited();
            tracing::warn!(from = %ip, route = ?class, per_minute, "request over the rate limit: 429");
            let mut r = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                format!(
                    "too many requests from {ip}: at most {per_minute} a minute here; try again in {wait} s"
                ),
            )
            .into_response();
            if let Ok(v) = wait.to_string().parse() {
                r.headers_mut().insert(header::RETRY_AFTER, v);
            }
            r
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let l = Limiter::default();
        let ip: IpAddr = "10.0.0.1".parse().unwrap();
        let other: IpAddr = "10.0.0.2".parse().unwrap();
        for _ in 0..15 {
            assert!(l.take(ip, Class::Boot, 60).is_ok());
        }
        let wait = l.take(ip, Class::Boot, 60).unwrap_err();
        assert_eq!(wait, 1);
        // another address and another class have their own buckets
        assert!(l.take(other, Class::Boot, 60).is_ok());
        assert!(l.take(ip, Class::Agent, 60).is_ok());
        assert_eq!(Class::of("/ipxe/52:54:00:00:00:01"), Some(Class::Boot));
        assert_eq!(Class::of("/agent/v1/events"), Some(Class::Agent));
        assert_eq!(Class::of("/api/v1/machines"), None);
    }
}
