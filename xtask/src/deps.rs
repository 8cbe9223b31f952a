//! deps: the Debian packages the tests, the demo and the benches use, installed with apt-get
//! (as root) so that a fresh machine needs only the README's commands.
//!
//! A package counts as present when a file it provides exists (no dpkg query: a file is what
//! the tests use). apt is asked for everything missing in **one** transaction, and packages
//! built from one source that must share a version (QEMU's: `qemu-system-x86`, `qemu-utils`,
//! `qemu-block-extra`) go in together, pinned to the version the archive has for the first
//! of them. Without that, a machine that came with a newer qemu-utils than its apt sources
//! (a backport) gets it *removed* by apt when qemu-system-x86 comes from Debian 12: the
//! versions' Breaks cannot hold otherwise. After apt ran, every known package's file is
//! checked again: what apt removed on the way is installed again, and a file still missing is
//! an error naming the package, the file, and what apt removed or downgraded.

use std::collections::BTreeSet;
use std::io::{BufRead as _, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

/// A Debian package and a file it provides.
pub type Pkg = (&'static str, &'static str);

/// Packages of one source package that apt must install at one version; the first leads.
const SAME_VERSION: &[&[&str]] = &[&["qemu-system-x86", "qemu-utils", "qemu-block-extra"]];

/// Every package an xtask command ensures, for the check after apt ran.
fn known() -> Vec<Pkg> {
    let mut all: Vec<Pkg> = Vec::new();
    for list in [
        crate::PACKAGES,
        crate::test_image::PACKAGES,
        crate::bench::BENCH_PACKAGES,
        crate::initramfs::PACKAGES,
    ] {
        for p in list {
            if !all.contains(p) {
                all.push(*p);
            }
        }
    }
    all
}

fn present(p: &Pkg) -> bool {
    Path::new(p.1).exists()
}

/// Installs the packages of `list` whose file is missing; Ok once every file of `list`, and
/// of every package that was present before, exists.
pub fn ensure(list: &[Pkg]) -> anyhow::Result<()> {
    let missing: Vec<Pkg> = list.iter().filter(|p| !present(p)).copied().collect();
    if missing.is_empty() {
        eprintln!("xtask: Debian packages present");
        return Ok(());
    }
    let before: Vec<Pkg> = known()
        .into_iter()
        .chain(list.iter().copied())
        .filter(present)
        .collect();
    run_apt(&["update", "-qq"], &[])?;

    let mut report = AptReport::default();
    let mut want: BTreeSet<&str> = missing.iter().map(|p| p.0).collect();
    // Two rounds: the second puts back what the first removed.
    for round in 0..2 {
        let args = install_args(&want);
        eprintln!("xtask: installing {}", args.join(" "));
        let r = apt_install(&args)?;
        report.removed.extend(r.removed);
        report.downgraded.extend(r.downgraded);
        let lost: BTreeSet<&str> = before.iter().filter(|p| !present(p)).map(|p| p.0).collect();
        let still: BTreeSet<&str> = missing
            .iter()
            .filter(|p| !present(p))
            .map(|p| p.0)
            .collect();
        if lost.is_empty() && still.is_empty() {
            break;
        }
        if round == 0 {
            if !lost.is_empty() {
                eprintln!(
                    "xtask: apt removed {} on the way: installing again",
                    lost.iter().copied().collect::<Vec<_>>().join(" ")
                );
            }
            want = lost.union(&still).copied().collect();
        }
    }
    let gone: Vec<String> = before
        .iter()
        .chain(missing.iter())
        .filter(|p| !present(p))
        .map(|p| format!("package {} is installed but {} is missing", p.0, p.1))
        .collect();
    if !gone.is_empty() {
        bail!(
            "{} after apt-get ran; apt removed: {}; apt downgraded: {} (its output is above). \
             Install the package by hand (`apt-get install --reinstall PACKAGE`) and run again",
            gone.join("; "),
            list_or_none(&report.removed),
            list_or_none(&report.downgraded)
        );
    }
    if !report.downgraded.is_empty() {
        eprintln!(
            "xtask: apt downgraded {} to the version the archive has, to match the rest",
            report.downgraded.join(" ")
        );
    }
    Ok(())
}

fn list_or_none(v: &[String]) -> String {
    if v.is_empty() {
        "nothing".into()
    } else {
        v.join(" ")
    }
}

/// `want`, with the members of a same-version group that are wanted or installed pinned to
/// the version the archive has for the group's leader (`pkg=version`).
fn install_args(want: &BTreeSet<&str>) -> Vec<String> {
    let mut args: Vec<String> = Vec::new();
    let mut done: BTreeSet<&str> = BTreeSet::new();
    for group in SAME_VERSION {
        if !group.iter().any(|p| want.contains(p)) {
            continue;
        }
        let Some(v) = archive_version(group[0]) else {
            continue;
        };
        for p in group.iter() {
            if !(want.contains(p) || installed_version(p).is_some()) {
                continue;
            }
            done.insert(p);
            if available_versions(p).contains(&v) {
                args.push(format!("{p}={v}"));
            } else {
                args.push((*p).to_string());
            }
        }
    }
    for p in want {
        if !done.contains(p) {
            args.push((*p).to_string());
        }
    }
    args
}

/// What `apt-cache policy` shows for `pkg`: (installed, candidate).
fn policy(pkg: &str) -> (Option<String>, Option<String>) {
    let Ok(out) = Command::new("apt-cache").args(["policy", pkg]).output() else {
        return (None, None);
    };
    let text = String::from_utf8_lossy(&out.stdout);
    let field = |name: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .map(|v| v.trim().to_string())
            .filter(|v| v != "(none)" && !v.is_empty())
    };
    (field("Installed:"), field("Candidate:"))
}

