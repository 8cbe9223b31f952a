//! mkinitramfs: builds byol's initramfs from a kernel's `lib/modules/<kver>` tree and the
//! static agent binary: a reproducible newc cpio holding
//!
//! - `/init`: the agent;
//! - `/lib/modules/<kver>/…`: the profile's modules and their whole dependency closure, read
//!   from the modules' own `.modinfo` (not modules.dep), uncompressed `.ko` at their paths;
//! - `/lib/modules/<kver>/byol-modules.txt` and `byol-aliases.txt`: what the agent needs to
//!   load modules by modalias without modprobe (format: [`index`]);
//! - `/lib/firmware/…`: the firmware files the modules name (`firmware=`) that the given
//!   firmware tree has;
//! - `/dev/console` (char 5:1, so the kernel gives /init a console) and the empty directories
//!   `/dev /proc /sys /run /tmp /mnt /etc`;
//!
//! compressed with zstd (default), xz or gzip. Same inputs, same bytes.
//!
//! One file per concern: [`cpio`] (archive format), [`modinfo`] (a module's metadata),
//! [`closure`] (module index and dependency closure), [`index`] (the agent's index files),
//! [`profile`] (module sets), [`compress`], [`agent`] (is `/init` static), [`debian`]
//! (fetching Debian's kernel and firmware packages).

use std::fmt;
use std::path::{Path, PathBuf};

pub mod agent;
pub mod closure;
pub mod compress;
pub mod cpio;
pub mod debian;
pub mod index;
pub mod modinfo;
pub mod profile;
pub mod tools;

pub use closure::ModuleIndex;
pub use compress::Compression;
pub use profile::Profile;

/// Everything that can go wrong building an initramfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("kernel module {}: {what}", path.display())]
    Module { path: PathBuf, what: String },
    #[error("not in {} (neither a module nor built in): {}", dir.display(), names.join(", "))]
    UnknownModules { dir: PathBuf, names: Vec<String> },
    #[error("missing module dependencies: {}", .0.iter().map(|(m, d)| format!("{m} needs {d}")).collect::<Vec<_>>().join(", "))]
    MissingDeps(Vec<(String, String)>),
    #[error("agent binary cannot be /init: {0}")]
    Agent(String),
    #[error("cpio: {0}")]
    Cpio(String),
    #[error("module index: {0}")]
    Index(String),
    #[error("compression: {0}")]
    Compress(String),
    #[error("Debian packages: {0}")]
    Debian(String),
    #[error("{0}")]
    Usage(String),
}

/// What to build.
#[derive(Debug, Clone)]
pub struct Spec {
    /// The kernel's `lib/modules/<kver>` directory.
    pub modules_dir: PathBuf,
    /// The kernel release, `6.1.0-56-amd64` (the name of `modules_dir`).
    pub kver: String,
    /// The static agent binary, which becomes `/init`.
    pub agent: PathBuf,
    pub profile: Profile,
    /// Modules wanted on top of the profile's.
    pub extra_modules: Vec<String>,
    pub compression: Compression,
    /// A `lib/firmware` tree to take the modules' firmware files from; `None`: no firmware.
    pub firmware_dir: Option<PathBuf>,
    /// Where to take the Debian tools ([`tools::TOOLS`]) and their libraries from (the build
    /// machine's `/`); `None`: no tools.
    pub tools_root: Option<PathBuf>,
}

impl Spec {
    /// A spec for `modules_dir` (its name is the kernel release) with the default compression
    /// (zstd), no extra modules and no firmware.
    pub fn new(modules_dir: &Path, agent: &Path, profile: Profile) -> Result<Self, Error> {
        let kver = modules_dir
            .file_name()
            .and_then(|n| n.to_str())
            .filter(|n| !n.is_empty())
            .ok_or_else(|| {
                Error::Usage(format!(
                    "{}: want a lib/modules/<kver> directory",
                    modules_dir.display()
                ))
            })?;
        Ok(Self {
            modules_dir: modules_dir.to_owned(),
            kver: kver.to_owned(),
            agent: agent.to_owned(),
            profile,
            extra_modules: Vec::new(),
            compression: Compression::default(),
            firmware_dir: None,
            tools_root: None,
        })
    }
}

