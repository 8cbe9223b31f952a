//! efiboot: the UEFI boot entry for the installed system, written through efivarfs like
//! `efibootmgr` does, and the firmware's `BootOrder` kept with network boot on top.
//!
//! After the hook, [`ensure_entry`]:
//! - finds the loader the hook installed on the ESP (`EFI/<vendor>/shimx64.efi`, else
//!   `grubx64.efi` or `systemd-bootx64.efi`; `EFI/BOOT/BOOTX64.EFI` when that is all there is);
//! - reuses the `Boot####` entry that already starts it (the hook's own `efibootmgr`, or an
//!   earlier install), else writes a new one: `<vendor> (byol)`, device path
//!   `HD(<partition>, GPT GUID or MBR signature)/File(\EFI\<vendor>\<loader>)`, the short form
//!   firmware expands to the disk wherever it sits;
//! - writes `BootOrder` as: the network entries that led it before the hook ran, in their
//!   order, then the new entry, then everything else. A hook that ran `grub-install` without
//!   `--no-nvram` puts its entry first; this puts network boot back on top, so the machine keeps
//!   asking byol's server first (which answers "boot the local disk" when there is no install).
//!   With no network entry on top before the hook, the new entry goes first;
//! - deletes the entries an earlier byol install made (`… (byol)`) for a loader that is gone
//!   (a reinstall makes new partition GUIDs), so reinstalls do not pile up entries.
//!
//! A machine without EFI variables (efivarfs not mounted, or read-only) keeps the removable
//! path ([`super::uefi`]) alone: a warning, not a failure.

use std::fs;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt as _;
use std::path::{Path, PathBuf};

use super::image::TableKind;

/// EFI_GLOBAL_VARIABLE: where `Boot####` and `BootOrder` live.
pub const GLOBAL: &str = "8be4df61-93ca-11d2-aa0d-00e098032b8c";
/// NON_VOLATILE | BOOTSERVICE_ACCESS | RUNTIME_ACCESS.
pub const ATTRS: u32 = 0x7;
/// LOAD_OPTION_ACTIVE.
pub const LOAD_OPTION_ACTIVE: u32 = 0x1;

/// The EFI variables of the machine (`/sys/firmware/efi/efivars`, a directory in tests).
#[derive(Debug, Clone)]
pub struct Vars {
    pub dir: PathBuf,
}

impl Vars {
    pub fn system() -> Vars {
        Vars {
            dir: PathBuf::from("/sys/firmware/efi/efivars"),
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(format!("{name}-{GLOBAL}"))
    }

    /// Whether the firmware's variables can be read here at all.
    pub fn available(&self) -> bool {
        self.path("BootCurrent").exists() || self.path("BootOrder").exists()
    }

    /// A variable's data (without efivarfs's 4 attribute bytes), None when it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>, String> {
        match fs::read(self.path(name)) {
            Ok(b) if b.len() >= 4 => Ok(Some(b[4..].to_vec())),
            Ok(_) => Ok(Some(Vec::new())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(format!("cannot read EFI variable {name}: {e}")),
        }
    }

    /// Writes a variable in one `write` (efivarfs takes the attributes then the data).
    pub fn write(&self, name: &str, data: &[u8]) -> Result<(), String> {
        let mut buf = ATTRS.to_le_bytes().to_vec();
        buf.extend_from_slice(data);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o644)
            .open(self.path(name))
            .map_err(|e| format!("cannot open EFI variable {name}: {e}"))?;
        // efivarfs wants the whole variable in one write; a short write is an error
        let n = f
            .write(&buf)
            .map_err(|e| format!("cannot write EFI variable {name}: {e}"))?;
        if n != buf.len() {
            return Err(format!(
                "cannot write EFI variable {name}: short write ({n} of {} bytes)",
                buf.len()
            ));
        }
        // efivarfs replaces the variable with what one write gives (it takes no truncation);
        // a plain directory standing in for it (tests) is cut to that length
        if !is_efivarfs(&f) {
            f.set_len(buf.len() as u64)
                .map_err(|e| format!("cannot write EFI variable {name}: {e}"))?;
        }
        Ok(())
    }

    /// Deletes a variable (efivarfs: unlink).
    pub fn remove(&self, name: &str) -> Result<(), String> {
        fs::remove_file(self.path(name))
            .map_err(|e| format!("cannot delete EFI variable {name}: {e}"))
    }

