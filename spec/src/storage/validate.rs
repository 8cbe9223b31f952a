//! validate: a layout as written ([`PartitionSpec`] rows) checked with OVH's error classes and
//! messages (`Client::BadRequest::Partition*`, `Client::NotFound::SchemeName`,
//! `Server::NotImplemented::DiskGroupMultipleConfigs`), the values filled in, into [`Row`]s.
//! What only the machine knows (its disks) is checked by [`super::plan`].

use super::{OvhError, PartitionSpec, Storage};

/// The operating system named in OVH's messages.
const OS: &str = crate::TEMPLATE_NAME;

/// What OVH's messages call the disk group: `disk group 1`.
pub const DISK_GROUP: &str = "disk group";

/// Mount points a layout may not name: the ESP (byol makes one on every disk) and the
/// directories a running system owns or that Debian 12 makes symlinks into `/usr`.
pub const FORBIDDEN_MOUNT_POINTS: &[&str] = &[
    "/boot/efi",
    "/bin",
    "/dev",
    "/lib",
    "/lib32",
    "/lib64",
    "/libx32",
    "/proc",
    "/run",
    "/sbin",
    "/sys",
];

/// LVM's own names, which a logical volume may not take.
const FORBIDDEN_LV_NAMES: &[&str] = &["snapshot", "pvmove"];

/// The most rows a layout may have (GPT has room for 128 partitions per disk; with the ESP or
/// the BIOS boot partition, swap and config-2 added, 32 leaves plenty).
pub const MAX_ROWS: usize = 32;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fs {
    Ext4,
    Xfs,
    Btrfs,
    Swap,
}

impl Fs {
    pub fn as_str(self) -> &'static str {
        match self {
            Fs::Ext4 => "ext4",
            Fs::Xfs => "xfs",
            Fs::Btrfs => "btrfs",
            Fs::Swap => "swap",
        }
    }

    /// The smallest size its mkfs makes (xfsprogs 5.x refuses under 300 MiB, btrfs-progs under
    /// about 110 MiB), in MiB.
    pub fn min_mib(self) -> u64 {
        match self {
            Fs::Ext4 => 16,
            Fs::Xfs => 300,
            Fs::Btrfs => 256,
            Fs::Swap => 16,
        }
    }
}

/// Where a row is mounted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mount {
    Path(String),
    Swap,
}

impl Mount {
    pub fn as_str(&self) -> &str {
        match self {
            Mount::Path(p) => p,
            Mount::Swap => "swap",
        }
    }
}

/// A software RAID level byol makes with mdadm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RaidLevel {
    R0,
    R1,
    R5,
    R6,
    R10,
}

impl RaidLevel {
    pub fn number(self) -> u8 {
        match self {
            RaidLevel::R0 => 0,
            RaidLevel::R1 => 1,
            RaidLevel::R5 => 5,
            RaidLevel::R6 => 6,
            RaidLevel::R10 => 10,
        }
    }

    /// The fewest disks mdadm makes the level with (RAID 6: 4, as mdadm wants).
    pub fn min_disks(self) -> u32 {
        match self {
            RaidLevel::R0 => 1,
            RaidLevel::R1 => 2,
            RaidLevel::R5 => 3,
            RaidLevel::R6 | RaidLevel::R10 => 4,
        }
    }

    /// OVH's order for lowering a level the group has too few disks for.
    pub fn lower(self) -> Option<RaidLevel> {
        match self {
            RaidLevel::R6 => Some(RaidLevel::R10),
            RaidLevel::R10 => Some(RaidLevel::R5),
            RaidLevel::R5 => Some(RaidLevel::R1),
            RaidLevel::R1 => Some(RaidLevel::R0),
            RaidLevel::R0 => None,
        }
    }

    /// How many bytes each of `n` members holds for an array of `size` usable bytes.
    pub fn member_bytes(self, size: u64, n: u32) -> u64 {
        let n = u64::from(n.max(1));
        match self {
            RaidLevel::R0 => size.div_ceil(n),
            RaidLevel::R1 => size,
            RaidLevel::R5 => size.div_ceil(n.saturating_sub(1).max(1)),
            RaidLevel::R6 => size.div_ceil(n.saturating_sub(2).max(1)),
            // the near-2 layout: every block twice
            RaidLevel::R10 => size.saturating_mul(2).div_ceil(n),
        }
    }