/// A built initramfs.
#[derive(Debug, Clone)]
pub struct Built {
    /// The compressed archive (what the kernel is given).
    pub bytes: Vec<u8>,
    pub report: Report,
}

/// What went into an initramfs.
#[derive(Debug, Clone, Default)]
pub struct Report {
    pub kver: String,
    pub profile: String,
    pub compression: String,
    /// Modules in the archive, in load order.
    pub modules: Vec<String>,
    /// Requested names built into the kernel (nothing to carry).
    pub builtin: Vec<String>,
    /// Optional profile modules this kernel does not have.
    pub absent_optional: Vec<String>,
    /// `(module, softdep)` that resolve to nothing (left out).
    pub unresolved_softdeps: Vec<(String, String)>,
    /// Lines of `byol-aliases.txt`.
    pub aliases: usize,
    /// Firmware files carried (paths under /lib/firmware).
    pub firmware: Vec<String>,
    /// `(firmware file, module)` named by a module but not found in the firmware tree.
    pub firmware_missing: Vec<(String, String)>,
    pub agent_size: u64,
    /// The tools and libraries carried, and their uncompressed bytes.
    pub tools: usize,
    pub tools_size: u64,
    /// Uncompressed bytes of the modules / firmware files.
    pub modules_size: u64,
    pub firmware_size: u64,
    /// The cpio archive before / after compression.
    pub uncompressed_size: u64,
    pub compressed_size: u64,
}

