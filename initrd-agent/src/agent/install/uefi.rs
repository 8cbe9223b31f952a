//! uefi: after the hook, makes sure the firmware can start the loader it installed even when
//! no boot entry works (a hook that ran `grub-install --no-nvram`, a firmware that forgets or
//! rejects entries): when the ESP has no `EFI/BOOT/BOOTX64.EFI` (the removable-media path every
//! UEFI firmware tries), the loader's directory (`EFI/debian/`…) is copied to `EFI/BOOT/` and
//! its loader, shim when there is one, else GRUB or systemd-boot, becomes `BOOTX64.EFI`. Names
//! on FAT are matched without regard to case. The boot entry itself, and `BootOrder` with
//! network boot kept on top, are [`super::efiboot`]'s.

use std::fs;
use std::path::{Path, PathBuf};

/// Loaders, best first.
const LOADERS: &[&str] = &["shimx64.efi", "grubx64.efi", "systemd-bootx64.efi"];
/// Files of a loader's directory not copied: shim's fallback would make boot entries.
const NOT_COPIED: &[&str] = &["fbx64.efi", "bootx64.csv"];
/// Copying stops past this much (a loader directory is a few MiB).
const MAX_COPY: u64 = 64 << 20;

/// The entry of `dir` named `name` whatever its case.
fn find_ci(dir: &Path, name: &str) -> Option<PathBuf> {
    fs::read_dir(dir)
        .ok()?
        .flatten()
        .find(|e| e.file_name().to_string_lossy().eq_ignore_ascii_case(name))
        .map(|e| e.path())
}

/// The file an `efiBootloaderPath` (`\efi\debian\grubx64.efi`, FAT's names matched whatever
/// their case) names on the ESP mounted at `esp`, or why it is not there (with the loaders
/// that are, so the operator can fix the request).
pub fn resolve_loader(esp: &Path, wanted: &str) -> Result<PathBuf, String> {
    let parts: Vec<&str> = wanted
        .split(['\\', '/'])
        .filter(|p| !p.is_empty())
        .collect();
    let mut at = esp.to_path_buf();
    let mut found = !parts.is_empty() && !parts.iter().any(|p| *p == "." || *p == "..");
    if found {
        for p in &parts {
            match find_ci(&at, p) {
                Some(next) => at = next,
                None => {
                    found = false;
                    break;
                }
            }
        }
    }
    if found && at.is_file() {
        return Ok(at);
    }
    let mut seen = Vec::new();
    if let Some(efi) = find_ci(esp, "EFI") {
        let mut dirs: Vec<PathBuf> = fs::read_dir(&efi)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir())
            .collect();
        dirs.sort();
        for d in dirs {
            let mut files: Vec<String> = fs::read_dir(&d)
                .into_iter()
                .flatten()
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.to_ascii_lowercase().ends_with(".efi"))
                .collect();
            files.sort();
            let dn = d
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default();
            seen.extend(files.into_iter().map(|f| format!("\\EFI\\{dn}\\{f}")));
        }
    }
    Err(format!(
        "efiBootloaderPath {wanted} is not on the ESP after make_image_bootable.sh (loaders there: \
         {}): give the path of a loader the image installs, or leave efiBootloaderPath out",
        if seen.is_empty() {
            "none".to_string()
        } else {
            seen.join(", ")
        }
    ))
}

/// Makes `EFI/BOOT/BOOTX64.EFI` on the ESP mounted at `esp`. Ok: what was done, for the event.
pub fn ensure_removable_path(esp: &Path) -> Result<String, String> {
    ensure_removable_path_for(esp, None)
}