fn installed_version(pkg: &str) -> Option<String> {
    policy(pkg).0
}

/// The newest version of `pkg` in the apt sources (not a locally installed one that no
/// source has).
fn archive_version(pkg: &str) -> Option<String> {
    available_versions(pkg).into_iter().next()
}

/// Versions of `pkg` the apt sources have, newest first (`apt-cache madison`).
fn available_versions(pkg: &str) -> Vec<String> {
    let Ok(out) = Command::new("apt-cache").args(["madison", pkg]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split('|').map(str::trim).collect();
            (f.len() >= 3 && f[0] == pkg).then(|| f[1].to_string())
        })
        .collect()
}

#[derive(Debug, Default)]
struct AptReport {
    removed: Vec<String>,
    downgraded: Vec<String>,
}

fn apt_install(pkgs: &[String]) -> anyhow::Result<AptReport> {
    let out = run_apt(
        &[
            "install",
            "-y",
            "-q",
            "--no-install-recommends",
            "--allow-downgrades",
        ],
        pkgs,
    )
    .context(
        "apt-get install failed: run as root on Debian 12 with the package archive reachable",
    )?;
    Ok(parse_apt(&out))
}

/// Runs apt-get, its output echoed to stderr as it comes and returned.
fn run_apt(args: &[&str], pkgs: &[String]) -> anyhow::Result<String> {
    let mut cmd = Command::new("apt-get");
    cmd.args(args)
        .args(pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .stdout(Stdio::piped());
    eprintln!("xtask: running {cmd:?}");
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start {cmd:?}"))?;
    let mut all = String::new();
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines().map_while(Result::ok) {
            eprintln!("{line}");
            all.push_str(&line);
            all.push('\n');
        }
    }
    let st = child.wait()?;
    if !st.success() {
        let r = parse_apt(&all);
        bail!(
            "{cmd:?} failed ({st}); apt removed: {}",
            list_or_none(&r.removed)
        );
    }
    Ok(all)
}

/// The packages apt's output lists under "will be REMOVED" and "will be DOWNGRADED".
fn parse_apt(out: &str) -> AptReport {
    let mut r = AptReport::default();
    let mut into: Option<&mut Vec<String>> = None;
    for line in out.lines() {
        if line.starts_with("The following packages will be REMOVED") {
            into = Some(&mut r.removed);
        } else if line.starts_with("The following packages will be DOWNGRADED") {
            into = Some(&mut r.downgraded);
        } else if line.starts_with(' ') {
            if let Some(v) = into.as_deref_mut() {
                v.extend(
                    line.split_whitespace()
                        .map(|p| p.trim_end_matches('*').to_string()),
                );
            }
        } else {
            into = None;
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn apt_output_names_removals_and_downgrades() {
        let out = "Reading package lists...\n\
            The following additional packages will be installed:\n  ipxe-qemu seabios\n\
            The following packages will be REMOVED:\n  qemu-utils* foo\n\
            The following packages will be DOWNGRADED:\n  qemu-block-extra\n\
            The following NEW packages will be installed:\n  qemu-system-x86\n\
            0 upgraded, 1 newly installed, 1 downgraded, 2 to remove and 80 not upgraded.\n";
        let r = parse_apt(out);
        assert_eq!(r.removed, ["qemu-utils", "foo"]);
        assert_eq!(r.downgraded, ["qemu-block-extra"]);
        assert!(
            parse_apt("0 upgraded, 0 newly installed\n")
                .removed
                .is_empty()
        );
    }

    #[test]
    fn every_known_package_names_an_absolute_file() {
        for (p, f) in known() {
            assert!(f.starts_with('/'), "{p}: {f}");
        }
        for g in SAME_VERSION {
            assert!(known().iter().any(|(p, _)| *p == g[0]), "{}", g[0]);
        }
    }
}
