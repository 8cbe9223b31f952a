//! Debian's kernel and firmware packages, fetched with the system's apt (`apt-get download`,
//! no root needed for that, no host kernel used) and unpacked with `dpkg-deb -x` into a cache
//! directory that is reused as long as it is there.
//!
//! Kernel cache (`<cache>` is e.g. `target/byol/kernel`):
//! - `<cache>/kernel.txt`: `<package> <version> <kver>` of the unpacked kernel;
//! - `<cache>/<kver>/`: the package's files (`boot/vmlinuz-<kver>`, `lib/modules/<kver>/`).
//!
//! Firmware cache (`<cache>` is e.g. `target/byol/firmware`): `<cache>/packages.txt` (one
//! `<package> <version>` a line) and `<cache>/root/lib/firmware/`. The firmware packages are in
//! Debian's `non-free-firmware` component: when the system's sources lack it, the same
//! Debian mirror and suite are used with that component, through a private apt state under
//! `<cache>/apt/` (the system's configuration is not touched).

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::Error;

/// The meta-package that points at the current kernel.
pub const KERNEL_META: &str = "linux-image-amd64";
/// Packages holding the firmware files the `datacenter` profile's drivers name
/// (`intel/ice/ddp/ice.pkg`, `tigon/tg3*.bin`: misc-nonfree; `qed/…`: qlogic).
pub const FIRMWARE_PACKAGES: &[&str] = &["firmware-misc-nonfree", "firmware-qlogic"];

/// An unpacked kernel package.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Kernel {
    /// `linux-image-6.1.0-56-amd64`
    pub package: String,
    /// Debian version of the package, `6.1.192-2`.
    pub version: String,
    /// `6.1.0-56-amd64`
    pub kver: String,
    /// The unpacked package.
    pub root: PathBuf,
}

impl Kernel {
    /// `lib/modules/<kver>` of the package.
    pub fn modules_dir(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.kver)
    }

    /// `boot/vmlinuz-<kver>` of the package.
    pub fn vmlinuz(&self) -> PathBuf {
        self.root
            .join("boot")
            .join(format!("vmlinuz-{}", self.kver))
    }

    fn complete(&self) -> bool {
        self.vmlinuz().is_file() && self.modules_dir().join("modules.builtin").is_file()
    }
}

/// Unpacked firmware packages.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Firmware {
    /// `<cache>/root/lib/firmware`
    pub dir: PathBuf,
    /// `(package, version)` unpacked there.
    pub packages: Vec<(String, String)>,
}

fn fail(what: impl Into<String>) -> Error {
    Error::Debian(what.into())
}

