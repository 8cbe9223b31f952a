//! dhcp: the agent's own DHCPv4 client, used when iPXE passed no address (`byol.ip=`).
//! DISCOVER → OFFER → REQUEST → ACK (a NAK starts over), with retransmissions at growing
//! intervals and an overall timeout. Messages are built and read with `dhcproto`.
//!
//! It talks through an AF_PACKET socket bound to the interface (as dhclient, udhcpc and
//! systemd-networkd do before they have an address): the IPv4/UDP headers are written here and
//! replies are taken from the link whatever their IP destination, so nothing depends on the
//! kernel accepting packets for an address the interface does not have yet (rp_filter,
//! unicast replies to the offered address). UDP checksums of received packets are not
//! checked: on veth and with checksum offload they may not be filled in yet; DHCP's xid and
//! chaddr are what ties a reply to us.
//!
//! No randomness is asked of the kernel: `dhcproto`'s `Message::new*`/`default` call
//! `rand::random()`, whose getrandom(2) blocks until the kernel's CRNG is seeded, which in a
//! VM without RDRAND or virtio-rng (QEMU TCG) takes minutes. Messages start from a decoded
//! blank header instead, and the xid comes from the MAC and the clocks.

use std::io;
use std::net::Ipv4Addr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use dhcproto::v4::{self, DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Encodable};
use serde::Serialize;
use thiserror::Error;

use super::cmdline::Mac;
use super::console::say;

const CLIENT_PORT: u16 = 68;
const SERVER_PORT: u16 = 67;

#[derive(Debug, Clone)]
pub struct DhcpOptions {
    /// Give up after this long (all attempts together).
    pub timeout: Duration,
    /// First wait for an answer; doubles at each retransmission, up to `max_retransmit`.
    pub first_retransmit: Duration,
    pub max_retransmit: Duration,
}

impl Default for DhcpOptions {
    fn default() -> Self {
        DhcpOptions {
            timeout: Duration::from_secs(60),
            first_retransmit: Duration::from_secs(2),
            max_retransmit: Duration::from_secs(8),
        }
    }
}

/// What the DHCP server gave.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Lease {
    pub address: Ipv4Addr,
    pub netmask: Ipv4Addr,
    pub gateway: Option<Ipv4Addr>,
    pub dns: Vec<Ipv4Addr>,
    /// The server that acknowledged (option 54).
    pub server: Ipv4Addr,
    pub lease_seconds: Option<u32>,
    pub domain: Option<String>,
}

#[derive(Debug, Error)]
pub enum DhcpError {
    #[error("cannot use interface {iface}: {err}")]
    Socket { iface: String, err: io::Error },
    #[error("no answer from a DHCP server on {iface} after {seconds} s ({sent} requests sent)")]
    NoOffer {
        iface: String,
        seconds: u64,
        sent: u32,
    },
    #[error("the DHCP server offered {offered} but never acknowledged it within {seconds} s")]
    NoAck { offered: Ipv4Addr, seconds: u64 },
    #[error("cannot build a DHCP message: {0}")]
    Encode(String),
}

