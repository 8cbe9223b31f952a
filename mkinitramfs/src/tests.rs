//! Tests against Debian's real kernel package: fetched once (apt-get download, dpkg-deb) into
//! `target/byol/kernel/` of the workspace, the cache `cargo xtask initramfs` uses too.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::sync::OnceLock;

use super::*;

fn kernel() -> &'static (debian::Kernel, ModuleIndex) {
    static K: OnceLock<(debian::Kernel, ModuleIndex)> = OnceLock::new();
    K.get_or_init(|| {
        let cache = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/byol/kernel");
        let k = debian::kernel(&cache).unwrap_or_else(|e| {
            panic!(
                "cannot fetch Debian's kernel package into {}: {e}",
                cache.display()
            )
        });
        let idx = ModuleIndex::scan(&k.modules_dir()).unwrap();
        (k, idx)
    })
}

fn fake_agent() -> tempfile::NamedTempFile {
    let f = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(f.path(), agent::tests::fake_static_elf()).unwrap();
    f
}

fn names<'a>(c: &'a closure::Closure<'_>) -> BTreeSet<&'a str> {
    c.modules.iter().map(|s| s.module.name.as_str()).collect()
}

#[test]
fn real_kernel_modinfo_and_closures() {
    let (k, idx) = kernel();
    assert!(idx.len() > 3000, "{} modules", idx.len());
    assert!(k.kver.ends_with("-amd64"));

    let vb = idx.get("virtio_blk").unwrap();
    assert_eq!(vb.info.depends, ["virtio", "virtio_ring"]);
    assert!(vb.info.aliases.contains(&"virtio:d00000002v*".to_string()));
    let c = idx.closure(&["virtio_blk"]).unwrap();
    let n = names(&c);
    assert!(n.contains("virtio") && n.contains("virtio_ring"), "{n:?}");
    // load order: virtio_blk last, after virtio and virtio_ring
    assert_eq!(c.modules.last().unwrap().module.name, "virtio_blk");

    let ext4 = idx.get("ext4").unwrap();
    assert!(ext4.info.softdep_pre.contains(&"crypto-crc32c".to_string()));
    let c = idx.closure(&["ext4"]).unwrap();
    let n = names(&c);
    for want in ["jbd2", "mbcache", "crc16", "crc32c_generic", "ext4"] {
        assert!(n.contains(want), "ext4 closure lacks {want}: {n:?}");
    }
    let e = c.modules.iter().find(|s| s.module.name == "ext4").unwrap();
    assert_eq!(e.depends, ["crc16", "jbd2", "mbcache"]);
    assert!(e.softdeps.contains(&"crc32c_generic".to_string()));

    // `depends=nvme-core`, file nvme-core.ko: one module, either spelling
    let c = idx.closure(&["nvme"]).unwrap();
    assert!(names(&c).contains("nvme_core"));
    assert!(idx.get("nvme-core").is_some());

    // built in (CONFIG_PACKET=y): fine to ask for, nothing to carry
    let c = idx.closure(&["af_packet", "virtio_pci"]).unwrap();
    assert_eq!(c.builtin, ["af_packet"]);

    let e = idx
        .closure(&["virtio_blk", "no_such_driver"])
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("neither a module nor built in): no_such_driver"),
        "{e}"
    );

    // a softdep that is also a hard dependency is listed once, as the hard one
    let c = idx.closure(&["crc64_rocksoft"]).unwrap();
    let r = c.modules.last().unwrap();
    assert_eq!(
        (r.depends.as_slice(), r.softdeps.len()),
        (&["crc64".to_string()][..], 0)
    );

    // firmware= lines are read
    assert!(
        idx.get("tg3")
            .unwrap()
            .info
            .firmware
            .contains(&"tigon/tg3.bin".to_string())
    );
}

#[test]
fn real_kernel_aliases_map_devices_to_drivers() {
    let (_, idx) = kernel();
    // the real alias strings
    let vp = idx.get("virtio_pci").unwrap();
    assert!(
        vp.info
            .aliases
            .contains(&"pci:v00001AF4d*sv*sd*bc*sc*i*".to_string())
    );
    let agent = fake_agent();
    let mut spec = Spec::new(&kernel().0.modules_dir(), agent.path(), Profile::Qemu).unwrap();
    spec.compression = Compression::None;
    let built = build_with(&spec, idx).unwrap();
    let entries = cpio::read(&built.bytes).unwrap();
    let file = |name: &str| -> String {
        match &entries.iter().find(|e| e.name == name).unwrap().kind {
            cpio::Kind::File(d) => String::from_utf8(d.clone()).unwrap(),
            k => panic!("{name}: {k:?}"),
        }
    };
    let root = format!("lib/modules/{}", spec.kver);
    let aliases = index::parse_aliases(&file(&format!("{root}/byol-aliases.txt"))).unwrap();
    for (modalias, want) in [
        // virtio-blk-pci (legacy id 0x1001) → the PCI transport; its virtio device → virtio_blk
        (
            "pci:v00001AF4d00001001sv00001AF4sd00000002bc01sc00i00",
            "virtio_pci",
        ),
        ("virtio:d00000002v00001AF4", "virtio_blk"),
        ("virtio:d00000001v00001AF4", "virtio_net"),
        ("virtio:d00000008v00001AF4", "virtio_scsi"),
        // QEMU's e1000 (82540EM), e1000e (82574L), NVMe, q35's ICH9 AHCI
        (
            "pci:v00008086d0000100Esv00001AF4sd00001100bc02sc00i00",
            "e1000",
        ),
        (
            "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00",
            "e1000e",
        ),
        (
            "pci:v00001B36d00000010sv00001AF4sd00001100bc01sc08i02",
            "nvme",
        ),
        (
            "pci:v00008086d00002922sv00001AF4sd00001100bc01sc06i01",
            "ahci",
        ),
        ("fs-ext4", "ext4"),
    ] {
        let got = index::lookup(&aliases, modalias);
        assert!(got.contains(&want), "{modalias} → {got:?}, want {want}");
    }
    assert!(index::lookup(&aliases, "pci:v0000DEADd0000BEEFsv0sd0bc00sc00i00").is_empty());
}

