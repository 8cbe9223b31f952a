//! What the install writes into files: the ConfigDrive's JSON, the image's fstab line for the
//! ESP, its resolv.conf saved and put back, and the UEFI removable-path fallback; plus a FAT
//! made by byol read back (label, volume id, files) from a plain file.

use std::net::Ipv4Addr;
use std::path::Path;

use byol_agent::agent::install::configdrive::{self, DriveFile};
use byol_agent::agent::install::fat::{self, FatKind};
use byol_agent::agent::install::mounts::{ResolvConf, add_esp_to_fstab};
use byol_agent::agent::install::uefi::ensure_removable_path;
use byol_agent::agent::net::{AddrSource, NetConfig};
use byol_spec::{AgentConfig, FailureAction, ImageType, InstallSpec, Secret, UserData};
use serde_json::{Value, json};

fn cfg() -> AgentConfig {
    let mut meta = serde_json::Map::new();
    meta.insert("role".into(), json!("web"));
    AgentConfig {
        install_id: "inst-42".into(),
        machine: "ns1234.example".into(),
        macs: vec!["52:54:00:12:34:56".into()],
        install: InstallSpec {
            template: "byolinux_64".into(),
            partition_scheme: "default".into(),
            storage: None,
            efi_bootloader_path: None,
            hostname: Some("web1.example.net".into()),
            image_url: "http://10.0.2.2/img.qcow2".into(),
            image_type: ImageType::Qcow2,
            checksum: None,
            http_headers: Vec::new(),
            user_data: Some(UserData {
                encoding: "base64".into(),
                // "#cloud-config\nfoo: bar\n"
                value: Secret::new("I2Nsb3VkLWNvbmZpZwpmb286IGJhcgo="),
            }),
            metadata: Some(meta),
            ssh_key: Some("ssh-ed25519 AAAAC3Nza test@host".into()),
            disk_group_id: 1,
            hook_timeout_seconds: None,
        },
        on_failure: FailureAction::default(),
        disk_hints: Default::default(),
        hook_timeout_seconds: byol_spec::DEFAULT_HOOK_TIMEOUT_SECONDS,
    }
}

fn net(source: AddrSource) -> NetConfig {
    NetConfig {
        iface: "eth0".into(),
        mac: "52:54:00:12:34:56".into(),
        address: Ipv4Addr::new(10, 0, 2, 15),
        netmask: Ipv4Addr::new(255, 255, 255, 0),
        prefix: 24,
        gateway: Some(Ipv4Addr::new(10, 0, 2, 2)),
        dns: vec![Ipv4Addr::new(10, 0, 2, 3)],
        source,
        lease_seconds: None,
    }
}

fn find<'a>(files: &'a [DriveFile], path: &str) -> &'a DriveFile {
    files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("{path} missing"))
}

#[test]
fn configdrive_files() {
    let n = net(AddrSource::Ipxe);
    let files = configdrive::files(&cfg(), Some(&n));
    let paths: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "openstack/latest/meta_data.json",
            "openstack/latest/user_data",
            "openstack/latest/network_data.json",
            "openstack/2018-08-27/meta_data.json",
            "openstack/2018-08-27/user_data",
            "openstack/2018-08-27/network_data.json",
        ]
    );
    let meta: Value =
        serde_json::from_slice(&find(&files, "openstack/latest/meta_data.json").data).unwrap();
    assert_eq!(
        meta,
        json!({
            "uuid": "inst-42",
            "hostname": "web1.example.net",
            "name": "web1.example.net",
            "launch_index": 0,
            "public_keys": {"default": "ssh-ed25519 AAAAC3Nza test@host"},
            "meta": {"role": "web"},
        })
    );
    assert_eq!(
        find(&files, "openstack/2018-08-27/user_data").data,
        b"#cloud-config\nfoo: bar\n"
    );
    let nd: Value =
        serde_json::from_slice(&find(&files, "openstack/latest/network_data.json").data).unwrap();
    assert_eq!(
        nd,
        json!({
            "links": [{"id": "eth0", "type": "phy", "ethernet_mac_address": "52:54:00:12:34:56"}],
            "networks": [{
                "id": "network0", "type": "ipv4", "link": "eth0", "network_id": "network0",
                "ip_address": "10.0.2.15", "netmask": "255.255.255.0",
                "routes": [{"network": "0.0.0.0", "netmask": "0.0.0.0", "gateway": "10.0.2.2"}],
            }],
            "services": [{"type": "dns", "address": "10.0.2.3"}],
        })
    );
    let dhcp = configdrive::network_data(&net(AddrSource::Dhcp));
    assert_eq!(
        dhcp["networks"],
        json!([{"id": "network0", "type": "ipv4_dhcp", "link": "eth0", "network_id": "network0"}])
    );
    // Nothing optional given: no keys, no meta, no user_data; the machine's name as hostname.
    let mut c = cfg();
    c.install.hostname = None;
    c.install.ssh_key = None;
    c.install.metadata = None;
    c.install.user_data = Some(UserData {
        encoding: "plain".into(),
        value: Secret::new("#!/bin/sh\necho hi\n"),
    });
    let files = configdrive::files(&c, None);
    assert_eq!(files.len(), 4);
    let meta: Value =
        serde_json::from_slice(&find(&files, "openstack/latest/meta_data.json").data).unwrap();
    assert_eq!(
        meta,
        json!({"uuid": "inst-42", "hostname": "ns1234.example", "name": "ns1234.example", "launch_index": 0})
    );
    assert_eq!(
        find(&files, "openstack/latest/user_data").data,
        b"#!/bin/sh\necho hi\n"
    );
}