/// Gets a lease on `iface` (whose MAC is `mac`). Says each step on the console.
pub fn lease(iface: &str, mac: Mac, o: &DhcpOptions) -> Result<Lease, DhcpError> {
    let sock_err = |err| DhcpError::Socket {
        iface: iface.to_string(),
        err,
    };
    let sock = PacketSocket::open(iface).map_err(sock_err)?;
    let start = Instant::now();
    let deadline = start + o.timeout;
    let xid = new_xid(&mac);
    let mut sent = 0u32;
    let mut last_offer: Option<Ipv4Addr> = None;
    while Instant::now() < deadline {
        // DISCOVER until an OFFER.
        let discover = message(xid, &mac, MessageType::Discover, start, None, None)?;
        let offer = exchange(&sock, &discover, o, deadline, &mut sent, |m| {
            reply_to(m, xid, &mac) && m.opts().has_msg_type(MessageType::Offer)
        })
        .map_err(sock_err)?;
        let Some(offer) = offer else { break };
        let offered = offer.yiaddr();
        let server = match offer.opts().get(OptionCode::ServerIdentifier) {
            Some(DhcpOption::ServerIdentifier(s)) => *s,
            _ => offer.siaddr(),
        };
        say(format!("DHCP: offer of {offered} from {server}"));
        last_offer = Some(offered);
        // REQUEST it (a few times) until ACK or NAK.
        let request = message(
            xid,
            &mac,
            MessageType::Request,
            start,
            Some(offered),
            Some(server),
        )?;
        let req_deadline = deadline.min(Instant::now() + o.max_retransmit * 3);
        let answer = exchange(&sock, &request, o, req_deadline, &mut sent, |m| {
            reply_to(m, xid, &mac)
                && (m.opts().has_msg_type(MessageType::Ack)
                    || m.opts().has_msg_type(MessageType::Nak))
        })
        .map_err(sock_err)?;
        match answer {
            Some(m) if m.opts().has_msg_type(MessageType::Ack) => {
                let l = lease_from(&m, &offer, server);
                say(format!(
                    "DHCP: {} acknowledged by {} after {:.1} s",
                    l.address,
                    l.server,
                    start.elapsed().as_secs_f64()
                ));
                return Ok(l);
            }
            Some(m) => {
                let why = nak_reason(&m);
                say(format!(
                    "DHCP: {server} refused {offered} (NAK{why}), starting over"
                ));
            }
            None => say(format!(
                "DHCP: no answer to the request for {offered}, starting over"
            )),
        }
    }
    let seconds = o.timeout.as_secs();
    Err(match last_offer {
        Some(offered) => DhcpError::NoAck { offered, seconds },
        None => DhcpError::NoOffer {
            iface: iface.to_string(),
            seconds,
            sent,
        },
    })
}

/// Sends `msg`, waits for an answer `accept` takes, resending at growing intervals, until
/// `deadline`. Ok(None) when the deadline passed.
fn exchange(
    sock: &PacketSocket,
    msg: &Message,
    o: &DhcpOptions,
    deadline: Instant,
    sent: &mut u32,
    accept: impl Fn(&Message) -> bool,
) -> io::Result<Option<Message>> {
    let bytes = msg
        .to_vec()
        .map_err(|e| io::Error::other(format!("encoding: {e}")))?;
    let mut wait = o.first_retransmit;
    while Instant::now() < deadline {
        sock.send_broadcast(&bytes)?;
        *sent += 1;
        let until = deadline.min(Instant::now() + wait);
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            let Some(payload) = sock.recv_udp(CLIENT_PORT, left)? else {
                break;
            };
            if let Ok(m) = Message::from_bytes(&payload)
                && accept(&m)
            {
                return Ok(Some(m));
            }
        }
        wait = (wait * 2).min(o.max_retransmit);
    }
    Ok(None)
}

/// What a NAK's message option says, as `: text` for the console (empty when it says
/// nothing). The text is the server's: control characters are escaped, so that a hostile
/// server cannot forge console lines or drive the operator's terminal.
pub fn nak_reason(m: &Message) -> String {
    match m.opts().get(OptionCode::Message) {
        Some(DhcpOption::Message(s)) => format!(": {}", byol_spec::text::escape_control(s)),
        _ => String::new(),
    }
}

/// Whether `m` is the server's answer to this client's transaction.
pub fn reply_to(m: &Message, xid: u32, mac: &Mac) -> bool {
    m.opcode() == v4::Opcode::BootReply
        && m.xid() == xid
        && hardware_address(m).and_then(|a| a.get(..6)) == Some(&mac.0[..])
}

/// The client hardware address of `m`, or None when its length byte is more than the field's
/// 16 bytes: dhcproto 0.15 decodes such a message, and its `chaddr()` then slices out of bounds
/// (found by `cargo xtask fuzz`: one hostile reply on the segment would have ended PID 1).
pub fn hardware_address(m: &Message) -> Option<&[u8]> {
    (m.hlen() <= 16).then(|| m.chaddr())
}

/// A BOOTREQUEST from `mac` with transaction `xid` and no options, made by decoding a blank
/// header (dhcproto's constructors draw a random xid, see the module comment).
fn blank_request(xid: u32, mac: &Mac) -> Result<Message, DhcpError> {
    let mut b = vec![0u8; 236];
    b[0] = 1; // BOOTREQUEST
    b[1] = 1; // Ethernet
    b[2] = 6; // hardware address length
    b[4..8].copy_from_slice(&xid.to_be_bytes());
    b[28..34].copy_from_slice(&mac.0);
    b.extend_from_slice(&[99, 130, 83, 99, 255]); // magic cookie, end of options
    Message::from_bytes(&b).map_err(|e| DhcpError::Encode(e.to_string()))
}

