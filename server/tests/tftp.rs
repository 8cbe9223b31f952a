//! TFTP server against real clients over loopback: Debian's `atftp`, and a small raw client
//! (std `UdpSocket`) for what atftp cannot do on purpose: windowed transfers checked block by
//! block, refused names checked by error code, and the UEFI-style tsize probe that aborts.

use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, Instant};

use byol_server::tftp::{self, TftpConfig, TftpFile, TftpFiles};

const IPXE_EFI: &str = "/usr/lib/ipxe/ipxe.efi";
const ATFTP: &str = "/usr/bin/atftp";
const BOOT_IPXE: &[u8] = b"#!ipxe\ndhcp\nchain http://192.0.2.1:8080/ipxe/${net0/mac} || shell\n";

// ---------------------------------------------------------------------------------------------
// setup

/// The real iPXE EFI binary from Debian's `ipxe` package; its absence is a failure, not a skip.
fn ipxe_efi() -> (PathBuf, Vec<u8>) {
    let path = PathBuf::from(IPXE_EFI);
    match std::fs::read(&path) {
        Ok(bytes) if !bytes.is_empty() => (path, bytes),
        Ok(_) => panic!(
            "{IPXE_EFI} is empty: reinstall Debian's `ipxe` package (`cargo xtask test` does)"
        ),
        Err(e) => panic!(
            "{IPXE_EFI} cannot be read ({e}): it comes from Debian's `ipxe` package; run \
             `cargo xtask test`, which installs what the tests need"
        ),
    }
}

fn require_atftp() {
    assert!(
        Path::new(ATFTP).is_file(),
        "{ATFTP} is missing: it comes from Debian's `atftp` package; run `cargo xtask test`, \
         which installs what the tests need"
    );
}

fn files() -> (TftpFiles, Vec<u8>) {
    let (path, efi) = ipxe_efi();
    let mut files = TftpFiles::new();
    files.insert("ipxe.efi", TftpFile::Path(path));
    files.insert("boot.ipxe", TftpFile::Bytes(Arc::new(BOOT_IPXE.to_vec())));
    (files, efi)
}

fn loopback_config() -> TftpConfig {
    TftpConfig {
        bind: SocketAddr::from(([127, 0, 0, 1], 0)),
        ..TftpConfig::default()
    }
}

/// A server running on the test's runtime; aborted when dropped.
struct Server {
    addr: SocketAddr,
    task: tokio::task::JoinHandle<anyhow::Result<()>>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The server's logs in the test output (`RUST_LOG=byol_server=debug` to see them all).
fn init_logs() {
    let _ = tracing_subscriber::fmt()
        .with_test_writer()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| "byol_server=info".into()),
        )
        .try_init();
}

async fn start(cfg: &TftpConfig, files: TftpFiles) -> Server {
    init_logs();
    let handle = tftp::bind(cfg, files).await.expect("bind on 127.0.0.1:0");
    let addr = handle.local_addr();
    assert_eq!(addr.ip(), cfg.bind.ip());
    assert_ne!(addr.port(), 0, "local_addr must give the real port");
    Server {
        addr,
        task: tokio::spawn(handle.serve()),
    }
}

/// Runs `atftp -g` for `remote`; returns its output and the fetched file, if it wrote one.
async fn atftp_get(
    server: SocketAddr,
    remote: &str,
    options: &[&str],
) -> (Output, Option<Vec<u8>>) {
    require_atftp();
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("fetched");
    let mut cmd = tokio::process::Command::new(ATFTP);
    cmd.arg("--trace").arg("--tftp-timeout").arg("1");
    for option in options {
        cmd.arg("--option").arg(option);
    }
    cmd.arg("-g")
        .arg("-r")
        .arg(remote)
        .arg("-l")
        .arg(&local)
        .arg(server.ip().to_string())
        .arg(server.port().to_string())
        .kill_on_drop(true);
    let output = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("atftp finished within 30 s")
        .expect("atftp runs");
    let fetched = std::fs::read(&local).ok();
    (output, fetched)
}

