//! tools: the Debian programs whose job it is, for the agent to run on the machine (software
//! RAID, LVM, filesystems, swap), with every shared library they need and the dynamic loader,
//! resolved from their ELF headers as dracut does: each file's `PT_INTERP` and `DT_NEEDED`
//! entries, recursively, found in the multiarch library directories of `root` (the build
//! machine's `/`, where `cargo xtask deps` installed the packages). Libraries are stored under
//! the name they are asked by (`lib/x86_64-linux-gnu/libc.so.6`), their symlinks followed.
//!
//! A small reader of ELF64 program headers and the dynamic section, not a crate: it needs four
//! fields (`agent.rs` already reads the program headers the same way).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::Error;

/// The programs carried, by their path on a Debian 12 system, and the package of each.
pub const TOOLS: &[(&str, &str)] = &[
    ("usr/sbin/mdadm", "mdadm"),
    ("usr/sbin/lvm", "lvm2"),
    ("usr/sbin/mke2fs", "e2fsprogs"),
    ("usr/sbin/mkfs.ext4", "e2fsprogs"),
    ("usr/sbin/e2fsck", "e2fsprogs"),
    ("usr/sbin/resize2fs", "e2fsprogs"),
    ("usr/sbin/e2image", "e2fsprogs"),
    ("usr/sbin/mkfs.xfs", "xfsprogs"),
    ("usr/sbin/xfs_growfs", "xfsprogs"),
    ("usr/sbin/mkfs.btrfs", "btrfs-progs"),
    ("usr/bin/btrfs", "btrfs-progs"),
    ("usr/sbin/mkswap", "util-linux"),
    ("usr/sbin/wipefs", "util-linux"),
];

/// Configuration files the tools read (mke2fs's defaults: without it, ext4 gets the library's
/// older built-in ones).
pub const FILES: &[&str] = &["etc/mke2fs.conf"];

const LIB_DIRS: &[&str] = &[
    "lib/x86_64-linux-gnu",
    "usr/lib/x86_64-linux-gnu",
    "lib64",
    "usr/lib64",
    "lib",
    "usr/lib",
];
const LIB_DIR_IN_ARCHIVE: &str = "lib/x86_64-linux-gnu";

/// What goes into the archive: path → (bytes, mode).
pub type Files = BTreeMap<String, (Vec<u8>, u32)>;

/// The tools of `tools` (paths relative to `root`), their libraries and loader, and [`FILES`].
pub fn collect(root: &Path, tools: &[(&str, &str)]) -> Result<Files, Error> {
    let mut out = Files::new();
    let mut queue: Vec<String> = Vec::new();
    for (path, package) in tools {
        let file = root.join(path);
        let bytes = read(&file).map_err(|e| match e {
            Error::Io { path, source } if source.kind() == std::io::ErrorKind::NotFound => {
                Error::Usage(format!(
                    "{} is missing: install Debian's {package} package (cargo xtask deps does)",
                    path.display()
                ))
            }
            e => e,
        })?;
        let (interp, needed) =
            dynamic(&bytes).map_err(|w| Error::Usage(format!("{}: {w}", file.display())))?;
        if let Some(i) = interp {
            let rel = i.trim_start_matches('/').to_string();
            if !out.contains_key(&rel) {
                out.insert(rel.clone(), (read(&root.join(&rel))?, 0o755));
            }
        }
        queue.extend(needed);
        out.insert((*path).to_string(), (bytes, 0o755));
    }
    while let Some(lib) = queue.pop() {
        let rel = format!("{LIB_DIR_IN_ARCHIVE}/{lib}");
        if out.contains_key(&rel) || out.keys().any(|k| k.ends_with(&format!("/{lib}"))) {
            continue;
        }
        let found = LIB_DIRS
            .iter()
            .map(|d| root.join(d).join(&lib))
            .find(|p| p.is_file())
            .ok_or_else(|| {
                Error::Usage(format!(
                    "shared library {lib} (needed by the tools) is not in {}'s library \
                     directories",
                    root.display()
                ))
            })?;
        let bytes = read(&found)?;
        let (_, needed) =
            dynamic(&bytes).map_err(|w| Error::Usage(format!("{}: {w}", found.display())))?;
        queue.extend(needed);
        out.insert(rel, (bytes, 0o755));
    }
    for f in FILES {
        let p = root.join(f);
        if p.is_file() {
            out.insert((*f).to_string(), (read(&p)?, 0o644));
        }
    }
    Ok(out)
}

fn read(p: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(p).map_err(|source| Error::Io {
        path: PathBuf::from(p),
        source,
    })
}

const PT_LOAD: u32 = 1;
const PT_DYNAMIC: u32 = 2;
const PT_INTERP: u32 = 3;
const DT_NEEDED: u64 = 1;
const DT_STRTAB: u64 = 5;

