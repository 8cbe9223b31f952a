//! The agent's network phase against real things: a veth pair between two network namespaces
//! this test creates, Debian's dnsmasq as the DHCP server in one, the agent (its hidden `dhcp`
//! and `netup` subcommands, run with `ip netns exec`) in the other. Nothing leaves the
//! namespaces; they and dnsmasq are removed by a guard, even when a test fails.
//!
//! Needs root, `ip` (iproute2) and `/usr/sbin/dnsmasq` (package dnsmasq-base; `cargo xtask`
//! installs it): without them the tests fail and say so.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_byol-agent");
const MAC: &str = "52:54:00:aa:bb:01";

fn dnsmasq_path() -> PathBuf {
    for p in ["/usr/sbin/dnsmasq", "/usr/bin/dnsmasq", "/sbin/dnsmasq"] {
        if Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    panic!(
        "dnsmasq is missing: install Debian's dnsmasq-base (`apt-get install dnsmasq-base`, \
         or `cargo xtask` which does it) to run the DHCP tests"
    );
}

fn require_ip() {
    let ok = Command::new("ip")
        .arg("-V")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "`ip` (iproute2) is missing: install Debian's iproute2 to run the DHCP tests"
    );
    // SAFETY: geteuid has no preconditions.
    let uid = unsafe { libc::geteuid() };
    assert_eq!(
        uid, 0,
        "the DHCP tests create network namespaces and must run as root"
    );
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"))
}

