//! Layout checks with OVH's messages, and plans for 1-4 disks, UEFI and BIOS, GPT and MBR.

use super::*;

const GIB: u64 = 1 << 30;
const MIB: u64 = 1 << 20;

fn rows(json: serde_json::Value) -> Vec<PartitionSpec> {
    serde_json::from_value(json).unwrap()
}

fn check(json: serde_json::Value) -> Result<Vec<Row>, OvhError> {
    validate_layout(&rows(json), 1)
}

fn refused(json: serde_json::Value) -> (&'static str, String) {
    let e = check(json).unwrap_err();
    (e.class, e.message)
}

fn disks(sizes: &[u64]) -> Vec<PlanDisk> {
    sizes
        .iter()
        .enumerate()
        .map(|(i, s)| PlanDisk {
            name: format!("vd{}", (b'a' + i as u8) as char),
            size_bytes: *s,
        })
        .collect()
}

fn layout(rows: Vec<Row>) -> Layout {
    Layout {
        disk_group_id: 1,
        disks: None,
        rows,
    }
}

#[test]
fn the_issue_example_is_accepted() {
    let r = check(serde_json::json!([
        {"mountPoint": "/boot", "fileSystem": "ext4", "raidLevel": 1, "size": 1024},
        {"mountPoint": "/", "fileSystem": "ext4", "raidLevel": 1, "size": 20480, "extras": {"lv": {"name": "root"}}},
        {"mountPoint": "swap", "fileSystem": "swap", "size": 2048},
        {"mountPoint": "/data", "fileSystem": "xfs", "raidLevel": "5", "size": 0}
    ]))
    .unwrap();
    assert_eq!(r.len(), 4);
    assert_eq!(r[1].lv.as_deref(), Some("root"));
    assert_eq!(r[3].raid, RaidLevel::R5);
    assert_eq!(r[2].mount, Mount::Swap);
}

