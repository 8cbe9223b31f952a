//! The image engine end to end: images made by qemu-img/qemu-io in the test, streamed from a
//! file or over a real loopback HTTP server (with and without Range support, with a flaky
//! connection), written to a file or a loop device, compared byte for byte with
//! `qemu-img convert -O raw` (the oracle). Errors keep the OVH guide's wording and leave the
//! first MiB zeroed.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use byol_agent::image::engine::{EngineError, Summary, WriteOptions, write_image};
use byol_agent::image::progress::NoProgress;
use byol_spec::{Checksum, ChecksumType, ImageType};
use common::httpd::{Body, Config, Httpd};

const MIB: u64 = 1 << 20;

fn run(program: &str, args: &[&str]) {
    common::run_tool(program, args);
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A guest disk with data, zero runs and a partial last block.
fn make_raw(path: &Path, size: u64, seed: u64) {
    let mut x = seed.wrapping_mul(0x9E3779B97F4A7C15) | 1;
    let mut data = vec![0u8; size as usize];
    let mut off = 0usize;
    while off < data.len() {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let run = (x % (300 * 1024)) as usize + 1;
        let end = (off + run).min(data.len());
        if !x.is_multiple_of(3) {
            for (i, b) in data[off..end].iter_mut().enumerate() {
                *b = ((x >> (i % 56)) as u8) ^ (i as u8);
            }
        }
        off = end;
    }
    std::fs::write(path, data).unwrap();
}

fn qemu_io(img: &Path, cmds: &[&str]) {
    let mut args = vec!["-f", "qcow2"];
    for c in cmds {
        args.push("-c");
        args.push(c);
    }
    args.push(s(img));
    run("qemu-io", &args);
}

/// The corpus of the issue: v2/v3, 512 B / 64 KiB / 2 MiB clusters, zlib and zstd compression,
/// extended L2, a resized image whose L1 moved to the end, data written out of order.
fn corpus(dir: &Path) -> Vec<(String, PathBuf)> {
    let raw = dir.join("base.raw");
    make_raw(&raw, 6 * MIB + 12345, 7);
    let mut out = Vec::new();
    let mut conv = |name: &str, opts: &[&str]| {
        let p = dir.join(format!("{name}.qcow2"));
        let mut args = vec!["convert", "-f", "raw", "-O", "qcow2"];
        args.extend_from_slice(opts);
        args.push(s(&raw));
        args.push(s(&p));
        run("qemu-img", &args);
        out.push((name.to_string(), p));
    };
    conv("v2-64k", &["-o", "compat=0.10"]);
    conv("v3-512", &["-o", "cluster_size=512"]);
    conv("v3-2m", &["-o", "cluster_size=2M"]);
    conv("zlib", &["-c", "-o", "compression_type=zlib"]);
    conv("zstd", &["-c", "-o", "compression_type=zstd"]);
    conv(
        "zstd-512",
        &["-c", "-o", "compression_type=zstd,cluster_size=512"],
    );
    conv("extl2", &["-o", "extended_l2=on,cluster_size=128k"]);
    conv(
        "extl2-zstd",
        &["-c", "-o", "extended_l2=on,compression_type=zstd"],
    );
    // resized: L1 moves to the end of the file, data written after it
    let p = dir.join("resized.qcow2");
    run("qemu-img", &["create", "-f", "qcow2", s(&p), "4M"]);
    qemu_io(&p, &["write -P 0x11 0 1M", "write -P 0x22 3M 512k"]);
    run("qemu-img", &["resize", s(&p), "64M"]);
    qemu_io(
        &p,
        &[
            "write -P 0x33 40M 1M",
            "write -P 0x44 1M 64k",
            "write -z 3M 64k",
        ],
    );
    out.push(("resized".into(), p));
    // out of order: later guest offsets first, zero clusters, partial clusters
    let p = dir.join("ooo.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-o",
            "cluster_size=4096",
            s(&p),
            "3M",
        ],
    );
    qemu_io(
        &p,
        &[
            "write -P 0x55 2M 300k",
            "write -P 0x66 1M 4k",
            "write -P 0x77 100 5000",
            "write -z 1M 4k",
            "write -P 0x88 4k 4k",
        ],
    );
    out.push(("out-of-order".into(), p));
    out
}

fn oracle(img: &Path) -> Vec<u8> {
    let out = img.with_extension("oracle.raw");
    run("qemu-img", &["convert", "-O", "raw", s(img), s(&out)]);
    std::fs::read(out).unwrap()
}

fn opts(source: &str, target: &Path) -> WriteOptions {
    let mut o = WriteOptions::new(source, target);
    o.create_target = true;
    o.source_opts.backoff = std::time::Duration::from_millis(10);
    o
}