fn must(args: &[&str]) {
    let out = run(Command::new("ip").args(args));
    assert!(
        out.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Two namespaces joined by a veth pair: `vs` (10.77.0.1/24) in the server one, `vc` (MAC
/// 52:54:00:aa:bb:01, unconfigured, down) in the client one. Removed on drop with dnsmasq.
struct Lab {
    srv: String,
    cli: String,
    dnsmasq: Option<Child>,
    dir: tempfile::TempDir,
}

impl Lab {
    fn new(tag: &str) -> Lab {
        require_ip();
        let id = std::process::id();
        let lab = Lab {
            srv: format!("byolt-{tag}-{id}-s"),
            cli: format!("byolt-{tag}-{id}-c"),
            dnsmasq: None,
            dir: tempfile::tempdir().unwrap(),
        };
        must(&["netns", "add", &lab.srv]);
        must(&["netns", "add", &lab.cli]);
        must(&[
            "-n", &lab.srv, "link", "add", "vs", "type", "veth", "peer", "name", "vc", "netns",
            &lab.cli,
        ]);
        must(&["-n", &lab.cli, "link", "set", "vc", "address", MAC]);
        must(&["-n", &lab.srv, "addr", "add", "10.77.0.1/24", "dev", "vs"]);
        must(&["-n", &lab.srv, "link", "set", "vs", "up"]);
        must(&["-n", &lab.srv, "link", "set", "lo", "up"]);
        lab
    }

    /// dnsmasq in the server namespace: DHCP range .50-.59, router .1, DNS server .53 (and
    /// DNS itself on .1, so that a TCP connection can prove the address works).
    fn start_dnsmasq(&mut self) {
        let bin = dnsmasq_path();
        let leases = self.dir.path().join("leases");
        let log = std::fs::File::create(self.dir.path().join("dnsmasq.log")).unwrap();
        let child = Command::new("ip")
            .args(["netns", "exec", &self.srv])
            .arg(bin)
            .args([
                "--keep-in-foreground",
                "--conf-file=/dev/null",
                "--no-resolv",
                "--no-hosts",
                "--interface=vs",
                "--bind-interfaces",
                "--user=root",
                "--group=root",
                "--pid-file=",
                "--log-dhcp",
                "--log-facility=-",
                "--dhcp-authoritative",
                "--dhcp-range=10.77.0.50,10.77.0.59,255.255.255.0,1h",
                "--dhcp-option=option:router,10.77.0.1",
                "--dhcp-option=option:dns-server,10.77.0.53",
            ])
            .arg(format!("--dhcp-leasefile={}", leases.display()))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start dnsmasq");
        self.dnsmasq = Some(child);
        // Ready when it listens on the DNS port (its DHCP socket is opened before that).
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let out =
                run(Command::new("ip").args(["netns", "exec", &self.srv, "cat", "/proc/net/tcp"]));
            // 0035 = port 53, state 0A = listen.
            if String::from_utf8_lossy(&out.stdout).contains(":0035 00000000:0000 0A") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "dnsmasq did not start: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("dnsmasq.log")).unwrap_or_default()
    }

    /// The agent binary with `args`, in the client namespace.
    fn agent(&self, args: &[&str]) -> Output {
        run(Command::new("ip")
            .args(["netns", "exec", &self.cli, AGENT])
            .args(args))
    }

    fn ip_cli(&self, args: &[&str]) -> String {
        let out = run(Command::new("ip").args(["-n", &self.cli]).args(args));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Opens a TCP connection from the client namespace to 10.77.0.1:53 (dnsmasq).
    fn tcp_from_client(&self) -> bool {
        run(Command::new("ip").args([
            "netns",
            "exec",
            &self.cli,
            "bash",
            "-c",
            "exec 3<>/dev/tcp/10.77.0.1/53",
        ]))
        .status
        .success()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if let Some(mut c) = self.dnsmasq.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in [&self.cli, &self.srv] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

fn json(out: &Output) -> serde_json::Value {
    assert!(
        out.status.success(),
        "agent failed: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(&out.stdout)
    );
    serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&out.stdout)))
}

fn in_range(v: &serde_json::Value) -> Ipv4Addr {
    let a: Ipv4Addr = v.as_str().unwrap().parse().unwrap();
    assert!(
        (Ipv4Addr::new(10, 77, 0, 50)..=Ipv4Addr::new(10, 77, 0, 59)).contains(&a),
        "{a} is not in dnsmasq's range"
    );
    a
}

#[test]
fn dhcp_lease_from_dnsmasq() {
    let mut lab = Lab::new("lease");
    lab.start_dnsmasq();
    let t = Instant::now();
    let out = lab.agent(&["dhcp", "--iface", "vc", "--timeout", "20"]);
    let l = json(&out);
    in_range(&l["address"]);
    assert_eq!(l["netmask"], "255.255.255.0");
    assert_eq!(l["gateway"], "10.77.0.1");
    assert_eq!(l["dns"], serde_json::json!(["10.77.0.53"]));
    assert_eq!(l["server"], "10.77.0.1");
    assert_eq!(l["lease_seconds"], 3600);
    let log = lab.log();
    assert!(log.contains("DHCPACK(vs)"), "dnsmasq log:\n{log}");
    assert!(log.contains(MAC), "dnsmasq saw our MAC:\n{log}");
    eprintln!(
        "lease in {:.2} s: {l}\n{}",
        t.elapsed().as_secs_f64(),
        String::from_utf8_lossy(&out.stderr)
    );
    // The lease only: the interface has no address yet.
    assert!(
        !lab.ip_cli(&["-4", "-o", "addr", "show", "dev", "vc"])
            .contains("inet ")
    );
}

#[test]
fn netup_falls_back_to_dhcp_and_configures_the_interface() {
    let mut lab = Lab::new("netdhcp");
    lab.start_dnsmasq();
    let resolv = lab.dir.path().join("etc/resolv.conf");
    let cmdline = format!(
        "byol.server=http://10.77.0.1:8080 byol.mac={} byol.ip= byol.netmask= byol.gateway= \
         byol.dns= console=ttyS0",
        MAC.to_uppercase()
    );
    let out = lab.agent(&[
        "netup",
        "--cmdline",
        &cmdline,
        "--resolv-conf",
        resolv.to_str().unwrap(),
    ]);
    let c = json(&out);
    assert_eq!(c["iface"], "vc");
    assert_eq!(c["mac"], MAC);
    assert_eq!(c["source"], "dhcp");
    assert_eq!(c["prefix"], 24);
    let a = in_range(&c["address"]);
    let addrs = lab.ip_cli(&["-4", "-o", "addr", "show", "dev", "vc"]);
    assert!(
        addrs.contains(&format!("inet {a}/24 brd 10.77.0.255")),
        "{addrs}"
    );
    let routes = lab.ip_cli(&["-4", "route", "show", "default"]);
    assert!(routes.contains("default via 10.77.0.1 dev vc"), "{routes}");
    assert!(
        lab.ip_cli(&["link", "show", "lo"]).contains("UP"),
        "lo is up"
    );
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        "# written by byol-agent from DHCP\nnameserver 10.77.0.53\n"
    );
    assert!(lab.tcp_from_client(), "TCP to the server side works");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no byol.ip on the command line: asking DHCP on vc"),
        "{stderr}"
    );
    assert!(stderr.contains("DHCP: offer of"), "{stderr}");
}

#[test]
fn netup_static_address_from_the_command_line() {
    let lab = Lab::new("static");
    let resolv = lab.dir.path().join("resolv.conf");
    let out = lab.agent(&[
        "netup",
        "--cmdline",
        &format!(
            "byol.mac={MAC} byol.ip=10.77.0.7 byol.netmask=255.255.255.0 \
             byol.gateway=10.77.0.1 byol.dns=10.77.0.53,10.77.0.54"
        ),
        "--resolv-conf",
        resolv.to_str().unwrap(),
    ]);
    let c = json(&out);
    assert_eq!(c["source"], "ipxe");
    assert_eq!(c["address"], "10.77.0.7");
    let addrs = lab.ip_cli(&["-4", "-o", "addr", "show", "dev", "vc"]);
    assert!(
        addrs.contains("inet 10.77.0.7/24 brd 10.77.0.255"),
        "{addrs}"
    );
    let routes = lab.ip_cli(&["-4", "route", "show", "default"]);
    assert!(routes.contains("default via 10.77.0.1 dev vc"), "{routes}");
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        "# written by byol-agent from byol.dns (iPXE)\nnameserver 10.77.0.53\nnameserver 10.77.0.54\n"
    );
}

#[test]
fn no_dhcp_server_is_a_clear_error() {
    let lab = Lab::new("nodhcp");
    let t = Instant::now();
    let out = lab.agent(&["dhcp", "--iface", "vc", "--timeout", "3"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("no answer from a DHCP server on vc after 3 s"),
        "{stderr}"
    );
    assert!(t.elapsed() < Duration::from_secs(10));
    // And the network phase names the MAC it could not find.
    let out = lab.agent(&[
        "netup",
        "--cmdline",
        "byol.mac=52:54:00:00:00:99 byol.ip=10.77.0.7",
        "--resolv-conf",
        lab.dir.path().join("r").to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("no network interface with MAC 52:54:00:00:00:99 (byol.mac)")
            && stderr.contains("vc (52:54:00:aa:bb:01)"),
        "{stderr}"
    );
}