    /// The usable bytes of an array of `n` members of `member` bytes each.
    pub fn usable_bytes(self, member: u64, n: u32) -> u64 {
        let n = u64::from(n.max(1));
        match self {
            RaidLevel::R0 => member.saturating_mul(n),
            RaidLevel::R1 => member,
            RaidLevel::R5 => member.saturating_mul(n.saturating_sub(1)),
            RaidLevel::R6 => member.saturating_mul(n.saturating_sub(2)),
            RaidLevel::R10 => member.saturating_mul(n) / 2,
        }
    }
}

/// One checked row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Row {
    pub mount: Mount,
    pub fs: Fs,
    /// MiB; 0 fills the rest.
    pub size_mib: u64,
    /// As asked (swap: ignored, never RAID).
    pub raid: RaidLevel,
    /// An LVM logical volume of this name.
    pub lv: Option<String>,
}

/// A checked layout for one disk group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    pub disk_group_id: u32,
    /// Disks of the group to use (None: all).
    pub disks: Option<u32>,
    pub rows: Vec<Row>,
}

/// The scheme byol installs when none is given, OVH's default on a server: `/boot` 1 GiB ext4
/// RAID 1, `/` the rest ext4 RAID 1, swap 512 MiB on every disk (the ESPs, the BIOS boot
/// partitions and config-2 are byol's own, added by the plan).
pub fn default_layout() -> Vec<Row> {
    let row = |mount: Mount, fs, size_mib| Row {
        mount,
        fs,
        size_mib,
        raid: RaidLevel::R1,
        lv: None,
    };
    vec![
        row(Mount::Path("/boot".into()), Fs::Ext4, 1024),
        row(Mount::Path("/".into()), Fs::Ext4, 0),
        row(Mount::Swap, Fs::Swap, 512),
    ]
}

/// The `storage` array of a request. `scheme` finds a stored scheme's rows by name (`default`
/// is byol's own and never asked). Ok(None): no layout given, the machine's default applies.
pub fn validate(
    storage: &[Storage],
    scheme: impl Fn(&str) -> Option<Vec<PartitionSpec>>,
) -> Result<Option<Layout>, OvhError> {
    let s = match storage {
        [] => return Ok(None),
        [s] => s,
        many => {
            return Err(OvhError::new(
                "Server::NotImplemented::DiskGroupMultipleConfigs",
                format!(
                    "Multiple ({}) disk groups customization not implemented",
                    many.len()
                ),
            ));
        }
    };
    let group = match s.disk_group_id {
        None | Some(0) => 1,
        Some(g) => g,
    };
    if s.hardware_raid
        .as_ref()
        .is_some_and(|h| h.iter().any(|r| !r["raidLevel"].is_null()))
    {
        return Err(OvhError::new(
            "Client::Conflict::HardwareRaidIncompatibleOnDiskGroup",
            format!(
                "Hardware RAID is not supported by {DISK_GROUP} {group} on this server: byol \
                 makes software RAID (leave hardwareRaid out)"
            ),
        ));
    }
    let Some(p) = &s.partitioning else {
        return Ok(Some(Layout {
            disk_group_id: group,
            disks: None,
            rows: default_layout(),
        }));
    };
    if p.disks == Some(0) {
        return Err(OvhError::new(
            "Client::BadRequest::PartitionMinSize",
            format!("disks value 0 must be bigger than 0 in {DISK_GROUP} {group}"),
        ));
    }
    let rows = match (&p.layout, p.scheme_name.as_deref()) {
        (Some(rows), _) => validate_layout(rows, group)?,
        (None, None | Some("default")) => default_layout(),
        (None, Some(name)) => {
            let rows = scheme(name).ok_or_else(|| {
                OvhError::new(
                    "Client::NotFound::SchemeName",
                    format!("Partition scheme {name} not found for operating system {OS}"),
                )
            })?;
            validate_layout(&rows, group)?
        }
    };
    Ok(Some(Layout {
        disk_group_id: group,
        disks: p.disks,
        rows,
    }))
}