#[test]
fn each_check_has_ovh_class_and_message() {
    let cases: Vec<(serde_json::Value, &str, &str)> = vec![
        (
            serde_json::json!([{"mountPoint": "data", "fileSystem": "ext4"}]),
            "Client::BadRequest::PartitionInvalidUnixMountpointPrefix",
            "mountPoint value data is invalid (Unix-style mountpoint: must start with a '/') for partition data at position 1 in disk group 1",
        ),
        (
            serde_json::json!([{"mountPoint": "/", "fileSystem": "ext4"}, {"mountPoint": "/da ta", "fileSystem": "ext4", "size": 100}]),
            "Client::BadRequest::PartitionInvalidUnixMountpoint",
            "mountPoint value /da ta is invalid (Unix-style mountpoint: length cannot exceed 256 characters; only alphanumeric characters, slashes, dots, underscores and hyphens are allowed) for partition /da ta at position 2 in disk group 1",
        ),
        (
            serde_json::json!([{"mountPoint": "/data/", "fileSystem": "ext4"}]),
            "Client::BadRequest::PartitionForbiddenMountpointSuffix",
            "mountPoint value /data/ cannot end with '/' for partition /data/ at position 1 in disk group 1",
        ),
        (
            serde_json::json!([{"mountPoint": "/var/../etc", "fileSystem": "ext4"}]),
            "Client::BadRequest::PartitionForbiddenMountpointCanonical",
            "mountPoint value /var/../etc must be a canonical path and cannot be a hidden path for partition /var/../etc at position 1 in disk group 1",
        ),
        (
            serde_json::json!([{"mountPoint": "/.secret", "fileSystem": "ext4"}]),
            "Client::BadRequest::PartitionForbiddenMountpointCanonical",
            "mountPoint value /.secret must be a canonical path and cannot be a hidden path for partition /.secret at position 1 in disk group 1",
        ),
        (
            serde_json::json!([{"mountPoint": "/boot/efi", "fileSystem": "ext4", "size": 512}]),
            "Client::BadRequest::PartitionForbiddenMountpoint",
            "mountPoint value /boot/efi is forbidden (must be different from /boot/efi, /bin, /dev, /lib, /lib32, /lib64, /libx32, /proc, /run, /sbin, /sys) for partition /boot/efi at position 1 in disk group 1",
        ),
        (
            serde_json::json!([{"mountPoint": "/", "fileSystem": "ext4", "size": 100}, {"mountPoint": "/", "fileSystem": "xfs"}]),
            "Client::BadRequest::PartitionDuplicatedAttribute",
            "mountPoint value / must be unique for partition / at position 2 in disk group 1",
        ),
        (
            serde_json::json!([{"mountPoint": "/", "fileSystem": "ext4"}, {"mountPoint": "/data", "fileSystem": "xfs"}]),
            "Client::BadRequest::PartitionDuplicatedAttribute",
            "size value 0 must be unique for partition /data at position 2 in disk group 1",
        ),
        (
            serde_json::json!([{"mountPoint": "/data", "fileSystem": "ext4"}]),
            "Client::BadRequest::PartitionMissingRootMountpoint",
            "mountPoint / missing for operating system byolinux_64 in disk group 1",
        ),
        (
            serde_json::json!([{"mountPoint": "/", "fileSystem": "zfs"}]),
            "Client::BadRequest::PartitionIncompatibleFs",
            "fileSystem value zfs is not compatible for operating system byolinux_64 (must be one of btrfs, ext4, swap, xfs) for partition / at position 1 in disk group 1: ZFS is not supported by byol yet, use ext4, xfs or btrfs (with raidLevel for RAID)",
        ),
        (
            serde_json::json!([{"mountPoint": "/", "fileSystem": "ntfs"}]),
            "Client::BadRequest::PartitionIncompatibleFs",
            "fileSystem value ntfs is not compatible for operating system byolinux_64 (must be one of btrfs, ext4, swap, xfs) for partition / at position 1 in disk group 1",
        ),
        (
            serde_json::json!([{"mountPoint": "/", "fileSystem": "ext4", "raidLevel": 7}]),
            "Client::BadRequest::PartitionIncompatibleRaidLevel",
            "raidLevel value 7 must be one of 0, 1, 5, 6, 10 for operating system byolinux_64 (RAID 7 is ZFS's raidz3, and ZFS is not supported by byol yet) for partition / at position 1 in disk group 1",
        ),
        (
            serde_json::json!([{"mountPoint": "/", "fileSystem": "ext4", "raidLevel": 4}]),
            "Client::BadRequest::PartitionRaidLevel",
            "raidLevel value 4 must be one of 0, 1, 5, 6, 7, 10 for partition / at position 1 in disk group 1",
        ),
        (
            serde_json::json!([{"mountPoint": "/", "fileSystem": "ext4"}, {"mountPoint": "swap", "fileSystem": "swap"}]),
            "Client::BadRequest::PartitionIncompatibleParams",
            "fileSystem value swap incompatible with size value 0 (Partition of type swap with mountpoint swap cannot fill the disk.) for partition swap at position 2 in disk group 1",
        ),
        (
            serde_json::json!([{"mountPoint": "/", "fileSystem": "ext4"}, {"mountPoint": "swap", "fileSystem": "swap", "size": 512, "raidLevel": 5}]),
            "Client::BadRequest::PartitionIncompatibleParams",
            "fileSystem value swap incompatible with raidLevel value 5 (swap is a plain partition on every disk, never RAID) for partition swap at position 2 in disk group 1",
        ),
        (
            serde_json::json!([{"mountPoint": "/swap", "fileSystem": "swap", "size": 512}]),
            "Client::BadRequest::PartitionIncompatibleParams",
            "fileSystem value swap incompatible with mountPoint value /swap for partition /swap at position 1 in disk group 1",
        ),
        (
            serde_json::json!([{"mountPoint": "/", "fileSystem": "xfs", "size": 100}]),
            "Client::BadRequest::PartitionMinSize",
            "size value 100 MiB must be bigger than 300 for partition / at position 1 in disk group 1",
        ),
        (
            serde_json::json!([{"mountPoint": "/", "fileSystem": "ext4", "extras": {"lv": {"name": "root-vol"}}}]),
            "Client::BadRequest::PartitionInvalidLvName",
            "extras.lv.name value root-vol is invalid (length can be maximum 16 characters and exclusively composed of alphanumeric characters) for partition / at position 1 in disk group 1",
        ),
        (
            serde_json::json!([{"mountPoint": "/", "fileSystem": "ext4", "extras": {"lv": {"name": "snapshot"}}}]),
            "Client::BadRequest::PartitionForbiddenLvName",
            "extras.lv.name value snapshot is forbidden (must be different from snapshot, pvmove) for partition / at position 1 in disk group 1",
        ),
        (
            serde_json::json!([{"mountPoint": "/", "fileSystem": "ext4", "size": 100, "extras": {"lv": {"name": "a"}}}, {"mountPoint": "/srv", "fileSystem": "ext4", "extras": {"lv": {"name": "a"}}}]),
            "Client::BadRequest::PartitionDuplicatedAttribute",
            "extras.lv.name value a must be unique for partition /srv at position 2 in disk group 1",
        ),
        (
            serde_json::json!([]),
            "Client::BadRequest::PartitionLength",
            "Number of partitions defined in the layout is incorrect (0): must be between 1 and 32 in disk group 1",
        ),
    ];
    for (json, class, message) in cases {
        let (c, m) = refused(json.clone());
        assert_eq!((c, m.as_str()), (class, message), "{json}");
    }
}

