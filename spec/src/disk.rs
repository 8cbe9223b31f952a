//! disk: byol's own disk hints, set on a machine (`byol machine add … --disk-serial …`) when
//! `diskGroupId` is not precise enough: the disk must match every hint given, and exactly one
//! disk must match. Beyond the guide; modelled on Ironic's root device hints, with byol's
//! rule that an ambiguous or missing match is an error, never a guess.

use serde::{Deserialize, Serialize};

/// Hints for the install disk. Every field that is set must match.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DiskHints {
    /// Serial number, exact (case and surrounding spaces ignored).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
    /// World Wide Name, exact, with or without its `0x`, `naa.`, `eui.` prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wwn: Option<String>,
    /// Part of the vendor and model string (case ignored): `"SAMSUNG MZ7"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// At least this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_size: Option<u64>,
    /// At most this many bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_size: Option<u64>,
    /// The disk's `/dev/disk/by-path/` name as udev makes it (`pci-0000:00:1f.2-ata-1.0`), with or
    /// without the directory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub by_path: Option<String>,
    /// The kernel name (`sda`, `/dev/nvme0n1`): stable only on simple machines.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// `nvme`, `sata`, `sas`, `scsi`, `virtio`, `virtio-scsi`, `mmc`, `usb`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<String>,
    /// Spinning disk (true) or not (false).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotational: Option<bool>,
    /// Let the hints pick a removable or USB disk (never done otherwise).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_removable: bool,
}

/// The transports [`DiskHints::transport`] takes.
pub const TRANSPORTS: &[&str] = &[
    "nvme",
    "sata",
    "sas",
    "scsi",
    "virtio",
    "virtio-scsi",
    "mmc",
    "usb",
];

impl DiskHints {
    /// No hint at all: the disk comes from `diskGroupId`.
    pub fn is_empty(&self) -> bool {
        self.serial.is_none()
            && self.wwn.is_none()
            && self.model.is_none()
            && self.min_size.is_none()
            && self.max_size.is_none()
            && self.by_path.is_none()
            && self.name.is_none()
            && self.transport.is_none()
            && self.rotational.is_none()
    }

    /// Checks the values; Err says which one is wrong and how to write it.
    pub fn validate(&self) -> Result<(), String> {
        let text = |field: &str, v: &Option<String>| -> Result<(), String> {
            match v {
                Some(s) if s.trim().is_empty() => Err(format!(
                    "disk hint `{field}` is empty: leave it out or give a value"
                )),
                Some(s) if s.len() > 256 || s.chars().any(char::is_control) => Err(format!(
                    "disk hint `{field}` must be one line of at most 256 characters"
                )),
                _ => Ok(()),
            }
        };
        text("serial", &self.serial)?;
        text("wwn", &self.wwn)?;
        text("model", &self.model)?;
        text("byPath", &self.by_path)?;
        text("name", &self.name)?;
        if let Some(t) = &self.transport
            && !TRANSPORTS.contains(&t.as_str())
        {
            return Err(format!(
                "disk hint `transport` is `{}`: use one of {}",
                t.chars().take(40).collect::<String>(),
                TRANSPORTS.join(", ")
            ));
        }
        if let (Some(lo), Some(hi)) = (self.min_size, self.max_size)
            && lo > hi
        {
            return Err(format!(
                "disk hints `minSize` ({lo} bytes) is larger than `maxSize` ({hi} bytes)"
            ));
        }
        if self.allow_removable && self.is_empty() {
            return Err(
                "disk hint `allowRemovable` needs another hint (serial, wwn, byPath…) that picks \
                 the removable disk"
                    .into(),
            );
        }
        Ok(())
    }

    /// `serial=S1, minSize=100000000000`: the hints given, for messages.
    pub fn describe(&self) -> String {
        let mut v = Vec::new();
        let mut s = |k: &str, x: &Option<String>| {
            if let Some(x) = x {
                v.push(format!("{k}={x:?}"));
            }
        };
        s("serial", &self.serial);
        s("wwn", &self.wwn);
        s("model", &self.model);
        s("byPath", &self.by_path);
        s("name", &self.name);
        s("transport", &self.transport);
        if let Some(n) = self.min_size {
            v.push(format!("minSize={n}"));
        }
        if let Some(n) = self.max_size {
            v.push(format!("maxSize={n}"));
        }
        if let Some(r) = self.rotational {
            v.push(format!("rotational={r}"));
        }
        if self.allow_removable {
            v.push("allowRemovable".into());
        }
        v.join(", ")
    }
}