fn describe(output: &Output) -> String {
    format!(
        "status {}\nstdout:\n{}\nstderr:\n{}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    )
}

// ---------------------------------------------------------------------------------------------
// a raw TFTP client

#[derive(Debug, PartialEq)]
enum Packet {
    Data(u16, Vec<u8>),
    Ack(u16),
    Error(u16, String),
    OAck(Vec<(String, String)>),
    Other(Vec<u8>),
}

fn request(opcode: u16, name: &str, mode: &str, options: &[(&str, &str)]) -> Vec<u8> {
    let mut buf = opcode.to_be_bytes().to_vec();
    for part in [name, mode]
        .into_iter()
        .chain(options.iter().flat_map(|(k, v)| [*k, *v]))
    {
        buf.extend_from_slice(part.as_bytes());
        buf.push(0);
    }
    buf
}

fn rrq(name: &str, options: &[(&str, &str)]) -> Vec<u8> {
    request(1, name, "octet", options)
}

fn ack(block: u16) -> Vec<u8> {
    let mut buf = 4u16.to_be_bytes().to_vec();
    buf.extend_from_slice(&block.to_be_bytes());
    buf
}

fn error(code: u16, msg: &str) -> Vec<u8> {
    let mut buf = 5u16.to_be_bytes().to_vec();
    buf.extend_from_slice(&code.to_be_bytes());
    buf.extend_from_slice(msg.as_bytes());
    buf.push(0);
    buf
}

fn parse(buf: &[u8]) -> Packet {
    let Some((op, rest)) = buf.split_first_chunk::<2>() else {
        return Packet::Other(buf.to_vec());
    };
    let u16_at = |rest: &[u8]| rest.first_chunk::<2>().map(|b| u16::from_be_bytes(*b));
    match (u16::from_be_bytes(*op), u16_at(rest)) {
        (3, Some(block)) => Packet::Data(block, rest[2..].to_vec()),
        (4, Some(block)) if rest.len() == 2 => Packet::Ack(block),
        (5, Some(code)) => Packet::Error(
            code,
            String::from_utf8_lossy(&rest[2..])
                .trim_end_matches('\0')
                .to_owned(),
        ),
        (6, _) => {
            let fields: Vec<String> = rest
                .split(|b| *b == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect();
            let pairs = fields
                .chunks_exact(2)
                .map(|kv| (kv[0].to_ascii_lowercase(), kv[1].clone()))
                .collect();
            Packet::OAck(pairs)
        }
        _ => Packet::Other(buf.to_vec()),
    }
}

fn option<'a>(oack: &'a [(String, String)], name: &str) -> Option<&'a str> {
    oack.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

fn client() -> UdpSocket {
    UdpSocket::bind("127.0.0.1:0").expect("bind client socket")
}

/// Waits up to `wait` for one packet; `None` on timeout.
fn recv(sock: &UdpSocket, wait: Duration) -> Option<(Packet, SocketAddr)> {
    sock.set_read_timeout(Some(wait)).expect("set timeout");
    let mut buf = vec![0u8; 65536];
    match sock.recv_from(&mut buf) {
        Ok((n, from)) => Some((parse(&buf[..n]), from)),
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) =>
        {
            None
        }
        Err(e) => panic!("recv: {e}"),
    }
}

/// Sends a request and returns the first answer and the transfer's address (TID).
fn first_answer(server: SocketAddr, req: &[u8]) -> (UdpSocket, Packet, SocketAddr) {
    let sock = client();
    sock.send_to(req, server).expect("send request");
    let (packet, tid) = recv(&sock, Duration::from_secs(5)).expect("an answer to the request");
    assert_eq!(tid.ip(), server.ip());
    (sock, packet, tid)
}

/// Everything received on `sock` for `window`, with the time since `t0`.
fn collect(sock: &UdpSocket, t0: Instant, window: Duration) -> Vec<(Duration, Packet)> {
    let end = Instant::now() + window;
    let mut got = Vec::new();
    while let Some(left) = end.checked_duration_since(Instant::now()) {
        if left.is_zero() {
            break;
        }
        if let Some((packet, _)) = recv(sock, left) {
            got.push((t0.elapsed(), packet));
        }
    }
    got
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("client thread")
}

// ---------------------------------------------------------------------------------------------
// (1) the real iPXE binary, blksize 1468, windowsize 8

