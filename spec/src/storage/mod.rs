//! storage: BYOLinux's storage layout, as OVHcloud's API takes it (`storage[].partitioning` of
//! `POST /dedicated/server/{sn}/reinstall`) and as byol stores named schemes: the rows an
//! operator writes ([`PartitionSpec`]), checked with OVH's error classes and messages into a
//! [`Layout`] ([`validate`]), then planned for the machine's disks ([`plan`]): partitions on
//! every disk, md arrays, LVM volume groups, filesystems and swap, with OVH's automatic fixes
//! applied and reported.
//!
//! Semantics (OVH's): `size` in MiB, `0` fills the rest (at most one row, never swap);
//! `raidLevel` defaults to 1, one of 0, 1, 5, 6, 10 (7 is ZFS's, and ZFS is not supported by
//! byol yet); `partitioning.disks` defaults to every disk of the group; swap is one plain
//! partition of `size` on every disk used, never RAID; `extras.lv.name` makes an LVM logical
//! volume (the LVs of one RAID level share one volume group on one md device, and the last
//! volume group fills the free space; RAID 0 LVs: a volume group over plain partitions, no md);
//! `/boot/efi` may not be requested (byol makes the ESPs).

mod plan;
#[cfg(test)]
mod tests;
mod validate;

use serde::{Deserialize, Serialize};

pub use plan::{
    Array, CONFIG_BYTES, DiskPlan, ESP_BYTES, Fix, Holds, Part, PartRole, Plan, PlanDisk,
    PlanError, Table, VolumeGroup, plan,
};
pub use validate::{
    DISK_GROUP, FORBIDDEN_MOUNT_POINTS, Fs, Layout, Mount, RaidLevel, Row, default_layout,
    validate, validate_layout,
};

/// One element of OVH's `storage` array.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Storage {
    /// 0 or absent: the default disk group (1).
    #[serde(default)]
    pub disk_group_id: Option<u32>,
    #[serde(default)]
    pub hardware_raid: Option<Vec<serde_json::Value>>,
    #[serde(default)]
    pub partitioning: Option<Partitioning>,
}

/// `storage[].partitioning`.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Partitioning {
    /// How many disks of the group to use (default: all).
    #[serde(default)]
    pub disks: Option<u32>,
    /// A stored scheme (`default` is byol's built-in one) used when `layout` is absent.
    #[serde(default)]
    pub scheme_name: Option<String>,
    #[serde(default)]
    pub layout: Option<Vec<PartitionSpec>>,
}

/// One row of a layout, as written.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionSpec {
    pub mount_point: String,
    pub file_system: String,
    /// MiB; 0 or absent fills the rest.
    #[serde(default)]
    pub size: u64,
    /// A number, or a number in a string (OVH's own examples send `"1"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub raid_level: Option<serde_json::Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extras: Option<Extras>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Extras {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lv: Option<Named>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zp: Option<Named>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Named {
    #[serde(default)]
    pub name: Option<String>,
}

/// An error in OVH's shape: `{"class": …, "message": …}`, the HTTP status being the class's
/// second word.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{message}")]
pub struct OvhError {
    pub class: &'static str,
    pub message: String,
}

impl OvhError {
    pub fn new(class: &'static str, message: impl Into<String>) -> Self {
        OvhError {
            class,
            message: message.into(),
        }
    }

    /// The HTTP status the class names (400 when it names none byol knows).
    pub fn status(&self) -> u16 {
        match self.class.split("::").nth(1) {
            Some("NotFound") => 404,
            Some("Conflict") => 409,
            Some("Forbidden") => 403,
            Some("NotImplemented") => 501,
            Some("InternalServerError") => 500,
            _ => 400,
        }
    }
}