/// [`ensure_removable_path`]; with `wanted` (a file on the ESP, from [`resolve_loader`]),
/// `BOOTX64.EFI` becomes that loader (with its directory), whatever was there.
pub fn ensure_removable_path_for(esp: &Path, wanted: Option<&Path>) -> Result<String, String> {
    let efi = find_ci(esp, "EFI").ok_or_else(|| {
        format!(
            "the hook installed no UEFI loader: the ESP ({}) has no EFI directory",
            esp.display()
        )
    })?;
    let boot = find_ci(&efi, "BOOT");
    let existing = boot.as_ref().and_then(|b| find_ci(b, "BOOTX64.EFI"));
    if let Some(w) = wanted {
        if existing.as_deref() == Some(w) {
            return Ok("EFI/BOOT/BOOTX64.EFI is the efiBootloaderPath: left as it is".into());
        }
        let dir = w.parent().unwrap_or(esp).to_path_buf();
        return copy_loader(esp, &efi, boot, &dir, w);
    }
    if existing.is_some() {
        return Ok("EFI/BOOT/BOOTX64.EFI already there: left as it is".into());
    }
    let mut dirs: Vec<PathBuf> = fs::read_dir(&efi)
        .map_err(|e| format!("cannot list {}: {e}", efi.display()))?
        .flatten()
        .filter(|e| e.path().is_dir())
        .filter(|e| !e.file_name().to_string_lossy().eq_ignore_ascii_case("BOOT"))
        .map(|e| e.path())
        .collect();
    dirs.sort();
    let found = LOADERS.iter().find_map(|l| {
        dirs.iter()
            .find_map(|d| find_ci(d, l).map(|p| (d.clone(), p)))
    });
    let Some((dir, loader)) = found else {
        let seen: Vec<String> = dirs
            .iter()
            .filter_map(|d| {
                d.file_name()
                    .map(|n| format!("EFI/{}", n.to_string_lossy()))
            })
            .collect();
        return Err(format!(
            "the hook installed no UEFI loader on the ESP: no EFI/*/{} (found: {})",
            LOADERS.join(", "),
            if seen.is_empty() {
                "nothing".to_string()
            } else {
                seen.join(", ")
            }
        ));
    };
    copy_loader(esp, &efi, boot, &dir, &loader)
}

/// `dir`'s files copied to `EFI/BOOT/`, `loader` as `BOOTX64.EFI`.
fn copy_loader(
    esp: &Path,
    efi: &Path,
    boot: Option<PathBuf>,
    dir: &Path,
    loader: &Path,
) -> Result<String, String> {
    let boot = match boot {
        Some(b) => b,
        None => {
            let b = efi.join("BOOT");
            fs::create_dir_all(&b).map_err(|e| format!("cannot make {}: {e}", b.display()))?;
            b
        }
    };
    let mut copied = 0u64;
    let mut names = Vec::new();
    // a loader already in EFI/BOOT has its files there: copying them onto themselves would
    // truncate them
    let same_dir = fs::canonicalize(dir).ok() == fs::canonicalize(&boot).ok();
    let entries = fs::read_dir(dir).map_err(|e| format!("cannot list {}: {e}", dir.display()))?;
    for e in entries.flatten().filter(|_| !same_dir) {
        let name = e.file_name().to_string_lossy().into_owned();
        let Ok(m) = e.metadata() else { continue };
        if !m.is_file() || NOT_COPIED.iter().any(|n| n.eq_ignore_ascii_case(&name)) {
            continue;
        }
        copied += m.len();
        if copied > MAX_COPY {
            return Err(format!(
                "{} holds more than {} MiB: not copied to EFI/BOOT",
                dir.display(),
                MAX_COPY >> 20
            ));
        }
        fs::copy(e.path(), boot.join(&name)).map_err(|err| {
            format!(
                "cannot copy {} to {}: {err}",
                e.path().display(),
                boot.display()
            )
        })?;
        names.push(name);
    }
    let target = boot.join("BOOTX64.EFI");
    fs::copy(loader, &target).map_err(|e| {
        format!(
            "cannot copy {} to {}: {e}",
            loader.display(),
            target.display()
        )
    })?;
    let rel = |p: &Path| {
        p.strip_prefix(esp)
            .map(|r| r.display().to_string())
            .unwrap_or_else(|_| p.display().to_string())
    };
    names.sort();
    Ok(format!(
        "removable-path fallback: {} copied to EFI/BOOT/BOOTX64.EFI (with {} from {})",
        rel(loader),
        names.join(", "),
        rel(dir)
    ))
}