#[tokio::test(flavor = "multi_thread")]
async fn atftp_fetches_ipxe_efi_with_blksize_and_windowsize() {
    let (files, efi) = files();
    let server = start(&loopback_config(), files).await;

    let (output, fetched) = atftp_get(
        server.addr,
        "ipxe.efi",
        &["blksize 1468", "windowsize 8", "tsize 0"],
    )
    .await;
    assert!(
        output.status.success(),
        "atftp failed: {}",
        describe(&output)
    );
    let fetched = fetched.expect("atftp wrote the file");
    assert_eq!(fetched.len(), efi.len(), "size differs");
    assert!(
        fetched == efi,
        "ipxe.efi fetched over TFTP differs from {IPXE_EFI}"
    );

    // atftp's trace shows the options the server acknowledged. (atftp sends `tsize enable`
    // literally for "tsize enable", which is not a number; "tsize 0" is what RFC 2349 wants.)
    let trace = String::from_utf8_lossy(&output.stderr).into_owned()
        + &String::from_utf8_lossy(&output.stdout);
    let oack = trace
        .lines()
        .find(|l| l.contains("OACK"))
        .unwrap_or_else(|| panic!("no OACK in atftp trace: {}", describe(&output)));
    for expected in [
        "blksize: 1468".to_owned(),
        "windowsize: 8".to_owned(),
        format!("tsize: {}", efi.len()),
    ] {
        assert!(oack.contains(&expected), "OACK `{oack}` lacks {expected}");
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn raw_client_fetches_ipxe_efi_in_windows_of_8() {
    let (files, efi) = files();
    let server = start(&loopback_config(), files).await;
    let addr = server.addr;

    let fetched = blocking(move || {
        let req = rrq(
            "ipxe.efi",
            &[("blksize", "1468"), ("windowsize", "8"), ("tsize", "0")],
        );
        let (sock, first, tid) = first_answer(addr, &req);
        let Packet::OAck(oack) = first else {
            panic!("expected OACK, got {first:?}")
        };
        assert_eq!(option(&oack, "blksize"), Some("1468"));
        assert_eq!(option(&oack, "windowsize"), Some("8"));
        let tsize: usize = option(&oack, "tsize")
            .expect("tsize acknowledged")
            .parse()
            .expect("tsize");
        sock.send_to(&ack(0), tid).expect("ack 0");

        // RFC 7440: the server sends 8 blocks, then waits for the ACK of the last one.
        let mut data = Vec::new();
        let mut next: u16 = 1;
        let mut windows = 0;
        loop {
            let mut last = false;
            for _ in 0..8 {
                let (packet, from) = recv(&sock, Duration::from_secs(5)).expect("a DATA block");
                assert_eq!(from, tid, "data from the transfer's port");
                let Packet::Data(block, payload) = packet else {
                    panic!("expected DATA, got {packet:?}")
                };
                assert_eq!(block, next, "blocks in order");
                assert!(payload.len() <= 1468);
                data.extend_from_slice(&payload);
                next = next.wrapping_add(1);
                if payload.len() < 1468 {
                    last = true;
                    break;
                }
            }
            sock.send_to(&ack(next.wrapping_sub(1)), tid)
                .expect("ack window");
            windows += 1;
            if last {
                break;
            }
        }
        assert_eq!(data.len(), tsize);
        // Whole windows of 8, then the rest.
        assert_eq!(windows, efi_blocks(tsize, 1468).div_ceil(8));
        // Nothing more once the last block is acknowledged.
        assert!(
            recv(&sock, Duration::from_millis(500)).is_none(),
            "packets after the last ACK"
        );
        data
    })
    .await;
    assert!(
        fetched == efi,
        "ipxe.efi fetched in windows differs from {IPXE_EFI}"
    );
}

/// Blocks in a transfer of `size` bytes (a size that is a multiple ends with an empty block).
fn efi_blocks(size: usize, blksize: usize) -> usize {
    size / blksize + 1
}

// ---------------------------------------------------------------------------------------------
// (2) boot.ipxe from memory

#[tokio::test(flavor = "multi_thread")]
async fn atftp_fetches_boot_ipxe_from_memory() {
    let (files, _) = files();
    let server = start(&loopback_config(), files).await;

    let (output, fetched) = atftp_get(server.addr, "boot.ipxe", &[]).await;
    assert!(
        output.status.success(),
        "atftp failed: {}",
        describe(&output)
    );
    assert_eq!(fetched.as_deref(), Some(BOOT_IPXE));

    // Also with options, and a block size that splits the script.
    let (output, fetched) = atftp_get(server.addr, "boot.ipxe", &["blksize 16", "tsize 0"]).await;
    assert!(
        output.status.success(),
        "atftp failed: {}",
        describe(&output)
    );
    assert_eq!(fetched.as_deref(), Some(BOOT_IPXE));
}

#[tokio::test(flavor = "multi_thread")]
async fn memory_file_of_exactly_one_block_ends_with_an_empty_block() {
    let mut files = TftpFiles::new();
    let content: Vec<u8> = (0..512u32).map(|i| i as u8).collect();
    files.insert("exact.bin", TftpFile::Bytes(Arc::new(content.clone())));
    let server = start(&loopback_config(), files).await;

    let (output, fetched) = atftp_get(server.addr, "exact.bin", &[]).await;
    assert!(
        output.status.success(),
        "atftp failed: {}",
        describe(&output)
    );
    assert_eq!(fetched, Some(content));
}

// ---------------------------------------------------------------------------------------------
// (3) names outside the set

#[tokio::test(flavor = "multi_thread")]
async fn traversal_absolute_backslash_and_unknown_names_are_refused() {
    let (files, _) = files();
    let server = start(&loopback_config(), files).await;
    let addr = server.addr;

    // (name, expected TFTP error code): 2 = access violation, 1 = file not found.
    let cases: &[(&str, u16)] = &[
        ("../etc/passwd", 2),
        ("/etc/passwd", 2),
        ("..\\x", 2),
        ("/boot.ipxe", 2),
        ("/ipxe.efi", 2),
        ("boot.ipxe/../boot.ipxe", 2),
        ("..", 2),
        ("sub\\boot.ipxe", 2),
        ("", 2),
        ("unknown.efi", 1),
        ("./boot.ipxe", 1),
        ("BOOT.IPXE", 1),
        ("passwd", 1),
        ("etc/passwd", 1),
    ];
    blocking(move || {
        for (name, code) in cases {
            let (sock, answer, _) = first_answer(addr, &rrq(name, &[("tsize", "0")]));
            match answer {
                Packet::Error(got, msg) => {
                    assert_eq!(got, *code, "error code for {name:?} ({msg})")
                }
                other => panic!("{name:?} was not refused: {other:?}"),
            }
            assert!(
                recv(&sock, Duration::from_millis(300)).is_none(),
                "something more was sent for {name:?}"
            );
        }
    })
    .await;

    // And through atftp: an error, no file written.
    for name in ["../etc/passwd", "/etc/passwd", "..\\x", "unknown.efi"] {
        let (output, fetched) = atftp_get(addr, name, &[]).await;
        assert!(
            !output.status.success(),
            "atftp got {name:?}: {}",
            describe(&output)
        );
        assert!(
            fetched.as_ref().is_none_or(|f| f.is_empty()),
            "{name:?}: atftp wrote {} bytes",
            fetched.map_or(0, |f| f.len())
        );
    }
}

// ---------------------------------------------------------------------------------------------
// (4) write requests

#[tokio::test(flavor = "multi_thread")]
async fn write_requests_are_refused() {
    let (files, _) = files();
    let server = start(&loopback_config(), files).await;
    let addr = server.addr;

    blocking(move || {
        for name in ["boot.ipxe", "new.bin"] {
            let (sock, answer, _) = first_answer(addr, &request(2, name, "octet", &[]));
            assert!(
                matches!(answer, Packet::Error(4, _)),
                "WRQ {name:?} not refused with illegal operation: {answer:?}"
            );
            assert!(recv(&sock, Duration::from_millis(300)).is_none());
        }
    })
    .await;

    // atftp's put fails too, and the file offered is unchanged.
    require_atftp();
    let dir = tempfile::tempdir().expect("tempdir");
    let local = dir.path().join("upload");
    std::fs::write(&local, b"overwrite").expect("write upload");
    let output = tokio::process::Command::new(ATFTP)
        .args(["--tftp-timeout", "1", "-p", "-r", "boot.ipxe", "-l"])
        .arg(&local)
        .arg(addr.ip().to_string())
        .arg(addr.port().to_string())
        .kill_on_drop(true)
        .output()
        .await
        .expect("atftp runs");
    assert!(
        !output.status.success(),
        "atftp put succeeded: {}",
        describe(&output)
    );
    let (output, fetched) = atftp_get(addr, "boot.ipxe", &[]).await;
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(fetched.as_deref(), Some(BOOT_IPXE));
}

// ---------------------------------------------------------------------------------------------
// (5) the UEFI-style tsize probe that aborts after the OACK

/// Sends a tsize probe, then either an ERROR or nothing, and listens for 11 s with the default
/// timeout and retries. Returns the packets seen after the first OACK, with their times.
fn probe(server: SocketAddr, size: usize, send_error: bool) -> Vec<(Duration, Packet)> {
    let req = rrq("ipxe.efi", &[("tsize", "0"), ("blksize", "1468")]);
    let (sock, first, tid) = first_answer(server, &req);
    let t0 = Instant::now();
    let Packet::OAck(oack) = first else {
        panic!("expected OACK, got {first:?}")
    };
    assert_eq!(option(&oack, "tsize"), Some(size.to_string().as_str()));
    if send_error {
        // What EDK2 does once it has the size.
        sock.send_to(&error(8, "User aborted the transfer"), tid)
            .expect("send ERROR");
    }
    collect(&sock, t0, Duration::from_secs(11))
}

fn check_probe_cost(got: &[(Duration, Packet)], variant: &str) {
    let cfg = TftpConfig::default();
    let retries = cfg.max_send_retries;
    let report: Vec<String> = got
        .iter()
        .map(|(t, p)| {
            let kind = match p {
                Packet::OAck(_) => "OACK".to_owned(),
                other => format!("{other:?}"),
            };
            format!("{:.2}s {kind}", t.as_secs_f64())
        })
        .collect();
    eprintln!("{variant}: after the first OACK the client received: {report:?}");

    let oacks: Vec<Duration> = got
        .iter()
        .filter(|(_, p)| matches!(p, Packet::OAck(_)))
        .map(|(t, _)| *t)
        .collect();
    assert!(
        oacks.len() as u32 <= retries,
        "{variant}: more than {retries} resends: {report:?}"
    );
    assert!(
        got.iter()
            .all(|(_, p)| matches!(p, Packet::OAck(_) | Packet::Error(..))),
        "{report:?}"
    );
    let slack = Duration::from_millis(1500);
    // Resends stop within timeout × retries, everything (incl. the final ERROR) within
    // timeout × (retries + 1).
    if let Some(last) = oacks.last() {
        assert!(
            *last <= cfg.timeout * retries + slack,
            "{variant}: resent too late: {report:?}"
        );
    }
    if let Some((last, _)) = got.last() {
        assert!(
            *last <= cfg.timeout * (retries + 1) + slack,
            "{variant}: still sending at {last:?}: {report:?}"
        );
    }
}

async fn probe_then_normal_client(send_error: bool, variant: &str) {
    let (files, efi) = files();
    let server = start(&loopback_config(), files).await;
    let addr = server.addr;
    let size = efi.len();

    let got = blocking(move || probe(addr, size, send_error)).await;
    check_probe_cost(&got, variant);

    // The server still serves a real client.
    let (output, fetched) = atftp_get(addr, "ipxe.efi", &["blksize 1468", "tsize 0"]).await;
    assert!(
        output.status.success(),
        "atftp after the probe: {}",
        describe(&output)
    );
    assert!(
        fetched.as_deref() == Some(&efi[..]),
        "ipxe.efi after the probe differs"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn tsize_probe_then_error_stops_within_timeout_times_retries() {
    probe_then_normal_client(true, "probe + ERROR").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn tsize_probe_then_silence_stops_within_timeout_times_retries() {
    probe_then_normal_client(false, "probe + silence").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn probe_does_not_block_the_real_transfer_that_follows() {
    // UEFI asks again from a new port right after its probe, while the server still resends
    // the first OACK.
    let (files, efi) = files();
    let server = start(&loopback_config(), files).await;
    let addr = server.addr;
    let size = efi.len();
    let probe = blocking(move || {
        let req = rrq("ipxe.efi", &[("tsize", "0")]);
        let (sock, first, tid) = first_answer(addr, &req);
        assert!(matches!(first, Packet::OAck(_)), "{first:?}");
        sock.send_to(&error(8, "User aborted the transfer"), tid)
            .expect("send ERROR");
        sock
    })
    .await;
    let started = Instant::now();
    let (output, fetched) = atftp_get(addr, "ipxe.efi", &["blksize 1468", "tsize 0"]).await;
    assert!(output.status.success(), "{}", describe(&output));
    assert_eq!(fetched.map(|f| f.len()), Some(size));
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "real transfer slowed by the probe"
    );
    drop(probe);
}

// ---------------------------------------------------------------------------------------------
// binding and stopping

#[tokio::test(flavor = "multi_thread")]
async fn bind_failure_names_the_address() {
    let taken = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let cfg = TftpConfig {
        bind: addr,
        ..TftpConfig::default()
    };
    let err = tftp::bind(&cfg, TftpFiles::new())
        .await
        .expect_err("port already taken");
    let msg = format!("{err:#}");
    assert!(
        msg.contains(&addr.to_string()),
        "message lacks the address: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn aborting_serve_stops_transfers_and_frees_the_port() {
    let (files, _) = files();
    // An address of its own: the other tests' sockets (a thousand clients at once) take
    // ephemeral ports on 127.0.0.1 and could take this one the moment it is freed.
    let cfg = TftpConfig {
        bind: SocketAddr::from(([127, 0, 0, 77], 0)),
        ..TftpConfig::default()
    };
    init_logs();
    let handle = tftp::bind(&cfg, files).await.expect("bind");
    let addr = handle.local_addr();
    let task = tokio::spawn(handle.serve());

    // A transfer in progress: OACK received, not acknowledged, so the server keeps resending.
    let (sock, first, _) =
        blocking(move || first_answer(addr, &rrq("ipxe.efi", &[("tsize", "0")]))).await;
    assert!(matches!(first, Packet::OAck(_)), "{first:?}");

    let aborted = Instant::now();
    task.abort();
    let join = tokio::time::timeout(Duration::from_secs(2), task)
        .await
        .expect("serve task ends after abort");
    assert!(join.is_err_and(|e| e.is_cancelled()), "task was cancelled");
    eprintln!("serve() task ended {:?} after abort", aborted.elapsed());

    // The port is free again at once (bound again right away, before anyone else can take
    // it), and no resend of the OACK comes once aborted.
    let again = tftp::bind(&TftpConfig { bind: addr, ..cfg }, TftpFiles::new()).await;
    assert!(again.is_ok(), "port not freed: {:?}", again.err());
    let got = blocking(move || collect(&sock, Instant::now(), Duration::from_secs(3))).await;
    assert!(got.is_empty(), "packets after abort: {got:?}");
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_thousand_abandoned_requests_hold_bounded_sockets() {
    let (files, _) = files();
    let cfg = TftpConfig {
        max_sessions: 32,
        ..loopback_config()
    };
    let server = start(&cfg, files).await;
    let addr = server.addr;
    let (before, busy, peak) = blocking(move || {
        // a thousand clients (one session per client address), each asking once
        let clients: Vec<UdpSocket> = (0..1000).map(|_| client()).collect();
        let before = open_fds();
        for (i, c) in clients.iter().enumerate() {
            c.set_nonblocking(true).unwrap();
            c.send_to(&rrq("ipxe.efi", &[("blksize", "1468")]), addr)
                .unwrap();
            // a pace the server's socket buffer takes (a burst of 1000 would just be dropped)
            if i % 50 == 49 {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        // every request is answered: 32 transfers start, the others are told the server is busy
        let (mut busy, mut peak) = (0usize, 0usize);
        let mut buf = vec![0u8; 2048];
        let t0 = Instant::now();
        while t0.elapsed() < Duration::from_secs(3) {
            for c in &clients {
                while let Ok((n, _)) = c.recv_from(&mut buf) {
                    if let Packet::Error(_, m) = parse(&buf[..n])
                        && m.starts_with("server busy")
                    {
                        busy += 1;
                    }
                }
            }
            peak = peak.max(open_fds());
            std::thread::sleep(Duration::from_millis(50));
        }
        (before, busy, peak)
    })
    .await;
    assert!(
        busy >= 1000 - 32 - 10,
        "only {busy} requests were told busy"
    );
    // each transfer holds its socket and the file it reads: 2 × 32, plus a few
    assert!(
        peak <= before + 2 * 32 + 16,
        "{before} open files before, {peak} at the peak"
    );
    // abandoned, they are given up within the server's timeout × (retries + 1): then a new
    // request is served again
    tokio::time::sleep(cfg.timeout * (cfg.max_send_retries + 1) + Duration::from_secs(2)).await;
    let (_, p, _) =
        blocking(move || first_answer(addr, &rrq("ipxe.efi", &[("blksize", "1468")]))).await;
    assert!(matches!(p, Packet::OAck(_)), "{p:?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_clients_timeout_option_is_not_honoured() {
    let (files, _) = files();
    let server = start(&loopback_config(), files).await;
    let addr = server.addr;
    let (_, p, _) = blocking(move || {
        first_answer(
            addr,
            &rrq("ipxe.efi", &[("timeout", "255"), ("blksize", "1468")]),
        )
    })
    .await;
    let Packet::OAck(o) = p else { panic!("{p:?}") };
    assert_eq!(option(&o, "blksize"), Some("1468"));
    assert_eq!(option(&o, "timeout"), None, "{o:?}");
}
