//! metrics: `/metrics` in Prometheus text format: HTTP answers by class, iPXE scripts served
//! by kind, installs started, agent events and token failures, and gauges read from the store.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;

use crate::http::Shared;

#[derive(Default)]
pub struct Metrics {
    http: [AtomicU64; 5],
    script_entry: AtomicU64,
    script_install: AtomicU64,
    script_local: AtomicU64,
    installs_started: AtomicU64,
    agent_events: AtomicU64,
    agent_auth_failures: AtomicU64,
    rate_limited: AtomicU64,
}

impl Metrics {
    pub fn http_response(&self, s: StatusCode) {
        let class = (s.as_u16() / 100).clamp(1, 5) as usize - 1;
        self.http[class].fetch_add(1, Relaxed);
    }
    pub fn script(&self, kind: &str) {
        match kind {
            "entry" => &self.script_entry,
            "install" => &self.script_install,
            _ => &self.script_local,
        }
        .fetch_add(1, Relaxed);
    }
    pub fn install_started(&self) {
        self.installs_started.fetch_add(1, Relaxed);
    }
    pub fn agent_event(&self) {
        self.agent_events.fetch_add(1, Relaxed);
    }
    pub fn agent_auth_failure(&self) {
        self.agent_auth_failures.fetch_add(1, Relaxed);
    }
    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Relaxed);
    }
}

pub async fn render(State(st): State<Shared>) -> impl IntoResponse {
    use std::fmt::Write as _;
    let m = &st.metrics;
    let mut o = String::new();
    let _ = writeln!(
        o,
        "# HELP byol_http_responses_total HTTP responses by status class."
    );
    let _ = writeln!(o, "# TYPE byol_http_responses_total counter");
    for (i, c) in m.http.iter().enumerate() {
        let _ = writeln!(
            o,
            "byol_http_responses_total{{class=\"{}xx\"}} {}",
            i + 1,
            c.load(Relaxed)
        );
    }
    let _ = writeln!(
        o,
        "# HELP byol_ipxe_scripts_total iPXE scripts served, by kind."
    );
    let _ = writeln!(o, "# TYPE byol_ipxe_scripts_total counter");
    for (k, c) in [
        ("entry", &m.script_entry),
        ("install", &m.script_install),
        ("local", &m.script_local),
    ] {
        let _ = writeln!(
            o,
            "byol_ipxe_scripts_total{{kind=\"{k}\"}} {}",
            c.load(Relaxed)
        );
    }
    for (name, help, c) in [
        (
            "byol_installs_started_total",
            "Installs accepted.",
            &m.installs_started,
        ),
        (
            "byol_agent_events_total",
            "Events received from agents.",
            &m.agent_events,
        ),
        (
            "byol_agent_auth_failures_total",
            "Agent requests with a missing or invalid token.",
            &m.agent_auth_failures,
        ),
        (
            "byol_rate_limited_total",
            "Requests answered 429: over their address's rate.",
            &m.rate_limited,
        ),
    ] {
        let _ = writeln!(
            o,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}",
            c.load(Relaxed)
        );
    }
    let _ = writeln!(
        o,
        "# HELP byol_installs Installs in the store, by state.\n# TYPE byol_installs gauge"
    );
    match crate::http::db(|| st.store.count_installs_by_state()) {
        Ok(rows) => {
            for state in ["pending", "installing", "done", "failed", "cancelled"] {
                let n = rows.iter().find(|r| r.0 == state).map_or(0, |r| r.1);
                let _ = writeln!(o, "byol_installs{{state=\"{state}\"}} {n}");
            }
        }
        Err(e) => tracing::error!(error = %e, "metrics: store"),
    }
    let machines = crate::http::db(|| st.store.machines())
        .map(|v| v.len())
        .unwrap_or(0);
    let _ = writeln!(
        o,
        "# HELP byol_machines Machines known.\n# TYPE byol_machines gauge\nbyol_machines {machines}"
    );
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], o)
}