fn output(cmd: &mut Command) -> Result<String, Error> {
    let out = cmd
        .output()
        .map_err(|e| fail(format!("cannot run {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(fail(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_owned(),
        source,
    }
}

/// The kernel in `cache`, fetching and unpacking the current Debian kernel package there first
/// if the cache has none. Safe to call from several processes at once (each unpacks into its
/// own directory and renames it into place).
pub fn kernel(cache: &Path) -> Result<Kernel, Error> {
    if let Some(k) = cached_kernel(cache) {
        return Ok(k);
    }
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    let package = current_kernel_package()?;
    let kver = package
        .strip_prefix("linux-image-")
        .ok_or_else(|| fail(format!("unexpected kernel package name {package}")))?
        .to_owned();
    let tmp = cache.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let result = (|| {
        let (deb, version) = download(&tmp, &package, None)?;
        let root = tmp.join("root");
        output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
        let final_root = cache.join(&kver);
        let k = Kernel {
            package: package.clone(),
            version,
            kver: kver.clone(),
            root: root.clone(),
        };
        if !k.complete() {
            return Err(fail(format!(
                "{package} has no boot/vmlinuz-{kver} or lib/modules/{kver}/modules.builtin"
            )));
        }
        if !final_root.exists() {
            // another process may win the race: then its copy is as good as ours
            let _ = std::fs::rename(&root, &final_root);
        }
        let k = Kernel {
            root: final_root,
            ..k
        };
        if !k.complete() {
            return Err(fail(format!("{} is incomplete", k.root.display())));
        }
        let record = cache.join("kernel.txt");
        let rtmp = tmp.join("kernel.txt");
        std::fs::write(&rtmp, format!("{} {} {}\n", k.package, k.version, k.kver))
            .map_err(io(&rtmp))?;
        std::fs::rename(&rtmp, &record).map_err(io(&record))?;
        Ok(k)
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

fn cached_kernel(cache: &Path) -> Option<Kernel> {
    let text = std::fs::read_to_string(cache.join("kernel.txt")).ok()?;
    let mut f = text.split_whitespace();
    let (package, version, kver) = (f.next()?, f.next()?, f.next()?);
    let k = Kernel {
        package: package.into(),
        version: version.into(),
        kver: kver.into(),
        root: cache.join(kver),
    };
    k.complete().then_some(k)
}

/// `linux-image-<kver>` that `linux-image-amd64` depends on (apt-get update once if apt has
/// no package lists yet).
fn current_kernel_package() -> Result<String, Error> {
    let ask = || -> Result<String, Error> {
        let text = output(Command::new("apt-cache").args(["depends", KERNEL_META]))?;
        text.lines()
            .filter_map(|l| l.trim().strip_prefix("Depends: "))
            .map(str::trim)
            .find(|p| p.starts_with("linux-image-") && !p.starts_with('<'))
            .map(str::to_owned)
            .ok_or_else(|| fail(format!("apt-cache depends {KERNEL_META}: no linux-image-*")))
    };
    ask().or_else(|_| {
        output(Command::new("apt-get").args(["update", "-qq"]))?;
        ask()
    })
}

/// `apt-get download <package>` into `dir`: the `.deb` and its version. `apt_opts` are extra
/// `-o` options (a private sources list).
fn download(
    dir: &Path,
    package: &str,
    apt_opts: Option<&[String]>,
) -> Result<(PathBuf, String), Error> {
    let mut cmd = Command::new("apt-get");
    cmd.current_dir(dir)
        .args(["-q", "-o", "APT::Sandbox::User=root"])
        .args(apt_opts.unwrap_or_default())
        .args(["download", package]);
    output(&mut cmd)?;
    let prefix = format!("{package}_");
    for e in std::fs::read_dir(dir).map_err(io(dir))? {
        let name = e.map_err(io(dir))?.file_name();
        let name = name.to_string_lossy();
        if let Some(rest) = name.strip_prefix(&prefix)
            && let Some(rest) = rest.strip_suffix(".deb")
        {
            let version = rest.rsplit_once('_').map_or(rest, |(v, _)| v);
            return Ok((dir.join(&*name), version.replace("%3a", ":")));
        }
    }
    Err(fail(format!("apt-get download {package} left no .deb")))
}

/// The firmware packages in `cache`, fetching and unpacking `packages` first if the cache
/// does not hold exactly them.
pub fn firmware(cache: &Path, packages: &[&str]) -> Result<Firmware, Error> {
    let record = cache.join("packages.txt");
    let dir = cache.join("root/lib/firmware");
    if let Ok(text) = std::fs::read_to_string(&record) {
        let have: Vec<(String, String)> = text
            .lines()
            .filter_map(|l| l.split_once(' '))
            .map(|(p, v)| (p.to_owned(), v.to_owned()))
            .collect();
        let names: Vec<&str> = have.iter().map(|(p, _)| p.as_str()).collect();
        if names == packages && dir.is_dir() {
            return Ok(Firmware {
                dir,
                packages: have,
            });
        }
    }
    std::fs::create_dir_all(cache).map_err(io(cache))?;
    let tmp = cache.join(format!(".fetch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(io(&tmp))?;
    let result = (|| {
        let root = tmp.join("root");
        let mut got = Vec::new();
        let mut private: Option<Vec<String>> = None;
        for p in packages {
            let fetched = match &private {
                None => download(&tmp, p, None).or_else(|first| {
                    // not in the system's sources: same mirror, non-free-firmware component
                    let opts = private_apt(cache).map_err(|e| {
                        fail(format!("{first}; and no non-free-firmware source: {e}"))
                    })?;
                    let r = download(&tmp, p, Some(&opts));
                    private = Some(opts);
                    r
                }),
                Some(opts) => download(&tmp, p, Some(opts)),
            };
            let (deb, version) = fetched?;
            output(Command::new("dpkg-deb").arg("-x").arg(&deb).arg(&root))?;
            got.push(((*p).to_owned(), version));
        }
        std::fs::create_dir_all(root.join("lib/firmware")).map_err(io(&root))?;
        let final_root = cache.join("root");
        let _ = std::fs::remove_dir_all(&final_root);
        std::fs::rename(&root, &final_root).map_err(io(&final_root))?;
        let text: String = got.iter().map(|(p, v)| format!("{p} {v}\n")).collect();
        std::fs::write(&record, text).map_err(io(&record))?;
        Ok(Firmware { dir, packages: got })
    })();
    let _ = std::fs::remove_dir_all(&tmp);
    result
}

/// A private apt state (`<cache>/apt/`) whose only source is the system's Debian mirror and
/// suite with the `non-free-firmware` component; `apt-get update` run on it. Returns the `-o`
/// options that select it.
fn private_apt(cache: &Path) -> Result<Vec<String>, Error> {
    let base = cache.join("apt");
    let (uri, suite, signed_by) = debian_source()?;
    for d in ["lists/partial", "cache/archives/partial", "parts"] {
        let p = base.join(d);
        std::fs::create_dir_all(&p).map_err(io(&p))?;
    }
    let list = base.join("sources.list");
    let signed = signed_by.map_or(String::new(), |s| format!("[signed-by={s}] "));
    std::fs::write(
        &list,
        format!("deb {signed}{uri} {suite} non-free-firmware\n"),
    )
    .map_err(io(&list))?;
    let p = |s: &Path| s.to_string_lossy().into_owned();
    let opts = vec![
        "-o".into(),
        format!("Dir::Etc::SourceList={}", p(&list)),
        "-o".into(),
        format!("Dir::Etc::SourceParts={}", p(&base.join("parts"))),
        "-o".into(),
        format!("Dir::State::Lists={}", p(&base.join("lists"))),
        "-o".into(),
        format!("Dir::Cache={}", p(&base.join("cache"))),
    ];
    output(
        Command::new("apt-get")
            .args(["-q", "-o", "APT::Sandbox::User=root"])
            .args(&opts)
            .arg("update"),
    )?;
    Ok(opts)
}

/// The system's main Debian source: (URI, suite, Signed-By) of the first entry whose suite is
/// the release's codename, from `/etc/apt/sources.list.d/*.sources` (deb822) or
/// `/etc/apt/sources.list` / `*.list` (one-line).
fn debian_source() -> Result<(String, String, Option<String>), Error> {
    let os = std::fs::read_to_string("/etc/os-release").unwrap_or_default();
    let codename = os
        .lines()
        .find_map(|l| l.strip_prefix("VERSION_CODENAME="))
        .map(|c| c.trim_matches('"').to_owned())
        .filter(|c| !c.is_empty())
        .ok_or_else(|| fail("no VERSION_CODENAME in /etc/os-release"))?;
    let mut texts = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<PathBuf> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
        paths.sort();
        texts.extend(paths.into_iter().filter_map(|p| {
            let deb822 = p.extension()? == "sources";
            Some((deb822, std::fs::read_to_string(&p).ok()?))
        }));
    }
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push((false, t));
    }
    for (deb822, text) in &texts {
        let found = if *deb822 {
            find_deb822(text, &codename)
        } else {
            find_one_line(text, &codename)
        };
        if let Some((uri, signed)) = found {
            return Ok((uri, codename, signed));
        }
    }
    Err(fail(format!(
        "no Debian source for suite {codename} in /etc/apt"
    )))
}

fn find_deb822(text: &str, codename: &str) -> Option<(String, Option<String>)> {
    for block in text.split("\n\n") {
        let field = |name: &str| {
            block.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                k.trim()
                    .eq_ignore_ascii_case(name)
                    .then(|| v.trim().to_owned())
            })
        };
        let types = field("Types").unwrap_or_default();
        let suites = field("Suites").unwrap_or_default();
        let comps = field("Components").unwrap_or_default();
        if types.split_whitespace().any(|t| t == "deb")
            && suites.split_whitespace().any(|s| s == codename)
            && comps.split_whitespace().any(|c| c == "main")
        {
            let uri = field("URIs")?.split_whitespace().next()?.to_owned();
            return Some((uri, field("Signed-By")));
        }
    }
    None
}

fn find_one_line(text: &str, codename: &str) -> Option<(String, Option<String>)> {
    for line in text.lines() {
        let line = line.split('#').next().unwrap_or("").trim();
        let mut words = line.split_whitespace().peekable();
        if words.next() != Some("deb") {
            continue;
        }
        let mut signed = None;
        if words.peek().is_some_and(|w| w.starts_with('[')) {
            for w in words.by_ref() {
                if let Some(v) = w.trim_start_matches('[').strip_prefix("signed-by=") {
                    signed = Some(v.trim_end_matches(']').to_owned());
                }
                if w.ends_with(']') {
                    break;
                }
            }
        }
        let (Some(uri), Some(suite)) = (words.next(), words.next()) else {
            continue;
        };
        if suite == codename && words.any(|c| c == "main") {
            return Some((uri.to_owned(), signed));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_debian_source_in_both_formats() {
        let deb822 = "Types: deb\nURIs: http://mirror.example/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\nTypes: deb\nURIs: http://mirror.example/debian-security\nSuites: bookworm-security\nComponents: main\n";
        assert_eq!(
            find_deb822(deb822, "bookworm"),
            Some((
                "http://mirror.example/debian".into(),
                Some("/usr/share/keyrings/debian-archive-keyring.gpg".into())
            ))
        );
        assert_eq!(find_deb822(deb822, "trixie"), None);
        let list = "# comment\ndeb-src http://x/debian bookworm main\ndeb [arch=amd64 signed-by=/k.gpg] http://mirror.example/debian bookworm main contrib\n";
        assert_eq!(
            find_one_line(list, "bookworm"),
            Some(("http://mirror.example/debian".into(), Some("/k.gpg".into())))
        );
    }
}