/// A WWN in one form for comparing: lowercase, without `0x`, `naa.`, `eui.`, `wwn-`.
pub fn normalize_wwn(w: &str) -> String {
    let w = w.trim().to_ascii_lowercase();
    let mut s = w.as_str();
    for p in ["wwn-", "0x", "naa.", "eui.", "t10."] {
        if let Some(r) = s.strip_prefix(p) {
            s = r;
        }
    }
    s.to_string()
}

/// `480G`, `1.5TiB`, `500GB`, `1000000`: bytes. Binary units for `K`/`M`/`G`/`T` and
/// `KiB`…`TiB`; decimal for `KB`…`TB` (what disk vendors print).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let bad = || {
        format!(
            "size `{}` is not a number of bytes with an optional unit (e.g. 480G, 2TB)",
            t.chars().take(40).collect::<String>()
        )
    };
    if num.is_empty() {
        return Err(bad());
    }
    let mult: u64 = match unit.trim().to_ascii_uppercase().as_str() {
        "" | "B" => 1,
        "K" | "KIB" => 1 << 10,
        "M" | "MIB" => 1 << 20,
        "G" | "GIB" => 1 << 30,
        "T" | "TIB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "TB" => 1_000_000_000_000,
        _ => {
            return Err(format!(
                "size `{}`: unknown unit (use bytes, or K/M/G/T (binary), KiB…TiB, KB…TB)",
                t.chars().take(40).collect::<String>()
            ));
        }
    };
    let value: f64 = num.parse().map_err(|_| bad())?;
    let bytes = value * mult as f64;
    if !bytes.is_finite() || !(1.0..=1e18).contains(&bytes) {
        return Err(bad());
    }
    Ok(bytes.round() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes() {
        assert_eq!(parse_size("480G"), Ok(480 << 30));
        assert_eq!(parse_size("2TB"), Ok(2_000_000_000_000));
        assert_eq!(parse_size("1.5TiB"), Ok(3 << 39));
        assert_eq!(parse_size(" 4096 "), Ok(4096));
        assert_eq!(parse_size("10 GiB"), Ok(10 << 30));
        assert!(parse_size("ten").unwrap_err().contains("not a number"));
        assert!(parse_size("10X").unwrap_err().contains("unknown unit"));
        assert!(parse_size("0").is_err());
        assert!(parse_size("").is_err());
        assert!(parse_size("1.2.3G").is_err());
    }

    #[test]
    fn wwns_compare_in_one_form() {
        assert_eq!(normalize_wwn("0x5000C500A1B2C3D4"), "5000c500a1b2c3d4");
        assert_eq!(normalize_wwn("naa.5000c500a1b2c3d4"), "5000c500a1b2c3d4");
        assert_eq!(normalize_wwn("wwn-0x5000c500a1b2c3d4"), "5000c500a1b2c3d4");
        assert_eq!(normalize_wwn("eui.0025388b91b3c1a2"), "0025388b91b3c1a2");
    }

    #[test]
    fn validation() {
        assert!(DiskHints::default().validate().is_ok());
        assert!(DiskHints::default().is_empty());
        let h = DiskHints {
            serial: Some(" ".into()),
            ..Default::default()
        };
        assert!(h.validate().unwrap_err().contains("`serial` is empty"));
        let h = DiskHints {
            transport: Some("floppy".into()),
            ..Default::default()
        };
        assert!(h.validate().unwrap_err().contains("use one of nvme"));
        let h = DiskHints {
            min_size: Some(10),
            max_size: Some(5),
            ..Default::default()
        };
        assert!(h.validate().unwrap_err().contains("larger than `maxSize`"));
        let h = DiskHints {
            allow_removable: true,
            ..Default::default()
        };
        assert!(h.validate().unwrap_err().contains("needs another hint"));
        let h = DiskHints {
            serial: Some("S1".into()),
            min_size: Some(1 << 30),
            ..Default::default()
        };
        assert!(h.validate().is_ok());
        assert_eq!(h.describe(), "serial=\"S1\", minSize=1073741824");
        let json = serde_json::to_string(&h).unwrap();
        assert_eq!(json, r#"{"serial":"S1","minSize":1073741824}"#);
        assert!(serde_json::from_str::<DiskHints>(r#"{"serail":"x"}"#).is_err());
    }
}