fn write(o: &WriteOptions) -> Result<Summary, EngineError> {
    write_image(o, &mut NoProgress)
}

fn sha512_file(p: &Path) -> String {
    let out = Command::new("sha512sum").arg(p).output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .split_whitespace()
        .next()
        .unwrap()
        .to_string()
}

#[test]
fn qcow2_corpus_from_files_matches_qemu_img() {
    let d = tempfile::tempdir().unwrap();
    for (name, img) in corpus(d.path()) {
        let want = oracle(&img);
        let target = d.path().join(format!("{name}.out"));
        let mut o = opts(s(&img), &target);
        o.expected = Some(ImageType::Qcow2);
        o.checksum = Some(Checksum {
            kind: ChecksumType::Sha512,
            hex: sha512_file(&img),
        });
        let sum = write(&o).unwrap_or_else(|e| panic!("{name}: {e}"));
        let got = std::fs::read(&target).unwrap();
        assert_eq!(got.len(), want.len(), "{name}: size");
        assert!(got == want, "{name}: content differs from qemu-img convert");
        assert_eq!(sum.virtual_size, want.len() as u64, "{name}");
        assert_eq!(
            sum.bytes_read,
            std::fs::metadata(&img).unwrap().len(),
            "{name}: read once"
        );
        assert_eq!(sum.format, "qcow2");
    }
}

#[test]
fn qcow2_corpus_over_http_with_and_without_range() {
    let d = tempfile::tempdir().unwrap();
    for (name, img) in corpus(d.path()) {
        let want = oracle(&img);
        let len = std::fs::metadata(&img).unwrap().len();
        for range in [true, false] {
            let httpd = Httpd::start(served(&img, range));
            let target = d.path().join(format!("{name}-{range}.out"));
            let mut o = opts(&httpd.url("/image"), &target);
            o.checksum = Some(Checksum {
                kind: ChecksumType::Sha512,
                hex: sha512_file(&img),
            });
            let sum = write(&o).unwrap_or_else(|e| panic!("{name} range={range}: {e}"));
            assert!(
                std::fs::read(&target).unwrap() == want,
                "{name} range={range}: differs from the oracle"
            );
            if !range || !name.ends_with("512") {
                assert_eq!(sum.mode, if range { "range" } else { "ordered" }, "{name}");
            } else {
                // 512-byte clusters: too many small tables to fetch, learnt in order instead
                assert_eq!(sum.mode, "ordered", "{name}");
            }
            assert_eq!(sum.bytes_read, len, "{name}");
            // one ordered pass over the file, plus the tables when Range is used
            let served = httpd.stats().body_bytes();
            assert!(
                served >= len && served <= len + len / 8 + (1 << 20) + 4096,
                "{name} range={range}: served {served} of {len}"
            );
        }
    }
}

#[test]
fn ordered_pass_spills_to_the_target_when_memory_is_short() {
    let d = tempfile::tempdir().unwrap();
    let img = corpus(d.path())
        .into_iter()
        .find(|(n, _)| n == "resized")
        .unwrap()
        .1;
    let want = oracle(&img);
    let httpd = Httpd::start(served(&img, false));
    let target = d.path().join("spill.out");
    let mut o = opts(&httpd.url("/image"), &target);
    o.memory_budget = 64 * 1024;
    let sum = write(&o).unwrap();
    assert!(sum.spilled > 0, "{sum:?}");
    assert!(sum.held_peak <= 64 * 1024, "{sum:?}");
    assert!(std::fs::read(&target).unwrap() == want);
}

#[test]
fn raw_and_compressed_raw() {
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("disk.raw");
    make_raw(&raw, 5 * MIB + 777, 3);
    let want = std::fs::read(&raw).unwrap();
    run("zstd", &["-q", "-k", s(&raw)]);
    run("xz", &["-k", "-T1", "-3", s(&raw)]);
    run("gzip", &["-k", s(&raw)]);
    for (ext, fmt) in [
        ("", "raw"),
        (".zst", "zstd-compressed raw"),
        (".xz", "xz-compressed raw"),
        (".gz", "gzip-compressed raw"),
    ] {
        let src = PathBuf::from(format!("{}{ext}", s(&raw)));
        let httpd = Httpd::start(served(&src, true));
        let target = d.path().join(format!("out{ext}"));
        let mut o = opts(&httpd.url("/image"), &target);
        o.expected = Some(ImageType::Raw);
        o.checksum = Some(Checksum {
            kind: ChecksumType::Sha512,
            hex: sha512_file(&src),
        });
        let sum = write(&o).unwrap_or_else(|e| panic!("{ext}: {e}"));
        assert!(std::fs::read(&target).unwrap() == want, "{ext}");
        assert_eq!(sum.format, fmt);
        assert_eq!(sum.virtual_size, want.len() as u64);
    }
}