/// The rows of a layout, checked in order.
pub fn validate_layout(rows: &[PartitionSpec], group: u32) -> Result<Vec<Row>, OvhError> {
    if rows.is_empty() || rows.len() > MAX_ROWS {
        return Err(OvhError::new(
            "Client::BadRequest::PartitionLength",
            format!(
                "Number of partitions defined in the layout is incorrect ({}): must be between 1 \
                 and {MAX_ROWS} in {DISK_GROUP} {group}",
                rows.len()
            ),
        ));
    }
    let mut out: Vec<Row> = Vec::new();
    for (i, spec) in rows.iter().enumerate() {
        let row = check_row(spec, i + 1, group)?;
        let at = |attribute: &str, value: &str| {
            OvhError::new(
                "Client::BadRequest::PartitionDuplicatedAttribute",
                format!(
                    "{attribute} value {value} must be unique{}",
                    suffix(spec, i + 1, group)
                ),
            )
        };
        if row.mount != Mount::Swap && out.iter().any(|r| r.mount == row.mount) {
            return Err(at("mountPoint", row.mount.as_str()));
        }
        if row.mount == Mount::Swap && out.iter().any(|r| r.mount == Mount::Swap) {
            return Err(at("mountPoint", "swap"));
        }
        if let Some(lv) = &row.lv
            && out.iter().any(|r| r.lv.as_ref() == Some(lv))
        {
            return Err(at("extras.lv.name", lv));
        }
        if row.size_mib == 0 && out.iter().any(|r| r.size_mib == 0) {
            return Err(at("size", "0"));
        }
        out.push(row);
    }
    if !out.iter().any(|r| r.mount == Mount::Path("/".into())) {
        return Err(OvhError::new(
            "Client::BadRequest::PartitionMissingRootMountpoint",
            format!("mountPoint / missing for operating system {OS} in {DISK_GROUP} {group}"),
        ));
    }
    Ok(out)
}

/// `for partition /data at position 4 in disk group 1`.
fn suffix(spec: &PartitionSpec, position: usize, group: u32) -> String {
    format!(
        " for partition {} at position {position} in {DISK_GROUP} {group}",
        crate::text::escape_control(&spec.mount_point)
    )
}

fn check_row(spec: &PartitionSpec, position: usize, group: u32) -> Result<Row, OvhError> {
    let sfx = || suffix(spec, position, group);
    let value = |v: &str| crate::text::escape_control(v).into_owned();
    let err = |class: &'static str, text: String| OvhError::new(class, format!("{text}{}", sfx()));
    let fs = match spec.file_system.as_str() {
        "ext4" => Fs::Ext4,
        "xfs" => Fs::Xfs,
        "btrfs" => Fs::Btrfs,
        "swap" => Fs::Swap,
        other => {
            let why = if other == "zfs" {
                ": ZFS is not supported by byol yet, use ext4, xfs or btrfs (with raidLevel \
                 for RAID)"
            } else {
                ""
            };
            return Err(OvhError::new(
                "Client::BadRequest::PartitionIncompatibleFs",
                format!(
                    "fileSystem value {} is not compatible for operating system {OS} (must be \
                     one of btrfs, ext4, swap, xfs){}{why}",
                    value(other),
                    sfx()
                ),
            ));
        }
    };
    let mount = if fs == Fs::Swap || spec.mount_point == "swap" {
        if fs != Fs::Swap || spec.mount_point != "swap" {
            return Err(err(
                "Client::BadRequest::PartitionIncompatibleParams",
                format!(
                    "fileSystem value {} incompatible with mountPoint value {}",
                    value(&spec.file_system),
                    value(&spec.mount_point)
                ),
            ));
        }
        Mount::Swap
    } else {
        check_mount_point(&spec.mount_point).map_err(|(class, text)| err(class, text))?;
        Mount::Path(spec.mount_point.clone())
    };
    let raid = match &spec.raid_level {
        None | Some(serde_json::Value::Null) => RaidLevel::R1,
        Some(v) => {
            let n = v
                .as_u64()
                .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()));
            match n {
                Some(0) => RaidLevel::R0,
                Some(1) => RaidLevel::R1,
                Some(5) => RaidLevel::R5,
                Some(6) => RaidLevel::R6,
                Some(10) => RaidLevel::R10,
                Some(7) => {
                    return Err(err(
                        "Client::BadRequest::PartitionIncompatibleRaidLevel",
                        format!(
                            "raidLevel value 7 must be one of 0, 1, 5, 6, 10 for operating \
                             system {OS} (RAID 7 is ZFS's raidz3, and ZFS is not supported by \
                             byol yet)"
                        ),
                    ));
                }
                _ => {
                    return Err(err(
                        "Client::BadRequest::PartitionRaidLevel",
                        format!(
                            "raidLevel value {} must be one of 0, 1, 5, 6, 7, 10",
                            value(&v.to_string())
                        ),
                    ));
                }
            }
        }
    };
    if fs == Fs::Swap && !matches!(raid, RaidLevel::R0 | RaidLevel::R1) {
        return Err(err(
            "Client::BadRequest::PartitionIncompatibleParams",
            format!(
                "fileSystem value swap incompatible with raidLevel value {} (swap is a plain \
                 partition on every disk, never RAID)",
                raid.number()
            ),
        ));
    }
    if fs == Fs::Swap && spec.size == 0 {
        // OVH reports this one from the machine; it needs no disk to be known
        return Err(err(
            "Client::BadRequest::PartitionIncompatibleParams",
            "fileSystem value swap incompatible with size value 0 (Partition of type swap with \
             mountpoint swap cannot fill the disk.)"
                .into(),
        ));
    }
    if spec.size != 0 && spec.size < fs.min_mib() {
        return Err(err(
            "Client::BadRequest::PartitionMinSize",
            format!(
                "size value {} MiB must be bigger than {}",
                spec.size,
                fs.min_mib()
            ),
        ));
    }
    let lv = match spec.extras.as_ref() {
        Some(e) if e.zp.as_ref().is_some_and(|z| z.name.is_some()) => {
            return Err(err(
                "Client::BadRequest::PartitionIncompatibleParams",
                format!(
                    "fileSystem value {} incompatible with extras.zp value {} (zpools are ZFS's, \
                     and ZFS is not supported by byol yet)",
                    fs.as_str(),
                    value(e.zp.as_ref().and_then(|z| z.name.as_deref()).unwrap_or(""))
                ),
            ));
        }
        Some(e) => e.lv.as_ref().and_then(|l| l.name.clone()),
        None => None,
    };
    if let Some(name) = &lv {
        if fs == Fs::Swap {
            return Err(err(
                "Client::BadRequest::PartitionIncompatibleLvm",
                format!(
                    "extras.lv.name value {} is not compatible for operating system {OS} (swap \
                     is never on LVM)",
                    value(name)
                ),
            ));
        }
        if name.is_empty() || name.len() > 16 || !name.bytes().all(|b| b.is_ascii_alphanumeric()) {
            return Err(err(
                "Client::BadRequest::PartitionInvalidLvName",
                format!(
                    "extras.lv.name value {} is invalid (length can be maximum 16 characters and \
                     exclusively composed of alphanumeric characters)",
                    value(name)
                ),
            ));
        }
        if FORBIDDEN_LV_NAMES.contains(&name.as_str()) {
            return Err(err(
                "Client::BadRequest::PartitionForbiddenLvName",
                format!(
                    "extras.lv.name value {name} is forbidden (must be different from {})",
                    FORBIDDEN_LV_NAMES.join(", ")
                ),
            ));
        }
    }
    Ok(Row {
        mount,
        fs,
        size_mib: spec.size,
        raid,
        lv,
    })
}

