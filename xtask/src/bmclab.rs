//! bmclab: the BMC end-to-end cases' lab. The case's machine is a libvirt domain (QEMU, TCG)
//! run by a libvirt daemon of the case's own, and a real BMC emulator drives it through libvirt:
//! sushy-tools' `sushy-emulator` (Redfish, HTTPS with a CA of the lab's, Basic authentication)
//! or virtualbmc's `vbmcd` (IPMI v2.0 on a UDP port). byol is given the BMC and nothing else:
//! `install start` alone must power the machine on and reinstall it.
//!
//! The libvirt daemon is the system one (`qemu:///system`, QEMU as root) in a mount namespace
//! of its own: its `/etc/libvirt`, `/var`, `/run`, `/etc/passwd` and `/etc/group` are bind
//! mounts of folders under the case's directory, so it shares nothing with the host's libvirt
//! and leaves nothing behind; clients reach it through its socket there. Debian's libvirt looks
//! up its `libvirt-qemu` user before it reads `qemu.conf` (which says root): the namespace's
//! passwd has it, the host's is untouched. The machine's NIC is a libvirt `<interface
//! type='user'>` (the BMC emulators change boot order on `<interface>` elements) whose DHCP
//! answer must carry the boot file URL: libvirt 9.0 has no XML for slirp's `bootfile`, so the
//! domain drops QEMU's `netdev.json` capability (libvirt then writes `-netdev user,id=hostnet0`
//! in the legacy syntax) and adds `-set netdev.hostnet0.bootfile=URL`.
//!
//! virtualbmc makes `chassis bootdev pxe` the domain's *only* boot device, for good (a real
//! BMC's boot flag is for the next boot, the disks staying where they were), and libvirt runs
//! QEMU with `-boot strict=on`: SeaBIOS then maps no disk at all, and iPXE's `sanboot 0x80`
//! (byol's local boot) fails with an I/O error. The domain adds `-boot strict=off`, so that the
//! disks stay reachable as on real hardware. (sushy-tools keeps the disks in the boot order.)

use std::ffi::CString;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};

/// Which BMC drives the machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Power {
    Redfish,
    Ipmi,
}

impl Power {
    pub fn as_str(self) -> &'static str {
        match self {
            Power::Redfish => "redfish",
            Power::Ipmi => "ipmi",
        }
    }

    pub fn parse(s: &str) -> anyhow::Result<Power> {
        match s {
            "redfish" => Ok(Power::Redfish),
            "ipmi" => Ok(Power::Ipmi),
            _ => bail!("--power {s}: use redfish or ipmi"),
        }
    }
}

/// What the domain is made of.
pub struct DomainSpec<'a> {
    pub name: &'a str,
    pub uefi: bool,
    pub memory_mib: u32,
    pub mac: &'a str,
    /// Raw virtio disks, in order (the first boots after the network).
    pub disks: &'a [PathBuf],
    /// Where the serial console goes (appended to).
    pub serial: &'a Path,
    /// UEFI: the domain's copy of the variable store.
    pub nvram: &'a Path,
    pub bootfile: &'a str,
}

/// The BMC byol is given.
pub struct BmcAccess {
    pub kind: Power,
    pub address: String,
    pub user: String,
    pub password: String,
    /// Redfish: the lab CA's certificate, for `caPem`.
    pub ca_pem: Option<String>,
}

/// A case's libvirt daemon, its domain and its BMC; everything stops on drop.
pub struct Lab {
    dir: PathBuf,
    pub uri: String,
    libvirtd: Child,
    domain: Option<String>,
    bmc: Option<Child>,
    seen_running: bool,
}

const LIBVIRTD_CONF: &str = r#"unix_sock_group = "root"
unix_sock_ro_perms = "0777"
unix_sock_rw_perms = "0770"
unix_sock_dir = "/run/libvirt"
auth_unix_ro = "none"
auth_unix_rw = "none"
log_level = 3
log_outputs = "3:file:/var/log/libvirt/libvirtd.log"
"#;

/// QEMU as root, no relabelling, no cgroups (no systemd here), no per-domain /dev, QEMU writing
/// the serial file itself (no virtlogd).
const QEMU_CONF: &str = r#"user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
security_default_confined = 0
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
vnc_listen = "127.0.0.1"
spice_listen = "127.0.0.1"
"#;