#[test]
fn control_characters_in_a_mount_point_are_shown_escaped() {
    let (_, m) = refused(serde_json::json!([{"mountPoint": "/a\u{1b}[2J", "fileSystem": "ext4"}]));
    assert!(!m.chars().any(char::is_control), "{m:?}");
}

#[test]
fn storage_arrays_schemes_and_hardware_raid() {
    let none = |_: &str| None;
    assert_eq!(validate(&[], none), Ok(None));
    let two = vec![Storage::default(), Storage::default()];
    let e = validate(&two, none).unwrap_err();
    assert_eq!(
        (e.class, e.message.as_str(), e.status()),
        (
            "Server::NotImplemented::DiskGroupMultipleConfigs",
            "Multiple (2) disk groups customization not implemented",
            501
        )
    );
    // no partitioning: the default scheme on disk group 1
    let l = validate(&[Storage::default()], none).unwrap().unwrap();
    assert_eq!((l.disk_group_id, l.rows.clone()), (1, default_layout()));
    let named: Storage = serde_json::from_value(
        serde_json::json!({"diskGroupId": 2, "partitioning": {"schemeName": "web", "disks": 2}}),
    )
    .unwrap();
    let e = validate(std::slice::from_ref(&named), none).unwrap_err();
    assert_eq!(
        (e.class, e.message.as_str(), e.status()),
        (
            "Client::NotFound::SchemeName",
            "Partition scheme web not found for operating system byolinux_64",
            404
        )
    );
    let found = |n: &str| {
        (n == "web").then(|| rows(serde_json::json!([{"mountPoint": "/", "fileSystem": "xfs"}])))
    };
    let l = validate(&[named], found).unwrap().unwrap();
    assert_eq!(
        (l.disk_group_id, l.disks, l.rows[0].fs),
        (2, Some(2), Fs::Xfs)
    );
    let hw: Storage =
        serde_json::from_value(serde_json::json!({"hardwareRaid": [{"raidLevel": 5}]})).unwrap();
    assert_eq!(validate(&[hw], none).unwrap_err().status(), 409);
}

#[test]
fn default_scheme_on_two_uefi_disks() {
    let p = plan(
        &layout(default_layout()),
        &disks(&[20 * GIB, 20 * GIB]),
        true,
        Table::Gpt,
    )
    .unwrap();
    assert!(p.fixes.is_empty(), "{:?}", p.fixes);
    assert_eq!(
        p.summary(),
        vec![
            "vda: 1 ESP 511.0 MiB, 2 md2 1.0 GiB, 3 md3 17.9 GiB, 4 swap 512.0 MiB, 5 config-2 64.0 MiB",
            "vdb: 1 ESP 511.0 MiB, 2 md2 1.0 GiB, 3 md3 17.9 GiB, 4 swap 512.0 MiB",
            "md2: RAID 1 of 2 x 1.0 GiB, ext4 /boot",
            "md3: RAID 1 of 2 x 17.9 GiB, ext4 /",
        ]
    );
    let d = &p.disks[0];
    // aligned, in order, no overlap, inside the disk
    for w in d.parts.windows(2) {
        assert!(w[0].start + w[0].size <= w[1].start, "{w:?}");
    }
    assert!(
        d.parts
            .iter()
            .all(|p| p.start % MIB == 0 && p.size % MIB == 0)
    );
    let last = d.parts.last().unwrap();
    assert_eq!(last.role, PartRole::ConfigDrive);
    assert_eq!(last.start + last.size, 20 * GIB - MIB);
    assert_eq!(p.rows[1].size_mib, p.arrays[1].member_bytes / MIB);
}

#[test]
fn default_scheme_on_one_bios_disk_has_no_md() {
    let p = plan(
        &layout(default_layout()),
        &disks(&[10 * GIB]),
        false,
        Table::Gpt,
    )
    .unwrap();
    assert!(p.arrays.is_empty());
    assert_eq!(
        p.summary(),
        vec![
            "vda: 1 BIOS boot 1.0 MiB, 2 ext4 /boot 1.0 GiB, 3 ext4 / 8.4 GiB, 4 swap 512.0 MiB, 5 config-2 64.0 MiB"
        ]
    );
    assert_eq!(
        p.fixes,
        vec![
            Fix("raidLevel of /boot lowered from 1 to 0: disk group 1 has 1 disk(s) for it".into()),
            Fix("raidLevel of / lowered from 1 to 0: disk group 1 has 1 disk(s) for it".into()),
        ]
    );
}