#[test]
fn configdrive_on_fat_reads_back() {
    let tmp = tempfile::tempdir().unwrap();
    let img = tmp.path().join("config2.img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(64 << 20)
        .unwrap();
    let files = configdrive::files(&cfg(), Some(&net(AddrSource::Ipxe)));
    configdrive::write(&img, &files, 512).unwrap();
    let f = std::fs::File::open(&img).unwrap();
    let fs = fatfs::FileSystem::new(f, fatfs::FsOptions::new()).unwrap();
    assert_eq!(fs.fat_type(), fatfs::FatType::Fat16);
    assert_eq!(fs.volume_label(), "config-2");
    let root = fs.root_dir();
    for df in &files {
        let mut file = root.open_file(&df.path).unwrap();
        let mut got = Vec::new();
        std::io::Read::read_to_end(&mut file, &mut got).unwrap();
        assert_eq!(got, df.data, "{}", df.path);
    }
    // The label is also in the root directory, where blkid looks first.
    assert_eq!(
        fs.read_volume_label_from_root_dir().unwrap().as_deref(),
        Some("config-2")
    );
    // fsck.fat finds nothing to say (the `.`/`..` entries fatfs 0.3 gets wrong are put right).
    let out = std::process::Command::new("fsck.vfat")
        .arg("-n")
        .arg(&img)
        .output()
        .expect("fsck.vfat (dosfstools)");
    assert!(out.status.success(), "{out:?}");
}

#[test]
fn esp_is_fat32_with_its_volume_id() {
    let tmp = tempfile::tempdir().unwrap();
    for sector in [512u32, 4096] {
        let img = tmp.path().join(format!("esp{sector}.img"));
        std::fs::File::create(&img)
            .unwrap()
            .set_len(260 << 20)
            .unwrap();
        fat::format(&img, FatKind::Fat32, "EFI", 0xABCD_1234, sector).unwrap();
        let fs =
            fatfs::FileSystem::new(std::fs::File::open(&img).unwrap(), fatfs::FsOptions::new())
                .unwrap();
        assert_eq!(fs.fat_type(), fatfs::FatType::Fat32, "{sector}");
        assert_eq!(fs.volume_id(), 0xABCD_1234);
    }
    assert_eq!(fat::volume_uuid(0xABCD_1234), "ABCD-1234");
    assert_eq!(fat::volume_uuid(0x0000_00ff), "0000-00FF");
}

#[test]
fn fstab_gets_the_esp_by_uuid() {
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::write(
        root.join("etc/fstab"),
        "# static\nLABEL=byolroot / ext4 errors=remount-ro 0 1\nUUID=0000-1111 /boot/efi vfat defaults 0 2\n",
    )
    .unwrap();
    let line = add_esp_to_fstab(root, "ABCD-1234").unwrap();
    assert_eq!(line, "UUID=ABCD-1234 /boot/efi vfat umask=0077 0 1");
    assert_eq!(
        std::fs::read_to_string(root.join("etc/fstab")).unwrap(),
        "# static\nLABEL=byolroot / ext4 errors=remount-ro 0 1\n# replaced by byol: UUID=0000-1111 \
         /boot/efi vfat defaults 0 2\nUUID=ABCD-1234 /boot/efi vfat umask=0077 0 1\n"
    );
    // No fstab at all: one is made.
    let other = tempfile::tempdir().unwrap();
    add_esp_to_fstab(other.path(), "ABCD-1234").unwrap();
    assert_eq!(
        std::fs::read_to_string(other.path().join("etc/fstab")).unwrap(),
        "UUID=ABCD-1234 /boot/efi vfat umask=0077 0 1\n"
    );
}

#[test]
fn resolv_conf_is_put_back() {
    let tmp = tempfile::tempdir().unwrap();
    let ours = tmp.path().join("agent-resolv.conf");
    std::fs::write(&ours, "nameserver 10.0.2.3\n").unwrap();
    let root = tmp.path().join("root");
    let etc = root.join("etc");
    std::fs::create_dir_all(&etc).unwrap();
    let resolv = etc.join("resolv.conf");

    // A symlink (systemd-resolved): replaced by a file, then the link comes back.
    std::os::unix::fs::symlink("../run/systemd/resolve/stub-resolv.conf", &resolv).unwrap();
    let r = ResolvConf::install(&root, &ours).unwrap();
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        "nameserver 10.0.2.3\n"
    );
    r.restore().unwrap();
    assert_eq!(
        std::fs::read_link(&resolv).unwrap(),
        Path::new("../run/systemd/resolve/stub-resolv.conf")
    );

    // A file: moved aside and back, also when the guard is only dropped.
    std::fs::remove_file(&resolv).unwrap();
    std::fs::write(&resolv, "nameserver 1.1.1.1\n").unwrap();
    {
        let _r = ResolvConf::install(&root, &ours).unwrap();
        assert_eq!(
            std::fs::read_to_string(&resolv).unwrap(),
            "nameserver 10.0.2.3\n"
        );
    }
    assert_eq!(
        std::fs::read_to_string(&resolv).unwrap(),
        "nameserver 1.1.1.1\n"
    );
    assert!(!etc.join("resolv.conf.byol-saved").exists());

    // None: ours is removed after.
    std::fs::remove_file(&resolv).unwrap();
    ResolvConf::install(&root, &ours)
        .unwrap()
        .restore()
        .unwrap();
    assert!(std::fs::symlink_metadata(&resolv).is_err());
}

