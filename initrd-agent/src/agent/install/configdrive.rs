//! configdrive: the OpenStack ConfigDrive cloud-init reads at first boot, on the `config-2`
//! partition (FAT16, label `config-2`). The same files go to `openstack/latest/` and to a dated
//! version directory, [`DATED`] (cloud-init takes the newest dated version it knows, else
//! `latest`):
//! - `meta_data.json`: `uuid` (the install id), `hostname` and `name` (customHostname, else the
//!   machine's name), `launch_index`, `public_keys` `{"default": sshKey}` when given, `meta`
//!   (configDriveMetadata) when given;
//! - `user_data`: configDriveUserData decoded (base64 or plain, as it was given), when given;
//! - `network_data.json`: the boot NIC by MAC, with the static IPv4 settings the machine booted
//!   with (from iPXE), or DHCP when the agent had to ask DHCP itself.

use std::path::Path;

use byol_spec::AgentConfig;
use serde_json::{Value, json};

use super::super::net::{AddrSource, NetConfig};
use super::fat::{self, FatKind};

pub const LABEL: &str = "config-2";
/// The dated version written besides `latest`.
pub const DATED: &str = "2018-08-27";

/// One file of the drive: its path and content.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DriveFile {
    pub path: String,
    pub data: Vec<u8>,
}

/// meta_data.json.
pub fn meta_data(cfg: &AgentConfig) -> Value {
    let host = cfg
        .install
        .hostname
        .clone()
        .unwrap_or_else(|| cfg.machine.clone());
    let mut m = json!({
        "uuid": cfg.install_id,
        "hostname": host,
        "name": host,
        "launch_index": 0,
    });
    if let Some(k) = cfg
        .install
        .ssh_key
        .as_ref()
        .filter(|k| !k.trim().is_empty())
    {
        m["public_keys"] = json!({ "default": k.trim() });
    }
    if let Some(meta) = &cfg.install.metadata {
        m["meta"] = Value::Object(meta.clone());
    }
    m
}

/// network_data.json for the boot NIC.
pub fn network_data(n: &NetConfig) -> Value {
    let link = json!({
        "id": n.iface,
        "type": "phy",
        "ethernet_mac_address": n.mac,
    });
    let network = match n.source {
        AddrSource::Dhcp => json!({
            "id": "network0",
            "type": "ipv4_dhcp",
            "link": n.iface,
            "network_id": "network0",
        }),
        AddrSource::Ipxe => {
            let mut v = json!({
                "id": "network0",
                "type": "ipv4",
                "link": n.iface,
                "ip_address": n.address.to_string(),
                "netmask": n.netmask.to_string(),
                "network_id": "network0",
                "routes": [],
            });
            if let Some(gw) = n.gateway {
                v["routes"] = json!([{
                    "network": "0.0.0.0",
                    "netmask": "0.0.0.0",
                    "gateway": gw.to_string(),
                }]);
            }
            v
        }
    };
    let services: Vec<Value> = n
        .dns
        .iter()
        .map(|d| json!({ "type": "dns", "address": d.to_string() }))
        .collect();
    json!({ "links": [link], "networks": [network], "services": services })
}

/// Every file of the drive.
pub fn files(cfg: &AgentConfig, net: Option<&NetConfig>) -> Vec<DriveFile> {
    let pretty = |v: &Value| serde_json::to_vec_pretty(v).unwrap_or_default();
    let mut one = vec![("meta_data.json", pretty(&meta_data(cfg)))];
    if let Some(u) = &cfg.install.user_data {
        one.push(("user_data", u.bytes()));
    }
    if let Some(n) = net {
        one.push(("network_data.json", pretty(&network_data(n))));
    }
    let mut out = Vec::new();
    for dir in ["latest", DATED] {
        for (name, data) in &one {
            out.push(DriveFile {
                path: format!("openstack/{dir}/{name}"),
                data: data.clone(),
            });
        }
    }
    out
}

/// Formats `dev` (FAT16, label `config-2`) and writes `files` on it.
pub fn write(dev: &Path, files: &[DriveFile], sector: u32) -> Result<(), String> {
    fat::format(
        dev,
        FatKind::Fat16,
        LABEL,
        super::ids::fat_volume_id(),
        sector,
    )?;
    let list: Vec<(&str, &[u8])> = files
        .iter()
        .map(|f| (f.path.as_str(), f.data.as_slice()))
        .collect();
    fat::write_files(dev, &list)
}

/// `config-2 on /dev/vda3: openstack/{latest,2018-08-27}/meta_data.json (312 bytes), …`.
pub fn summary(dev: &Path, files: &[DriveFile]) -> String {
    let latest: Vec<String> = files
        .iter()
        .filter_map(|f| {
            f.path
                .strip_prefix("openstack/latest/")
                .map(|n| format!("{n} ({} bytes)", f.data.len()))
        })
        .collect();
    format!(
        "{LABEL} on {}: openstack/{{latest,{DATED}}}/ {}",
        dev.display(),
        latest.join(", ")
    )
}
