//! Disk inventory from a fake sysfs tree laid out like the kernel's: /sys/block/<name> are
//! symlinks into /sys/devices, where the transport shows in the path (virtio, libata, NVMe,
//! USB, SAS), with the attribute files the agent reads. Plus the block devices it must leave
//! out (loop, ram, zram, dm, md, sr, empty drives).

use std::os::unix::fs::symlink;
use std::path::Path;

use byol_agent::agent::disks::{self, Disk};

/// Creates `<sys>/devices/<devpath>/block/<name>` with `files` (relative to that directory,
/// `device/...` included) and the `<sys>/block/<name>` symlink.
fn disk(sys: &Path, devpath: &str, name: &str, files: &[(&str, &[u8])]) {
    let dir = sys.join("devices").join(devpath).join("block").join(name);
    std::fs::create_dir_all(dir.join("queue")).unwrap();
    std::fs::create_dir_all(sys.join("devices").join(devpath)).unwrap();
    // `device` points at the parent device, as in sysfs.
    symlink(sys.join("devices").join(devpath), dir.join("device")).unwrap();
    for (f, data) in files {
        let p = if let Some(rest) = f.strip_prefix("device/") {
            sys.join("devices").join(devpath).join(rest)
        } else {
            dir.join(f)
        };
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, data).unwrap();
    }
    std::fs::create_dir_all(sys.join("block")).unwrap();
    let rel = format!("../devices/{devpath}/block/{name}");
    symlink(rel, sys.join("block").join(name)).unwrap();
}

fn vpd80(serial: &str) -> Vec<u8> {
    let mut v = vec![0, 0x80, 0, serial.len() as u8];
    v.extend_from_slice(serial.as_bytes());
    v
}

