//! net: joins the network the machine booted from. Finds the interface whose MAC is
//! `byol.mac` (waiting for its driver to make it appear in /sys/class/net), sets it up with
//! the IPv4 address, netmask, gateway and DNS server iPXE passed, or asks DHCP ([`super::dhcp`])
//! when iPXE passed none, and writes /etc/resolv.conf before anything looks a name up. The
//! loopback comes up too. Everything is done with the classic ioctls (SIOCSIFFLAGS,
//! SIOCSIFADDR, SIOCSIFNETMASK, SIOCADDRT) on an AF_INET socket: no netlink, no tools.
//!
//! IPv6: the kernel configures itself by SLAAC once the link is up (router advertisements),
//! nothing more is done here; the server is reached over IPv4.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::cmdline::{BootParams, Mac};
use super::console::say;
use super::dhcp::{self, DhcpOptions};

/// How the network phase runs (paths are parameters so that tests can use their own).
#[derive(Debug, Clone)]
pub struct NetOptions {
    /// sysfs root (`/sys`).
    pub sysfs: PathBuf,
    /// Where the DNS servers are written (`/etc/resolv.conf`).
    pub resolv_conf: PathBuf,
    /// How long to wait for the interface to appear after the drivers were loaded.
    pub iface_timeout: Duration,
    /// How long to wait for a carrier after setting the link up (not fatal when it runs out).
    pub carrier_timeout: Duration,
    pub dhcp: DhcpOptions,
}

impl Default for NetOptions {
    fn default() -> Self {
        NetOptions {
            sysfs: PathBuf::from("/sys"),
            resolv_conf: PathBuf::from("/etc/resolv.conf"),
            iface_timeout: Duration::from_secs(30),
            carrier_timeout: Duration::from_secs(15),
            dhcp: DhcpOptions::default(),
        }
    }
}

/// Where the address came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AddrSource {
    /// `byol.ip` & co. on the command line (iPXE's own DHCP lease).
    Ipxe,
    /// The agent's own DHCP client.
    Dhcp,
}

/// The network as the agent set it up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NetConfig {
    pub iface: String,
    pub mac: String,
    pub address: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub prefix: u32,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    pub source: AddrSource,
    /// DHCP lease time, seconds.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lease_seconds: Option<u32>,
}

impl NetConfig {
    /// `eth0 52:54:00:12:34:56 10.0.2.15/24 via 10.0.2.2, dns 10.0.2.3 (from iPXE)`.
    pub fn summary(&self) -> String {
        let via = match self.gateway {
            Some(g) => format!(" via {g}"),
            None => ", no gateway".to_string(),
        };
        let dns = if self.dns.is_empty() {
            "no dns".to_string()
        } else {
            let d: Vec<String> = self.dns.iter().map(|a| a.to_string()).collect();
            format!("dns {}", d.join(" "))
        };
        let from = match self.source {
            AddrSource::Ipxe => "from iPXE".to_string(),
            AddrSource::Dhcp => match self.lease_seconds {
                Some(s) => format!("from DHCP, lease {s} s"),
                None => "from DHCP".to_string(),
            },
        };
        format!(
            "{} {} {}/{}{via}, {dns} ({from})",
            self.iface, self.mac, self.address, self.prefix
        )
    }
}