fn message(
    xid: u32,
    mac: &Mac,
    kind: MessageType,
    start: Instant,
    requested: Option<Ipv4Addr>,
    server: Option<Ipv4Addr>,
) -> Result<Message, DhcpError> {
    let mut m = blank_request(xid, mac)?;
    m.set_secs(start.elapsed().as_secs().min(u16::MAX as u64) as u16);
    let opts = m.opts_mut();
    opts.insert(DhcpOption::MessageType(kind));
    let mut client_id = vec![1u8];
    client_id.extend_from_slice(&mac.0);
    opts.insert(DhcpOption::ClientIdentifier(client_id));
    opts.insert(DhcpOption::MaxMessageSize(1500));
    opts.insert(DhcpOption::ParameterRequestList(vec![
        OptionCode::SubnetMask,
        OptionCode::Router,
        OptionCode::DomainNameServer,
        OptionCode::DomainName,
        OptionCode::AddressLeaseTime,
        OptionCode::ServerIdentifier,
    ]));
    if let Some(r) = requested {
        opts.insert(DhcpOption::RequestedIpAddress(r));
    }
    if let Some(s) = server {
        opts.insert(DhcpOption::ServerIdentifier(s));
    }
    Ok(m)
}

/// The lease from an ACK, with what the OFFER said for options the ACK left out.
pub fn lease_from(ack: &Message, offer: &Message, server: Ipv4Addr) -> Lease {
    let get = |code| ack.opts().get(code).or_else(|| offer.opts().get(code));
    let address = ack.yiaddr();
    let netmask = match get(OptionCode::SubnetMask) {
        Some(DhcpOption::SubnetMask(m)) => *m,
        _ => Ipv4Addr::new(255, 255, 255, 0),
    };
    let gateway = match get(OptionCode::Router) {
        Some(DhcpOption::Router(r)) => r.first().copied().filter(|g| !g.is_unspecified()),
        _ => None,
    };
    let dns = match get(OptionCode::DomainNameServer) {
        Some(DhcpOption::DomainNameServer(d)) => d.clone(),
        _ => Vec::new(),
    };
    let lease_seconds = match get(OptionCode::AddressLeaseTime) {
        Some(DhcpOption::AddressLeaseTime(s)) => Some(*s),
        _ => None,
    };
    let domain = match get(OptionCode::DomainName) {
        Some(DhcpOption::DomainName(d)) => Some(d.clone()),
        _ => None,
    };
    let server = match ack.opts().get(OptionCode::ServerIdentifier) {
        Some(DhcpOption::ServerIdentifier(s)) => *s,
        _ => server,
    };
    Lease {
        address,
        netmask,
        gateway,
        dns,
        server,
        lease_seconds,
        domain,
    }
}

/// A transaction id that differs between machines and boots (no random source needed).
fn new_xid(mac: &Mac) -> u32 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in mac
        .0
        .iter()
        .copied()
        .chain(t.to_le_bytes())
        .chain(std::process::id().to_le_bytes())
        .chain((super::console::uptime().to_bits()).to_le_bytes())
    {
        h = (h ^ b as u64).wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h ^ (h >> 32)) as u32
}

// ---- the link-level socket ---------------------------------------------------------------

struct PacketSocket {
    fd: OwnedFd,
    ifindex: i32,
}