#[test]
fn default_scheme_on_three_and_four_disks_and_mbr() {
    for n in [3usize, 4] {
        let p = plan(
            &layout(default_layout()),
            &disks(&vec![8 * GIB; n]),
            true,
            Table::Gpt,
        )
        .unwrap();
        assert_eq!(p.disks.len(), n);
        assert!(p.arrays.iter().all(|a| a.level == RaidLevel::R1));
        assert_eq!(p.disks[0].parts.len(), 5);
        assert!(p.disks[1..].iter().all(|d| d.parts.len() == 4));
    }
    let p = plan(
        &layout(default_layout()),
        &disks(&[8 * GIB, 8 * GIB]),
        false,
        Table::Mbr,
    )
    .unwrap();
    assert_eq!(p.disks[0].parts.len(), 4, "no BIOS boot partition on MBR");
}

#[test]
fn raid_levels_are_lowered_in_ovh_order() {
    let row = |raid| Row {
        mount: Mount::Path("/".into()),
        fs: Fs::Ext4,
        size_mib: 0,
        raid,
        lv: None,
    };
    for (disks_n, asked, got) in [
        (3, RaidLevel::R6, RaidLevel::R5),
        (2, RaidLevel::R6, RaidLevel::R1),
        (3, RaidLevel::R10, RaidLevel::R5),
        (2, RaidLevel::R5, RaidLevel::R1),
        (4, RaidLevel::R6, RaidLevel::R6),
        (4, RaidLevel::R10, RaidLevel::R10),
    ] {
        let p = plan(
            &layout(vec![row(asked)]),
            &disks(&vec![4 * GIB; disks_n]),
            true,
            Table::Gpt,
        )
        .unwrap();
        assert_eq!(p.rows[0].raid, got, "{asked:?} on {disks_n}");
        assert_eq!(p.fixes.len(), usize::from(asked != got));
    }
}

#[test]
fn the_first_oversized_row_is_shrunk_and_a_second_is_an_error() {
    let r = |m: &str, size_mib| Row {
        mount: Mount::Path(m.into()),
        fs: Fs::Ext4,
        size_mib,
        raid: RaidLevel::R1,
        lv: None,
    };
    let p = plan(
        &layout(vec![r("/", 4096), r("/srv", 100_000)]),
        &disks(&[8 * GIB, 8 * GIB]),
        true,
        Table::Gpt,
    )
    .unwrap();
    assert_eq!(p.rows[0].size_mib, 4096);
    assert!(p.rows[1].size_mib < 4096, "{:?}", p.rows[1]);
    assert_eq!(p.fixes.len(), 1);
    assert!(
        p.fixes[0].0.starts_with("/srv shrunk from 100000 MiB to "),
        "{:?}",
        p.fixes
    );
    // with a row that fills the disk, nothing is shrunk
    let e = plan(
        &layout(vec![r("/", 0), r("/srv", 100_000)]),
        &disks(&[8 * GIB, 8 * GIB]),
        true,
        Table::Gpt,
    )
    .unwrap_err();
    assert!(
        e.0.ends_with("Please adjust partitions so that the /srv partition fits on 2 disk(s)"),
        "{e}"
    );
    let e = plan(
        &layout(vec![r("/", 100_000), r("/srv", 100_000)]),
        &disks(&[8 * GIB]),
        true,
        Table::Gpt,
    )
    .unwrap_err();
    assert!(
        e.0.ends_with("so that the /srv partition fits on 1 disk(s)"),
        "{e}"
    );
}