impl Lab {
    /// Starts the case's libvirt daemon under `dir` and waits until it answers.
    pub fn start(dir: &Path) -> anyhow::Result<Lab> {
        let root = dir.join("root");
        // a domain's QEMU left running by an xtask that was killed outright
        kill_qemus(&root);
        let _ = std::fs::remove_dir_all(&root);
        for d in [
            "etc/libvirt",
            "var/lib/libvirt",
            "var/log/libvirt",
            "var/cache/libvirt",
            "var/tmp",
            "run/libvirt",
        ] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::os::unix::fs::symlink("/run", root.join("var/run"))?;
        std::fs::write(root.join("etc/libvirt/libvirtd.conf"), LIBVIRTD_CONF)?;
        std::fs::write(root.join("etc/libvirt/qemu.conf"), QEMU_CONF)?;
        std::fs::write(root.join("etc/libvirt/libvirt.conf"), "")?;
        for f in ["passwd", "group"] {
            let host = std::fs::read_to_string(format!("/etc/{f}"))?;
            let mut own: String = host
                .lines()
                .filter(|l| !l.starts_with("libvirt-qemu:"))
                .map(|l| format!("{l}\n"))
                .collect();
            own.push_str(if f == "passwd" {
                "libvirt-qemu:x:64055:64055:libvirt-qemu:/var/lib/libvirt:/usr/sbin/nologin\n"
            } else {
                "libvirt-qemu:x:64055:\n"
            });
            std::fs::write(root.join("etc").join(f), own)?;
        }
        let binds: Vec<(CString, CString)> = [
            ("etc/libvirt", "/etc/libvirt"),
            ("etc/passwd", "/etc/passwd"),
            ("etc/group", "/etc/group"),
            ("var", "/var"),
            ("run", "/run"),
        ]
        .iter()
        .map(|(from, to)| {
            Ok((
                CString::new(root.join(from).to_string_lossy().as_bytes())?,
                CString::new(*to)?,
            ))
        })
        .collect::<anyhow::Result<_>>()?;
        let mut c = Command::new("/usr/sbin/libvirtd");
        c.args([
            "-f",
            "/etc/libvirt/libvirtd.conf",
            "-p",
            "/run/libvirtd.pid",
        ])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(dir.join("libvirtd.out"))?)
        .stderr(std::fs::File::create(dir.join("libvirtd.err"))?);
        // SAFETY: between fork and exec only async-signal-safe calls (unshare, mount) on
        // strings made before the fork.
        unsafe {
            c.pre_exec(move || {
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let root = c"/";
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_PRIVATE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                for (from, to) in &binds {
                    if libc::mount(
                        from.as_ptr(),
                        to.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                Ok(())
            });
        }
        crate::signals::die_with_parent(&mut c);
        let libvirtd = c
            .spawn()
            .context("starting libvirtd (Debian's libvirt-daemon)")?;
        let uri = format!(
            "qemu:///system?socket={}",
            root.join("run/libvirt/libvirt-sock").display()
        );
        let mut lab = Lab {
            dir: dir.to_path_buf(),
            uri,
            libvirtd,
            domain: None,
            bmc: None,
            seen_running: false,
        };
        let t0 = Instant::now();
        loop {
            if lab.virsh(&["version"]).is_ok() {
                break;
            }
            if let Some(st) = lab.libvirtd.try_wait()? {
                bail!(
                    "libvirtd exited ({st}): {}",
                    std::fs::read_to_string(dir.join("libvirtd.err")).unwrap_or_default()
                );
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "libvirtd did not answer within 60 s"
            );
            std::thread::sleep(Duration::from_millis(200));
        }
        Ok(lab)
    }

    /// `virsh -c URI ARGS`: its output, or an error with its words.
    pub fn virsh(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new("virsh")
            .args(["-c", &self.uri])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .context("running virsh (Debian's libvirt-clients)")?;
        ensure!(
            out.status.success(),
            "virsh {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Defines the domain (powered off).
    pub fn define(&mut self, d: &DomainSpec) -> anyhow::Result<()> {
        let xml = domain_xml(d);
        let path = self.dir.join(format!("{}.xml", d.name));
        std::fs::write(&path, xml)?;
        self.virsh(&["define", &path.to_string_lossy()])?;
        self.domain = Some(d.name.to_string());
        // libvirtd starts QEMU detached: a signal that stops xtask must stop it too
        let root = self.dir.join("root");
        crate::signals::on_stop(
            &root.display().to_string(),
            Box::new(move || kill_qemus(&root)),
        );
        Ok(())
    }

    fn domain(&self) -> anyhow::Result<&str> {
        self.domain.as_deref().context("no domain defined")
    }

    /// `running`, `shut off`, … as virsh says.
    pub fn state(&mut self) -> anyhow::Result<String> {
        let s = self.virsh(&["domstate", self.domain()?])?;
        if s == "running" {
            self.seen_running = true;
        }
        Ok(s)
    }

    /// Some(why) once the domain, having run, is off again (the machine stopped).
    pub fn stopped(&mut self) -> anyhow::Result<Option<String>> {
        let s = self.state()?;
        Ok((self.seen_running && s == "shut off").then(|| format!("the domain is {s}")))
    }

    /// The domain's boot order as its XML has it (`network`, `disk`), first first.
    pub fn boot_order(&self) -> anyhow::Result<Vec<String>> {
        let xml = self.virsh(&["dumpxml", "--inactive", self.domain()?])?;
        // the legacy form (virtualbmc writes it): `<os><boot dev='network'/>…`
        let os = xml.split("</os>").next().unwrap_or("");
        let legacy: Vec<String> = os
            .split("<boot dev='")
            .skip(1)
            .filter_map(|r| r.split('\'').next())
            .map(str::to_string)
            .collect();
        if !legacy.is_empty() {
            return Ok(legacy);
        }
        let mut order: Vec<(u32, String)> = Vec::new();
        for (kind, tag) in [("network", "<interface "), ("disk", "<disk ")] {
            for part in xml.split(tag).skip(1) {
                let end = part
                    .find(if kind == "network" {
                        "</interface>"
                    } else {
                        "</disk>"
                    })
                    .unwrap_or(part.len());
                if let Some(n) = part[..end]
                    .split("<boot order='")
                    .nth(1)
                    .and_then(|r| r.split('\'').next())
                    .and_then(|n| n.parse().ok())
                {
                    order.push((n, kind.to_string()));
                }
            }
        }
        order.sort();
        Ok(order.into_iter().map(|(_, k)| k).collect())
    }

    pub fn destroy(&mut self) {
        if let Some(d) = self.domain.clone() {
            let _ = self.virsh(&["destroy", &d]);
        }
    }

    /// Starts the BMC emulator for the domain on a free loopback port; what byol is given.
    pub fn start_bmc(&mut self, kind: Power) -> anyhow::Result<BmcAccess> {
        let name = self.domain()?.to_string();
        let py = crate::root().join("target/py/bin");
        let dir = self.dir.join(kind.as_str());
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let user = "byol-e2e".to_string();
        let password = format!("pw-{}", std::process::id());
        match kind {
            Power::Redfish => {
                let port = free_tcp_port()?;
                make_tls(&dir)?;
                // sushy takes bcrypt entries only; python's bcrypt comes with sushy-tools
                let out = Command::new(py.join("python3"))
                    .args([
                        "-c",
                        "import bcrypt,sys; print(sys.argv[1]+':'+bcrypt.hashpw(sys.argv[2].encode(), bcrypt.gensalt(rounds=5)).decode())",
                        &user,
                        &password,
                    ])
                    .output()
                    .context("python3 of target/py (cargo xtask deps)")?;
                ensure!(out.status.success(), "making the htpasswd entry");
                std::fs::write(dir.join("htpasswd"), &out.stdout)?;
                let uuid = self.virsh(&["domuuid", &name])?;
                let d = dir.display();
                let conf = format!(
                    "SUSHY_EMULATOR_LISTEN_IP = '127.0.0.1'\n\
                     SUSHY_EMULATOR_LISTEN_PORT = {port}\n\
                     SUSHY_EMULATOR_SSL_CERT = '{d}/cert.pem'\n\
                     SUSHY_EMULATOR_SSL_KEY = '{d}/key.pem'\n\
                     SUSHY_EMULATOR_AUTH_FILE = '{d}/htpasswd'\n\
                     SUSHY_EMULATOR_LIBVIRT_URI = '{uri}'\n\
                     SUSHY_EMULATOR_ALLOWED_INSTANCES = ['{uuid}', '{name}']\n\
                     SUSHY_EMULATOR_BOOT_LOADER_MAP = {{'UEFI': {{'x86_64': '/usr/share/OVMF/OVMF_CODE_4M.fd'}}, 'Legacy': {{'x86_64': None}}}}\n\
                     SUSHY_EMULATOR_IGNORE_BOOT_DEVICE = False\n",
                    uri = self.uri
                );
                std::fs::write(dir.join("sushy.conf"), conf)?;
                let mut c = Command::new(py.join("sushy-emulator"));
                c.arg("--config")
                    .arg(dir.join("sushy.conf"))
                    .stdin(Stdio::null())
                    .stdout(std::fs::File::create(dir.join("sushy.log"))?)
                    .stderr(std::fs::File::create(dir.join("sushy.err"))?);
                crate::signals::die_with_parent(&mut c);
                self.bmc = Some(c.spawn().context("starting sushy-emulator (target/py)")?);
                let ca = dir.join("ca.pem");
                self.wait_bmc(|| {
                    Command::new("curl")
                        .args(["-sf", "-o", "/dev/null", "--cacert"])
                        .arg(&ca)
                        .arg(format!("https://127.0.0.1:{port}/redfish/v1/"))
                        .status()
                        .is_ok_and(|s| s.success())
                })?;
                Ok(BmcAccess {
                    kind,
                    address: format!("https://127.0.0.1:{port}"),
                    user,
                    password,
                    ca_pem: Some(std::fs::read_to_string(&ca)?),
                })
            }
            Power::Ipmi => {
                let port = free_udp_port()?;
                let control = free_tcp_port()?;
                let d = dir.display();
                std::fs::create_dir_all(dir.join("domains"))?;
                // without this file vbmc and vbmcd fall back to ~/.vbmc, silently
                std::fs::write(
                    dir.join("virtualbmc.conf"),
                    format!(
                        "[default]\nconfig_dir = {d}/domains\npid_file = {d}/vbmcd.pid\n\
                         server_port = {control}\nserver_response_timeout = 10000\n\
                         [log]\nlogfile = {d}/vbmcd.log\ndebug = false\n\
                         [ipmi]\nsession_timeout = 20\n"
                    ),
                )?;
                let conf = dir.join("virtualbmc.conf");
                // in the foreground: its pid file is right then (3.3.0's daemon mode writes 0)
                let mut c = Command::new(py.join("vbmcd"));
                c.arg("--foreground")
                    .env("VIRTUALBMC_CONFIG", &conf)
                    .stdin(Stdio::null())
                    .stdout(std::fs::File::create(dir.join("vbmcd.out"))?)
                    .stderr(std::fs::File::create(dir.join("vbmcd.err"))?);
                crate::signals::die_with_parent(&mut c);
                self.bmc = Some(c.spawn().context("starting vbmcd (target/py)")?);
                let vbmc = |args: &[&str]| {
                    Command::new(py.join("vbmc"))
                        .args(args)
                        .env("VIRTUALBMC_CONFIG", &conf)
                        .stdin(Stdio::null())
                        .output()
                };
                self.wait_bmc(|| vbmc(&["list"]).is_ok_and(|o| o.status.success()))?;
                let port_s = port.to_string();
                for args in [
                    &[
                        "add",
                        &name,
                        "--port",
                        &port_s,
                        "--address",
                        "127.0.0.1",
                        "--username",
                        &user,
                        "--password",
                        &password,
                        "--libvirt-uri",
                        &self.uri,
                    ][..],
                    &["start", &name][..],
                ] {
                    let o = vbmc(args).context("vbmc (target/py)")?;
                    ensure!(
                        o.status.success(),
                        "vbmc {}: {}",
                        args[0],
                        String::from_utf8_lossy(&o.stderr).trim()
                    );
                }
                let access = BmcAccess {
                    kind,
                    address: format!("127.0.0.1:{port}"),
                    user,
                    password,
                    ca_pem: None,
                };
                // the BMC answers once its UDP port is up
                self.wait_bmc(|| {
                    ipmitool(&access, &["chassis", "power", "status"])
                        .is_ok_and(|o| o.contains("Chassis Power is"))
                })?;
                Ok(access)
            }
        }
    }

    fn wait_bmc(&mut self, up: impl Fn() -> bool) -> anyhow::Result<()> {
        let t0 = Instant::now();
        loop {
            if up() {
                return Ok(());
            }
            if let Some(c) = self.bmc.as_mut()
                && let Some(st) = c.try_wait()?
            {
                bail!("the BMC emulator exited ({st}); see {}", self.dir.display());
            }
            ensure!(
                t0.elapsed() < Duration::from_secs(60),
                "the BMC emulator did not answer within 60 s; see {}",
                self.dir.display()
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        // SIGTERM first: vbmcd stops the BMC process it forked for the domain
        if let Some(mut b) = self.bmc.take() {
            stop(&mut b, Duration::from_secs(5));
        }
        if let Some(d) = self.domain.take() {
            let _ = self.virsh(&["destroy", &d]);
            let _ = self.virsh(&["undefine", "--nvram", &d]);
        }
        stop(&mut self.libvirtd, Duration::from_secs(10));
        let root = self.dir.join("root");
        kill_qemus(&root);
        crate::signals::forget_on_stop(&root.display().to_string());
    }
}

/// SIGKILL to the QEMU of every domain of the lab whose root is `root` (from libvirt's pid
/// files there; a pid is killed only if it still runs QEMU).
fn kill_qemus(root: &Path) {
    let Ok(rd) = std::fs::read_dir(root.join("run/libvirt/qemu")) else {
        return;
    };
    for e in rd.filter_map(Result::ok) {
        if e.path().extension().is_none_or(|x| x != "pid") {
            continue;
        }
        let Some(pid) = std::fs::read_to_string(e.path())
            .ok()
            .and_then(|s| s.trim().parse::<i32>().ok())
        else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        if pid > 1 && String::from_utf8_lossy(&cmd).contains("qemu-system") {
            // SAFETY: kill(2) of a pid just checked to be a QEMU of this lab
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
        }
    }
}

/// SIGTERM, then SIGKILL after `grace`.
fn stop(c: &mut Child, grace: Duration) {
    if let Ok(Some(_)) = c.try_wait() {
        return;
    }
    // SAFETY: a plain kill(2) of our own child, not yet reaped
    unsafe {
        libc::kill(c.id() as i32, libc::SIGTERM);
    }
    let t0 = Instant::now();
    while t0.elapsed() < grace {
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let _ = c.kill();
    let _ = c.wait();
}

/// `ipmitool -I lanplus` against the BMC: the reference client's output.
pub fn ipmitool(b: &BmcAccess, args: &[&str]) -> anyhow::Result<String> {
    let (host, port) = b
        .address
        .rsplit_once(':')
        .context("the IPMI address has no port")?;
    let out = Command::new("ipmitool")
        .args(["-I", "lanplus", "-H", host, "-p", port, "-U", &b.user, "-E"])
        .args(args)
        .env("IPMI_PASSWORD", &b.password)
        .stdin(Stdio::null())
        .output()
        .context("running ipmitool")?;
    ensure!(
        out.status.success(),
        "ipmitool {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The domain's XML: virtio disks, a user-mode NIC whose DHCP answer carries `bootfile`, the
/// serial console to a file, SeaBIOS (pc) or OVMF (q35).
pub fn domain_xml(d: &DomainSpec) -> String {
    let esc = |s: &str| {
        s.replace('&', "&amp;")
            .replace('<', "&lt;")
            .replace('>', "&gt;")
            .replace('\'', "&apos;")
    };
    let os = if d.uefi {
        format!(
            "<type arch='x86_64' machine='q35'>hvm</type>\n    \
             <loader readonly='yes' secure='no' type='pflash'>/usr/share/OVMF/OVMF_CODE_4M.fd</loader>\n    \
             <nvram template='/usr/share/OVMF/OVMF_VARS_4M.fd'>{}</nvram>",
            esc(&d.nvram.to_string_lossy())
        )
    } else {
        // SeaBIOS's and iPXE's screen on the serial console too
        "<type arch='x86_64' machine='pc'>hvm</type>\n    <bios useserial='yes'/>".to_string()
    };
    let disks: String = d
        .disks
        .iter()
        .enumerate()
        .map(|(i, p)| {
            let boot = if i == 0 {
                "\n      <boot order='2'/>"
            } else {
                ""
            };
            format!(
                "    <disk type='file' device='disk'>\n      <driver name='qemu' type='raw'/>\n      \
                 <source file='{}'/>\n      <target dev='vd{}' bus='virtio'/>\n      \
                 <serial>BYOL-E2E-{i}</serial>{boot}\n    </disk>\n",
                esc(&p.to_string_lossy()),
                (b'a' + i as u8) as char
            )
        })
        .collect();
    let serial = esc(&d.serial.to_string_lossy());
    format!(
        "<domain type='qemu' xmlns:qemu='http://libvirt.org/schemas/domain/qemu/1.0'>
  <name>{name}</name>
  <memory unit='MiB'>{mem}</memory>
  <vcpu placement='static'>1</vcpu>
  <os>
    {os}
  </os>
  <features><acpi/><apic/></features>
  <cpu mode='custom' match='exact' check='none'><model fallback='allow'>qemu64</model></cpu>
  <clock offset='utc'/>
  <on_poweroff>destroy</on_poweroff>
  <on_reboot>restart</on_reboot>
  <on_crash>destroy</on_crash>
  <devices>
    <emulator>/usr/bin/qemu-system-x86_64</emulator>
{disks}    <controller type='usb' model='none'/>
    <interface type='user'>
      <mac address='{mac}'/>
      <model type='virtio'/>
      <boot order='1'/>
    </interface>
    <serial type='file'>
      <source path='{serial}' append='on'/>
      <target port='0'/>
    </serial>
    <rng model='virtio'><backend model='random'>/dev/urandom</backend></rng>
    <memballoon model='none'/>
  </devices>
  <seclabel type='none' model='none'/>
  <qemu:commandline>
    <qemu:arg value='-set'/>
    <qemu:arg value='netdev.hostnet0.bootfile={bootfile}'/>
    <qemu:arg value='-boot'/>
    <qemu:arg value='strict=off'/>
  </qemu:commandline>
  <qemu:capabilities>
    <qemu:del capability='netdev.json'/>
  </qemu:capabilities>
</domain>
",
        name = esc(d.name),
        mem = d.memory_mib,
        mac = esc(d.mac),
        bootfile = esc(d.bootfile),
    )
}

/// A CA and a certificate for 127.0.0.1 it signed (webpki takes no self-signed end entity).
fn make_tls(dir: &Path) -> anyhow::Result<()> {
    let openssl = |args: &[&str]| -> anyhow::Result<()> {
        let st = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .context("running openssl")?;
        ensure!(st.success(), "openssl {}", args.join(" "));
        Ok(())
    };
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
    ];
    openssl(
        &[
            &["req", "-x509"][..],
            &ec,
            &[
                "-days",
                "2",
                "-subj",
                "/CN=byol e2e BMC CA",
                "-keyout",
                "ca.key",
                "-out",
                "ca.pem",
            ],
        ]
        .concat(),
    )?;
    openssl(
        &[
            &["req"][..],
            &ec,
            &[
                "-subj",
                "/CN=127.0.0.1",
                "-keyout",
                "key.pem",
                "-out",
                "leaf.csr",
            ],
        ]
        .concat(),
    )?;
    std::fs::write(
        dir.join("leaf.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\n",
    )?;
    openssl(&[
        "x509",
        "-req",
        "-in",
        "leaf.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        "leaf.ext",
        "-out",
        "cert.pem",
    ])
}

fn free_tcp_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

fn free_udp_port() -> anyhow::Result<u16> {
    Ok(std::net::UdpSocket::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