impl PacketSocket {
    fn open(iface: &str) -> io::Result<PacketSocket> {
        let name = std::ffi::CString::new(iface)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "bad interface name"))?;
        // SAFETY: if_nametoindex reads a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(name.as_ptr()) } as i32;
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        let proto = (libc::ETH_P_IP as u16).to_be();
        // SAFETY: plain socket(2); the fd is owned right away.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
                proto as libc::c_int,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is fresh and owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        let mut sll = Self::sockaddr(ifindex);
        sll.sll_protocol = proto;
        // SAFETY: sll is a valid sockaddr_ll and its size is passed.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(PacketSocket { fd, ifindex })
    }

    fn sockaddr(ifindex: i32) -> libc::sockaddr_ll {
        // SAFETY: sockaddr_ll is plain data; zeroes are valid.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = (libc::ETH_P_IP as u16).to_be();
        sll.sll_ifindex = ifindex;
        sll
    }

    /// Sends `payload` from 0.0.0.0:68 to 255.255.255.255:67, Ethernet broadcast.
    fn send_broadcast(&self, payload: &[u8]) -> io::Result<()> {
        let pkt = udp_packet(
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::BROADCAST,
            CLIENT_PORT,
            SERVER_PORT,
            payload,
        );
        let mut sll = Self::sockaddr(self.ifindex);
        sll.sll_halen = 6;
        sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        // SAFETY: pkt and sll are valid for the call; sizes are theirs.
        let rc = unsafe {
            libc::sendto(
                self.fd.as_raw_fd(),
                pkt.as_ptr().cast(),
                pkt.len(),
                0,
                &sll as *const libc::sockaddr_ll as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The next UDP payload for `port` that arrives within `timeout`, or None.
    fn recv_udp(&self, port: u16, timeout: Duration) -> io::Result<Option<Vec<u8>>> {
        let deadline = Instant::now() + timeout;
        let mut buf = vec![0u8; 4096];
        loop {
            let Some(left) = deadline.checked_duration_since(Instant::now()) else {
                return Ok(None);
            };
            let mut pfd = libc::pollfd {
                fd: self.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
            // SAFETY: one valid pollfd.
            let rc = unsafe { libc::poll(&mut pfd, 1, ms) };
            if rc < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if rc == 0 {
                return Ok(None);
            }
            // SAFETY: sockaddr_ll is plain data.
            let mut from: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
            let mut from_len = std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t;
            // SAFETY: buf and from are valid, writable, and their sizes are passed.
            let n = unsafe {
                libc::recvfrom(
                    self.fd.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    0,
                    &mut from as *mut libc::sockaddr_ll as *mut libc::sockaddr,
                    &mut from_len,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if from.sll_pkttype == libc::PACKET_OUTGOING {
                continue;
            }
            if let Some(p) = udp_payload(&buf[..n as usize], port) {
                return Ok(Some(p.to_vec()));
            }
        }
    }
}

/// An IPv4 + UDP packet around `payload`, checksums filled in.
pub fn udp_packet(src: Ipv4Addr, dst: Ipv4Addr, sport: u16, dport: u16, payload: &[u8]) -> Vec<u8> {
    let udp_len = 8 + payload.len();
    let total = 20 + udp_len;
    let mut p = Vec::with_capacity(total);
    p.extend_from_slice(&[0x45, 0x00]);
    p.extend_from_slice(&(total as u16).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, 0, 64, 17, 0, 0]); // id, flags/fragment, ttl, UDP, checksum
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    let ip_sum = checksum(&[&p[..20]]);
    p[10..12].copy_from_slice(&ip_sum.to_be_bytes());
    let mut udp = Vec::with_capacity(udp_len);
    udp.extend_from_slice(&sport.to_be_bytes());
    udp.extend_from_slice(&dport.to_be_bytes());
    udp.extend_from_slice(&(udp_len as u16).to_be_bytes());
    udp.extend_from_slice(&[0, 0]);
    udp.extend_from_slice(payload);
    let mut pseudo = Vec::with_capacity(12);
    pseudo.extend_from_slice(&src.octets());
    pseudo.extend_from_slice(&dst.octets());
    pseudo.extend_from_slice(&[0, 17]);
    pseudo.extend_from_slice(&(udp_len as u16).to_be_bytes());
    let mut sum = checksum(&[&pseudo, &udp]);
    if sum == 0 {
        sum = 0xffff;
    }
    udp[6..8].copy_from_slice(&sum.to_be_bytes());
    p.extend_from_slice(&udp);
    p
}

/// The payload of an IPv4/UDP packet to `port`, None for anything else (fragments included).
pub fn udp_payload(pkt: &[u8], port: u16) -> Option<&[u8]> {
    if pkt.len() < 20 || pkt[0] >> 4 != 4 {
        return None;
    }
    let ihl = (pkt[0] & 0x0f) as usize * 4;
    let total = u16::from_be_bytes([pkt[2], pkt[3]]) as usize;
    let frag = u16::from_be_bytes([pkt[6], pkt[7]]);
    if ihl < 20 || pkt[9] != 17 || frag & 0x3fff != 0 || total > pkt.len() || total < ihl + 8 {
        return None;
    }
    let udp = &pkt[ihl..total];
    let dport = u16::from_be_bytes([udp[2], udp[3]]);
    let len = u16::from_be_bytes([udp[4], udp[5]]) as usize;
    if dport != port || len < 8 || len > udp.len() {
        return None;
    }
    Some(&udp[8..len])
}

/// The Internet checksum (RFC 1071) over the concatenation of `parts`.
fn checksum(parts: &[&[u8]]) -> u16 {
    let mut sum: u32 = 0;
    let mut odd: Option<u8> = None;
    for part in parts {
        for &b in *part {
            match odd.take() {
                Some(hi) => sum += u16::from_be_bytes([hi, b]) as u32,
                None => odd = Some(b),
            }
        }
    }
    if let Some(hi) = odd {
        sum += u16::from_be_bytes([hi, 0]) as u32;
    }
    while sum >> 16 != 0 {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_with_a_hardware_address_longer_than_its_field_is_not_ours() {
        let mac = Mac([0x52, 0x54, 0, 1, 2, 3]);
        let mut b = blank_request(7, &mac).unwrap().to_vec().unwrap();
        b[0] = 2; // BOOTREPLY
        assert!(reply_to(&Message::from_bytes(&b).unwrap(), 7, &mac));
        b[2] = 255; // hlen past the 16-byte chaddr field
        let m = Message::from_bytes(&b).unwrap();
        assert_eq!(hardware_address(&m), None);
        assert!(!reply_to(&m, 7, &mac));
    }

    #[test]
    fn a_nak_message_cannot_drive_the_console() {
        let mac = Mac([0x52, 0x54, 0, 1, 2, 3]);
        let mut m = blank_request(7, &mac).unwrap();
        m.opts_mut()
            .insert(DhcpOption::Message("no\u{1b}[2J\nbyol: forged".into()));
        let why = nak_reason(&m);
        assert_eq!(why, ": no\\u{1b}[2J\\nbyol: forged");
        assert!(!why.chars().any(char::is_control));
        assert_eq!(nak_reason(&blank_request(7, &mac).unwrap()), "");
    }

    #[test]
    fn packet_round_trip() {
        let pkt = udp_packet(
            Ipv4Addr::new(10, 0, 0, 1),
            Ipv4Addr::BROADCAST,
            67,
            68,
            b"hello",
        );
        assert_eq!(checksum(&[&pkt[..20]]), 0, "IP header checksum verifies");
        assert_eq!(udp_payload(&pkt, 68), Some(&b"hello"[..]));
        assert_eq!(udp_payload(&pkt, 67), None);
        assert_eq!(udp_payload(&pkt[..20], 68), None);
    }

    #[test]
    fn messages_encode_and_leases_read() {
        let mac = Mac::parse("52:54:00:12:34:56").unwrap();
        let start = Instant::now();
        let d = message(7, &mac, MessageType::Discover, start, None, None).unwrap();
        let back = Message::from_bytes(&d.to_vec().unwrap()).unwrap();
        assert_eq!(back.xid(), 7);
        assert_eq!(back.opcode(), v4::Opcode::BootRequest);
        assert_eq!(back.htype(), v4::HType::Eth);
        assert_eq!(back.chaddr(), &mac.0[..]);
        assert!(back.opts().has_msg_type(MessageType::Discover));
        let mut ack = blank_request(7, &mac).unwrap();
        ack.set_opcode(v4::Opcode::BootReply)
            .set_xid(7)
            .set_chaddr(&mac.0)
            .set_yiaddr(Ipv4Addr::new(10, 0, 0, 50));
        ack.opts_mut()
            .insert(DhcpOption::MessageType(MessageType::Ack));
        ack.opts_mut()
            .insert(DhcpOption::SubnetMask(Ipv4Addr::new(255, 255, 0, 0)));
        let mut offer = ack.clone();
        offer
            .opts_mut()
            .insert(DhcpOption::Router(vec![Ipv4Addr::new(10, 0, 0, 1)]));
        assert!(reply_to(&ack, 7, &mac));
        assert!(!reply_to(&ack, 8, &mac));
        let l = lease_from(&ack, &offer, Ipv4Addr::new(10, 0, 0, 1));
        assert_eq!(l.netmask, Ipv4Addr::new(255, 255, 0, 0));
        assert_eq!(
            l.gateway,
            Some(Ipv4Addr::new(10, 0, 0, 1)),
            "from the offer"
        );
        assert!(l.dns.is_empty());
    }
}