#[test]
fn lvs_share_a_volume_group_per_level_and_the_vg_fills() {
    let spec = rows(serde_json::json!([
        {"mountPoint": "/boot", "fileSystem": "ext4", "size": 1024},
        {"mountPoint": "/", "fileSystem": "ext4", "size": 4096, "extras": {"lv": {"name": "root"}}},
        {"mountPoint": "/home", "fileSystem": "ext4", "size": 2048, "extras": {"lv": {"name": "home"}}},
        {"mountPoint": "swap", "fileSystem": "swap", "size": 512},
        {"mountPoint": "/data", "fileSystem": "xfs", "raidLevel": 5, "size": 0}
    ]));
    let l = layout(validate_layout(&spec, 1).unwrap());
    let p = plan(
        &l,
        &disks(&[20 * GIB, 20 * GIB, 20 * GIB]),
        true,
        Table::Gpt,
    )
    .unwrap();
    assert_eq!(p.vgs.len(), 1);
    assert_eq!(p.vgs[0].rows, vec![1, 2]);
    let levels: Vec<(String, u8)> = p
        .arrays
        .iter()
        .map(|a| (a.name.clone(), a.level.number()))
        .collect();
    assert_eq!(
        levels,
        vec![("md2".into(), 1), ("md3".into(), 1), ("md5".into(), 5)]
    );
    assert!(p.vgs[0].bytes >= 6 * GIB, "{:?}", p.vgs[0]);
    // /data got the rest, RAID 5 over 3: twice a member
    assert_eq!(p.rows[4].size_mib * MIB, 2 * p.arrays[2].member_bytes);
    // RAID 0 LVs: a VG over plain partitions, no md
    let spec = rows(serde_json::json!([
        {"mountPoint": "/", "fileSystem": "ext4", "size": 2048, "raidLevel": 0, "extras": {"lv": {"name": "root"}}}
    ]));
    let p = plan(
        &layout(validate_layout(&spec, 1).unwrap()),
        &disks(&[8 * GIB, 8 * GIB]),
        false,
        Table::Gpt,
    )
    .unwrap();
    assert!(p.arrays.is_empty());
    assert_eq!(p.vgs[0].array, None);
    assert!(
        p.disks
            .iter()
            .all(|d| d.parts.iter().any(|x| x.role == PartRole::Pv(0)))
    );
    // the VG fills the disks (no row asked to)
    assert!(p.vgs[0].bytes > 14 * GIB, "{:?}", p.vgs[0]);
}

#[test]
fn mbr_rules() {
    let r = |m: &str, size_mib| Row {
        mount: Mount::Path(m.into()),
        fs: Fs::Ext4,
        size_mib,
        raid: RaidLevel::R1,
        lv: None,
    };
    // a 3 TiB row on a 4 TiB disk with an MBR: shrunk to end before 2 TiB - config-2
    let p = plan(
        &layout(vec![r("/", 3 << 20)]),
        &disks(&[4 << 40]),
        false,
        Table::Mbr,
    )
    .unwrap();
    let root = &p.disks[0].parts[0];
    assert!(
        root.start + root.size <= (2 << 40) - CONFIG_BYTES,
        "{root:?}"
    );
    assert!(
        p.fixes
            .iter()
            .any(|f| f.0.starts_with("/ shrunk from 3145728 MiB")),
        "{:?}",
        p.fixes
    );
    let cfg = p.disks[0].parts.last().unwrap();
    assert!(
        cfg.start + cfg.size <= 2 << 40,
        "config-2 within what an MBR addresses"
    );
    let many = vec![r("/", 1024), r("/a", 1024), r("/b", 1024), r("/c", 1024)];
    let e = plan(&layout(many), &disks(&[20 * GIB]), false, Table::Mbr).unwrap_err();
    assert!(e.0.contains("byol writes at most 4 on an MBR disk"), "{e}");
}

#[test]
fn more_disks_asked_than_the_group_has() {
    let mut l = layout(default_layout());
    l.disks = Some(3);
    let e = plan(&l, &disks(&[8 * GIB, 8 * GIB]), true, Table::Gpt).unwrap_err();
    assert_eq!(
        e.0,
        "Partitioning involving more disks (3) than the disk group 1 has (2) is not possible on this server"
    );
    l.disks = Some(1);
    let p = plan(&l, &disks(&[8 * GIB, 8 * GIB]), true, Table::Gpt).unwrap();
    assert_eq!(p.disks.len(), 1);
}

#[test]
fn huge_sizes_and_oversized_volume_groups_are_errors_not_overflows() {
    let r = |m: &str, size_mib, lv: Option<&str>| Row {
        mount: Mount::Path(m.into()),
        fs: Fs::Ext4,
        size_mib,
        raid: RaidLevel::R10,
        lv: lv.map(String::from),
    };
    for size in [u64::MAX, u64::MAX / 2, 1 << 50] {
        let l = layout(vec![
            r("/", 1024, None),
            r("/srv", size, None),
            r("/x", size, None),
        ]);
        let e = plan(&l, &disks(&[8 * GIB; 4]), true, Table::Gpt).unwrap_err();
        assert!(e.0.contains("Please adjust partitions"), "{e}");
    }
    // a volume group is not shrunk: its LVs keep their sizes, so it does not fit
    let l = layout(vec![r("/", 100_000, Some("root")), r("/srv", 1024, None)]);
    let e = plan(&l, &disks(&[8 * GIB, 8 * GIB]), true, Table::Gpt).unwrap_err();
    assert!(
        e.0.ends_with("so that the volume group vg partition fits on 2 disk(s)"),
        "{e}"
    );
}
