//! The kernel's modules as the modules themselves describe them: an index of a
//! `lib/modules/<kver>` tree built from each module's `.modinfo` (never from modules.dep), and
//! the dependency closure of a requested set, in load order.
//!
//! Names are normalised (`-` → `_`). `modules.builtin` tells which names are built into the
//! kernel: they may be requested and are skipped. Hard dependencies (`depends=`) must all be
//! found; soft ones (`softdep=pre:`) are resolved by module name or alias glob, best effort.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use crate::Error;
use crate::index::glob_match;
use crate::modinfo::{self, ModInfo, normalize};

/// One module file of the tree.
#[derive(Debug, Clone)]
pub struct Module {
    /// Normalised name (`nvme_core`).
    pub name: String,
    /// Relative to the modules directory (`kernel/drivers/nvme/host/nvme-core.ko`).
    pub rel_path: PathBuf,
    pub info: ModInfo,
}

impl Module {
    /// Where it goes in the initramfs, relative to `lib/modules/<kver>/`: always a plain `.ko`.
    pub fn archive_path(&self) -> String {
        let p = self.rel_path.to_string_lossy();
        for ext in [".xz", ".zst", ".gz"] {
            if let Some(ko) = p.strip_suffix(ext)
                && ko.ends_with(".ko")
            {
                return ko.to_owned();
            }
        }
        p.into_owned()
    }
}

/// All modules of one kernel, by normalised name.
#[derive(Debug, Clone)]
pub struct ModuleIndex {
    root: PathBuf,
    modules: BTreeMap<String, Module>,
    builtin: BTreeSet<String>,
}

/// A module chosen for the initramfs, with its dependencies as they go in the index file.
#[derive(Debug, Clone)]
pub struct Selected<'a> {
    pub module: &'a Module,
    /// Normalised hard dependencies that are modules (sorted).
    pub depends: Vec<String>,
    /// Soft (pre) dependencies resolved to modules (sorted).
    pub softdeps: Vec<String>,
}

/// The closure of a request.
#[derive(Debug, Clone, Default)]
pub struct Closure<'a> {
    /// In load order: every module after its dependencies.
    pub modules: Vec<Selected<'a>>,
    /// Requested names that are built into the kernel.
    pub builtin: Vec<String>,
    /// `(module, softdep)` that match no module and no builtin name.
    pub unresolved_softdeps: Vec<(String, String)>,
}

impl ModuleIndex {
    /// Reads every module (`.ko`, `.ko.xz`, `.ko.zst`, `.ko.gz`) under `modules_dir`
    /// (symlinks such as `build`/`source` are not followed) and `modules.builtin`.
    pub fn scan(modules_dir: &Path) -> Result<Self, Error> {
        let mut files = Vec::new();
        walk(modules_dir, Path::new(""), &mut files)?;
        files.sort();
        if files.is_empty() {
            return Err(Error::Io {
                path: modules_dir.to_owned(),
                source: std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no kernel modules (*.ko) here: want a lib/modules/<kver> directory",
                ),
            });
        }
        let mut modules = BTreeMap::new();
        for rel in files {
            let info = modinfo::read(&modules_dir.join(&rel))?;
            let stem = rel
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(modinfo::module_file)
                .map_or("", |(s, _)| s);
            let name = normalize(info.name.as_deref().unwrap_or(stem));
            let m = Module {
                name: name.clone(),
                rel_path: rel,
                info,
            };
            // like depmod: a module under updates/ overrides the kernel's own
            let overrides = m.rel_path.starts_with("updates");
            if overrides || !modules.contains_key(&name) {
                modules.insert(name, m);
            }
        }
        let builtin = match std::fs::read_to_string(modules_dir.join("modules.builtin")) {
            Ok(text) => text
                .lines()
                .filter_map(|l| l.rsplit('/').next())
                .filter_map(modinfo::module_file)
                .map(|(stem, _)| normalize(stem))
                .collect(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => BTreeSet::new(),
            Err(source) => {
                return Err(Error::Io {
                    path: modules_dir.join("modules.builtin"),
                    source,
                });
            }
        };
        Ok(Self {
            root: modules_dir.to_owned(),
            modules,
            builtin,
        })
    }

    /// The modules directory it was read from.
    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn len(&self) -> usize {
        self.modules.len()
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty()
    }

    /// The module called `name` (either spelling).
    pub fn get(&self, name: &str) -> Option<&Module> {
        self.modules.get(&normalize(name))
    }

    /// Whether `name` is built into the kernel.
    pub fn is_builtin(&self, name: &str) -> bool {
        self.builtin.contains(&normalize(name))
    }

    /// Modules one of whose `alias=` patterns matches `name` (sorted).
    pub fn by_alias(&self, name: &str) -> Vec<&Module> {
        self.modules
            .values()
            .filter(|m| m.info.aliases.iter().any(|a| glob_match(a, name)))
            .collect()
    }

    /// The dependency closure of `requested` (module or builtin names, either spelling), in
    /// load order. Unknown names and hard dependencies that are neither modules nor builtin
    /// are errors naming them all.
    pub fn closure(&self, requested: &[&str]) -> Result<Closure<'_>, Error> {
        let mut want: Vec<String> = requested.iter().map(|r| normalize(r)).collect();
        want.sort();
        want.dedup();
        let mut c = Closure::default();
        let mut unknown = Vec::new();
        let mut roots = Vec::new();
        for name in want {
            if self.modules.contains_key(&name) {
                roots.push(name);
            } else if self.builtin.contains(&name) {
                c.builtin.push(name);
            } else {
                unknown.push(name);
            }
        }
        if !unknown.is_empty() {
            return Err(Error::UnknownModules {
                dir: self.root.clone(),
                names: unknown,
            });
        }
        let mut walk = Walk {
            index: self,
            state: BTreeMap::new(),
            missing: Vec::new(),
            out: &mut c,
        };
        for r in &roots {
            walk.visit(r);
        }
        if !walk.missing.is_empty() {
            return Err(Error::MissingDeps(walk.missing));
        }
        Ok(c)
    }
}

