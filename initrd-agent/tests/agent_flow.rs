//! The agent's flow (booted → drivers → network → config → disks) against a small HTTP server
//! that plays the byol server's agent API (`GET /agent/v1/config`, `POST /agent/v1/events`)
//! over loopback, with the machine left alone (`machine: false`: no modules, the host's
//! network) and a fake sysfs for the disks. Checks the events, their order and timing, the
//! queued-then-sent phases, and the failures: wrong token, malformed config, server down.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use byol_agent::agent::client::{Client, ClientError, Retry};
use byol_agent::agent::console;
use byol_agent::agent::run::{self, IDLE_MESSAGE, NOT_YET_MESSAGE, Outcome, RunOptions};
use byol_spec::{AgentConfig, AgentEvent, EventStatus, FailureAction, InstallRequest, Secret};

const TOKEN: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

/// The flow uses process-wide state (console lines, failure action): one test at a time.
fn serial() -> MutexGuard<'static, ()> {
    static M: Mutex<()> = Mutex::new(());
    M.lock().unwrap_or_else(|e| e.into_inner())
}

/// One request the fake server got.
#[derive(Debug, Clone)]
struct Req {
    method: String,
    path: String,
    auth: Option<String>,
    body: Vec<u8>,
}

/// What the fake server answers: (status, body) for the config, one per request (the last
/// repeats), and for events.
struct Script {
    config: Vec<(u16, String)>,
    events: Vec<(u16, String)>,
}

struct Server {
    port: u16,
    log: Arc<Mutex<Vec<Req>>>,
}

