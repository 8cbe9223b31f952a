//! client: the agent's side of the server's agent API. `GET {server}/agent/v1/config` with the
//! one-time token (`Authorization: Bearer …`) gives the [`AgentConfig`]; `POST
//! {server}/agent/v1/events` takes events (a JSON array here: events queued while the server
//! could not be reached go together, in order) and answers the install's state.
//!
//! The config fetch retries while the server cannot be reached (connection refused or timed
//! out, 5xx: a server restarting, a link still negotiating), with a doubling pause and an
//! overall bound, saying so on the console. A wrong token (401), a URL that is not a byol
//! server (404) or a config that does not parse stop at once with a message that says which.
//! The token never appears in a message.

use std::time::{Duration, Instant};

use byol_spec::{AgentConfig, AgentEvent, EventStatus, Secret};
use reqwest::StatusCode;
use reqwest::blocking::{Client as Http, Response};
use reqwest::header::{AUTHORIZATION, CONTENT_TYPE, HeaderValue};
use thiserror::Error;

use super::console::say;

/// Path of the config on the server.
pub const CONFIG_PATH: &str = "/agent/v1/config";
/// Path the events go to.
pub const EVENTS_PATH: &str = "/agent/v1/events";
/// The largest config taken from the server (user data included).
pub const MAX_CONFIG_BYTES: u64 = 4 << 20;
/// Events kept while the server cannot be reached (the oldest progress events go first).
const MAX_PENDING: usize = 200;

/// How long to keep trying to reach the server.
#[derive(Debug, Clone)]
pub struct Retry {
    /// Give up after this long.
    pub deadline: Duration,
    /// First pause, doubling up to `max_pause`.
    pub first_pause: Duration,
    pub max_pause: Duration,
}

impl Default for Retry {
    fn default() -> Self {
        Retry {
            deadline: Duration::from_secs(300),
            first_pause: Duration::from_secs(1),
            max_pause: Duration::from_secs(15),
        }
    }
}

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("no byol.server on the kernel command line: the iPXE script must pass the server URL")]
    NoServer,
    #[error("byol.server=`{0}` is not an http:// or https:// URL")]
    BadServer(String),
    #[error("no byol.token on the kernel command line: the iPXE script must pass the agent token")]
    NoToken,
    #[error("cannot reach the byol server at {server} after {seconds} s: {cause}")]
    Unreachable {
        server: String,
        seconds: u64,
        cause: String,
    },
    #[error("cannot send events to {server}: {cause}")]
    Offline { server: String, cause: String },
    #[error(
        "the server at {server} refused the agent token ({status}: {message}): byol.token is \
         wrong, expired, or was replaced by a newer boot of this machine"
    )]
    Unauthorized {
        server: String,
        status: u16,
        message: String,
    },
    #[error("{url} answered 404: byol.server does not point at a byol server")]
    NotFound { url: String },
    /// The server said the install is over for this boot (`cancelled`, `failed`,
    /// `superseded` by a newer boot of the machine): the agent stops.
    #[error("the server stopped this install ({state}): {message}")]
    Stopped { state: String, message: String },
    #[error("{url} answered {status}: {message}")]
    Status {
        url: String,
        status: u16,
        message: String,
    },
    #[error("the config from {url} is not valid: {cause}")]
    Malformed { url: String, cause: String },
}

impl ClientError {
    /// Whether the server answered (so that a `failed` event has a chance to get there).
    pub fn server_answered(&self) -> bool {
        matches!(
            self,
            ClientError::Unauthorized { .. }
                | ClientError::Stopped { .. }
                | ClientError::NotFound { .. }
                | ClientError::Status { .. }
                | ClientError::Malformed { .. }
        )
    }
}

/// Talks to one byol server with one token.
pub struct Client {
    http: Http,
    server: String,
    auth: HeaderValue,
    pending: Vec<AgentEvent>,
    /// The number of the last event queued in this boot.
    seq: u64,
}

