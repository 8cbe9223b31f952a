//! Real firmware: QEMU (TCG) with SeaBIOS and the iPXE ROM of its virtio NIC, user networking
//! whose DHCP bootfile is the server's `/boot.ipxe`, fetches `/ipxe/<its MAC>` from the server.
//! The guest reaches the host's loopback at 10.0.2.2; nothing leaves the machine.

mod common;

use std::process::{Command, Stdio};
use std::time::Duration;

use common::{GUIDE_EXAMPLE, Server};
use serde_json::json;

const MAC: &str = "52:54:00:b0:07:01";

#[tokio::test]
async fn seabios_ipxe_fetches_its_per_mac_script() {
    let qemu = "/usr/bin/qemu-system-x86_64";
    assert!(
        std::path::Path::new(qemu).exists(),
        "{qemu} is missing: run `cargo xtask test` (it installs qemu-system-x86, ipxe-qemu, seabios)"
    );
    let d = tempfile::tempdir().unwrap();
    // the server listens on loopback only; QEMU's user network NATs 10.0.2.2 to it
    let s = Server::start(d.path(), &[]);
    let api = s.client();
    let (st, v) = api
        .post(
            "/api/v1/machines",
            &json!({"name": "vm1", "macs": [MAC]}).to_string(),
        )
        .await;
    assert_eq!(st, 201, "{v}");
    let (st, v) = api
        .post("/dedicated/server/vm1/install/start", GUIDE_EXAMPLE)
        .await;
    assert_eq!(st, 200, "{v}");

    let serial = d.path().join("serial.log");
    let mut vm = Command::new(qemu)
        .args([
            "-machine",
            "pc,accel=tcg",
            "-m",
            "256",
            "-nodefaults",
            "-display",
            "none",
            "-no-reboot",
        ])
        .args(["-serial", &format!("file:{}", serial.display())])
        .args([
            "-netdev",
            &format!("user,id=n0,bootfile=http://10.0.2.2:{}/boot.ipxe", s.port),
            "-device",
            // QEMU's default ROM for virtio-net (ipxe-qemu's efi-virtio.rom, legacy + EFI iPXE)
            &format!("virtio-net-pci,netdev=n0,mac={MAC},bootindex=1"),
            "-boot",
            "n",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start qemu");
    let seen = s.wait_log(&format!("mac={MAC}"), Duration::from_secs(180));
    let fetched_kernel = seen && s.wait_log("/assets/vmlinuz", Duration::from_secs(60));
    let _ = vm.kill();
    let out = vm.wait_with_output().unwrap();
    let log = s.log();
    assert!(
        seen,
        "the VM never fetched /ipxe/{MAC}; qemu stderr: {}\nserver log:\n{log}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(log.contains("ipxe script: install"), "{log}");
    assert!(log.contains("path=/boot.ipxe"), "{log}");
    assert!(
        fetched_kernel,
        "iPXE ran the install script (asked for the kernel):\n{log}"
    );
}