/// The network phase: loopback up, the boot interface found (waiting for it), link up, the
/// address from the command line or DHCP, default route, resolv.conf.
pub fn bring_up(p: &BootParams, o: &NetOptions) -> Result<NetConfig, String> {
    if let Err(e) = set_up("lo") {
        say(format!("cannot set lo up: {e}"));
    }
    let iface = wait_interface(&o.sysfs, p.mac, o.iface_timeout)?;
    let mac = interface_mac(&o.sysfs, &iface)
        .ok_or_else(|| format!("interface {iface} has no MAC address in sysfs"))?;
    say(format!("boot interface: {iface} ({mac})"));
    set_up(&iface).map_err(|e| format!("cannot set {iface} up: {e}"))?;
    let t = Instant::now();
    if wait_carrier(&o.sysfs, &iface, o.carrier_timeout) {
        say(format!(
            "{iface}: link up after {:.1} s",
            t.elapsed().as_secs_f64()
        ));
    } else {
        say(format!(
            "{iface}: no carrier after {} s, going on (check the cable / switch port)",
            o.carrier_timeout.as_secs()
        ));
    }
    let cfg = match p.ip {
        Some(address) => {
            let netmask = p.netmask.unwrap_or_else(|| {
                say("byol.ip given without byol.netmask: using 255.255.255.0");
                Ipv4Addr::new(255, 255, 255, 0)
            });
            NetConfig {
                iface: iface.clone(),
                mac: mac.to_string(),
                address,
                netmask,
                prefix: u32::from(netmask).count_ones(),
                gateway: p.gateway,
                dns: p.dns.clone(),
                source: AddrSource::Ipxe,
                lease_seconds: None,
            }
        }
        None => {
            say(format!(
                "no byol.ip on the command line: asking DHCP on {iface}"
            ));
            let l = dhcp::lease(&iface, mac, &o.dhcp).map_err(|e| format!("DHCP: {e}"))?;
            NetConfig {
                iface: iface.clone(),
                mac: mac.to_string(),
                address: l.address,
                netmask: l.netmask,
                prefix: u32::from(l.netmask).count_ones(),
                gateway: l.gateway,
                // What iPXE passed wins over what DHCP says, if both.
                dns: if p.dns.is_empty() {
                    l.dns
                } else {
                    p.dns.clone()
                },
                source: AddrSource::Dhcp,
                lease_seconds: l.lease_seconds,
            }
        }
    };
    apply(&cfg)?;
    write_resolv_conf(&o.resolv_conf, &cfg.dns, cfg.source)
        .map_err(|e| format!("cannot write {}: {e}", o.resolv_conf.display()))?;
    Ok(cfg)
}

/// Puts `cfg` on its interface: address, netmask, default route.
pub fn apply(cfg: &NetConfig) -> Result<(), String> {
    set_ipv4(&cfg.iface, cfg.address, cfg.netmask).map_err(|e| {
        format!(
            "cannot set {}/{} on {}: {e}",
            cfg.address, cfg.prefix, cfg.iface
        )
    })?;
    if let Some(gw) = cfg.gateway {
        add_default_route(&cfg.iface, gw)
            .map_err(|e| format!("cannot add the default route via {gw}: {e}"))?;
    }
    Ok(())
}

/// The MAC of interface `name` (from `<sysfs>/class/net/<name>/address`).
pub fn interface_mac(sysfs: &Path, name: &str) -> Option<Mac> {
    let s = std::fs::read_to_string(sysfs.join("class/net").join(name).join("address")).ok()?;
    Mac::parse(&s)
}

/// The interface with MAC `mac`, or without a MAC the first Ethernet interface by name.
pub fn find_interface(sysfs: &Path, mac: Option<Mac>) -> Option<String> {
    let dir = sysfs.join("class/net");
    let mut names: Vec<String> = std::fs::read_dir(&dir)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n != "lo")
        .collect();
    names.sort();
    match mac {
        Some(m) => names
            .into_iter()
            .find(|n| interface_mac(sysfs, n) == Some(m)),
        None => names.into_iter().find(|n| {
            std::fs::read_to_string(dir.join(n).join("type")).is_ok_and(|t| t.trim() == "1")
        }),
    }
}

