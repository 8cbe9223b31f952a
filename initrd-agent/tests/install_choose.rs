//! The disk choice: groups of identical disks by (transport, size), numbered smallest first,
//! removable/USB/read-only disks never chosen, errors that list what the machine has.

use byol_agent::agent::disks::Disk;
use byol_agent::agent::install::choose::{ChooseError, choose, groups};

fn disk(name: &str, transport: &str, gib: u64) -> Disk {
    Disk {
        name: name.into(),
        path: format!("/dev/{name}"),
        size_bytes: gib << 30,
        logical_sector: 512,
        physical_sector: 512,
        vendor: None,
        model: None,
        serial: None,
        wwn: None,
        rotational: false,
        removable: false,
        read_only: false,
        transport: transport.into(),
        by_path: Vec::new(),
    }
}

#[test]
fn groups_are_identical_disks_smallest_first() {
    let disks = vec![
        disk("sdb", "sas", 4000),
        disk("sda", "sas", 4000),
        disk("nvme1n1", "nvme", 480),
        disk("nvme0n1", "nvme", 480),
        disk("sdc", "sata", 480),
    ];
    let g = groups(&disks);
    let lines: Vec<String> = g.iter().map(|g| g.line()).collect();
    assert_eq!(
        lines,
        [
            "1 = nvme0n1, nvme1n1 (nvme, 480.0 GiB)",
            "2 = sdc (sata, 480.0 GiB)",
            "3 = sda, sdb (sas, 3.9 TiB)",
        ]
    );
    let c = choose(&disks, 1).unwrap();
    assert_eq!(c.disk.name, "nvme0n1");
    assert_eq!(
        c.message,
        "installing on /dev/nvme0n1: nvme 480.0 GiB (diskGroupId 1: group 1 of 3, 2 identical \
         disks: the first by name; nvme1n1 left as they are); groups: 1 = nvme0n1, nvme1n1 \
         (nvme, 480.0 GiB); 2 = sdc (sata, 480.0 GiB); 3 = sda, sdb (sas, 3.9 TiB)"
    );
    assert_eq!(choose(&disks, 3).unwrap().disk.name, "sda");
    assert_eq!(choose(&disks, 2).unwrap().disk.name, "sdc");
}

#[test]
fn removable_usb_and_read_only_disks_are_never_chosen() {
    let mut usb = disk("sda", "usb", 8);
    usb.removable = true;
    let mut card = disk("mmcblk0", "mmc", 4);
    card.removable = true;
    let mut ro = disk("vdb", "virtio", 1);
    ro.read_only = true;
    let disks = vec![usb.clone(), card, ro, disk("vda", "virtio", 20)];
    let c = choose(&disks, 1).unwrap();
    assert_eq!(c.disk.name, "vda");
    assert!(
        c.message
            .ends_with("; left out: sda (usb), mmcblk0 (removable), vdb (read-only)"),
        "{}",
        c.message
    );
    // Only USB: an error, not a guess.
    let e = choose(&[usb], 1).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no disk to install on: every disk is left out: sda (usb) (byol never installs on \
         removable, USB or read-only disks)"
    );
    assert!(matches!(choose(&[], 1), Err(ChooseError::NoDisk(_))));
}

#[test]
fn a_group_past_the_last_is_an_error_listing_the_groups() {
    let disks = vec![disk("vda", "virtio", 20), disk("nvme0n1", "nvme", 100)];
    let e = choose(&disks, 3).unwrap_err();
    assert_eq!(
        e.to_string(),
        "diskGroupId 3 does not exist: this machine has 2 disk groups: 1 = vda (virtio, 20.0 \
         GiB); 2 = nvme0n1 (nvme, 100.0 GiB)"
    );
    assert!(choose(&disks, 0).is_err());
}

fn hints(json: &str) -> byol_spec::DiskHints {
    serde_json::from_str(json).unwrap()
}

/// Two identical SATA disks and an NVMe disk, with what a datacenter machine shows.
fn rack_machine() -> Vec<Disk> {
    let mut a = disk("sda", "sata", 480);
    a.serial = Some("S3Z9NB0K100001".into());
    a.vendor = Some("ATA".into());
    a.model = Some("SAMSUNG MZ7LH480".into());
    a.wwn = Some("naa.5002538e40000001".into());
    a.by_path = vec![
        "pci-0000:00:1f.2-ata-1.0".into(),
        "pci-0000:00:1f.2-ata-1".into(),
    ];
    let mut b = a.clone();
    b.name = "sdb".into();
    b.path = "/dev/sdb".into();
    b.serial = Some("S3Z9NB0K100002".into());
    b.wwn = Some("naa.5002538e40000002".into());
    b.by_path = vec![
        "pci-0000:00:1f.2-ata-2.0".into(),
        "pci-0000:00:1f.2-ata-2".into(),
    ];
    let mut n = disk("nvme0n1", "nvme", 1800);
    n.serial = Some("S69ENF0R123456".into());
    n.model = Some("Samsung SSD 980 PRO 2TB".into());
    n.by_path = vec!["pci-0000:01:00.0-nvme-1".into()];
    let mut usb = disk("sdc", "usb", 32);
    usb.removable = true;
    usb.serial = Some("4C530001".into());
    vec![a, b, n, usb]
}