    pub fn boot_order(&self) -> Result<Vec<u16>, String> {
        Ok(self
            .read("BootOrder")?
            .map(|d| {
                d.chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .collect()
            })
            .unwrap_or_default())
    }

    pub fn boot_current(&self) -> Option<u16> {
        let d = self.read("BootCurrent").ok()??;
        (d.len() >= 2).then(|| u16::from_le_bytes([d[0], d[1]]))
    }

    /// The numbers of every `Boot####` variable.
    pub fn boot_entries(&self) -> Result<Vec<u16>, String> {
        let suffix = format!("-{GLOBAL}");
        let mut v: Vec<u16> = fs::read_dir(&self.dir)
            .map_err(|e| format!("cannot list {}: {e}", self.dir.display()))?
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let hex = name.strip_suffix(&suffix)?.strip_prefix("Boot")?;
                (hex.len() == 4 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
                    .then(|| u16::from_str_radix(hex, 16).ok())?
            })
            .collect();
        v.sort_unstable();
        Ok(v)
    }

    pub fn option(&self, n: u16) -> Option<LoadOption> {
        LoadOption::parse(&self.read(&boot_name(n)).ok()??)
    }
}

/// Whether `f` lives on efivarfs.
fn is_efivarfs(f: &fs::File) -> bool {
    const EFIVARFS_MAGIC: u32 = 0xde5e_81e4;
    nix::sys::statfs::fstatfs(f).is_ok_and(|s| s.filesystem_type().0 as u32 == EFIVARFS_MAGIC)
}

/// `Boot0004`.
pub fn boot_name(n: u16) -> String {
    format!("Boot{n:04X}")
}

/// An EFI_LOAD_OPTION.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LoadOption {
    pub attributes: u32,
    pub description: String,
    /// The device path list, End node included.
    pub device_path: Vec<u8>,
    pub optional_data: Vec<u8>,
}

impl LoadOption {
    pub fn parse(b: &[u8]) -> Option<LoadOption> {
        let attributes = u32::from_le_bytes(b.get(0..4)?.try_into().ok()?);
        let dp_len = u16::from_le_bytes(b.get(4..6)?.try_into().ok()?) as usize;
        let mut i = 6;
        let mut units = Vec::new();
        loop {
            let u = u16::from_le_bytes(b.get(i..i + 2)?.try_into().ok()?);
            i += 2;
            if u == 0 {
                break;
            }
            units.push(u);
        }
        let device_path = b.get(i..i + dp_len)?.to_vec();
        Some(LoadOption {
            attributes,
            description: String::from_utf16_lossy(&units),
            device_path,
            optional_data: b[i + dp_len..].to_vec(),
        })
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = self.attributes.to_le_bytes().to_vec();
        b.extend_from_slice(&(self.device_path.len() as u16).to_le_bytes());
        for u in self.description.encode_utf16().chain([0]) {
            b.extend_from_slice(&u.to_le_bytes());
        }
        b.extend_from_slice(&self.device_path);
        b.extend_from_slice(&self.optional_data);
        b
    }

    /// Whether this entry boots from the network: its path has a MAC, IPv4, IPv6 or URI node.
    pub fn is_network(&self) -> bool {
        nodes(&self.device_path).any(|(t, s, _)| t == 3 && matches!(s, 11 | 12 | 13 | 24))
    }

    /// The HD node's signature and the file path (lowercase), to compare two entries.
    pub fn target(&self) -> Option<([u8; 16], String)> {
        let mut sig = None;
        let mut file = None;
        for (t, s, data) in nodes(&self.device_path) {
            if t == 4 && s == 1 && data.len() >= 38 {
                sig = data[20..36].try_into().ok();
            }
            if t == 4 && s == 4 {
                let units: Vec<u16> = data
                    .chunks_exact(2)
                    .map(|c| u16::from_le_bytes([c[0], c[1]]))
                    .take_while(|&u| u != 0)
                    .collect();
                file = Some(String::from_utf16_lossy(&units).to_ascii_lowercase());
            }
        }
        Some((sig?, file?))
    }
}

/// The nodes of a device path: (type, subtype, data after the 4-byte header), up to End.
fn nodes(dp: &[u8]) -> impl Iterator<Item = (u8, u8, &[u8])> {
    let mut i = 0;
    std::iter::from_fn(move || {
        let h = dp.get(i..i + 4)?;
        let len = u16::from_le_bytes([h[2], h[3]]) as usize;
        if h[0] == 0x7f || len < 4 {
            return None;
        }
        let data = dp.get(i + 4..i + len)?;
        i += len;
        Some((h[0], h[1], data))
    })
}

