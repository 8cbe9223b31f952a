//! byol's TFTP server as a firmware (or anyone on the provisioning network) reaches it: each
//! input is one datagram sent to a real server on 127.0.0.1 (async-tftp's request parser and
//! byol's file set behind it), followed by a write request as a probe, whose answer says the
//! input was handled. The server must keep answering, and it may send file data (or an option
//! acknowledgement) only for a read request naming one of its files exactly, the data being
//! that file's first bytes.
#![no_main]

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use byol_server::tftp::{TftpConfig, TftpFile, TftpFiles, bind};
use libfuzzer_sys::fuzz_target;

const FILES: [(&str, &[u8]); 2] = [
    ("boot.ipxe", b"#!ipxe\nchain http://127.0.0.1/boot.ipxe\n"),
    ("ipxe/undionly.kpxe", &[0x5a; 3000]),
];

/// The server's address and the probe's socket.
fn rig() -> (SocketAddr, &'static UdpSocket) {
    static PROBER: OnceLock<UdpSocket> = OnceLock::new();
    let prober = PROBER.get_or_init(|| {
        let s = UdpSocket::bind("127.0.0.1:0").expect("a probe socket");
        s.set_read_timeout(Some(Duration::from_secs(5)))
            .expect("a timeout");
        s
    });
    (server(), prober)
}

fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a tokio runtime");
            rt.block_on(async move {
                let mut files = TftpFiles::new();
                for (name, bytes) in FILES {
                    files.insert(name, TftpFile::Bytes(Arc::new(bytes.to_vec())));
                }
                let cfg = TftpConfig {
                    bind: SocketAddr::from(([127, 0, 0, 1], 0)),
                    timeout: Duration::from_millis(100),
                    max_send_retries: 0,
                    max_sessions: 4096,
                };
                let h = bind(&cfg, files).await.expect("TFTP binds on 127.0.0.1");
                tx.send(h.local_addr()).expect("the fuzz thread waits");
                h.serve().await.expect("the TFTP server serves");
            });
        });
        rx.recv().expect("the TFTP server started")
    })
}

/// What RFC 1350 and RFC 2347 make a request: opcode 1 (read) or 2 (write), a NUL-terminated
/// UTF-8 file name, a mode (`netascii`, `octet` or `mail`, any case), then option name/value
/// pairs, each NUL-terminated UTF-8. Returns the opcode and the name.
fn request(d: &[u8]) -> Option<(u8, &[u8])> {
    let op = match d.get(..2)? {
        [0, 1] => 1,
        [0, 2] => 2,
        _ => return None,
    };
    let mut fields = Vec::new();
    let mut rest = &d[2..];
    while !rest.is_empty() {
        let end = rest.iter().position(|&b| b == 0)?;
        std::str::from_utf8(&rest[..end]).ok()?;
        fields.push(&rest[..end]);
        rest = &rest[end + 1..];
    }
    let mode = std::str::from_utf8(fields.get(1)?).ok()?;
    let modes = ["netascii", "octet", "mail"];
    if !modes.iter().any(|m| m.eq_ignore_ascii_case(mode)) || fields.len() % 2 != 0 {
        return None;
    }
    Some((op, fields[0]))
}

/// `recv_from`, again when libFuzzer's SIGALRM (its `-timeout` watchdog) interrupts it.
fn recv(sock: &UdpSocket, buf: &mut [u8]) -> std::io::Result<(usize, SocketAddr)> {
    loop {
        match sock.recv_from(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fuzz_target!(|data: &[u8]| {
    let (server, prober) = rig();
    // each input from an address of its own in 127.0.0.0/8, so that what the server still
    // sends to an earlier input's transfer never reaches this one's socket
    static NEXT: AtomicU32 = AtomicU32::new(1);
    let n = NEXT.fetch_add(1, Ordering::Relaxed) % 0xfe_fffe + 1;
    let ip = Ipv4Addr::from(0x7f00_0000 | n);
    let sock = UdpSocket::bind((ip, 0)).expect("a client socket on 127.0.0.0/8");
    let _ = sock.send_to(data, server);
    // the probe, from another address (async-tftp ignores a second request from an address
    // whose first is in progress), is handled after the input: its answer says the server
    // read the input and is still serving
    prober
        .send_to(b"\x00\x02probe\x00octet\x00", server)
        .expect("the probe is sent");
    let mut buf = [0u8; 70000];
    match recv(prober, &mut buf) {
        Ok((n, _)) => assert_eq!(
            buf.get(..4),
            Some(&[0u8, 5, 0, 4][..]),
            "the probe (a write request) was not refused: {:?}",
            &buf[..n]
        ),
        Err(e) => panic!("the TFTP server stopped answering ({e}) after {data:?}"),
    }
    // a request is answered by a transfer of its own (data, an option acknowledgement or an
    // error); anything else is dropped
    let Some((op, name)) = request(data) else {
        return;
    };
    sock.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("a timeout");
    let (n, from) = match recv(&sock, &mut buf) {
        Ok(got) => got,
        Err(e) => panic!("no answer ({e}) to the request {data:?}"),
    };
    let answer = &buf[..n];
    if let Some([0, 3] | [0, 6]) = answer.get(..2) {
        let file = FILES.iter().find(|(n, _)| n.as_bytes() == name);
        let (1, Some((_, bytes))) = (op, file) else {
            panic!("{answer:?} sent for {data:?}, which reads none of the files");
        };
        if answer[1] == 3 {
            assert_eq!(
                answer.get(2..4),
                Some(&[0u8, 1][..]),
                "the first block is 1"
            );
            assert!(
                bytes.starts_with(&answer[4..]),
                "DATA is not the file's start"
            );
        }
        // end the transfer so that it does not hold a session
        let _ = sock.send_to(b"\x00\x05\x00\x00done\x00", from);
    }
});