fn served(file: &Path, range: bool) -> Config {
    let c = Config::new(Body::File(file.to_path_buf()));
    if range { c } else { c.no_range() }
}

/// A target pre-filled with 0xAA, so a zeroed first MiB shows.
fn dirty_target(p: &Path, len: usize) {
    std::fs::write(p, vec![0xAAu8; len]).unwrap();
}

fn head_is_zero(p: &Path) -> bool {
    let b = std::fs::read(p).unwrap();
    b[..MIB as usize].iter().all(|&x| x == 0)
}

#[test]
fn errors_keep_the_guide_wording_and_zero_the_head() {
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("disk.raw");
    make_raw(&raw, 3 * MIB, 5);
    let qcow = d.path().join("disk.qcow2");
    run("qemu-img", &["convert", "-O", "qcow2", s(&raw), s(&qcow)]);
    let target = d.path().join("t");

    // format mismatch, both ways
    dirty_target(&target, 4 << 20);
    let mut o = opts(s(&raw), &target);
    o.expected = Some(ImageType::Qcow2);
    assert_eq!(
        write(&o).unwrap_err().to_string(),
        "image provided format is `raw` which does not match expected qcow2 format"
    );
    let mut o = opts(s(&qcow), &target);
    o.expected = Some(ImageType::Raw);
    assert_eq!(
        write(&o).unwrap_err().to_string(),
        "image provided format is `qcow2` which does not match expected raw format"
    );

    // wrong checksum: the image is written, then the head is zeroed
    for (src, kind) in [(&qcow, ChecksumType::Sha512), (&raw, ChecksumType::Md5)] {
        dirty_target(&target, 4 << 20);
        let mut o = opts(s(src), &target);
        let wrong = "0".repeat(kind.hex_len());
        o.checksum = Some(Checksum {
            kind,
            hex: wrong.clone(),
        });
        let e = write(&o).unwrap_err().to_string();
        let prefix = format!("Bad `{}` for downloaded file, got : `", kind.as_str());
        assert!(
            e.starts_with(&prefix) && e.ends_with(&format!("` while expecting `{wrong}`.")),
            "{e}"
        );
        assert!(
            head_is_zero(&target),
            "{src:?}: first MiB zeroed after a bad checksum"
        );
    }

    // a stream that stops short, every time
    for range in [true, false] {
        dirty_target(&target, 4 << 20);
        let httpd = Httpd::start(served(&qcow, range).truncate_at(MIB));
        let o = opts(&httpd.url("/image"), &target);
        let e = write(&o).unwrap_err().to_string();
        assert!(
            e.starts_with(&format!(
                "Could not download image located : `{}`",
                httpd.url("/image")
            )),
            "{e}"
        );
        assert!(
            head_is_zero(&target),
            "first MiB zeroed after a truncated stream"
        );
    }

    // backing file and encryption: refused before anything is written
    let over = d.path().join("overlay.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "-b",
            s(&qcow),
            "-F",
            "qcow2",
            s(&over),
        ],
    );
    let e = write(&opts(s(&over), &target)).unwrap_err().to_string();
    assert!(
        e.starts_with("Can't write qcow2 on disk (") && e.contains("backing file"),
        "{e}"
    );
    let enc = d.path().join("enc.qcow2");
    run(
        "qemu-img",
        &[
            "create",
            "-f",
            "qcow2",
            "--object",
            "secret,id=s0,data=pw",
            "-o",
            "encrypt.format=luks,encrypt.key-secret=s0",
            s(&enc),
            "1M",
        ],
    );
    let e = write(&opts(s(&enc), &target)).unwrap_err().to_string();
    assert!(e.contains("encrypt"), "{e}");

    // download errors
    let httpd = Httpd::start(served(&qcow, true));
    let e = write(&opts(&httpd.url("/missing"), &target))
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with(&format!(
            "Could not download image located : `{}` (",
            httpd.url("/missing")
        )) && e.contains("404"),
        "{e}"
    );
}

