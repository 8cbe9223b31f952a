//! A real `byol serve` process on a loopback port, with its log captured, for the
//! integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_byol");

pub struct Server {
    pub child: Child,
    pub base: String,
    pub port: u16,
    pub token: String,
    pub data: PathBuf,
    log: Arc<Mutex<String>>,
}

impl Server {
    /// Starts the server on 127.0.0.1:0 with TFTP off and waits until it listens.
    pub fn start(data: &Path, extra: &[&str]) -> Server {
        let tftp: &[&str] = if extra.contains(&"--tftp") {
            &[]
        } else {
            &["--tftp", "off"]
        };
        let mut child = Command::new(BIN)
            .args(["serve", "--http", "127.0.0.1:0", "--data-dir"])
            .arg(data)
            .args(tftp)
            .args(extra)
            .env("BYOL_LOG", "info")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn byol serve");
        let log = Arc::new(Mutex::new(String::new()));
        let (tx, rx) = std::sync::mpsc::channel();
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let l1 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                if let Some(addr) = line.strip_prefix("byol: listening on http://") {
                    let _ = tx.send(addr.to_string());
                }
                l1.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let l2 = log.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                l2.lock().unwrap().push_str(&(line + "\n"));
            }
        });
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!("server did not start; log:\n{}", log.lock().unwrap());
            }
        };
        let port = addr.rsplit(':').next().unwrap().parse().unwrap();
        let token = std::fs::read_to_string(data.join("admin-token"))
            .unwrap()
            .trim()
            .to_string();
        Server {
            child,
            base: format!("http://{addr}"),
            port,
            token,
            data: data.to_path_buf(),
            log,
        }
    }

    /// The TFTP address the server printed (when started with `--tftp`).
    pub fn tftp_addr(&self) -> Option<String> {
        let log = self.log();
        log.lines()
            .find_map(|l| l.strip_prefix("byol: TFTP on udp ").map(str::to_string))
    }

    pub fn log(&self) -> String {
        self.log.lock().unwrap().clone()
    }

    pub fn wait_log(&self, needle: &str, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if self.log().contains(needle) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        false
    }

    pub fn signal(&self, sig: &str) {
        let st = Command::new("kill")
            .args([&format!("-{sig}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(st.success());
    }

    /// SIGTERM, and wait for a clean exit.
    pub fn stop(mut self) -> std::process::ExitStatus {
        self.signal("TERM");
        let end = Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < end,
                "server ignored SIGTERM; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    pub fn client(&self) -> Api {
        Api {
            http: reqwest::Client::new(),
            base: self.base.clone(),
            token: Some(self.token.clone()),
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Minimal API client for tests: returns (status, body as JSON or text).
pub struct Api {
    pub http: reqwest::Client,
    pub base: String,
    pub token: Option<String>,
}

impl Api {
    pub async fn req(
        &self,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> (u16, serde_json::Value) {
        let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut r = self.http.request(m, format!("{}{}", self.base, path));
        if let Some(t) = &self.token {
            r = r.bearer_auth(t);
        }
        if let Some(b) = body {
            r = r
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let res = r.send().await.unwrap();
        let status = res.status().as_u16();
        let text = res.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text));
        (status, v)
    }
    pub async fn get(&self, path: &str) -> (u16, serde_json::Value) {
        self.req("GET", path, None).await
    }
    pub async fn post(&self, path: &str, body: &str) -> (u16, serde_json::Value) {
        self.req("POST", path, Some(body)).await
    }
    pub async fn text(&self, path: &str) -> (u16, String) {
        let res = self
            .http
            .get(format!("{}{}", self.base, path))
            .send()
            .await
            .unwrap();
        (res.status().as_u16(), res.text().await.unwrap())
    }
}

/// The OVH guide's example body, verbatim.
pub const GUIDE_EXAMPLE: &str = include_str!("../../../spec/tests/guide-example.json");

/// A body with the given userMetadata pairs.
pub fn body(meta: &[(&str, &str)]) -> String {
    let md: Vec<_> = meta
        .iter()
        .map(|(k, v)| serde_json::json!({"key": k, "value": v}))
        .collect();
    serde_json::json!({"templateName": "byolinux_64", "partitionSchemeName": "default",
        "details": {"customHostname": "node1"}, "userMetadata": md})
    .to_string()
}

/// The token in an install script's kernel command line.
pub fn token_in(script: &str) -> String {
    let i = script.find("byol.token=").expect("no byol.token in script") + "byol.token=".len();
    script[i..]
        .chars()
        .take_while(|c| c.is_ascii_hexdigit())
        .collect()
}