/// Where the ESP is, for the HD() node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EspLocation {
    /// 1-based partition number.
    pub number: u32,
    /// In logical sectors.
    pub start: u64,
    pub sectors: u64,
    pub table: TableKind,
    /// GPT: the partition's unique GUID in on-disk order; MBR: the disk signature in the first
    /// four bytes.
    pub signature: [u8; 16],
}

/// `HD(...)/File(path)/End`.
pub fn device_path(esp: &EspLocation, file: &str) -> Vec<u8> {
    let mut dp = Vec::new();
    // HD: type 4 (media), subtype 1, length 42
    dp.extend_from_slice(&[4, 1, 42, 0]);
    dp.extend_from_slice(&esp.number.to_le_bytes());
    dp.extend_from_slice(&esp.start.to_le_bytes());
    dp.extend_from_slice(&esp.sectors.to_le_bytes());
    dp.extend_from_slice(&esp.signature);
    let (format, sig_type) = match esp.table {
        TableKind::Gpt => (2u8, 2u8),
        TableKind::Mbr => (1, 1),
    };
    dp.extend_from_slice(&[format, sig_type]);
    // File path: type 4, subtype 4, UTF-16 with its NUL
    let units: Vec<u16> = file.encode_utf16().chain([0]).collect();
    let len = 4 + units.len() * 2;
    dp.extend_from_slice(&[4, 4]);
    dp.extend_from_slice(&(len as u16).to_le_bytes());
    for u in units {
        dp.extend_from_slice(&u.to_le_bytes());
    }
    // End of the whole path
    dp.extend_from_slice(&[0x7f, 0xff, 4, 0]);
    dp
}

/// The new `BootOrder`: the network entries that led `before` (still present per `exists`),
/// then `ours`, then the rest of `now` in its order, each number once.
pub fn new_order(
    before: &[u16],
    now: &[u16],
    ours: u16,
    is_network: &dyn Fn(u16) -> bool,
    exists: &dyn Fn(u16) -> bool,
) -> Vec<u16> {
    let mut out: Vec<u16> = before
        .iter()
        .copied()
        .take_while(|&n| is_network(n))
        .filter(|&n| exists(n) && n != ours)
        .collect();
    out.push(ours);
    for &n in now {
        if !out.contains(&n) {
            out.push(n);
        }
    }
    out
}

/// Loaders, best first.
const LOADERS: &[&str] = &["shimx64.efi", "grubx64.efi", "systemd-bootx64.efi"];

fn find_ci(dir: &Path, name: &str) -> Option<String> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.eq_ignore_ascii_case(name))
}

/// The loader on the ESP mounted at `esp`: (vendor directory, `\EFI\<dir>\<loader>`).
pub fn find_loader(esp: &Path) -> Option<(String, String)> {
    let efi = find_ci(esp, "EFI")?;
    let mut dirs: Vec<String> = fs::read_dir(esp.join(&efi))
        .ok()?
        .flatten()
        .filter(|e| e.path().is_dir())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| !n.eq_ignore_ascii_case("BOOT"))
        .collect();
    dirs.sort();
    for l in LOADERS {
        for d in &dirs {
            if let Some(f) = find_ci(&esp.join(&efi).join(d), l) {
                return Some((d.clone(), format!("\\{efi}\\{d}\\{f}")));
            }
        }
    }
    let boot = find_ci(&esp.join(&efi), "BOOT")?;
    let f = find_ci(&esp.join(&efi).join(&boot), "BOOTX64.EFI")?;
    Some(("BOOT".into(), format!("\\{efi}\\{boot}\\{f}")))
}

/// (vendor directory, `\EFI\<dir>\<loader>`) of a file on the ESP mounted at `esp`.
pub fn loader_of(esp: &Path, file: &Path) -> Option<(String, String)> {
    let rel = file.strip_prefix(esp).ok()?;
    let parts: Vec<String> = rel
        .components()
        .map(|c| c.as_os_str().to_string_lossy().into_owned())
        .collect();
    let vendor = match parts.len() {
        0 => return None,
        1 => "EFI".to_string(),
        n => parts[n - 2].clone(),
    };
    Some((vendor, format!("\\{}", parts.join("\\"))))
}