/// Waits (polling) for the interface to appear: drivers bind asynchronously.
pub fn wait_interface(sysfs: &Path, mac: Option<Mac>, timeout: Duration) -> Result<String, String> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(n) = find_interface(sysfs, mac) {
            return Ok(n);
        }
        if Instant::now() >= deadline {
            let seen: Vec<String> = std::fs::read_dir(sysfs.join("class/net"))
                .map(|rd| {
                    rd.flatten()
                        .map(|e| {
                            let n = e.file_name().to_string_lossy().into_owned();
                            match interface_mac(sysfs, &n) {
                                Some(m) => format!("{n} ({m})"),
                                None => n,
                            }
                        })
                        .collect()
                })
                .unwrap_or_default();
            let what = match mac {
                Some(m) => format!("no network interface with MAC {m} (byol.mac)"),
                None => "no Ethernet interface (and no byol.mac)".to_string(),
            };
            return Err(format!(
                "{what} after {} s; interfaces seen: {} (is its driver in the initramfs?)",
                timeout.as_secs(),
                if seen.is_empty() {
                    "none".to_string()
                } else {
                    seen.join(", ")
                }
            ));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Waits for `<sysfs>/class/net/<name>/carrier` to read 1.
pub fn wait_carrier(sysfs: &Path, name: &str, timeout: Duration) -> bool {
    let path = sysfs.join("class/net").join(name).join("carrier");
    let deadline = Instant::now() + timeout;
    loop {
        if std::fs::read_to_string(&path).is_ok_and(|s| s.trim() == "1") {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Writes resolv.conf: one `nameserver` line per server (the C library reads at most 3).
pub fn write_resolv_conf(path: &Path, dns: &[Ipv4Addr], source: AddrSource) -> io::Result<()> {
    let from = match source {
        AddrSource::Ipxe => "byol.dns (iPXE)",
        AddrSource::Dhcp => "DHCP",
    };
    let mut text = format!("# written by byol-agent from {from}\n");
    if dns.is_empty() {
        text.push_str("# no DNS server was given: host names cannot be resolved\n");
    }
    for d in dns {
        text.push_str(&format!("nameserver {d}\n"));
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(path, text)
}

// ---- ioctls ------------------------------------------------------------------------------------

fn inet_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2); the fd is owned right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: fd is a fresh, valid descriptor nobody else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn ifreq(name: &str) -> io::Result<libc::ifreq> {
    if name.is_empty() || name.len() >= libc::IFNAMSIZ || name.contains('\0') {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("bad interface name `{name}`"),
        ));
    }
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut r: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, s) in r.ifr_name.iter_mut().zip(name.bytes()) {
        *d = s as libc::c_char;
    }
    Ok(r)
}

fn sockaddr_in(a: Ipv4Addr) -> libc::sockaddr {
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: 0,
        sin_addr: libc::in_addr {
            s_addr: u32::from(a).to_be(),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: sockaddr_in and sockaddr are both 16 bytes of plain data; this is how the
    // socket API is meant to be used.
    unsafe { std::mem::transmute::<libc::sockaddr_in, libc::sockaddr>(sin) }
}

fn ioctl<T>(fd: &OwnedFd, req: libc::c_ulong, arg: &mut T) -> io::Result<()> {
    // SAFETY: `arg` is the structure this request expects (ifreq or rtentry), valid for the
    // duration of the call.
    let rc = unsafe { libc::ioctl(fd.as_raw_fd(), req as _, arg as *mut T) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Sets the interface up (IFF_UP), keeping its other flags.
pub fn set_up(name: &str) -> io::Result<()> {
    let s = inet_socket()?;
    let mut r = ifreq(name)?;
    ioctl(&s, libc::SIOCGIFFLAGS, &mut r)?;
    // SAFETY: SIOCGIFFLAGS filled the flags member of the union.
    unsafe { r.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short };
    ioctl(&s, libc::SIOCSIFFLAGS, &mut r)
}

/// Sets the interface's IPv4 address and netmask (the broadcast follows).
pub fn set_ipv4(name: &str, addr: Ipv4Addr, netmask: Ipv4Addr) -> io::Result<()> {
    let s = inet_socket()?;
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_addr = sockaddr_in(addr);
    ioctl(&s, libc::SIOCSIFADDR, &mut r)?;
    let mut r = ifreq(name)?;
    r.ifr_ifru.ifru_netmask = sockaddr_in(netmask);
    ioctl(&s, libc::SIOCSIFNETMASK, &mut r)
}

/// `struct rtentry` of <net/route.h> (the libc crate has it for musl only).
#[repr(C)]
struct RtEntry {
    rt_pad1: libc::c_ulong,
    rt_dst: libc::sockaddr,
    rt_gateway: libc::sockaddr,
    rt_genmask: libc::sockaddr,
    rt_flags: libc::c_ushort,
    rt_pad2: libc::c_short,
    rt_pad3: libc::c_ulong,
    rt_tos: libc::c_uchar,
    rt_class: libc::c_uchar,
    #[cfg(target_pointer_width = "64")]
    rt_pad4: [libc::c_short; 3],
    #[cfg(not(target_pointer_width = "64"))]
    rt_pad4: libc::c_short,
    rt_metric: libc::c_short,
    rt_dev: *mut libc::c_char,
    rt_mtu: libc::c_ulong,
    rt_window: libc::c_ulong,
    rt_irtt: libc::c_ushort,
}

/// Adds `default via gw dev name`; an existing identical route is fine.
pub fn add_default_route(name: &str, gw: Ipv4Addr) -> io::Result<()> {
    let s = inet_socket()?;
    let mut dev: Vec<libc::c_char> = name.bytes().map(|b| b as libc::c_char).collect();
    dev.push(0);
    // SAFETY: RtEntry is plain data (the pointer is set below); zeroes are valid.
    let mut rt: RtEntry = unsafe { std::mem::zeroed() };
    rt.rt_dst = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_genmask = sockaddr_in(Ipv4Addr::UNSPECIFIED);
    rt.rt_gateway = sockaddr_in(gw);
    rt.rt_flags = libc::RTF_UP | libc::RTF_GATEWAY;
    rt.rt_dev = dev.as_mut_ptr();
    match ioctl(&s, libc::SIOCADDRT, &mut rt) {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn find_by_mac_in_fake_sysfs() {
        let d = tempfile::tempdir().unwrap();
        for (n, mac, ty) in [
            ("lo", "00:00:00:00:00:00", "772"),
            ("eth1", "52:54:00:00:00:02", "1"),
            ("eth0", "52:54:00:00:00:01", "1"),
        ] {
            let p = d.path().join("class/net").join(n);
            std::fs::create_dir_all(&p).unwrap();
            std::fs::write(p.join("address"), format!("{mac}\n")).unwrap();
            std::fs::write(p.join("type"), format!("{ty}\n")).unwrap();
        }
        let m = Mac::parse("52:54:00:00:00:02");
        assert_eq!(find_interface(d.path(), m).as_deref(), Some("eth1"));
        assert_eq!(find_interface(d.path(), None).as_deref(), Some("eth0"));
        let e =
            wait_interface(d.path(), Mac::parse("52:54:00:00:00:09"), Duration::ZERO).unwrap_err();
        assert!(
            e.starts_with("no network interface with MAC 52:54:00:00:00:09"),
            "{e}"
        );
        assert!(e.contains("eth1 (52:54:00:00:00:02)"), "{e}");
    }

    #[test]
    fn rtentry_layout() {
        // The kernel's struct rtentry on x86_64 is 120 bytes.
        #[cfg(target_pointer_width = "64")]
        assert_eq!(std::mem::size_of::<RtEntry>(), 120);
    }

    #[test]
    fn resolv_conf_text() {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join("etc/resolv.conf");
        write_resolv_conf(&p, &[Ipv4Addr::new(10, 0, 2, 3)], AddrSource::Ipxe).unwrap();
        assert_eq!(
            std::fs::read_to_string(&p).unwrap(),
            "# written by byol-agent from byol.dns (iPXE)\nnameserver 10.0.2.3\n"
        );
    }
}