#[test]
fn real_kernel_initramfs_is_complete_and_reproducible() {
    let (k, idx) = kernel();
    let agent = fake_agent();
    let mut spec = Spec::new(&k.modules_dir(), agent.path(), Profile::Qemu).unwrap();
    spec.compression = Compression::None;
    let a = build_with(&spec, idx).unwrap();
    let b = build(&spec).unwrap();
    assert!(a.bytes == b.bytes, "same inputs gave different archives");
    let r = &a.report;
    assert!(r.modules.len() >= 30, "{r}");
    assert!(r.firmware_missing.is_empty(), "{r}");

    let entries = cpio::read(&a.bytes).unwrap();
    let by_name: std::collections::BTreeMap<&str, &cpio::Entry> =
        entries.iter().map(|e| (e.name.as_str(), e)).collect();
    assert_eq!(by_name["init"].mode(), 0o100755);
    assert_eq!(by_name["dev/console"].kind, cpio::Kind::CharDev(5, 1));
    for d in ["dev", "proc", "sys", "run", "tmp", "mnt", "etc"] {
        assert_eq!(by_name[d].kind, cpio::Kind::Dir, "{d}");
    }
    // sorted names, parents before children
    assert!(entries.windows(2).all(|w| w[0].name < w[1].name));

    // the real cpio reads it all (where installed)
    if let Ok(mut child) = std::process::Command::new("cpio")
        .args(["-i", "-t", "--quiet"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().unwrap();
        let bytes = a.bytes.clone();
        let feed = std::thread::spawn(move || stdin.write_all(&bytes));
        let out = child.wait_with_output().unwrap();
        feed.join().unwrap().unwrap();
        assert!(out.status.success());
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).lines().count(),
            entries.len()
        );
    }

    let root = format!("lib/modules/{}", spec.kver);
    let text = |name: &str| match &by_name[name].kind {
        cpio::Kind::File(d) => String::from_utf8(d.clone()).unwrap(),
        k => panic!("{name}: {k:?}"),
    };
    let lines = index::parse_modules(&text(&format!("{root}/byol-modules.txt"))).unwrap();
    assert_eq!(lines.len(), r.modules.len());
    let mut seen = BTreeSet::new();
    for l in &lines {
        let path = format!("{root}/{}", l.path);
        match &by_name[path.as_str()].kind {
            cpio::Kind::File(d) => assert_eq!(&d[..4], b"\x7fELF", "{path}"),
            k => panic!("{path}: {k:?}"),
        }
        for d in &l.depends {
            assert!(seen.contains(d.as_str()), "{} before its dep {d}", l.name);
        }
        for d in &l.softdeps {
            assert!(
                lines.iter().any(|x| &x.name == d),
                "softdep {d} has no line"
            );
        }
        seen.insert(l.name.as_str());
    }
    for want in [
        "virtio_blk",
        "virtio_net",
        "ext4",
        "vfat",
        "nls_ascii",
        "efivarfs",
        "nvme",
        "ahci",
        "sd_mod",
        "crc32c_generic",
        "md_mod",
        "raid1",
        "raid456",
    ] {
        assert!(seen.contains(want), "qemu profile lacks {want}");
    }
    let aliases = index::parse_aliases(&text(&format!("{root}/byol-aliases.txt"))).unwrap();
    assert_eq!(aliases.len(), r.aliases);
    assert!(aliases.iter().all(|x| seen.contains(x.module.as_str())));
}

#[test]
fn real_kernel_datacenter_closure_and_firmware_report() {
    let (k, idx) = kernel();
    let fw = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(fw.path().join("tigon")).unwrap();
    std::fs::write(fw.path().join("tigon/tg3.bin"), b"fw").unwrap();
    let agent = fake_agent();
    let mut spec = Spec::new(&k.modules_dir(), agent.path(), Profile::Datacenter).unwrap();
    spec.compression = Compression::None;
    spec.firmware_dir = Some(fw.path().to_owned());
    let r = build_with(&spec, idx).unwrap().report;
    for want in [
        "mpt3sas",
        "megaraid_sas",
        "smartpqi",
        "ice",
        "mlx5_core",
        "mlx4_en",
        "bnxt_en",
        "qede",
        "virtio_blk",
    ] {
        assert!(r.modules.iter().any(|m| m == want), "lacks {want}");
    }
    assert_eq!(r.firmware, ["tigon/tg3.bin"]);
    assert!(
        r.firmware_missing
            .iter()
            .any(|(f, m)| f == "intel/ice/ddp/ice.pkg" && m == "ice"),
        "{r}"
    );
}