/// Makes the boot entry and fixes `BootOrder` (see the module's doc). `before` is `BootOrder`
/// as it was before the hook ran. Ok: what was done, for the event.
pub fn ensure_entry(
    vars: &Vars,
    esp_mount: &Path,
    esp: &EspLocation,
    before: &[u16],
) -> Result<String, String> {
    ensure_entry_for(vars, esp_mount, esp, before, None)
}

/// [`ensure_entry`] for the loader `wanted` (a file on the ESP, e.g. from
/// `efiBootloaderPath`), else the one found.
pub fn ensure_entry_for(
    vars: &Vars,
    esp_mount: &Path,
    esp: &EspLocation,
    before: &[u16],
    wanted: Option<&Path>,
) -> Result<String, String> {
    let found = match wanted {
        Some(w) => loader_of(esp_mount, w),
        None => find_loader(esp_mount),
    };
    let (vendor, file) = found.ok_or_else(|| {
        format!(
            "no UEFI loader on the ESP ({}) to make a boot entry for",
            esp_mount.display()
        )
    })?;
    let dp = device_path(esp, &file);
    let want = LoadOption {
        attributes: LOAD_OPTION_ACTIVE,
        description: format!("{vendor} (byol)"),
        device_path: dp,
        optional_data: Vec::new(),
    };
    let now = vars.boot_order()?;
    let existing = vars.boot_entries()?;
    let target = want.target();
    let same = existing.iter().copied().find(|&n| {
        vars.option(n)
            .is_some_and(|o| o.target().is_some() && o.target() == target)
    });
    let (ours, how) = match same {
        Some(n) => {
            let mut o = vars.option(n).unwrap_or(want.clone());
            if o.attributes & LOAD_OPTION_ACTIVE == 0 {
                o.attributes |= LOAD_OPTION_ACTIVE;
                vars.write(&boot_name(n), &o.encode())?;
            }
            (
                n,
                format!("{} \"{}\" (already there)", boot_name(n), o.description),
            )
        }
        None => {
            let n = (0..=0xffffu16)
                .find(|n| !existing.contains(n))
                .ok_or("every Boot#### variable is taken")?;
            vars.write(&boot_name(n), &want.encode())?;
            (n, format!("{} \"{}\"", boot_name(n), want.description))
        }
    };
    // entries an earlier install made for a loader that is gone (another partition GUID)
    let mut stale = Vec::new();
    for &n in &existing {
        let Some(o) = vars.option(n) else { continue };
        if n != ours && o.description.ends_with(" (byol)") && o.target() != target {
            vars.remove(&boot_name(n))?;
            stale.push(n);
        }
    }
    let was = now.clone();
    let now: Vec<u16> = now.into_iter().filter(|n| !stale.contains(n)).collect();
    let is_net = |n: u16| vars.option(n).is_some_and(|o| o.is_network());
    let exists = |n: u16| (existing.contains(&n) || n == ours) && !stale.contains(&n);
    let order = new_order(before, &now, ours, &is_net, &exists);
    if order != was {
        let data: Vec<u8> = order.iter().flat_map(|n| n.to_le_bytes()).collect();
        vars.write("BootOrder", &data)?;
    }
    let list: Vec<String> = order.iter().map(|n| format!("{n:04X}")).collect();
    let net_first = order.first().is_some_and(|&n| is_net(n));
    let removed = if stale.is_empty() {
        String::new()
    } else {
        let names: Vec<String> = stale.iter().map(|&n| boot_name(n)).collect();
        format!("; removed stale byol entries {}", names.join(", "))
    };
    Ok(format!(
        "boot entry {how} → {file}; BootOrder {}{}{removed}",
        list.join(","),
        if net_first {
            " (network boot first)"
        } else {
            ""
        }
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpt_esp() -> EspLocation {
        EspLocation {
            number: 2,
            start: 8_386_560,
            sectors: 532_480,
            table: TableKind::Gpt,
            signature: *b"0123456789abcdef",
        }
    }

    #[test]
    fn device_path_bytes() {
        let dp = device_path(&gpt_esp(), "\\EFI\\debian\\grubx64.efi");
        assert_eq!(&dp[..4], &[4, 1, 42, 0]);
        assert_eq!(u32::from_le_bytes(dp[4..8].try_into().unwrap()), 2);
        assert_eq!(u64::from_le_bytes(dp[8..16].try_into().unwrap()), 8_386_560);
        assert_eq!(u64::from_le_bytes(dp[16..24].try_into().unwrap()), 532_480);
        assert_eq!(&dp[24..40], b"0123456789abcdef");
        assert_eq!(&dp[40..42], &[2, 2]);
        let file_len = 4 + ("\\EFI\\debian\\grubx64.efi".len() + 1) * 2;
        assert_eq!(&dp[42..46], &[4, 4, file_len as u8, 0]);
        assert_eq!(&dp[dp.len() - 4..], &[0x7f, 0xff, 4, 0]);
        assert_eq!(dp.len(), 42 + file_len + 4);
        let o = LoadOption {
            attributes: 1,
            description: "debian (byol)".into(),
            device_path: dp,
            optional_data: Vec::new(),
        };
        let back = LoadOption::parse(&o.encode()).unwrap();
        assert_eq!(back, o);
        assert!(!o.is_network());
        assert_eq!(
            o.target().unwrap(),
            (*b"0123456789abcdef", "\\efi\\debian\\grubx64.efi".into())
        );
    }

    #[test]
    fn network_entries_are_told_apart() {
        // PciRoot(0)/Pci(2,0)/MAC(525400123456)/IPv4(...) as OVMF makes for PXE
        let mut dp = vec![2, 1, 12, 0, 0xd0, 0x41, 0x03, 0x0a, 0, 0, 0, 0];
        dp.extend_from_slice(&[1, 1, 6, 0, 0, 2]);
        let mut mac = vec![3, 11, 37, 0];
        mac.extend_from_slice(&[0x52, 0x54, 0, 0x12, 0x34, 0x56]);
        mac.extend_from_slice(&[0; 26]);
        mac.push(1);
        dp.extend_from_slice(&mac);
        dp.extend_from_slice(&[0x7f, 0xff, 4, 0]);
        let o = LoadOption {
            attributes: 1,
            description: "UEFI PXEv4 (MAC:525400123456)".into(),
            device_path: dp,
            optional_data: Vec::new(),
        };
        assert!(o.is_network());
        assert_eq!(o.target(), None);
        // truncated or garbage input never panics
        for n in 0..o.encode().len() {
            let _ = LoadOption::parse(&o.encode()[..n]);
        }
        assert!(LoadOption::parse(&[1, 0, 0, 0, 200, 0, 0, 0]).is_none());
    }

    #[test]
    fn boot_order_keeps_network_on_top() {
        let net = |n: u16| n == 1 || n == 2;
        let all = |_: u16| true;
        // the hook's grub-install put its entry 5 first: network goes back on top, ours next
        assert_eq!(
            new_order(&[1, 2, 0, 3], &[5, 1, 2, 0, 3], 5, &net, &all),
            [1, 2, 5, 0, 3]
        );
        // a new entry: after the leading network entries
        assert_eq!(
            new_order(&[1, 0, 2], &[1, 0, 2], 7, &net, &all),
            [1, 7, 0, 2]
        );
        // no network entry on top before: ours first
        assert_eq!(new_order(&[0, 1], &[0, 1], 4, &net, &all), [4, 0, 1]);
        assert_eq!(new_order(&[], &[], 4, &net, &all), [4]);
        // ours already in the order: moved, not doubled
        assert_eq!(new_order(&[1, 0, 4], &[1, 0, 4], 4, &net, &all), [1, 4, 0]);
        // a network entry that is gone is not put back
        assert_eq!(
            new_order(&[2, 1, 0], &[1, 0], 6, &net, &|n| n != 2),
            [1, 6, 0]
        );
    }

    #[test]
    fn entries_through_a_fake_efivarfs() {
        let tmp = tempfile::tempdir().unwrap();
        let vars = Vars {
            dir: tmp.path().join("efivars"),
        };
        fs::create_dir_all(&vars.dir).unwrap();
        let esp = tmp.path().join("esp");
        fs::create_dir_all(esp.join("EFI/debian")).unwrap();
        fs::create_dir_all(esp.join("EFI/BOOT")).unwrap();
        fs::write(esp.join("EFI/debian/grubx64.efi"), b"MZ").unwrap();
        fs::write(esp.join("EFI/BOOT/BOOTX64.EFI"), b"MZ").unwrap();
        // firmware: Boot0001 network, Boot0000 a disk; BootOrder 0001,0000
        let mut pxe = vec![3, 11, 37, 0];
        pxe.extend_from_slice(&[0; 33]);
        pxe.extend_from_slice(&[0x7f, 0xff, 4, 0]);
        let net = LoadOption {
            attributes: 1,
            description: "UEFI PXEv4".into(),
            device_path: pxe,
            optional_data: Vec::new(),
        };
        vars.write("Boot0001", &net.encode()).unwrap();
        let disk = LoadOption {
            attributes: 1,
            description: "UEFI QEMU HARDDISK".into(),
            device_path: vec![2, 1, 12, 0, 0xd0, 0x41, 3, 10, 0, 0, 0, 0, 0x7f, 0xff, 4, 0],
            optional_data: Vec::new(),
        };
        vars.write("Boot0000", &disk.encode()).unwrap();
        vars.write("BootOrder", &[1, 0, 0, 0]).unwrap();
        vars.write("BootCurrent", &[1, 0]).unwrap();
        assert!(vars.available());
        let before = vars.boot_order().unwrap();
        assert_eq!(before, [1, 0]);

        let msg = ensure_entry(&vars, &esp, &gpt_esp(), &before).unwrap();
        assert_eq!(
            msg,
            "boot entry Boot0002 \"debian (byol)\" → \\EFI\\debian\\grubx64.efi; BootOrder \
             0001,0002,0000 (network boot first)"
        );
        let raw = fs::read(vars.path("Boot0002")).unwrap();
        assert_eq!(&raw[..4], &ATTRS.to_le_bytes());
        assert_eq!(vars.option(2).unwrap().description, "debian (byol)");
        // again (a second install on the same partition): the entry is reused
        let msg = ensure_entry(&vars, &esp, &gpt_esp(), &before).unwrap();
        assert!(
            msg.contains("Boot0002 \"debian (byol)\" (already there)"),
            "{msg}"
        );
        assert_eq!(vars.boot_order().unwrap(), [1, 2, 0]);
        // a hook that made its own entry for the same loader and put it first
        let mut hooks = vars.option(2).unwrap();
        hooks.description = "debian".into();
        vars.write("Boot0002", &hooks.encode()).unwrap();
        vars.write("BootOrder", &[2, 0, 1, 0, 0, 0]).unwrap();
        let msg = ensure_entry(&vars, &esp, &gpt_esp(), &before).unwrap();
        assert!(
            msg.ends_with("BootOrder 0001,0002,0000 (network boot first)"),
            "{msg}"
        );
        assert!(msg.contains("\"debian\" (already there)"), "{msg}");
        // a reinstall: the old install's entry (another partition GUID) is deleted; the hook's
        // own entries are not byol's to delete
        hooks.description = "debian (byol)".into();
        vars.write("Boot0002", &hooks.encode()).unwrap();
        let mut other = gpt_esp();
        other.signature = *b"fedcba9876543210";
        let msg = ensure_entry(&vars, &esp, &other, &before).unwrap();
        assert_eq!(
            msg,
            "boot entry Boot0003 \"debian (byol)\" → \\EFI\\debian\\grubx64.efi; BootOrder \
             0001,0003,0000 (network boot first); removed stale byol entries Boot0002"
        );
        assert!(vars.option(2).is_none() && vars.option(0).is_some());
        assert_eq!(vars.boot_order().unwrap(), [1, 3, 0]);
        // the stale entry last in BootOrder, ours already in place: BootOrder still loses it
        let mut old = vars.option(3).unwrap();
        old.device_path = device_path(&gpt_esp(), "\\EFI\\debian\\grubx64.efi");
        vars.write("Boot0005", &old.encode()).unwrap();
        vars.write("BootOrder", &[1, 0, 3, 0, 0, 0, 5, 0]).unwrap();
        let msg = ensure_entry(&vars, &esp, &other, &before).unwrap();
        assert!(
            msg.ends_with("removed stale byol entries Boot0005"),
            "{msg}"
        );
        assert_eq!(vars.boot_order().unwrap(), [1, 3, 0]);
        // only the removable path on the ESP: the entry points there
        fs::remove_dir_all(esp.join("EFI/debian")).unwrap();
        assert_eq!(
            find_loader(&esp).unwrap(),
            ("BOOT".into(), "\\EFI\\BOOT\\BOOTX64.EFI".into())
        );
    }
}