impl Server {
    fn start(script: Script) -> Server {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let log = Arc::new(Mutex::new(Vec::new()));
        let log2 = log.clone();
        let script = Arc::new(script);
        std::thread::spawn(move || {
            for s in l.incoming().flatten() {
                let (log, script) = (log2.clone(), script.clone());
                std::thread::spawn(move || serve(s, &log, &script));
            }
        });
        Server { port, log }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<Req> {
        self.log.lock().unwrap().clone()
    }

    /// Every event posted, in order (bodies are arrays or single objects).
    fn events(&self) -> Vec<AgentEvent> {
        let mut out = Vec::new();
        for r in self.requests() {
            if r.method == "POST" && r.path == "/agent/v1/events" {
                let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
                match v {
                    serde_json::Value::Array(a) => {
                        out.extend(a.into_iter().map(|e| serde_json::from_value(e).unwrap()))
                    }
                    e => out.push(serde_json::from_value(e).unwrap()),
                }
            }
        }
        out
    }
}

fn serve(s: TcpStream, log: &Mutex<Vec<Req>>, script: &Script) {
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    if r.read_line(&mut line).unwrap_or(0) == 0 {
        return;
    }
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("").to_string();
    let (mut len, mut auth) = (0usize, None);
    loop {
        let mut h = String::new();
        if r.read_line(&mut h).unwrap_or(0) == 0 || h == "\r\n" {
            break;
        }
        let (k, v) = h.split_once(':').unwrap_or((&h, ""));
        match k.to_ascii_lowercase().as_str() {
            "content-length" => len = v.trim().parse().unwrap_or(0),
            "authorization" => auth = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body).unwrap();
    let n_config = {
        let mut l = log.lock().unwrap();
        l.push(Req {
            method: method.clone(),
            path: path.clone(),
            auth,
            body,
        });
        (
            l.iter().filter(|q| q.path == "/agent/v1/config").count(),
            l.iter().filter(|q| q.path == "/agent/v1/events").count(),
        )
    };
    let (n_config, n_events) = n_config;
    let (status, text) = match path.as_str() {
        "/agent/v1/config" => script.config[(n_config - 1).min(script.config.len() - 1)].clone(),
        "/agent/v1/events" => script.events[(n_events - 1).min(script.events.len() - 1)].clone(),
        _ => (404, "{\"message\":\"not found\"}".into()),
    };
    let mut w = s;
    let _ = write!(
        w,
        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\
         Connection: close\r\n\r\n{text}",
        text.len()
    );
}

fn config_json(on_failure: FailureAction) -> String {
    let body = br#"{"templateName":"byolinux_64","details":{"customHostname":"web1"},
        "userMetadata":[{"key":"imageURL","value":"http://user:secret@images.example/debian.qcow2"},
        {"key":"imageType","value":"qcow2"}]}"#;
    let install = InstallRequest::parse_and_validate(body).unwrap();
    serde_json::to_string(&AgentConfig {
        install_id: "inst-1".into(),
        machine: "rack1-u7".into(),
        macs: vec!["52:54:00:12:34:56".into()],
        install,
        on_failure,
        disk_hints: Default::default(),
        hook_timeout_seconds: byol_spec::DEFAULT_HOOK_TIMEOUT_SECONDS,
    })
    .unwrap()
}

/// A sysfs with one virtio disk.
fn sysfs(dir: &Path) {
    let d = dir.join("devices/pci0000:00/0000:00:04.0/virtio1/block/vda");
    std::fs::create_dir_all(d.join("queue")).unwrap();
    std::fs::write(d.join("size"), "20971520\n").unwrap();
    std::fs::write(d.join("serial"), "disk-1\n").unwrap();
    // A virtio device's `vendor` is a numeric id, not a name.
    std::fs::write(
        dir.join("devices/pci0000:00/0000:00:04.0/virtio1/vendor"),
        "0x1af4\n",
    )
    .unwrap();
    std::os::unix::fs::symlink("../../../virtio1", d.join("device")).unwrap();
    std::fs::create_dir_all(dir.join("block")).unwrap();
    std::os::unix::fs::symlink(
        "../devices/pci0000:00/0000:00:04.0/virtio1/block/vda",
        dir.join("block/vda"),
    )
    .unwrap();
}

fn options(server: &str, extra: &str, sys: &Path) -> RunOptions {
    let mut o = RunOptions::pid1(format!(
        "byol.server={server} byol.install=inst-1 byol.token={TOKEN} \
         byol.mac=52:54:00:12:34:56 byol.ip=10.0.2.15 byol.netmask=255.255.255.0 \
         byol.gateway= byol.dns=10.0.2.3 byol.platform=pcbios console=tty0 \
         console=ttyS0,115200n8 initrd=initramfs {extra}"
    ));
    o.sysfs = sys.to_path_buf();
    o.machine = false;
    o.disk_settle = Duration::ZERO;
    o.retry = Retry {
        deadline: Duration::from_secs(3),
        first_pause: Duration::from_millis(100),
        max_pause: Duration::from_millis(400),
    };
    o
}

fn ok_events() -> (u16, String) {
    (200, r#"{"state":"installing"}"#.into())
}

#[test]
fn every_phase_is_reported_with_its_timing() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    sysfs(tmp.path());
    let srv = Server::start(Script {
        config: vec![(200, config_json(FailureAction::Reboot { seconds: 7 }))],
        events: vec![ok_events()],
    });
    let out = run::run(&options(&srv.url(), "", tmp.path()));
    assert_eq!(
        out,
        Outcome::Idle {
            action: FailureAction::Reboot { seconds: 7 },
            message: IDLE_MESSAGE.into()
        }
    );
    let ev = srv.events();
    let phases: Vec<(&str, EventStatus)> =
        ev.iter().map(|e| (e.phase.as_str(), e.status)).collect();
    assert_eq!(
        phases,
        [
            ("booted", EventStatus::Ok),
            ("drivers", EventStatus::Ok),
            ("network", EventStatus::Ok),
            ("config", EventStatus::Ok),
            ("disks", EventStatus::Ok),
            ("disks", EventStatus::Ok),
        ]
    );
    assert!(ev.iter().all(|e| e.seconds.is_some_and(|s| s >= 0.0)));
    assert!(
        ev[0].message.starts_with("byol-agent 0.1.0 on kernel "),
        "{}",
        ev[0].message
    );
    assert!(
        ev[0].message.contains("pcbios firmware"),
        "{}",
        ev[0].message
    );
    assert_eq!(ev[1].message, "left as they are (not PID 1)");
    assert_eq!(ev[2].message, "used as it is (not PID 1)");
    assert!(
        ev[3].message.starts_with(
            "install inst-1 for machine rack1-u7: qcow2 image \
             http://<redacted>@images.example/debian.qcow2, config fetched "
        ),
        "{}",
        ev[3].message
    );
    assert!(!ev.iter().any(|e| format!("{e:?}").contains("secret")));
    assert_eq!(
        ev[4].message,
        "1 disk: vda 10.0 GiB virtio; disk groups: 1 = vda (virtio, 10.0 GiB)"
    );
    assert!(
        ev[4]
            .logs
            .iter()
            .any(|l| l == "vda: 10.0 GiB (10737418240 bytes), virtio, serial \"disk-1\", by-path pci-0000:00:04.0, SSD, fixed, sectors 512/512"),
        "{:?}",
        ev[4].logs
    );
    assert_eq!(ev[5].message, NOT_YET_MESSAGE);
    assert!(
        ev[5]
            .logs
            .iter()
            .any(|l| l.starts_with("agent peak RSS (VmHWM): ")),
        "{:?}",
        ev[5].logs
    );
    // The phases before the network were queued and sent together, once it was up.
    let reqs = srv.requests();
    assert_eq!(reqs[0].method, "POST");
    let first: serde_json::Value = serde_json::from_slice(&reqs[0].body).unwrap();
    assert_eq!(first.as_array().map(|a| a.len()), Some(3), "{first}");
    assert!(
        reqs.iter()
            .all(|r| r.auth.as_deref() == Some(&format!("Bearer {TOKEN}")[..]))
    );
    // The token never shows in what the agent reports.
    assert!(!ev.iter().any(|e| format!("{e:?}").contains(TOKEN)));
}

#[test]
fn a_server_that_comes_up_late_is_waited_for() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    sysfs(tmp.path());
    let srv = Server::start(Script {
        config: vec![
            (503, "starting".into()),
            (502, "".into()),
            (200, config_json(FailureAction::default())),
        ],
        events: vec![ok_events()],
    });
    let out = run::run(&options(&srv.url(), "", tmp.path()));
    assert!(
        matches!(out, Outcome::Idle { action, .. } if action == FailureAction::Poweroff { seconds: 300 })
    );
    let cfg = srv
        .events()
        .into_iter()
        .find(|e| e.phase == "config")
        .unwrap();
    let retries: Vec<&String> = cfg
        .logs
        .iter()
        .filter(|l| l.contains("not reachable"))
        .collect();
    assert_eq!(retries.len(), 2, "{:?}", cfg.logs);
    assert!(
        retries[0].starts_with(&format!(
            "server {} not reachable (answered 503 Service Unavailable); attempt 2 in 0.1 s \
             (giving up after 3 s)",
            srv.url()
        )),
        "{}",
        retries[0]
    );
}