#[test]
fn hints_choose_exactly_one_disk() {
    use byol_agent::agent::install::choose::pick;
    let disks = rack_machine();
    for (h, want) in [
        (r#"{"serial":"s3z9nb0k100002 "}"#, "sdb"),
        (r#"{"wwn":"0x5002538E40000002"}"#, "sdb"),
        (
            r#"{"byPath":"/dev/disk/by-path/pci-0000:00:1f.2-ata-2.0"}"#,
            "sdb",
        ),
        (r#"{"byPath":"pci-0000:00:1f.2-ata-1"}"#, "sda"),
        (r#"{"model":"980 pro"}"#, "nvme0n1"),
        (r#"{"minSize":1000000000000}"#, "nvme0n1"),
        (r#"{"transport":"nvme"}"#, "nvme0n1"),
        (r#"{"name":"/dev/sda"}"#, "sda"),
        (r#"{"model":"MZ7LH","serial":"S3Z9NB0K100001"}"#, "sda"),
        (r#"{"serial":"4C530001","allowRemovable":true}"#, "sdc"),
    ] {
        let c = pick(&disks, 1, &hints(h)).unwrap_or_else(|e| panic!("{h}: {e}"));
        assert_eq!(c.disk.name, want, "{h}");
    }
    let c = pick(&disks, 2, &hints(r#"{"serial":"S3Z9NB0K100002"}"#)).unwrap();
    assert_eq!(
        c.message,
        "installing on /dev/sdb: sata 480.0 GiB (the machine's disk hints serial=\"S3Z9NB0K100002\" \
         match it alone; diskGroupId 2 not used): sdb: 480.0 GiB (515396075520 bytes), sata, \
         model \"SAMSUNG MZ7LH480\", serial \"S3Z9NB0K100002\", wwn naa.5002538e40000002, \
         by-path pci-0000:00:1f.2-ata-2.0, SSD, fixed, sectors 512/512"
    );
    // without hints, diskGroupId as before
    assert_eq!(
        pick(&disks, 1, &Default::default()).unwrap().disk.name,
        "sda"
    );
}

#[test]
fn hints_that_match_none_or_several_are_errors() {
    use byol_agent::agent::install::choose::pick;
    let disks = rack_machine();
    let e = pick(&disks, 1, &hints(r#"{"serial":"NOPE"}"#)).unwrap_err();
    assert_eq!(
        e.to_string(),
        "no disk matches the machine's disk hints (serial=\"NOPE\"): sda (serial \
         \"S3Z9NB0K100001\"), sdb (serial \"S3Z9NB0K100002\"), nvme0n1 (serial \
         \"S69ENF0R123456\"), sdc (serial \"4C530001\"); fix the hints (byol machine disk …) or \
         clear them"
    );
    let e = pick(&disks, 1, &hints(r#"{"model":"samsung mz7"}"#)).unwrap_err();
    let m = e.to_string();
    assert!(
        m.starts_with(
            "the machine's disk hints (model=\"samsung mz7\") match more than one disk: sda: "
        ),
        "{m}"
    );
    assert!(
        m.contains("; sdb: ")
            && m.ends_with("add a hint that tells them apart (serial, wwn or byPath)"),
        "{m}"
    );
    // a removable disk is not taken without allowRemovable, even when it is the only match
    let e = pick(&disks, 1, &hints(r#"{"serial":"4C530001"}"#)).unwrap_err();
    assert!(
        e.to_string().contains("sdc (usb (allowRemovable not set))"),
        "{e}"
    );
    // read-only never
    let mut ro = rack_machine();
    ro[2].read_only = true;
    let e = pick(
        &ro,
        1,
        &hints(r#"{"transport":"nvme","allowRemovable":true}"#),
    )
    .unwrap_err();
    assert!(e.to_string().contains("nvme0n1 (read-only)"), "{e}");
    // no disks at all
    let e = pick(&[], 1, &hints(r#"{"serial":"x"}"#)).unwrap_err();
    assert!(e.to_string().contains("shows no disk"), "{e}");
    // a hint on a field the disk does not report never matches
    let e = pick(
        &disks,
        1,
        &hints(r#"{"byPath":"pci-0000:00:14.0-usb-0:1:1.0-scsi-0:0:0:0","allowRemovable":true}"#),
    )
    .unwrap_err();
    assert!(e.to_string().contains("sdc (by-path unknown)"), "{e}");
}