fn fake_sysfs(sys: &Path) {
    // virtio-blk: serial on the disk itself, no model.
    disk(
        sys,
        "pci0000:00/0000:00:04.0/virtio1",
        "vda",
        &[
            ("size", b"41943040\n"),
            ("queue/logical_block_size", b"512\n"),
            ("queue/physical_block_size", b"512\n"),
            ("queue/rotational", b"1\n"),
            ("removable", b"0\n"),
            ("ro", b"0\n"),
            ("serial", b"byol-vda\n"),
        ],
    );
    // SATA through libata: vendor ATA, model padded, serial in VPD page 0x80, t10 wwid.
    let vpd = vpd80("  QM00001 ");
    disk(
        sys,
        "pci0000:00/0000:00:1f.2/ata1/host0/target0:0:0/0:0:0:0",
        "sda",
        &[
            ("size", b"16777216\n"),
            ("queue/logical_block_size", b"512\n"),
            ("queue/physical_block_size", b"4096\n"),
            ("queue/rotational", b"0\n"),
            ("removable", b"0\n"),
            ("device/vendor", b"ATA     \n"),
            ("device/model", b"QEMU HARDDISK   \n"),
            ("device/vpd_pg80", &vpd),
            (
                "device/wwid",
                b"t10.ATA     QEMU HARDDISK                           QM00001\n",
            ),
        ],
    );
    // NVMe: model and serial on the controller, wwid on the namespace, 4K sectors.
    disk(
        sys,
        "pci0000:00/0000:00:05.0/nvme/nvme0",
        "nvme0n1",
        &[
            ("size", b"3907029168\n"),
            ("queue/logical_block_size", b"4096\n"),
            ("queue/physical_block_size", b"4096\n"),
            ("queue/rotational", b"0\n"),
            ("wwid", b"eui.0025388b71b2c4a1\n"),
            ("nsid", b"1\n"),
            (
                "device/model",
                b"Samsung SSD 980 PRO 2TB                 \n",
            ),
            ("device/serial", b"S69ENF0R123456      \n"),
        ],
    );
    // USB stick: removable.
    disk(
        sys,
        "pci0000:00/0000:00:14.0/usb1/1-1/1-1:1.0/host2/target2:0:0/2:0:0:0",
        "sdb",
        &[
            ("size", b"60062500\n"),
            ("queue/rotational", b"0\n"),
            ("removable", b"1\n"),
            ("device/vendor", b"SanDisk \n"),
            ("device/model", b"Ultra           \n"),
        ],
    );
    // SAS behind mpt3sas, read-only, naa WWN.
    disk(
        sys,
        "pci0000:00/0000:00:06.0/host1/port-1:0/end_device-1:0/target1:0:0/1:0:0:0",
        "sdc",
        &[
            ("size", b"1000\n"),
            ("queue/rotational", b"1\n"),
            ("ro", b"1\n"),
            ("device/vendor", b"SEAGATE \n"),
            ("device/model", b"ST1200MM0009    \n"),
            ("device/wwid", b"naa.5000c500a1b2c3d4\n"),
        ],
    );
    // virtio-scsi disk.
    disk(
        sys,
        "pci0000:00/0000:00:07.0/virtio3/host3/target3:0:1/3:0:1:0",
        "sdd",
        &[("size", b"2048\n"), ("device/model", b"QEMU HARDDISK\n")],
    );
    // A multipath NVMe namespace: under the virtual nvme-subsystem device, its paths through
    // each controller in multipath/.
    disk(
        sys,
        "virtual/nvme-subsystem/nvme-subsys1",
        "nvme1n1",
        &[
            ("size", b"7501476528\n"),
            ("nsid", b"2\n"),
            ("serial", b"S5XYNA0R700001\n"),
        ],
    );
    for (ctrl, pci) in [("nvme1", "0000:5e:00.0"), ("nvme2", "0000:af:00.0")] {
        let path = sys.join(format!(
            "devices/pci0000:00/{pci}/nvme/{ctrl}/{ctrl}c{}n2",
            &ctrl[4..]
        ));
        std::fs::create_dir_all(&path).unwrap();
        let mp = sys.join("devices/virtual/nvme-subsystem/nvme-subsys1/block/nvme1n1/multipath");
        std::fs::create_dir_all(&mp).unwrap();
        symlink(&path, mp.join(path.file_name().unwrap())).unwrap();
    }
    // What udev's path_id reads besides: the ATA port number, the SAS address.
    let dev = sys.join("devices/pci0000:00");
    for (f, v) in [
        ("0000:00:1f.2/ata1/ata_port/ata1/port_no", "1\n"),
        (
            "0000:00:06.0/host1/port-1:0/end_device-1:0/sas_device/end_device-1:0/sas_address",
            "0x5000c500a1b2c3d5\n",
        ),
    ] {
        std::fs::create_dir_all(dev.join(f).parent().unwrap()).unwrap();
        std::fs::write(dev.join(f), v).unwrap();
    }
    // Left out.
    for (name, size) in [
        ("loop0", "100"),
        ("ram0", "100"),
        ("zram0", "100"),
        ("dm-0", "100"),
        ("md127", "100"),
        ("sr0", "100"),
        ("sde", "0"),
    ] {
        disk(
            sys,
            &format!("virtual/block/{name}"),
            name,
            &[("size", size.as_bytes())],
        );
    }
}

fn by_name<'a>(d: &'a [Disk], n: &str) -> &'a Disk {
    d.iter()
        .find(|x| x.name == n)
        .unwrap_or_else(|| panic!("no {n} in {d:?}"))
}