/// An ELF64 little-endian file's program interpreter and `DT_NEEDED` names.
pub fn dynamic(b: &[u8]) -> Result<(Option<String>, Vec<String>), String> {
    if b.len() < 64 || &b[..4] != b"\x7fELF" || b[4] != 2 || b[5] != 1 {
        return Err("not a little-endian ELF64 file".into());
    }
    let u16_at = |o: usize| b.get(o..o + 2).map(|s| u16::from_le_bytes([s[0], s[1]]));
    let u32_at = |o: usize| {
        b.get(o..o + 4)
            .map(|s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
    };
    let u64_at = |o: usize| {
        b.get(o..o + 8).map(|s| {
            let mut a = [0u8; 8];
            a.copy_from_slice(s);
            u64::from_le_bytes(a)
        })
    };
    let bad = || "program headers past the end of the file".to_string();
    let phoff = u64_at(0x20).ok_or_else(bad)? as usize;
    let (entsize, num) = (
        usize::from(u16_at(0x36).ok_or_else(bad)?),
        usize::from(u16_at(0x38).ok_or_else(bad)?),
    );
    // (type, offset, vaddr, filesz)
    let mut headers = Vec::new();
    for i in 0..num {
        let at = phoff
            .checked_add(i.checked_mul(entsize).ok_or_else(bad)?)
            .ok_or_else(bad)?;
        headers.push((
            u32_at(at).ok_or_else(bad)?,
            u64_at(at + 8).ok_or_else(bad)?,
            u64_at(at + 16).ok_or_else(bad)?,
            u64_at(at + 32).ok_or_else(bad)?,
        ));
    }
    let slice = |off: u64, len: u64| -> Option<&[u8]> {
        b.get(usize::try_from(off).ok()?..usize::try_from(off.checked_add(len)?).ok()?)
    };
    let interp = headers
        .iter()
        .find(|h| h.0 == PT_INTERP)
        .and_then(|h| slice(h.1, h.3))
        .map(|s| {
            String::from_utf8_lossy(s)
                .trim_end_matches('\0')
                .to_string()
        });
    let Some(dynh) = headers.iter().find(|h| h.0 == PT_DYNAMIC) else {
        return Ok((interp, Vec::new()));
    };
    let dyn_bytes = slice(dynh.1, dynh.3).ok_or("dynamic section past the end of the file")?;
    let (mut needed, mut strtab) = (Vec::new(), None);
    for e in dyn_bytes.chunks_exact(16) {
        let tag = u64::from_le_bytes(e[..8].try_into().unwrap_or_default());
        let val = u64::from_le_bytes(e[8..].try_into().unwrap_or_default());
        match tag {
            0 => break,
            DT_NEEDED => needed.push(val),
            DT_STRTAB => strtab = Some(val),
            _ => {}
        }
    }
    if needed.is_empty() {
        return Ok((interp, Vec::new()));
    }
    let addr = strtab.ok_or("DT_NEEDED without DT_STRTAB")?;
    // the string table's file offset, from the PT_LOAD segment that maps its address
    let str_off = headers
        .iter()
        .filter(|h| h.0 == PT_LOAD)
        .find(|h| h.2 <= addr && addr < h.2.saturating_add(h.3))
        .map(|h| addr - h.2 + h.1)
        .ok_or("the string table is in no loaded segment")?;
    let names = needed
        .into_iter()
        .map(|o| {
            let start = usize::try_from(str_off.checked_add(o)?).ok()?;
            let rest = b.get(start..)?;
            let end = rest.iter().position(|c| *c == 0)?;
            let name = std::str::from_utf8(&rest[..end]).ok()?;
            // a plain file name: nothing that climbs out of the library directory
            (!name.is_empty() && !name.contains('/')).then(|| name.to_string())
        })
        .collect::<Option<Vec<String>>>()
        .ok_or("a DT_NEEDED name is not a plain file name inside the file")?;
    Ok((interp, names))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_hosts_ls_needs_libc_and_the_loader() {
        let b = std::fs::read("/usr/bin/ls").unwrap();
        let (interp, needed) = dynamic(&b).unwrap();
        assert_eq!(interp.as_deref(), Some("/lib64/ld-linux-x86-64.so.2"));
        assert!(needed.contains(&"libc.so.6".to_string()), "{needed:?}");
        assert!(dynamic(b"not an elf").is_err());
        assert!(dynamic(&b[..200]).is_err() || dynamic(&b[..200]).unwrap().1.is_empty());
    }

    /// The tools the initramfs carries, from this machine (cargo xtask deps installs them):
    /// every one found, with glibc, the loader and LVM's device-mapper library.
    #[test]
    fn the_initramfs_tools_resolve_on_this_machine() {
        let files = collect(Path::new("/"), TOOLS).unwrap();
        for (t, _) in TOOLS {
            assert!(files.contains_key(*t), "{t}");
        }
        for lib in [
            "libc.so.6",
            "libdevmapper.so.1.02.1",
            "libblkid.so.1",
            "libuuid.so.1",
        ] {
            assert!(
                files.contains_key(&format!("lib/x86_64-linux-gnu/{lib}")),
                "{lib}: {:?}",
                files.keys()
            );
        }
        assert!(files.contains_key("lib64/ld-linux-x86-64.so.2"));
        assert!(files.contains_key("etc/mke2fs.conf"));
        let total: usize = files.values().map(|(b, _)| b.len()).sum();
        assert!(total < 24 << 20, "{total} bytes of tools");
    }

    #[test]
    fn a_closure_from_the_host() {
        let files = collect(Path::new("/"), &[("usr/bin/ls", "coreutils")]).unwrap();
        assert!(files.contains_key("usr/bin/ls"));
        assert!(files.contains_key("lib64/ld-linux-x86-64.so.2"));
        assert!(files.contains_key("lib/x86_64-linux-gnu/libc.so.6"));
        // ls needs libselinux, which needs libpcre2: found through the library too
        assert!(
            files.contains_key("lib/x86_64-linux-gnu/libpcre2-8.so.0"),
            "{:?}",
            files.keys()
        );
        let e = collect(Path::new("/"), &[("usr/sbin/no-such-tool", "nope")]).unwrap_err();
        assert!(
            e.to_string().contains("install Debian's nope package"),
            "{e}"
        );
    }
}