/// OVH's mount point rules: starts with `/`, at most 256 characters of `[A-Za-z0-9/._-]`, no
/// trailing `/` (but `/` itself), canonical (no `//`, `.` or `..` component) and not hidden (no
/// component starting with `.`), and not one byol or the system owns.
fn check_mount_point(m: &str) -> Result<(), (&'static str, String)> {
    let v = crate::text::escape_control(m);
    if !m.starts_with('/') {
        return Err((
            "Client::BadRequest::PartitionInvalidUnixMountpointPrefix",
            format!(
                "mountPoint value {v} is invalid (Unix-style mountpoint: must start with a '/')"
            ),
        ));
    }
    if m.len() > 256
        || !m
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'/' | b'.' | b'_' | b'-'))
    {
        return Err((
            "Client::BadRequest::PartitionInvalidUnixMountpoint",
            format!(
                "mountPoint value {v} is invalid (Unix-style mountpoint: length cannot exceed 256 \
                 characters; only alphanumeric characters, slashes, dots, underscores and hyphens \
                 are allowed)"
            ),
        ));
    }
    if m != "/" && m.ends_with('/') {
        return Err((
            "Client::BadRequest::PartitionForbiddenMountpointSuffix",
            format!("mountPoint value {v} cannot end with '/'"),
        ));
    }
    if m != "/"
        && m[1..]
            .split('/')
            .any(|c| c.is_empty() || c.starts_with('.'))
    {
        return Err((
            "Client::BadRequest::PartitionForbiddenMountpointCanonical",
            format!("mountPoint value {v} must be a canonical path and cannot be a hidden path"),
        ));
    }
    if FORBIDDEN_MOUNT_POINTS
        .iter()
        .any(|f| m == *f || (m.starts_with(f) && m.as_bytes().get(f.len()) == Some(&b'/')))
    {
        return Err((
            "Client::BadRequest::PartitionForbiddenMountpoint",
            format!(
                "mountPoint value {v} is forbidden (must be different from {})",
                FORBIDDEN_MOUNT_POINTS.join(", ")
            ),
        ));
    }
    Ok(())
}