fn touch(p: &Path, content: &str) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, content).unwrap();
}

#[test]
fn uefi_removable_path_fallback() {
    // GRUB installed with --no-nvram in EFI/debian: copied to EFI/BOOT with its grub.cfg.
    let esp = tempfile::tempdir().unwrap();
    touch(&esp.path().join("EFI/debian/grubx64.efi"), "grub");
    touch(&esp.path().join("EFI/debian/grub.cfg"), "search");
    let msg = ensure_removable_path(esp.path()).unwrap();
    assert_eq!(
        msg,
        "removable-path fallback: EFI/debian/grubx64.efi copied to EFI/BOOT/BOOTX64.EFI (with \
         grub.cfg, grubx64.efi from EFI/debian)"
    );
    let boot = esp.path().join("EFI/BOOT");
    assert_eq!(
        std::fs::read_to_string(boot.join("BOOTX64.EFI")).unwrap(),
        "grub"
    );
    assert_eq!(
        std::fs::read_to_string(boot.join("grub.cfg")).unwrap(),
        "search"
    );
    // Already there: left alone.
    assert_eq!(
        ensure_removable_path(esp.path()).unwrap(),
        "EFI/BOOT/BOOTX64.EFI already there: left as it is"
    );

    // shim first, with grub beside it; shim's fallback not copied; names in any case.
    let esp = tempfile::tempdir().unwrap();
    touch(&esp.path().join("efi/ubuntu/grubx64.efi"), "grub");
    touch(&esp.path().join("efi/ubuntu/SHIMX64.EFI"), "shim");
    touch(&esp.path().join("efi/ubuntu/fbx64.efi"), "fallback");
    ensure_removable_path(esp.path()).unwrap();
    let boot = esp.path().join("efi/BOOT");
    assert_eq!(
        std::fs::read_to_string(boot.join("BOOTX64.EFI")).unwrap(),
        "shim"
    );
    assert_eq!(
        std::fs::read_to_string(boot.join("grubx64.efi")).unwrap(),
        "grub"
    );
    assert!(!boot.join("fbx64.efi").exists());

    // Nothing installed: an error saying what is there.
    let esp = tempfile::tempdir().unwrap();
    touch(&esp.path().join("EFI/debian/readme.txt"), "x");
    assert_eq!(
        ensure_removable_path(esp.path()).unwrap_err(),
        "the hook installed no UEFI loader on the ESP: no EFI/*/shimx64.efi, grubx64.efi, \
         systemd-bootx64.efi (found: EFI/debian)"
    );
}