/// Depth-first post-order walk: a module is emitted after its dependencies.
struct Walk<'i, 'c> {
    index: &'i ModuleIndex,
    /// false = in progress, true = done
    state: BTreeMap<String, bool>,
    missing: Vec<(String, String)>,
    out: &'c mut Closure<'i>,
}

impl<'i> Walk<'i, '_> {
    fn visit(&mut self, name: &str) {
        if self.state.contains_key(name) {
            return; // done, or a softdep cycle: the order can't honour both
        }
        let Some(m) = self.index.modules.get(name) else {
            return;
        };
        self.state.insert(name.to_owned(), false);
        let mut depends = BTreeSet::new();
        for d in &m.info.depends {
            let d = normalize(d);
            if self.index.modules.contains_key(&d) {
                depends.insert(d);
            } else if !self.index.builtin.contains(&d) {
                self.missing.push((name.to_owned(), d));
            }
        }
        let mut softdeps = BTreeSet::new();
        for s in &m.info.softdep_pre {
            let n = normalize(s);
            if self.index.modules.contains_key(&n) {
                softdeps.insert(n);
            } else if !self.index.builtin.contains(&n) {
                let found = self.index.by_alias(s);
                if found.is_empty() {
                    self.out
                        .unresolved_softdeps
                        .push((name.to_owned(), s.clone()));
                }
                softdeps.extend(found.into_iter().map(|f| f.name.clone()));
            }
        }
        softdeps.remove(name);
        softdeps.retain(|s| !depends.contains(s));
        for d in depends.iter().chain(&softdeps) {
            self.visit(d);
        }
        self.state.insert(name.to_owned(), true);
        self.out.modules.push(Selected {
            module: m,
            depends: depends.into_iter().collect(),
            softdeps: softdeps.into_iter().collect(),
        });
    }
}

fn walk(base: &Path, rel: &Path, out: &mut Vec<PathBuf>) -> Result<(), Error> {
    let dir = base.join(rel);
    let io = |source| Error::Io {
        path: dir.clone(),
        source,
    };
    for entry in std::fs::read_dir(&dir).map_err(io)? {
        let entry = entry.map_err(io)?;
        let ty = entry.file_type().map_err(io)?;
        let name = entry.file_name();
        let rel = rel.join(&name);
        if ty.is_dir() {
            walk(base, &rel, out)?;
        } else if ty.is_file() && name.to_str().and_then(modinfo::module_file).is_some() {
            out.push(rel);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::modinfo::tests::fake_module;

    /// A tiny tree: a → b (dash-named file), b → c; s softdeps on alias `crypto-x` (x_generic).
    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let put = |rel: &str, info: &[&str]| {
            let p = dir.path().join(rel);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, fake_module(info)).unwrap();
        };
        put(
            "kernel/a.ko",
            &["name=a", "depends=b-mod", "alias=pci:v0001d*"],
        );
        put("kernel/sub/b-mod.ko", &["name=b_mod", "depends=c"]);
        put("kernel/c.ko", &["name=c", "depends="]);
        put(
            "kernel/s.ko",
            &["name=s", "depends=", "softdep=pre: crypto-x nothere"],
        );
        put("kernel/x_generic.ko", &["name=x_generic", "alias=crypto-x"]);
        put("kernel/broken.ko", &["name=broken", "depends=c,gone"]);
        std::fs::write(
            dir.path().join("modules.builtin"),
            "kernel/net/packet/af_packet.ko\n",
        )
        .unwrap();
        dir
    }

    fn names(c: &Closure) -> Vec<String> {
        c.modules.iter().map(|s| s.module.name.clone()).collect()
    }

    #[test]
    fn closure_in_load_order() {
        let t = tree();
        let idx = ModuleIndex::scan(t.path()).unwrap();
        assert_eq!(idx.len(), 6);
        let c = idx.closure(&["a", "af-packet"]).unwrap();
        assert_eq!(names(&c), ["c", "b_mod", "a"]);
        assert_eq!(c.builtin, ["af_packet"]);
        assert_eq!(c.modules[2].depends, ["b_mod"]);
        assert_eq!(c.modules[1].module.archive_path(), "kernel/sub/b-mod.ko");
        let zst = Module {
            name: "x".into(),
            rel_path: "kernel/x.ko.zst".into(),
            info: ModInfo::default(),
        };
        assert_eq!(zst.archive_path(), "kernel/x.ko");
        assert_eq!(
            c.modules[1].module.rel_path,
            Path::new("kernel/sub/b-mod.ko")
        );
        let c = idx.closure(&["s"]).unwrap();
        assert_eq!(names(&c), ["x_generic", "s"]);
        assert_eq!(c.modules[1].softdeps, ["x_generic"]);
        assert_eq!(c.unresolved_softdeps, [("s".into(), "nothere".into())]);
    }

    #[test]
    fn unknown_and_missing_are_errors_naming_them() {
        let t = tree();
        let idx = ModuleIndex::scan(t.path()).unwrap();
        let e = idx
            .closure(&["a", "nope", "zilch"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("nope, zilch"), "{e}");
        let e = idx.closure(&["broken"]).unwrap_err().to_string();
        assert!(e.contains("broken needs gone"), "{e}");
    }
}
