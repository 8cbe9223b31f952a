//! `cargo xtask initramfs`: the installer's kernel and initramfs, from Debian packages.
//!
//! ```text
//! cargo xtask initramfs [--profile qemu|datacenter|all] [--compression zstd|xz|gzip|none]
//!                       [--modules-dir DIR --vmlinuz FILE] [--agent FILE] [--firmware-dir DIR]
//! ```
//!
//! 1. fetches Debian's current kernel package (`linux-image-amd64`'s dependency) with
//!    `apt-get download` and unpacks it into `target/byol/kernel/<kver>/` (kept: delete the
//!    folder to take a newer kernel; `target/byol/kernel/kernel.txt` records the version), and
//!    copies its vmlinuz to `target/byol/vmlinuz`;
//! 2. builds byol-agent static (`-C target-feature=+crt-static`, x86_64-unknown-linux-gnu),
//!    checks it needs no loader, strips a copy into `target/byol/byol-agent`;
//! 3. for `datacenter`, fetches Debian's firmware packages into `target/byol/firmware/`;
//! 4. writes `target/byol/initramfs.cpio.zst` (`qemu`, the default) and/or
//!    `target/byol/initramfs-datacenter.cpio.zst` (suffix per compression), and prints what
//!    went in and the sizes.
//!
//! Your own kernel instead of Debian's: `--modules-dir /lib/modules/<kver> --vmlinuz
//! /boot/vmlinuz-<kver>` (the modules are read from that tree; the kernel must take a zstd, xz
//! or gzip initramfs per `--compression`). `byol serve` serves `target/byol/vmlinuz` and
//! `target/byol/initramfs.cpio.zst` by default; other files with `--kernel FILE --initramfs
//! FILE`, or copied into its assets folder as `vmlinuz` and `initramfs`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{Context as _, bail};
use mkinitramfs::{Compression, ModuleIndex, Profile, Spec, debian};

use crate::{cargo, ensure_packages, root, run};

pub(crate) const PACKAGES: &[(&str, &str)] = &[("binutils", "/usr/bin/strip")];

/// The agent's target: glibc, statically linked.
const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

struct Opts {
    profiles: Vec<Profile>,
    compression: Compression,
    modules_dir: Option<PathBuf>,
    vmlinuz: Option<PathBuf>,
    agent: Option<PathBuf>,
    firmware_dir: Option<PathBuf>,
}

fn parse(args: &[String]) -> anyhow::Result<Opts> {
    let mut o = Opts {
        profiles: vec![Profile::Qemu],
        compression: Compression::default(),
        modules_dir: None,
        vmlinuz: None,
        agent: None,
        firmware_dir: None,
    };
    let mut it = args.iter();
    while let Some(a) = it.next() {
        let mut val = || {
            it.next()
                .map(String::as_str)
                .with_context(|| format!("{a} needs a value"))
        };
        match a.as_str() {
            "--profile" => {
                o.profiles = match val()? {
                    "all" => Profile::ALL.to_vec(),
                    p => vec![p.parse()?],
                }
            }
            "--compression" => o.compression = val()?.parse()?,
            "--modules-dir" => o.modules_dir = Some(val()?.into()),
            "--vmlinuz" => o.vmlinuz = Some(val()?.into()),
            "--agent" => o.agent = Some(val()?.into()),
            "--firmware-dir" => o.firmware_dir = Some(val()?.into()),
            _ => bail!(
                "usage: cargo xtask initramfs [--profile qemu|datacenter|all] [--compression zstd|xz|gzip|none] [--modules-dir DIR --vmlinuz FILE] [--agent FILE] [--firmware-dir DIR]"
            ),
        }
    }
    if o.modules_dir.is_some() != o.vmlinuz.is_some() {
        bail!("--modules-dir and --vmlinuz go together (your own kernel)");
    }
    Ok(o)
}

