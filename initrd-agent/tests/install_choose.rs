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