fn mib(n: u64) -> String {
    format!("{:.2} MiB", n as f64 / (1u64 << 20) as f64)
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "initramfs profile {} for {}: {} modules ({}), {} aliases, {} firmware files ({}), {} tool files ({}), agent {}",
            self.profile,
            self.kver,
            self.modules.len(),
            mib(self.modules_size),
            self.aliases,
            self.firmware.len(),
            mib(self.firmware_size),
            self.tools,
            mib(self.tools_size),
            mib(self.agent_size)
        )?;
        write!(
            f,
            "  cpio {} → {} {}",
            mib(self.uncompressed_size),
            self.compression,
            mib(self.compressed_size)
        )?;
        if !self.builtin.is_empty() {
            write!(f, "\n  built into the kernel: {}", self.builtin.join(", "))?;
        }
        if !self.absent_optional.is_empty() {
            write!(
                f,
                "\n  optional, not in this kernel: {}",
                self.absent_optional.join(", ")
            )?;
        }
        if !self.unresolved_softdeps.is_empty() {
            let s: Vec<String> = self
                .unresolved_softdeps
                .iter()
                .map(|(m, d)| format!("{m}→{d}"))
                .collect();
            write!(
                f,
                "\n  soft dependencies not found (skipped): {}",
                s.join(", ")
            )?;
        }
        if !self.firmware_missing.is_empty() {
            let s: Vec<String> = self
                .firmware_missing
                .iter()
                .map(|(fw, m)| format!("{fw} ({m})"))
                .collect();
            write!(
                f,
                "\n  warning: {} firmware files missing: {}",
                s.len(),
                s.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Empty directories of the root (mount points and scratch).
const DIRS: &[(&str, u32)] = &[
    ("dev", 0o755),
    ("etc", 0o755),
    ("mnt", 0o755),
    ("proc", 0o555),
    ("run", 0o755),
    ("sys", 0o555),
    ("tmp", 0o1777),
];

/// Builds the initramfs `spec` describes.
pub fn build(spec: &Spec) -> Result<Built, Error> {
    let index = ModuleIndex::scan(&spec.modules_dir)?;
    build_with(spec, &index)
}

/// [`build`] with an index already read (to build several profiles from one scan).
pub fn build_with(spec: &Spec, index: &ModuleIndex) -> Result<Built, Error> {
    let agent = std::fs::read(&spec.agent).map_err(|source| Error::Io {
        path: spec.agent.clone(),
        source,
    })?;
    agent::check_static(&agent).map_err(|e| match e {
        Error::Agent(w) => Error::Agent(format!("{}: {w}", spec.agent.display())),
        e => e,
    })?;

    let mut report = Report {
        kver: spec.kver.clone(),
        profile: spec.profile.to_string(),
        compression: spec.compression.to_string(),
        agent_size: agent.len() as u64,
        ..Report::default()
    };
    let mut requested: Vec<&str> = Vec::new();
    for name in spec
        .profile
        .modules()
        .into_iter()
        .chain(spec.extra_modules.iter().map(String::as_str))
    {
        if Profile::is_optional(name) && index.get(name).is_none() && !index.is_builtin(name) {
            report.absent_optional.push(name.to_owned());
        } else {
            requested.push(name);
        }
    }
    let closure = index.closure(&requested)?;
    report.builtin = closure.builtin.clone();
    report.unresolved_softdeps = closure.unresolved_softdeps.clone();

    let mut a = cpio::Archive::new();
    for (d, perm) in DIRS {
        a.dir(d, *perm)?;
    }
    a.char_dev("dev/console", 0o600, 5, 1)?;
    a.file("init", 0o755, agent)?;

    let mod_root = format!("lib/modules/{}", spec.kver);
    let mut lines = Vec::new();
    let mut aliases = Vec::new();
    let mut firmware_wanted: Vec<(String, String)> = Vec::new();
    for sel in &closure.modules {
        let m = sel.module;
        let path = m.archive_path();
        let bytes = modinfo::read_module(&index.root().join(&m.rel_path))?;
        report.modules_size += bytes.len() as u64;
        a.file(&format!("{mod_root}/{path}"), 0o644, bytes)?;
        lines.push(index::ModuleLine {
            name: m.name.clone(),
            path,
            depends: sel.depends.clone(),
            softdeps: sel.softdeps.clone(),
        });
        aliases.extend(m.info.aliases.iter().map(|p| index::AliasLine {
            pattern: p.clone(),
            module: m.name.clone(),
        }));
        firmware_wanted.extend(m.info.firmware.iter().map(|f| (f.clone(), m.name.clone())));
        report.modules.push(m.name.clone());
    }
    // an alias with a space cannot be written: such patterns match no modalias anyway
    aliases.retain(|l| !l.pattern.contains(char::is_whitespace));
    let alias_text = index::write_aliases(&aliases)?;
    report.aliases = index::parse_aliases(&alias_text)?.len();
    a.file(
        &format!("{mod_root}/{}", index::MODULES_FILE),
        0o644,
        index::write_modules(&lines)?.into_bytes(),
    )?;
    a.file(
        &format!("{mod_root}/{}", index::ALIASES_FILE),
        0o644,
        alias_text.into_bytes(),
    )?;

    firmware_wanted.sort();
    firmware_wanted.dedup_by(|x, y| x.0 == y.0);
    for (fw, module) in firmware_wanted {
        match find_firmware(spec.firmware_dir.as_deref(), &fw) {
            Some((file, suffix)) => {
                let bytes = std::fs::read(&file).map_err(|source| Error::Io {
                    path: file.clone(),
                    source,
                })?;
                report.firmware_size += bytes.len() as u64;
                a.file(&format!("lib/firmware/{fw}{suffix}"), 0o644, bytes)?;
                report.firmware.push(format!("{fw}{suffix}"));
            }
            None => report.firmware_missing.push((fw, module)),
        }
    }

    if let Some(root) = &spec.tools_root {
        for (path, (bytes, mode)) in tools::collect(root, tools::TOOLS)? {
            report.tools += 1;
            report.tools_size += bytes.len() as u64;
            a.file(&path, mode, bytes)?;
        }
    }

    let raw = a.write();
    report.uncompressed_size = raw.len() as u64;
    let bytes = spec.compression.compress(&raw)?;
    report.compressed_size = bytes.len() as u64;
    Ok(Built { bytes, report })
}

/// `dir/name`, or its `.xz` form (the kernel's loader takes both), following symlinks.
fn find_firmware(dir: Option<&Path>, name: &str) -> Option<(PathBuf, &'static str)> {
    let dir = dir?;
    if name.split('/').any(|c| c == ".." || c.is_empty()) {
        return None;
    }
    ["", ".xz"].into_iter().find_map(|suffix| {
        let p = dir.join(format!("{name}{suffix}"));
        p.is_file().then_some((p, suffix))
    })
}

#[cfg(test)]
mod tests;