/// `cargo xtask initramfs …`
pub fn initramfs(args: &[String]) -> anyhow::Result<()> {
    let opts = parse(args)?;
    let t0 = Instant::now();
    ensure_packages(PACKAGES)?;
    let byol = root().join("target/byol");
    std::fs::create_dir_all(&byol)?;

    let t = Instant::now();
    let (modules_dir, vmlinuz) = match (&opts.modules_dir, &opts.vmlinuz) {
        (Some(m), Some(v)) => (m.clone(), v.clone()),
        _ => {
            let k = debian::kernel(&byol.join("kernel"))?;
            eprintln!(
                "xtask: kernel {} {} in {} ({:.1} s)",
                k.package,
                k.version,
                k.root.display(),
                t.elapsed().as_secs_f64()
            );
            (k.modules_dir(), k.vmlinuz())
        }
    };
    write_if_changed(
        &byol.join("vmlinuz"),
        &std::fs::read(&vmlinuz).with_context(|| format!("reading {}", vmlinuz.display()))?,
    )?;

    let t = Instant::now();
    let agent = match &opts.agent {
        Some(a) => a.clone(),
        None => build_agent(&byol)?,
    };
    eprintln!(
        "xtask: agent {} ({:.1} s)",
        agent.display(),
        t.elapsed().as_secs_f64()
    );

    let firmware_dir = match &opts.firmware_dir {
        Some(d) => Some(d.clone()),
        None if opts.profiles.contains(&Profile::Datacenter) => {
            match debian::firmware(&byol.join("firmware"), debian::FIRMWARE_PACKAGES) {
                Ok(fw) => {
                    let p: Vec<String> = fw
                        .packages
                        .iter()
                        .map(|(p, v)| format!("{p} {v}"))
                        .collect();
                    eprintln!("xtask: firmware from {}", p.join(", "));
                    Some(fw.dir)
                }
                Err(e) => {
                    eprintln!(
                        "xtask: warning: no firmware packages ({e}): drivers that need firmware will lack it"
                    );
                    None
                }
            }
        }
        None => None,
    };

    let t = Instant::now();
    let index = ModuleIndex::scan(&modules_dir)?;
    eprintln!(
        "xtask: {} modules indexed from their .modinfo ({:.1} s)",
        index.len(),
        t.elapsed().as_secs_f64()
    );
    let t = Instant::now();
    let built = std::thread::scope(|s| {
        let jobs: Vec<_> = opts
            .profiles
            .iter()
            .map(|&profile| {
                let mut spec = Spec::new(&modules_dir, &agent, profile)?;
                spec.compression = opts.compression;
                spec.firmware_dir = firmware_dir.clone();
                // mdadm, lvm, mkfs.*, mkswap and their libraries, from this machine's packages
                spec.tools_root = Some(PathBuf::from("/"));
                let index = &index;
                Ok(s.spawn(move || mkinitramfs::build_with(&spec, index)))
            })
            .collect::<anyhow::Result<_>>()?;
        jobs.into_iter()
            .map(|j| {
                j.join()
                    .map_err(|_| anyhow::anyhow!("initramfs build thread panicked"))?
                    .map_err(anyhow::Error::from)
            })
            .collect::<anyhow::Result<Vec<_>>>()
    })?;
    let build_secs = t.elapsed().as_secs_f64();
    for (profile, b) in opts.profiles.iter().zip(&built) {
        let name = match profile {
            Profile::Qemu => format!("initramfs.cpio{}", opts.compression.extension()),
            p => format!("initramfs-{p}.cpio{}", opts.compression.extension()),
        };
        let path = byol.join(name);
        write_if_changed(&path, &b.bytes)?;
        println!("{}\n  → {}", b.report, path.display());
    }
    eprintln!(
        "xtask: initramfs built in {build_secs:.1} s; `cargo xtask initramfs` took {:.1} s",
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Builds byol-agent statically, checks it, and strips a copy: `target/byol/byol-agent`.
fn build_agent(byol: &Path) -> anyhow::Result<PathBuf> {
    run(cargo()
        .args([
            "build",
            "--release",
            "-p",
            "byol-agent",
            "--target",
            AGENT_TARGET,
        ])
        .env("RUSTFLAGS", "-C target-feature=+crt-static")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .env_remove("CARGO_TARGET_DIR"))?;
    let built = root()
        .join("target")
        .join(AGENT_TARGET)
        .join("release/byol-agent");
    let bytes = std::fs::read(&built).with_context(|| format!("reading {}", built.display()))?;
    mkinitramfs::agent::check_static(&bytes)
        .with_context(|| format!("{} is not usable as /init", built.display()))?;
    let out = byol.join("byol-agent");
    let tmp = byol.join("byol-agent.tmp");
    std::fs::copy(&built, &tmp)?;
    run(Command::new("strip").arg("--strip-all").arg(&tmp))?;
    let stripped = std::fs::read(&tmp)?;
    write_if_changed(&out, &stripped)?;
    std::fs::remove_file(&tmp)?;
    if let Ok(o) = Command::new("file").arg("-b").arg(&out).output() {
        eprintln!(
            "xtask: agent: {} bytes stripped: {}",
            stripped.len(),
            String::from_utf8_lossy(&o.stdout).trim()
        );
    }
    Ok(out)
}

/// Writes `bytes` to `path` (atomically) unless it already holds them, so that unchanged
/// outputs keep their mtime (and the server's ETag).
fn write_if_changed(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    if std::fs::read(path).is_ok_and(|old| old == bytes) {
        return Ok(());
    }
    let tmp = path.with_extension("tmp-write");
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