impl Client {
    /// Checks the server URL and the token and sets up the HTTP client (no request yet).
    pub fn new(server: &str, token: &Secret) -> Result<Client, ClientError> {
        let server = server.trim().trim_end_matches('/').to_string();
        if server.is_empty() {
            return Err(ClientError::NoServer);
        }
        match reqwest::Url::parse(&server) {
            Ok(u) if (u.scheme() == "http" || u.scheme() == "https") && u.host().is_some() => {}
            _ => return Err(ClientError::BadServer(server)),
        }
        if token.expose().trim().is_empty() {
            return Err(ClientError::NoToken);
        }
        let mut auth = HeaderValue::from_str(&format!("Bearer {}", token.expose().trim()))
            .map_err(|_| ClientError::NoToken)?;
        auth.set_sensitive(true);
        let http = Http::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            .user_agent(concat!("byol-agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| ClientError::Unreachable {
                server: server.clone(),
                seconds: 0,
                cause: format!("cannot set up the HTTP client: {}", error_text(&e)),
            })?;
        Ok(Client {
            http,
            server,
            auth,
            pending: Vec::new(),
            seq: 0,
        })
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    /// Fetches the config, retrying while the server cannot be reached (see [`Retry`]).
    pub fn fetch_config(&self, retry: &Retry) -> Result<AgentConfig, ClientError> {
        let url = format!("{}{CONFIG_PATH}", self.server);
        let start = Instant::now();
        let mut pause = retry.first_pause;
        let mut attempt = 1u32;
        loop {
            let failure = match self
                .http
                .get(&url)
                .header(AUTHORIZATION, self.auth.clone())
                .send()
            {
                Ok(r) if r.status().is_success() => {
                    use std::io::Read as _;
                    let mut body = Vec::new();
                    r.take(MAX_CONFIG_BYTES + 1)
                        .read_to_end(&mut body)
                        .map_err(|e| ClientError::Malformed {
                            url: url.clone(),
                            cause: format!("reading the body: {}", error_text(&e)),
                        })?;
                    if body.len() as u64 > MAX_CONFIG_BYTES {
                        return Err(ClientError::Malformed {
                            url: url.clone(),
                            cause: format!("it is larger than {MAX_CONFIG_BYTES} bytes"),
                        });
                    }
                    let cfg: AgentConfig =
                        serde_json::from_slice(&body).map_err(|e| ClientError::Malformed {
                            url: url.clone(),
                            cause: e.to_string(),
                        })?;
                    let image = &cfg.install.image_url;
                    if !(image.starts_with("http://") || image.starts_with("https://")) {
                        return Err(ClientError::Malformed {
                            url: url.clone(),
                            cause: format!(
                                "its image URL `{}` is not http:// or https://: the agent \
                                 downloads only from those",
                                byol_spec::escape_control(&byol_spec::request::redact_url(image))
                            ),
                        });
                    }
                    return Ok(cfg);
                }
                Ok(r) if r.status().is_server_error() => format!("answered {}", r.status()),
                // over the server's rate for this address: wait and ask again
                Ok(r) if r.status() == StatusCode::TOO_MANY_REQUESTS => {
                    format!("answered {}", r.status())
                }
                Ok(r) if r.status() == StatusCode::CONFLICT => match self.refusal(&url, r) {
                    // another boot of this machine holds the install: wait for the server
                    // to let this one take over (it does once the other one is silent)
                    ClientError::Stopped { state, message } if state == "busy" => message,
                    e => return Err(e),
                },
                Ok(r) => return Err(self.refusal(&url, r)),
                Err(e) => error_text(&e),
            };
            let waited = start.elapsed();
            if waited + pause > retry.deadline {
                return Err(ClientError::Unreachable {
                    server: self.server.clone(),
                    seconds: waited.as_secs(),
                    cause: failure,
                });
            }
            say(format!(
                "server {} not reachable ({failure}); attempt {} in {} (giving up after {} s)",
                self.server,
                attempt + 1,
                secs(pause),
                retry.deadline.as_secs()
            ));
            std::thread::sleep(pause);
            pause = (pause * 2).min(retry.max_pause);
            attempt += 1;
        }
    }

    /// A 4xx answer, as an error.
    fn refusal(&self, url: &str, r: Response) -> ClientError {
        let status = r.status();
        let (message, state) = server_message(r);
        if let (StatusCode::CONFLICT, Some(state)) = (status, state) {
            return ClientError::Stopped { state, message };
        }
        match status {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => ClientError::Unauthorized {
                server: self.server.clone(),
                status: status.as_u16(),
                message,
            },
            StatusCode::NOT_FOUND => ClientError::NotFound {
                url: url.to_string(),
            },
            s => ClientError::Status {
                url: url.to_string(),
                status: s.as_u16(),
                message,
            },
        }
    }

    /// Queues an event and sends everything queued. Ok(state) when sent; when the server
    /// cannot be reached the events stay queued for the next call (the error says why).
    pub fn post(&mut self, e: AgentEvent) -> Result<String, ClientError> {
        self.queue(e);
        self.flush()
    }

    /// Queues an event without sending it (see [`Client::flush`]); it gets its number in
    /// this boot, so that sending it twice is harmless.
    pub fn queue(&mut self, mut e: AgentEvent) {
        self.seq += 1;
        e.seq = Some(self.seq);
        if self.pending.len() >= MAX_PENDING {
            let drop = self
                .pending
                .iter()
                .position(|p| p.status == byol_spec::EventStatus::Running)
                .unwrap_or(0);
            self.pending.remove(drop);
        }
        self.pending.push(e);
    }

    /// Sends the queued events until the server has them, however long that takes: the
    /// last report (`done`) must reach it before the machine reboots, or the next boot would
    /// install again. Pauses double from `first` up to `max`; each failed attempt is said on
    /// the console. Ends early only when the server answers for good (a refusal).
    pub fn flush_until_acknowledged(
        &mut self,
        first: Duration,
        max: Duration,
    ) -> Result<String, ClientError> {
        let mut pause = first;
        let start = Instant::now();
        loop {
            match self.flush() {
                Ok(state) => return Ok(state),
                Err(e @ ClientError::Offline { .. }) => {
                    say(format!(
                        "the server has not acknowledged the last report yet ({e}); trying again in {} (waiting {} so far: the machine reboots only once the server knows)",
                        secs(pause),
                        byol_spec::format_duration(start.elapsed().as_secs())
                    ));
                    std::thread::sleep(pause);
                    pause = (pause * 2).min(max);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// Events not sent yet.
    pub fn pending(&self) -> usize {
        self.pending.len()
    }

    /// Sends the queued events, in requests of at most [`MAX_BATCH_BYTES`] (under the
    /// server's body limit), in order. Each request sent is taken off the queue; the first
    /// that fails stops the flush and keeps the rest. A refusal (4xx) drops the batch it
    /// refused (sending it again would be refused again) except its `done` and `failed`
    /// events, which stay queued: the last report is never dropped.
    pub fn flush(&mut self) -> Result<String, ClientError> {
        let mut state = String::new();
        while !self.pending.is_empty() {
            let n = batch_len(&self.pending);
            state = self.send_batch(n)?;
        }
        Ok(state)
    }

    /// Sends the first `n` queued events in one request.
    fn send_batch(&mut self, n: usize) -> Result<String, ClientError> {
        let url = format!("{}{EVENTS_PATH}", self.server);
        let body = serde_json::to_vec(&self.pending[..n]).map_err(|e| ClientError::Status {
            url: url.clone(),
            status: 0,
            message: format!("cannot encode events: {e}"),
        })?;
        let r = self
            .http
            .post(&url)
            .header(AUTHORIZATION, self.auth.clone())
            .header(CONTENT_TYPE, "application/json")
            .body(body)
            .send();
        match r {
            Ok(r) if r.status().is_success() => {
                self.pending.drain(..n);
                let v: serde_json::Value = r
                    .bytes()
                    .ok()
                    .and_then(|b| serde_json::from_slice(&b).ok())
                    .unwrap_or_default();
                Ok(v["state"].as_str().unwrap_or("").to_string())
            }
            Ok(r)
                if r.status().is_server_error() || r.status() == StatusCode::TOO_MANY_REQUESTS =>
            {
                Err(ClientError::Offline {
                    server: self.server.clone(),
                    cause: format!("answered {}", r.status()),
                })
            }
            Ok(r) => {
                let err = self.refusal(&url, r);
                let stop = matches!(err, ClientError::Stopped { .. });
                let refused: Vec<AgentEvent> = self.pending.drain(..n).collect();
                if !stop {
                    // the last report stays, alone: a malformed neighbour cannot take it along
                    let last: Vec<AgentEvent> = refused
                        .into_iter()
                        .filter(|e| matches!(e.status, EventStatus::Done | EventStatus::Failed))
                        .collect();
                    if n > 1 || last.is_empty() {
                        self.pending.splice(0..0, last);
                    }
                }
                Err(err)
            }
            Err(e) => Err(ClientError::Offline {
                server: self.server.clone(),
                cause: error_text(&e),
            }),
        }
    }
}

/// The most bytes of events one request carries: a quarter of the server's limit on an
/// events body, so that a batch always fits.
pub const MAX_BATCH_BYTES: usize = 1 << 20;

/// How many of the first events go in one request: at least one, then as many as fit in
/// [`MAX_BATCH_BYTES`].
fn batch_len(events: &[AgentEvent]) -> usize {
    let mut bytes = 2;
    for (i, e) in events.iter().enumerate() {
        let size = serde_json::to_vec(e).map(|v| v.len()).unwrap_or(0) + 1;
        if i > 0 && bytes + size > MAX_BATCH_BYTES {
            return i;
        }
        bytes += size;
    }
    events.len()
}

/// `0.5 s`, `2.0 s`, `15 s`.
fn secs(d: Duration) -> String {
    let s = d.as_secs_f64();
    if s < 10.0 {
        format!("{s:.1} s")
    } else {
        format!("{s:.0} s")
    }
}

/// The `message` of the server's JSON error body (else its first line), and its `state`.
fn server_message(r: Response) -> (String, Option<String>) {
    let status = r.status();
    let text = r.text().unwrap_or_default();
    if let Ok(v) = serde_json::from_str::<serde_json::Value>(&text)
        && let Some(m) = v["message"].as_str()
    {
        let state = v["state"].as_str().map(|s| clean(s, 40));
        return (clean(m, 500), state);
    }
    let line = text.lines().next().unwrap_or("").trim();
    let m = if line.is_empty() {
        status
            .canonical_reason()
            .unwrap_or("no message")
            .to_string()
    } else {
        clean(line, 300)
    };
    (m, None)
}

/// Server text for the console: at most `max` characters, control characters escaped.
fn clean(s: &str, max: usize) -> String {
    byol_spec::escape_control(&s.chars().take(max).collect::<String>()).into_owned()
}

/// An error and its causes on one line, repeated parts left out ("connection refused" rather
/// than reqwest's "error sending request for url (…)").
pub fn error_text(e: &(dyn std::error::Error + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        let s = err.to_string();
        if !parts.iter().any(|p| p.contains(&s)) {
            parts.push(s);
        }
        cur = err.source();
    }
    // The innermost causes say the most; reqwest/hyper's outer texts repeat the URL or say
    // only "client error (Connect)".
    while parts.len() > 1
        && (parts[0].starts_with("error sending request") || parts[0].starts_with("client error ("))
    {
        parts.remove(0);
    }
    parts.join(": ")
}