#[test]
fn a_flaky_server_is_resumed_and_verified() {
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("disk.raw");
    make_raw(&raw, 6 * MIB, 9);
    let qcow = d.path().join("disk.qcow2");
    run("qemu-img", &["convert", "-O", "qcow2", s(&raw), s(&qcow)]);
    let want = oracle(&qcow);
    let httpd = Httpd::start(served(&qcow, true).drop_after(900 * 1024, 4));
    let target = d.path().join("t");
    let mut o = opts(&httpd.url("/image"), &target);
    o.checksum = Some(Checksum {
        kind: ChecksumType::Sha256,
        hex: {
            let out = Command::new("sha256sum").arg(&qcow).output().unwrap();
            String::from_utf8(out.stdout)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_string()
        },
    });
    // the live reports show the reconnects too (reports come at most every 250 ms)
    o.source_opts.backoff = std::time::Duration::from_millis(150);
    struct MaxResumes(u32);
    impl byol_agent::image::progress::Progress for MaxResumes {
        fn report(&mut self, r: &byol_agent::image::progress::Report) {
            self.0 = self.0.max(r.resumes);
        }
    }
    let mut p = MaxResumes(0);
    let sum = write_image(&o, &mut p).unwrap();
    assert!(sum.resumes >= 3, "{sum:?}");
    assert!(p.0 >= 1, "no progress report showed a resume");
    assert!(std::fs::read(&target).unwrap() == want);
}

#[test]
fn image_larger_than_the_disk_is_refused_before_writing() {
    let d = tempfile::tempdir().unwrap();
    let backing = d.path().join("disk.img");
    std::fs::write(&backing, vec![0xAAu8; 4 << 20]).unwrap();
    let out = Command::new("losetup")
        .args(["-f", "--show", s(&backing)])
        .output()
        .expect("losetup");
    assert!(
        out.status.success(),
        "losetup: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dev = String::from_utf8(out.stdout).unwrap().trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = Command::new("losetup").args(["-d", &self.0]).status();
        }
    }
    let _guard = Detach(dev.clone());
    let big = d.path().join("big.qcow2");
    run("qemu-img", &["create", "-f", "qcow2", s(&big), "8M"]);
    let e = write(&opts(s(&big), Path::new(&dev)))
        .unwrap_err()
        .to_string();
    assert_eq!(
        e,
        format!(
            "image provided has a size of `8388608` bytes which is larger than `{dev}` of `4194304` bytes"
        )
    );
    // nothing was written but the invalidated head
    let b = std::fs::read(&backing).unwrap();
    assert!(b[MIB as usize..].iter().all(|&x| x == 0xAA));

    // a fitting image on the real block device, with BLKZEROOUT for the zero ranges
    let small = d.path().join("small.raw");
    make_raw(&small, 3 * MIB, 11);
    let qcow = d.path().join("small.qcow2");
    run("qemu-img", &["convert", "-O", "qcow2", s(&small), s(&qcow)]);
    write(&opts(s(&qcow), Path::new(&dev))).unwrap();
    let b = std::fs::read(&backing).unwrap();
    assert!(b[..3 * MIB as usize] == std::fs::read(&small).unwrap()[..]);
}

#[test]
fn before_commit_sees_the_disk_as_it_will_read_and_can_refuse() {
    use byol_agent::image::engine::BeforeCommit;
    use std::sync::{Arc, Mutex};
    let d = tempfile::tempdir().unwrap();
    let img = d.path().join("disk.raw");
    make_raw(&img, 5 * MIB, 42);
    let want = std::fs::read(&img).unwrap();
    // (head, rest) as the check saw them
    type Seen = Option<(Vec<u8>, Vec<u8>)>;
    let seen: Arc<Mutex<Seen>> = Arc::default();
    let check = |refuse: bool| {
        let seen = seen.clone();
        BeforeCommit(Arc::new(move |v: &dyn byol_agent::disk::DiskView| {
            // the head from memory, the rest already on the target
            let mut head = vec![0u8; MIB as usize];
            let mut rest = vec![0u8; 4 * MIB as usize];
            assert_eq!(
                v.read_upto(&mut head, 0).map_err(|e| e.to_string())?,
                head.len()
            );
            assert_eq!(
                v.read_upto(&mut rest, MIB).map_err(|e| e.to_string())?,
                rest.len()
            );
            *seen.lock().unwrap() = Some((head, rest));
            if refuse {
                Err("not one partition".to_string())
            } else {
                Ok(())
            }
        }))
    };
    for refuse in [true, false] {
        let target = d.path().join(format!("out-{refuse}"));
        dirty_target(&target, 6 * MIB as usize);
        let mut o = opts(s(&img), &target);
        o.before_commit = Some(check(refuse));
        let r = write(&o);
        let (head, rest) = seen.lock().unwrap().take().expect("the check ran");
        assert_eq!(head, &want[..MIB as usize]);
        assert_eq!(rest, &want[MIB as usize..]);
        if refuse {
            match r {
                Err(EngineError::Refused(m)) => assert_eq!(m, "not one partition"),
                other => panic!("{other:?}"),
            }
            assert!(
                head_is_zero(&target),
                "a refused image's first MiB never lands"
            );
        } else {
            r.unwrap();
            assert_eq!(std::fs::read(&target).unwrap(), want);
        }
    }
}