#[test]
fn a_wrong_token_fails_clearly_and_says_so_to_the_server() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    sysfs(tmp.path());
    let refused = r#"{"message":"agent token not valid: it was replaced by a newer boot, or its install has ended"}"#;
    let srv = Server::start(Script {
        config: vec![(401, refused.into())],
        events: vec![(401, refused.into())],
    });
    let out = run::run(&options(&srv.url(), "", tmp.path()));
    let Outcome::Failed {
        action,
        phase,
        message,
    } = out
    else {
        panic!("{out:?}")
    };
    assert_eq!(action, FailureAction::default());
    assert_eq!(phase, "config");
    assert_eq!(
        message,
        format!(
            "the server at {} refused the agent token (401: agent token not valid: it was \
             replaced by a newer boot, or its install has ended): byol.token is wrong, expired, \
             or was replaced by a newer boot of this machine",
            srv.url()
        )
    );
    // The failed event was tried (the server refuses it too, with that token).
    let ev = srv.events();
    assert!(
        ev.iter().any(|e| e.phase == "config"
            && e.status == EventStatus::Failed
            && e.message == message),
        "{ev:?}"
    );
    assert!(!message.contains(TOKEN));
}

#[test]
fn a_malformed_config_is_a_failed_event() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    sysfs(tmp.path());
    let srv = Server::start(Script {
        config: vec![(200, r#"{"install_id": 5}"#.into())],
        events: vec![ok_events()],
    });
    let out = run::run(&options(&srv.url(), "", tmp.path()));
    let Outcome::Failed { phase, message, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(phase, "config");
    assert!(
        message.starts_with(&format!(
            "the config from {}/agent/v1/config is not valid: invalid type: integer `5`",
            srv.url()
        )),
        "{message}"
    );
    let last = srv.events().pop().unwrap();
    assert_eq!(
        (last.phase.as_str(), last.status),
        ("config", EventStatus::Failed)
    );
    assert_eq!(last.message, message);
}

#[test]
fn a_server_that_never_answers_is_given_up_on() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    sysfs(tmp.path());
    let port = {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let url = format!("http://127.0.0.1:{port}");
    let t = std::time::Instant::now();
    let out = run::run(&options(&url, "", tmp.path()));
    let Outcome::Failed { phase, message, .. } = out else {
        panic!("{out:?}")
    };
    assert_eq!(phase, "config");
    assert!(
        message.starts_with(&format!("cannot reach the byol server at {url} after ")),
        "{message}"
    );
    assert!(message.contains("onnection refused"), "{message}");
    assert!(t.elapsed() < Duration::from_secs(10));
    let lines = console::take_lines();
    assert!(
        lines
            .iter()
            .any(|l| l.contains(&format!("server {url} not reachable ("))),
        "{lines:?}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("could not send events (3 kept for later)")),
        "{lines:?}"
    );
}

#[test]
fn a_missing_token_or_server_stops_before_any_request() {
    let _g = serial();
    let tmp = tempfile::tempdir().unwrap();
    let srv = Server::start(Script {
        config: vec![(200, config_json(FailureAction::Halt))],
        events: vec![ok_events()],
    });
    let mut o = options(&srv.url(), "", tmp.path());
    o.cmdline = o
        .cmdline
        .replace(&format!("byol.token={TOKEN}"), "byol.token=");
    let out = run::run(&o);
    assert_eq!(
        out,
        Outcome::Failed {
            action: FailureAction::default(),
            phase: "booted".into(),
            message: "no byol.token on the kernel command line: the iPXE script must pass the \
                      agent token"
                .into()
        }
    );
    o.cmdline = "byol.token=abc console=ttyS0".into();
    let Outcome::Failed { message, .. } = run::run(&o) else {
        panic!()
    };
    assert_eq!(
        message,
        "no byol.server on the kernel command line: the iPXE script must pass the server URL"
    );
    o.cmdline = "byol.server=ftp://x byol.token=abc".into();
    let Outcome::Failed { message, .. } = run::run(&o) else {
        panic!()
    };
    assert_eq!(
        message,
        "byol.server=`ftp://x` is not an http:// or https:// URL"
    );
    assert!(srv.requests().is_empty());
}

#[test]
fn the_last_report_is_sent_until_the_server_has_it() {
    let _g = serial();
    let srv = Server::start(Script {
        config: vec![(200, config_json(FailureAction::Halt))],
        events: vec![
            (503, "{\"message\":\"restarting\"}".into()),
            (503, "{\"message\":\"restarting\"}".into()),
            ok_events(),
        ],
    });
    let mut c = Client::new(&srv.url(), &Secret::new(TOKEN.to_string())).unwrap();
    c.queue(AgentEvent {
        phase: "done".into(),
        status: EventStatus::Done,
        message: "installed".into(),
        bytes_done: None,
        bytes_total: None,
        logs: Vec::new(),
        seconds: None,
        seq: None,
        inventory: None,
    });
    let state = c
        .flush_until_acknowledged(Duration::from_millis(50), Duration::from_millis(100))
        .unwrap();
    assert_eq!(state, "installing");
    // sent three times, the same event each time: the server records its number once
    let ev = srv.events();
    assert_eq!(ev.len(), 3, "{ev:?}");
    assert!(
        ev.iter().all(|e| e.phase == "done" && e.seq == Some(1)),
        "{ev:?}"
    );
    assert_eq!(c.pending(), 0);
}

#[test]
fn a_cancelled_install_answers_stop() {
    let _g = serial();
    let srv = Server::start(Script {
        config: vec![(200, config_json(FailureAction::Halt))],
        events: vec![(
            409,
            r#"{"message":"install X is cancelled (cancelled by the operator): the agent stops","state":"cancelled"}"#.into(),
        )],
    });
    let mut c = Client::new(&srv.url(), &Secret::new(TOKEN.to_string())).unwrap();
    let e = c
        .post(AgentEvent {
            phase: "download".into(),
            status: EventStatus::Running,
            message: String::new(),
            bytes_done: None,
            bytes_total: None,
            logs: Vec::new(),
            seconds: None,
            seq: None,
            inventory: None,
        })
        .unwrap_err();
    assert_eq!(
        e.to_string(),
        "the server stopped this install (cancelled): install X is cancelled (cancelled by the \
         operator): the agent stops"
    );
    // and the config fetch of a boot that lost its install to a newer one stops too
    let srv = Server::start(Script {
        config: vec![(
            409,
            r#"{"message":"another boot of this machine took the install over: this boot stops","state":"superseded"}"#.into(),
        )],
        events: vec![ok_events()],
    });
    let c = Client::new(&srv.url(), &Secret::new(TOKEN.to_string())).unwrap();
    let e = c.fetch_config(&Retry::default()).unwrap_err();
    assert!(
        matches!(e, ClientError::Stopped { ref state, .. } if state == "superseded"),
        "{e}"
    );
}

#[test]
fn a_busy_install_is_waited_for() {
    let _g = serial();
    let busy = (
        409,
        r#"{"message":"boot 1 of this machine is running this install (heard from 3s ago): this boot may take over once it has been silent for 90s (--takeover-after)","state":"busy"}"#.to_string(),
    );
    let srv = Server::start(Script {
        config: vec![busy.clone(), busy, (200, config_json(FailureAction::Halt))],
        events: vec![ok_events()],
    });
    let c = Client::new(&srv.url(), &Secret::new(TOKEN.to_string())).unwrap();
    let retry = Retry {
        deadline: Duration::from_secs(20),
        first_pause: Duration::from_millis(50),
        max_pause: Duration::from_millis(100),
    };
    let cfg = c.fetch_config(&retry).unwrap();
    assert_eq!(cfg.install_id, "inst-1");
    assert_eq!(
        srv.requests()
            .iter()
            .filter(|r| r.path == "/agent/v1/config")
            .count(),
        3
    );
}

#[test]
fn queued_events_go_in_batches_under_the_servers_limit() {
    let _g = serial();
    let srv = Server::start(Script {
        config: vec![(200, config_json(FailureAction::Halt))],
        events: vec![ok_events()],
    });
    let mut c = Client::new(&srv.url(), &Secret::new(TOKEN.to_string())).unwrap();
    let line = "x".repeat(100);
    for _ in 0..30 {
        c.queue(AgentEvent {
            phase: "bootloader".into(),
            status: EventStatus::Running,
            message: String::new(),
            bytes_done: None,
            bytes_total: None,
            logs: vec![line.clone(); 500],
            seconds: None,
            seq: None,
            inventory: None,
        });
    }
    c.flush().unwrap();
    let posts: Vec<usize> = srv
        .requests()
        .iter()
        .filter(|r| r.path == "/agent/v1/events")
        .map(|r| r.body.len())
        .collect();
    assert!(posts.len() >= 2, "{posts:?}");
    assert!(
        posts
            .iter()
            .all(|&n| n <= byol_agent::agent::client::MAX_BATCH_BYTES),
        "{posts:?}"
    );
    // every event once, in order
    let seqs: Vec<u64> = srv.events().iter().filter_map(|e| e.seq).collect();
    assert_eq!(seqs, (1..=30).collect::<Vec<_>>());
}

#[test]
fn a_config_too_large_or_not_http_is_refused() {
    let _g = serial();
    let retry = Retry::default();
    // a file:// image URL (the server validates http(s); the agent checks again)
    let cfg = config_json(FailureAction::Halt).replace(
        "http://user:secret@images.example/debian.qcow2",
        "file:///dev/sda",
    );
    let srv = Server::start(Script {
        config: vec![(200, cfg)],
        events: vec![ok_events()],
    });
    let c = Client::new(&srv.url(), &Secret::new(TOKEN.to_string())).unwrap();
    let e = c.fetch_config(&retry).unwrap_err();
    assert_eq!(
        e.to_string(),
        format!(
            "the config from {}/agent/v1/config is not valid: its image URL `file:///dev/sda` is \
             not http:// or https://: the agent downloads only from those",
            srv.url()
        )
    );
    // 5 MiB of config
    let srv = Server::start(Script {
        config: vec![(200, format!("{{\"pad\":\"{}\"}}", "a".repeat(5 << 20)))],
        events: vec![ok_events()],
    });
    let c = Client::new(&srv.url(), &Secret::new(TOKEN.to_string())).unwrap();
    let e = c.fetch_config(&retry).unwrap_err();
    assert!(
        e.to_string()
            .ends_with("is not valid: it is larger than 4194304 bytes"),
        "{e}"
    );
}