#[test]
fn inventory_of_a_fake_sysfs() {
    let tmp = tempfile::tempdir().unwrap();
    let sys = tmp.path().join("sys");
    fake_sysfs(&sys);
    let d = disks::inventory(&sys);
    let names: Vec<&str> = d.iter().map(|x| x.name.as_str()).collect();
    assert_eq!(
        names,
        ["nvme0n1", "nvme1n1", "sda", "sdb", "sdc", "sdd", "vda"]
    );

    let vda = by_name(&d, "vda");
    assert_eq!(vda.path, "/dev/vda");
    assert_eq!(vda.size_bytes, 41943040 * 512);
    assert_eq!(vda.transport, "virtio");
    assert_eq!(vda.serial.as_deref(), Some("byol-vda"));
    assert_eq!(vda.model, None);
    assert!(vda.rotational && !vda.removable && !vda.read_only);

    let sda = by_name(&d, "sda");
    assert_eq!(sda.transport, "sata");
    assert_eq!(sda.model.as_deref(), Some("QEMU HARDDISK"));
    assert_eq!(sda.vendor.as_deref(), Some("ATA"));
    assert_eq!(sda.serial.as_deref(), Some("QM00001"));
    assert_eq!((sda.logical_sector, sda.physical_sector), (512, 4096));
    assert!(sda.wwn.as_deref().unwrap().starts_with("t10.ATA"));
    assert!(!sda.rotational);

    let nvme = by_name(&d, "nvme0n1");
    assert_eq!(nvme.transport, "nvme");
    assert_eq!(nvme.serial.as_deref(), Some("S69ENF0R123456"));
    assert_eq!(nvme.model.as_deref(), Some("Samsung SSD 980 PRO 2TB"));
    assert_eq!(nvme.wwn.as_deref(), Some("eui.0025388b71b2c4a1"));
    assert_eq!(nvme.logical_sector, 4096);

    let usb = by_name(&d, "sdb");
    assert_eq!(usb.transport, "usb");
    assert!(usb.removable);
    assert_eq!(
        usb.logical_sector, 512,
        "default when the queue file is missing"
    );

    let sas = by_name(&d, "sdc");
    assert_eq!(sas.transport, "sas");
    assert!(sas.read_only);
    assert_eq!(sas.wwn.as_deref(), Some("naa.5000c500a1b2c3d4"));

    assert_eq!(by_name(&d, "sdd").transport, "virtio-scsi");

    // /dev/disk/by-path names as udev's path_id makes them
    let paths = |n: &str| by_name(&d, n).by_path.clone();
    assert_eq!(
        paths("vda"),
        ["pci-0000:00:04.0", "virtio-pci-0000:00:04.0"]
    );
    assert_eq!(
        paths("sda"),
        ["pci-0000:00:1f.2-ata-1.0", "pci-0000:00:1f.2-ata-1"]
    );
    assert_eq!(paths("nvme0n1"), ["pci-0000:00:05.0-nvme-1"]);
    // multipath: the first controller's path, the namespace's nsid
    assert_eq!(paths("nvme1n1"), ["pci-0000:5e:00.0-nvme-2"]);
    assert_eq!(by_name(&d, "nvme1n1").transport, "nvme");
    assert_eq!(
        paths("sdc"),
        ["pci-0000:00:06.0-sas-0x5000c500a1b2c3d5-lun-0"]
    );
    assert_eq!(paths("sdd"), ["pci-0000:00:07.0-scsi-0:0:1:0"]);
    assert!(paths("sdb").is_empty(), "USB: no by-path hint");

    // What the console and the event show.
    assert_eq!(
        sda.line(),
        "sda: 8.0 GiB (8589934592 bytes), sata, model \"QEMU HARDDISK\", serial \"QM00001\", \
         wwn t10.ATA     QEMU HARDDISK                           QM00001, \
         by-path pci-0000:00:1f.2-ata-1.0, SSD, fixed, sectors 512/4096"
    );
    assert_eq!(
        sas.line(),
        "sdc: 500.0 KiB (512000 bytes), sas, model \"SEAGATE ST1200MM0009\", \
         wwn naa.5000c500a1b2c3d4, by-path pci-0000:00:06.0-sas-0x5000c500a1b2c3d5-lun-0, \
         rotational, fixed, read-only, sectors 512/512"
    );
    assert_eq!(
        disks::summary(&d),
        "7 disks: nvme0n1 1.8 TiB nvme, nvme1n1 3.5 TiB nvme, sda 8.0 GiB sata, sdb 28.6 GiB \
         usb, sdc 500.0 KiB sas, sdd 1.0 MiB virtio-scsi, vda 20.0 GiB virtio"
    );
    assert_eq!(disks::summary(&[]), "no disks found");

    // Serialisable, without empty optional fields.
    let j = serde_json::to_value(vda).unwrap();
    assert_eq!(j["transport"], "virtio");
    assert!(j.get("model").is_none());
}

#[test]
fn no_block_directory_is_no_disks() {
    let tmp = tempfile::tempdir().unwrap();
    assert!(disks::inventory(tmp.path()).is_empty());
}