#[test]
fn efi_bootloader_path_chooses_the_loader() {
    use byol_agent::agent::install::efiboot::loader_of;
    use byol_agent::agent::install::uefi::{ensure_removable_path_for, resolve_loader};
    // shim and grub both there: efiBootloaderPath asks for grub, in another case than FAT's
    let esp = tempfile::tempdir().unwrap();
    touch(&esp.path().join("EFI/debian/shimx64.efi"), "shim");
    touch(&esp.path().join("EFI/debian/grubx64.efi"), "grub");
    touch(&esp.path().join("EFI/debian/grub.cfg"), "search");
    touch(&esp.path().join("EFI/BOOT/BOOTX64.EFI"), "old");
    let w = resolve_loader(esp.path(), "\\efi\\DEBIAN\\grubx64.efi").unwrap();
    assert_eq!(w, esp.path().join("EFI/debian/grubx64.efi"));
    // the boot entry's file, in the ESP's own case
    assert_eq!(
        loader_of(esp.path(), &w),
        Some(("debian".into(), "\\EFI\\debian\\grubx64.efi".into()))
    );
    // the removable path becomes that loader, even over the one there
    let msg = ensure_removable_path_for(esp.path(), Some(&w)).unwrap();
    assert!(
        msg.contains("EFI/debian/grubx64.efi copied to EFI/BOOT/BOOTX64.EFI"),
        "{msg}"
    );
    let boot = esp.path().join("EFI/BOOT");
    assert_eq!(
        std::fs::read_to_string(boot.join("BOOTX64.EFI")).unwrap(),
        "grub"
    );
    assert_eq!(
        std::fs::read_to_string(boot.join("grub.cfg")).unwrap(),
        "search"
    );

    // a loader that already is EFI/BOOT's: nothing copied onto itself
    let b = resolve_loader(esp.path(), "/EFI/BOOT/BOOTX64.EFI").unwrap();
    let msg = ensure_removable_path_for(esp.path(), Some(&b)).unwrap();
    assert_eq!(
        msg,
        "EFI/BOOT/BOOTX64.EFI is the efiBootloaderPath: left as it is"
    );
    // another file of EFI/BOOT as the loader: its siblings are not copied onto themselves
    let g = resolve_loader(esp.path(), "\\EFI\\BOOT\\grubx64.efi").unwrap();
    ensure_removable_path_for(esp.path(), Some(&g)).unwrap();
    assert_eq!(
        std::fs::read_to_string(boot.join("grubx64.efi")).unwrap(),
        "grub"
    );
    assert_eq!(
        std::fs::read_to_string(boot.join("grub.cfg")).unwrap(),
        "search"
    );

    // not on the ESP: the error lists what is
    let err = resolve_loader(esp.path(), "\\efi\\centos\\shimx64.efi").unwrap_err();
    assert!(
        err.starts_with("efiBootloaderPath \\efi\\centos\\shimx64.efi is not on the ESP after make_image_bootable.sh (loaders there: \\EFI\\BOOT\\BOOTX64.EFI, \\EFI\\BOOT\\grubx64.efi, \\EFI\\BOOT\\shimx64.efi, \\EFI\\debian\\grubx64.efi, \\EFI\\debian\\shimx64.efi)"),
        "{err}"
    );
    // a directory is not a loader; `..` never walks out
    assert!(resolve_loader(esp.path(), "\\EFI\\debian").is_err());
    assert!(resolve_loader(esp.path(), "\\EFI\\..\\..\\etc\\passwd").is_err());
}
