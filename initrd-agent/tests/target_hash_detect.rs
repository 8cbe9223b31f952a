//! The image engine's disk (`target`), checksum thread (`hash`) and format detection with
//! streaming decompression (`detect`), against the real tools: coreutils' `*sum`, the zstd, xz
//! and gzip CLIs (the crates' encoders when a CLI is missing), `qemu-img create` for every
//! disk format, and a loop device for the block-device path (skipped, with a note, where loop
//! devices cannot be attached).

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use byol_agent::image::detect::{
    self, DetectError, Detected, check_expected, check_supported, decompressor, format_name,
};
use byol_agent::image::hash::{self, ChecksumType, HashThread};
use byol_agent::image::target::{HEAD_LEN, Target, TargetError};
use byol_spec::ImageType;
use bytes::Bytes;

const MIB: u64 = 1 << 20;

// ---------------------------------------------------------------- helpers

/// Deterministic bytes: a xorshift stream, with runs of a repeated pattern so that the
/// compressors have something to do.
fn data(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        if x.is_multiple_of(5) {
            out.extend(std::iter::repeat_n((x >> 8) as u8, 300));
        } else {
            out.extend_from_slice(&x.to_le_bytes());
        }
    }
    out.truncate(len);
    out
}

fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Runs `cmd args` with `input` on stdin, returns stdout (panics on failure).
fn pipe(cmd: &str, args: &[&str], input: &[u8]) -> Vec<u8> {
    let mut child = Command::new(cmd)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd}: {e}"));
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("writer thread");
    assert!(
        out.status.success(),
        "{cmd} {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `data` compressed as `kind`, by the CLI when it is installed, else by the crate.
fn compress(kind: Detected, data: &[u8]) -> Vec<u8> {
    match kind {
        Detected::Zstd if have("zstd") => pipe("zstd", &["-q", "-c", "-3"], data),
        Detected::Zstd => zstd::encode_all(data, 3).expect("zstd"),
        Detected::Xz if have("xz") => pipe("xz", &["-c", "-3"], data),
        Detected::Xz => {
            let mut out = Vec::new();
            liblzma::read::XzEncoder::new(data, 3)
                .read_to_end(&mut out)
                .expect("xz");
            out
        }
        Detected::Gzip if have("gzip") => pipe("gzip", &["-c", "-6"], data),
        Detected::Gzip => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
            e.write_all(data).expect("gzip");
            e.finish().expect("gzip")
        }
        other => panic!("no compressor for {other:?}"),
    }
}

fn decompress_all(kind: Detected, stream: Vec<u8>) -> io::Result<Vec<u8>> {
    let mut r = decompressor(kind, Box::new(io::Cursor::new(stream)));
    let mut out = Vec::new();
    r.read_to_end(&mut out)?;
    Ok(out)
}

fn sum_tool(tool: &str, path: &Path) -> String {
    let out = Command::new(tool).arg(path).output().expect(tool);
    assert!(out.status.success());
    String::from_utf8(out.stdout).expect("utf8")[..]
        .split_whitespace()
        .next()
        .expect("digest")
        .to_string()
}

fn read_file(path: &Path) -> Vec<u8> {
    std::fs::read(path).expect("read")
}

// ---------------------------------------------------------------- hash

#[test]
fn hash_known_vectors() {
    let cases: [(ChecksumType, &str, &str); 8] = [
        (ChecksumType::Md5, "", "d41d8cd98f00b204e9800998ecf8427e"),
        (ChecksumType::Md5, "abc", "900150983cd24fb0d6963f7d28e17f72"),
        (
            ChecksumType::Sha1,
            "",
            "da39a3ee5e6b4b0d3255bfef95601890afd80709",
        ),
        (
            ChecksumType::Sha1,
            "abc",
            "a9993e364706816aba3e25717850c26c9cd0d89d",
        ),
        (
            ChecksumType::Sha256,
            "",
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        ),
        (
            ChecksumType::Sha256,
            "abc",
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad",
        ),
        (
            ChecksumType::Sha512,
            "",
            "cf83e1357eefb8bdf1542850d66d8007d620e4050b5715dc83f4a921d36ce9ce\
             47d0d13c5d85f2b0ff8318d2877eec2f63b931bd47417a81a538327af927da3e",
        ),
        (
            ChecksumType::Sha512,
            "abc",
            "ddaf35a193617abacc417349ae20413112e6fa4e89a97ea20a9eeee64b55d39a\
             2192992a274fc1a836ba3c23a3feebbd454d4423643ce80e2a9ac94fa54ca49f",
        ),
    ];
    for (kind, input, want) in cases {
        assert_eq!(hash::digest_hex(kind, input.as_bytes()), want, "{kind:?}");
        let t = HashThread::spawn(kind);
        // Fed byte by byte, with empty chunks in between: same digest.
        for b in input.bytes() {
            t.feed(Bytes::new());
            t.feed(Bytes::copy_from_slice(&[b]));
        }
        assert_eq!(t.kind(), kind);
        let got = t.finish();
        assert_eq!(got, want, "{kind:?} thread");
        assert_eq!(got.len(), kind.hex_len());
    }
}

#[test]
fn hash_thread_matches_coreutils_on_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("image.raw");
    let bytes = data(9 * MIB as usize + 12345, 7);
    std::fs::write(&path, &bytes).expect("write");
    let shared = Bytes::from(bytes);
    for (kind, tool) in [
        (ChecksumType::Md5, "md5sum"),
        (ChecksumType::Sha1, "sha1sum"),
        (ChecksumType::Sha256, "sha256sum"),
        (ChecksumType::Sha512, "sha512sum"),
    ] {
        let t = HashThread::spawn(kind);
        // Uneven chunks, as a network read hands them: many more than the queue holds.
        let mut at = 0;
        let mut step = 1usize;
        while at < shared.len() {
            let end = (at + step).min(shared.len());
            t.feed(shared.slice(at..end));
            at = end;
            step = (step * 7 + 4093) % (300 << 10) + 1;
        }
        assert_eq!(t.finish(), sum_tool(tool, &path), "{tool}");
    }
}

#[test]
fn verify_wording_is_the_guide_s() {
    let got = "ab".repeat(64);
    let want = "cd".repeat(64);
    let err = hash::verify(ChecksumType::Sha512, &got, &want).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("Bad `sha512` for downloaded file, got : `{got}` while expecting `{want}`.")
    );
    assert_eq!(
        hash::verify(ChecksumType::Md5, "d41d8cd9", "d41d8cd8")
            .unwrap_err()
            .to_string(),
        "Bad `md5` for downloaded file, got : `d41d8cd9` while expecting `d41d8cd8`."
    );
    // Upper-case or padded expectations still match.
    hash::verify(
        ChecksumType::Sha512,
        &got,
        &format!(" {} ", got.to_uppercase()),
    )
    .unwrap();
    assert!(hash::verify(ChecksumType::Md5, "", "").is_err());
}

// ---------------------------------------------------------------- detect

#[test]
fn detect_compressions_from_real_streams() {
    let raw = data(200_000, 3);
    for kind in [Detected::Zstd, Detected::Xz, Detected::Gzip] {
        let stream = compress(kind, &raw);
        assert_eq!(detect::detect(&stream), kind);
        assert_eq!(detect::detect(&stream[..stream.len().min(4096)]), kind);
        let inner = decompress_all(kind, stream).expect("decompress");
        assert_eq!(detect::detect(&inner), Detected::Raw);
        assert!(kind.is_compression());
    }
    if have("bzip2") {
        assert_eq!(
            detect::detect(&pipe("bzip2", &["-c"], &raw)),
            Detected::Bzip2
        );
        // An empty bzip2 stream starts with the end-of-stream magic.
        assert_eq!(
            detect::detect(&pipe("bzip2", &["-c"], b"")),
            Detected::Bzip2
        );
    }
    if have("lz4") {
        assert_eq!(detect::detect(&pipe("lz4", &["-c"], &raw)), Detected::Lz4);
    }
}

#[test]
fn detect_disk_formats_made_by_qemu_img() {
    if !have("qemu-img") {
        eprintln!("qemu-img missing: disk-format detection not tested");
        return;
    }
    let dir = tempfile::tempdir().expect("tempdir");
    let cases = [
        ("qcow2", Detected::Qcow2),
        ("qcow", Detected::Qcow1),
        ("qed", Detected::Qed),
        ("vmdk", Detected::Vmdk),
        ("vdi", Detected::Vdi),
        ("vhdx", Detected::Vhdx),
        ("vpc", Detected::Vhd),
        ("parallels", Detected::Parallels),
        ("raw", Detected::Raw),
    ];
    for (fmt, want) in cases {
        let path = dir.path().join(format!("disk.{fmt}"));
        let st = Command::new("qemu-img")
            .args(["create", "-q", "-f", fmt])
            .arg(&path)
            .arg("16M")
            .status()
            .expect("qemu-img");
        assert!(st.success(), "qemu-img create -f {fmt}");
        let mut first = vec![0u8; 4096];
        let n = File::open(&path)
            .expect("open")
            .read(&mut first)
            .expect("read");
        assert_eq!(detect::detect(&first[..n]), want, "{fmt}");
        assert_eq!(want.short_name(), fmt, "qemu-img's name for {fmt}");
    }
    // qcow2 v2 (compat=0.10) too.
    let path = dir.path().join("v2.qcow2");
    let st = Command::new("qemu-img")
        .args(["create", "-q", "-f", "qcow2", "-o", "compat=0.10"])
        .arg(&path)
        .arg("1M")
        .status()
        .expect("qemu-img");
    assert!(st.success());
    assert_eq!(detect::detect(&read_file(&path)), Detected::Qcow2);
}

#[test]
fn detect_synthetic_magics_and_raw() {
    let mut vdi = vec![0u8; 512];
    vdi[..40].copy_from_slice(b"<<< Oracle VM VirtualBox Disk Image >>>\n");
    vdi[0x40..0x44].copy_from_slice(&0xbeda_107fu32.to_le_bytes());
    let cases: Vec<(Vec<u8>, Detected)> = vec![
        (b"QFI\xfb\0\0\0\x03".to_vec(), Detected::Qcow2),
        (b"QFI\xfb\0\0\0\x02".to_vec(), Detected::Qcow2),
        // Unknown versions are qcow2's to refuse, with its own message.
        (b"QFI\xfb\0\0\0\x07".to_vec(), Detected::Qcow2),
        (b"QFI\xfb".to_vec(), Detected::Qcow2),
        (b"QFI\xfb\0\0\0\x01".to_vec(), Detected::Qcow1),
        (vec![0x28, 0xb5, 0x2f, 0xfd, 0x24], Detected::Zstd),
        (vec![0x5a, 0x2a, 0x4d, 0x18, 0, 0, 0, 0], Detected::Zstd),
        (vec![0xfd, b'7', b'z', b'X', b'Z', 0], Detected::Xz),
        (vec![0x1f, 0x8b, 0x08, 0], Detected::Gzip),
        (b"KDMV\x01\0\0\0".to_vec(), Detected::Vmdk),
        (
            b"# Disk DescriptorFile\nversion=1\n".to_vec(),
            Detected::Vmdk,
        ),
        (b"vhdxfile".to_vec(), Detected::Vhdx),
        (b"conectix".to_vec(), Detected::Vhd),
        (b"QED\0".to_vec(), Detected::Qed),
        (vdi, Detected::Vdi),
        // Not quite magics: raw.
        (vec![], Detected::Raw),
        (b"QFI".to_vec(), Detected::Raw),
        (vec![0x1f, 0x8b, 0x07], Detected::Raw),
        (b"BZh9 not bzip2".to_vec(), Detected::Raw),
        (vec![0u8; 4096], Detected::Raw),
    ];
    for (bytes, want) in cases {
        assert_eq!(detect::detect(&bytes), want, "{bytes:02x?}");
    }
    // A disk with an MBR boot sector is raw.
    let mut mbr = vec![0u8; 8192];
    mbr[..3].copy_from_slice(&[0xeb, 0x63, 0x90]);
    mbr[510] = 0x55;
    mbr[511] = 0xaa;
    assert_eq!(detect::detect(&mbr), Detected::Raw);
    // Only the first 4096 bytes count: a VDI signature is at 0x40, so nothing past 4096 matters.
    let mut late = vec![0u8; 8192];
    late[4096..4104].copy_from_slice(b"vhdxfile");
    assert_eq!(detect::detect(&late), Detected::Raw);
}

#[test]
fn format_names() {
    assert_eq!(format_name(Detected::Qcow2), "qcow2");
    assert_eq!(format_name(Detected::Raw), "raw");
    assert_eq!(format_name(Detected::Zstd), "zstd-compressed raw");
    assert_eq!(format_name(Detected::Xz), "xz-compressed raw");
    assert_eq!(format_name(Detected::Gzip), "gzip-compressed raw");
    assert_eq!(format_name(Detected::Vmdk), "VMDK");
}

#[test]
fn decompressors_read_every_frame_member_and_stream() {
    let a = data(700_000, 11);
    let b = data(300_000, 12);
    let c = data(5, 13);
    let mut whole = a.clone();
    whole.extend_from_slice(&b);
    whole.extend_from_slice(&c);

    // zstd: a skippable frame first (as pzstd writes), three frames, a skippable frame between.
    let mut z = vec![0x50, 0x2a, 0x4d, 0x18, 4, 0, 0, 0, 1, 2, 3, 4];
    z.extend(compress(Detected::Zstd, &a));
    z.extend(compress(Detected::Zstd, &b));
    z.extend([0x5f, 0x2a, 0x4d, 0x18, 0, 0, 0, 0]);
    z.extend(compress(Detected::Zstd, &c));
    assert_eq!(detect::detect(&z), Detected::Zstd);
    assert!(decompress_all(Detected::Zstd, z).expect("zstd") == whole);

    // xz: concatenated streams, with stream padding (a multiple of 4 zero bytes) between.
    let mut x = compress(Detected::Xz, &a);
    x.extend([0u8; 8]);
    x.extend(compress(Detected::Xz, &b));
    x.extend(compress(Detected::Xz, &c));
    x.extend([0u8; 4]);
    assert!(decompress_all(Detected::Xz, x).expect("xz") == whole);

    // gzip: several members, as `cat a.gz b.gz` makes.
    let mut g = compress(Detected::Gzip, &a);
    g.extend(compress(Detected::Gzip, &b));
    g.extend(compress(Detected::Gzip, &c));
    assert!(decompress_all(Detected::Gzip, g).expect("gzip") == whole);

    // Anything else passes through untouched.
    assert!(decompress_all(Detected::Raw, a.clone()).expect("raw") == a);
}

#[test]
fn decompressors_fail_on_truncated_or_corrupt_streams() {
    let raw = data(400_000, 21);
    for kind in [Detected::Zstd, Detected::Xz, Detected::Gzip] {
        let stream = compress(kind, &raw);
        let name = kind.short_name();
        for cut in [stream.len() - 1, stream.len() / 2, 10] {
            let err = decompress_all(kind, stream[..cut].to_vec())
                .expect_err(&format!("{name} cut at {cut} must fail"));
            let msg = err.to_string();
            assert!(
                msg.starts_with(&format!("{name}-compressed stream is truncated (")),
                "{name} cut at {cut}: {msg}"
            );
            assert_eq!(err.kind(), io::ErrorKind::UnexpectedEof, "{msg}");
        }
        let mut bad = stream.clone();
        let mid = bad.len() / 2;
        for byte in &mut bad[mid..mid + 64] {
            *byte ^= 0x5a;
        }
        let err = decompress_all(kind, bad).expect_err(&format!("{name} corrupt must fail"));
        assert!(
            err.to_string()
                .starts_with(&format!("{name}-compressed stream is corrupt: ")),
            "{name}: {err}"
        );
        assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{err}");
    }
}

/// Gives `good` bytes, then fails like a dropped connection.
struct Dropping {
    good: io::Cursor<Vec<u8>>,
}

impl Read for Dropping {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.good.read(buf)? {
            0 => Err(io::Error::other(
                "Could not download image located : `http://x/i.raw.zst` (connection reset)",
            )),
            n => Ok(n),
        }
    }
}

#[test]
fn decompressors_pass_source_errors_through_unchanged() {
    let raw = data(400_000, 31);
    for kind in [Detected::Zstd, Detected::Xz, Detected::Gzip] {
        let stream = compress(kind, &raw);
        let half = stream[..stream.len() / 2].to_vec();
        let mut r = decompressor(
            kind,
            Box::new(Dropping {
                good: io::Cursor::new(half),
            }),
        );
        let mut out = Vec::new();
        let err = r.read_to_end(&mut out).expect_err("must fail");
        assert_eq!(err.kind(), io::ErrorKind::Other, "{kind:?}");
        assert_eq!(
            err.to_string(),
            "Could not download image located : `http://x/i.raw.zst` (connection reset)",
            "{kind:?}"
        );
    }
}

#[test]
fn zstd_window_over_the_bound_is_refused_clearly() {
    if !have("zstd") {
        eprintln!("zstd CLI missing: --long=28 stream not tested");
        return;
    }
    // From stdin the size is unknown, so the frame keeps its 256 MiB window.
    let stream = pipe("zstd", &["-q", "-c", "-1", "--long=28"], &data(100_000, 41));
    let err = decompress_all(Detected::Zstd, stream).expect_err("window 2^28 must be refused");
    let msg = err.to_string();
    assert!(
        msg.starts_with("zstd frame needs a window larger than 128 MiB"),
        "{msg}"
    );
    assert!(msg.contains("recompress"), "{msg}");
    // --long=27 is within the bound.
    let stream = pipe("zstd", &["-q", "-c", "-1", "--long=27"], &data(100_000, 41));
    assert_eq!(
        decompress_all(Detected::Zstd, stream).expect("window 2^27"),
        data(100_000, 41)
    );
}

#[test]
fn xz_dictionary_over_the_bound_is_refused_clearly() {
    if !have("xz") {
        eprintln!("xz CLI missing: big-dictionary stream not tested");
        return;
    }
    let stream = pipe(
        "xz",
        &["-c", "--lzma2=dict=256MiB,mf=hc3,mode=fast"],
        &data(10_000, 43),
    );
    let err = decompress_all(Detected::Xz, stream).expect_err("256 MiB dictionary refused");
    let msg = err.to_string();
    assert!(
        msg.starts_with("xz stream needs more than 136 MiB of memory to decompress"),
        "{msg}"
    );
}

#[test]
fn unsupported_content_is_refused_with_what_to_do() {
    assert_eq!(
        check_supported(Detected::Zstd, Some(Detected::Qcow2))
            .unwrap_err()
            .to_string(),
        "qcow2 inside zstd is not supported: serve the .qcow2 uncompressed (qcow2 can compress \
         its clusters itself, qemu-img convert -c)"
    );
    assert_eq!(
        check_supported(Detected::Gzip, Some(Detected::Qcow2)).unwrap_err(),
        DetectError::CompressedQcow2 {
            compression: "gzip"
        }
    );
    assert_eq!(
        check_supported(Detected::Vmdk, None)
            .unwrap_err()
            .to_string(),
        "image is a VMDK disk image: byol installs qcow2 or raw images only; convert it with \
         `qemu-img convert -O qcow2 vmdk-image disk.qcow2`"
    );
    assert_eq!(
        check_supported(Detected::Xz, Some(Detected::Vhdx))
            .unwrap_err()
            .to_string(),
        "image is a VHDX disk image inside xz: byol installs qcow2 or raw images only; convert \
         it with `qemu-img convert -O qcow2 vhdx-image disk.qcow2`"
    );
    assert_eq!(
        check_supported(Detected::Zstd, Some(Detected::Gzip))
            .unwrap_err()
            .to_string(),
        "image is gzip-compressed raw inside zstd: byol decompresses one layer only; serve the \
         raw image compressed once (zstd, xz or gzip)"
    );
    assert!(
        check_supported(Detected::Bzip2, None)
            .unwrap_err()
            .to_string()
            .starts_with(
                "image is bzip2-compressed data: byol decompresses only zstd, xz and gzip"
            )
    );
    for d in [Detected::Qcow1, Detected::Qed, Detected::Vdi, Detected::Vhd] {
        assert!(check_supported(d, None).is_err(), "{d:?}");
    }
    for (outer, inner) in [
        (Detected::Qcow2, None),
        (Detected::Raw, None),
        (Detected::Zstd, None),
        (Detected::Zstd, Some(Detected::Raw)),
        (Detected::Xz, Some(Detected::Raw)),
        (Detected::Gzip, Some(Detected::Raw)),
    ] {
        check_supported(outer, inner).unwrap();
    }
}

#[test]
fn check_expected_wording_is_the_guide_s() {
    assert_eq!(
        check_expected(ImageType::Qcow2, Detected::Raw)
            .unwrap_err()
            .to_string(),
        "image provided format is `raw` which does not match expected qcow2 format"
    );
    assert_eq!(
        check_expected(ImageType::Raw, Detected::Qcow2)
            .unwrap_err()
            .to_string(),
        "image provided format is `qcow2` which does not match expected raw format"
    );
    // Compressed raw counts as raw.
    assert_eq!(
        check_expected(ImageType::Qcow2, Detected::Zstd)
            .unwrap_err()
            .to_string(),
        "image provided format is `raw` which does not match expected qcow2 format"
    );
    for d in [Detected::Raw, Detected::Zstd, Detected::Xz, Detected::Gzip] {
        check_expected(ImageType::Raw, d).unwrap();
    }
    check_expected(ImageType::Qcow2, Detected::Qcow2).unwrap();
    assert_eq!(
        check_expected(ImageType::Qcow2, Detected::Vmdk)
            .unwrap_err()
            .to_string(),
        "image provided format is `vmdk` which does not match expected qcow2 format"
    );
}

// ---------------------------------------------------------------- target on a regular file

#[test]
fn file_target_holds_the_head_back_until_commit() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.raw");
    let image = data(3 * MIB as usize + 4096, 51);
    let mut t = Target::open(&path, true).expect("open");
    assert!(!t.is_block_device());
    assert_eq!(t.size(), None);
    assert_eq!(t.logical_sector_size(), 512);
    assert_eq!(t.name(), path.display().to_string());
    t.check_fits(u64::MAX).expect("a file always fits");
    t.prepare(image.len() as u64).expect("prepare");
    // Chunks of 768 KiB: one straddles the head's end.
    for (i, chunk) in image.chunks(768 << 10).enumerate() {
        t.write_at((i * (768 << 10)) as u64, chunk).expect("write");
    }
    let before = read_file(&path);
    assert_eq!(before.len(), image.len());
    assert!(before[..HEAD_LEN as usize].iter().all(|&b| b == 0));
    assert!(before[HEAD_LEN as usize..] == image[HEAD_LEN as usize..]);
    // The engine can read back what it wrote, head included.
    let mut back = vec![0u8; 8192];
    t.read_at(HEAD_LEN - 4096, &mut back).expect("read_at");
    assert!(back == image[(HEAD_LEN - 4096) as usize..(HEAD_LEN + 4096) as usize]);
    t.commit().expect("commit");
    assert!(read_file(&path) == image);
}

#[test]
fn file_target_invalidate_zeroes_the_head() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.raw");
    let image = data(2 * MIB as usize, 52);
    let mut t = Target::open(&path, true).expect("open");
    t.prepare(image.len() as u64).expect("prepare");
    t.write_at(0, &image).expect("write");
    t.invalidate().expect("invalidate");
    let after = read_file(&path);
    assert_eq!(after.len(), image.len());
    assert!(after[..HEAD_LEN as usize].iter().all(|&b| b == 0));
    assert!(after[HEAD_LEN as usize..] == image[HEAD_LEN as usize..]);
}

#[test]
fn file_target_untouched_until_the_first_write() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("old.raw");
    let old = data(2 * MIB as usize, 53);
    std::fs::write(&path, &old).expect("write");
    // Opening and refusing (or failing before any write) leaves the old content.
    let t = Target::open(&path, false).expect("open");
    t.invalidate().expect("invalidate");
    assert!(read_file(&path) == old);
    // prepare wipes the old content: a smaller image leaves nothing of it.
    let mut t = Target::open(&path, false).expect("open");
    t.prepare(MIB + 512).expect("prepare");
    t.write_at(MIB, &[7u8; 512]).expect("write");
    drop(t); // neither committed nor invalidated: the head stays zero
    let after = read_file(&path);
    assert_eq!(after.len() as u64, MIB + 512);
    assert!(after[..MIB as usize].iter().all(|&b| b == 0));
    assert!(after[MIB as usize..].iter().all(|&b| b == 7));
}

#[test]
fn file_target_write_zeroes_punches_holes() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("out.raw");
    let len = 8 * MIB;
    let mut t = Target::open(&path, true).expect("open");
    t.prepare(len).expect("prepare");
    t.write_at(0, &vec![0xffu8; len as usize]).expect("fill");
    File::open(&path).expect("open").sync_all().expect("sync");
    let blocks_full = std::fs::metadata(&path).expect("stat").blocks();
    // Aligned, unaligned, and across the head's end.
    t.write_zeroes(2 * MIB, 4 * MIB).expect("zero aligned");
    t.write_zeroes(6 * MIB + 100, 1000).expect("zero unaligned");
    t.write_zeroes(MIB - 10, 20).expect("zero across head");
    t.commit().expect("commit");
    let out = read_file(&path);
    assert_eq!(out.len() as u64, len);
    let zero = |a: u64, b: u64| out[a as usize..b as usize].iter().all(|&x| x == 0);
    let ff = |a: u64, b: u64| out[a as usize..b as usize].iter().all(|&x| x == 0xff);
    assert!(ff(0, MIB - 10));
    assert!(zero(MIB - 10, MIB + 10));
    assert!(ff(MIB + 10, 2 * MIB));
    assert!(zero(2 * MIB, 6 * MIB));
    assert!(ff(6 * MIB, 6 * MIB + 100));
    assert!(zero(6 * MIB + 100, 6 * MIB + 1100));
    assert!(ff(6 * MIB + 1100, len));
    let blocks_after = std::fs::metadata(&path).expect("stat").blocks();
    // Before commit the head (1 MiB) was not on disk; after it, it is, and 4 MiB are holes.
    assert!(
        blocks_after + (4 * MIB / 512) <= blocks_full + (MIB / 512) + 16,
        "4 MiB were punched: {blocks_full} -> {blocks_after} blocks"
    );
}

#[test]
fn file_target_unprepared_grows_and_commit_cuts_scratch() {
    let dir = tempfile::tempdir().expect("tempdir");
    // No prepare (a compressed raw of unknown size): the file grows with the writes.
    let path = dir.path().join("grow.raw");
    std::fs::write(&path, vec![9u8; 3 * MIB as usize]).expect("old content");
    let mut t = Target::open(&path, false).expect("open");
    t.write_at(0, &[1u8; 4096]).expect("write head");
    t.write_zeroes(4096, MIB + 4096).expect("zero past the end");
    t.commit().expect("commit");
    let out = read_file(&path);
    assert_eq!(out.len() as u64, MIB + 8192);
    assert!(out[..4096].iter().all(|&b| b == 1));
    assert!(out[4096..].iter().all(|&b| b == 0));

    // prepare(0): size unknown (compressed raw): emptied, grows, nothing cut at commit.
    let path = dir.path().join("unknown.raw");
    std::fs::write(&path, vec![9u8; 3 * MIB as usize]).expect("old content");
    let mut t = Target::open(&path, false).expect("open");
    t.prepare(0).expect("prepare unknown");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 0);
    t.write_at(0, &vec![3u8; 2 * MIB as usize]).expect("write");
    t.commit().expect("commit");
    assert!(read_file(&path) == vec![3u8; 2 * MIB as usize]);

    // A small image that lies entirely within the head.
    let path = dir.path().join("tiny.raw");
    let mut t = Target::open(&path, true).expect("open");
    t.write_at(0, b"tiny image").expect("write");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 0);
    t.commit().expect("commit");
    assert_eq!(read_file(&path), b"tiny image");

    // Scratch written past a prepared size is cut at commit.
    let path = dir.path().join("scratch.raw");
    let mut t = Target::open(&path, true).expect("open");
    t.prepare(2 * MIB).expect("prepare");
    t.write_at(3 * MIB, &[5u8; 4096]).expect("scratch");
    let mut back = [0u8; 4096];
    t.read_at(3 * MIB, &mut back).expect("read scratch");
    assert_eq!(back, [5u8; 4096]);
    t.commit().expect("commit");
    assert_eq!(std::fs::metadata(&path).expect("stat").len(), 2 * MIB);
}

#[test]
fn target_errors_name_the_disk_and_the_operation() {
    let dir = tempfile::tempdir().expect("tempdir");
    let missing = dir.path().join("missing.raw");
    let err = Target::open(&missing, false).expect_err("must fail");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot open {}: No such file or directory",
            missing.display()
        )
    );
    let err = Target::open(dir.path(), true).expect_err("must fail");
    assert_eq!(
        err.to_string(),
        format!(
            "{} is neither a block device nor a regular file (it is a directory): give a disk \
             such as /dev/sda, or a file",
            dir.path().display()
        )
    );
    assert!(matches!(
        Target::open(Path::new("/dev/null"), false),
        Err(TargetError::NotADisk {
            kind: "character device",
            ..
        })
    ));
    // A write the system refuses: past the largest file size (EFBIG or EINVAL, by filesystem).
    let path = dir.path().join("out.raw");
    let mut t = Target::open(&path, true).expect("open");
    let offset = i64::MAX as u64 - 2;
    let err = t.write_at(offset, &[1u8; 4]).expect_err("refused");
    let msg = err.to_string();
    let prefix = format!(
        "cannot write 4 bytes at offset {offset} of {}: ",
        path.display()
    );
    let reason = msg.strip_prefix(&prefix).unwrap_or_else(|| panic!("{msg}"));
    assert!(
        reason == "File too large" || reason == "Invalid argument",
        "the system's words, without std's \"(os error N)\": {msg}"
    );
    assert!(err.io_error().and_then(io::Error::raw_os_error).is_some());
    let err = t.write_at(u64::MAX, &[1u8; 2]).expect_err("overflow");
    assert!(matches!(err, TargetError::PastEnd { .. }), "{err}");
}

// ---------------------------------------------------------------- target on a block device

/// A loop device over a file, detached when dropped.
struct Loop {
    dev: PathBuf,
}

impl Loop {
    fn attach(backing: &Path) -> Option<Loop> {
        Loop::attach_with(backing, &[])
    }

    fn attach_with(backing: &Path, extra: &[&str]) -> Option<Loop> {
        let out = Command::new("losetup")
            .args(["-f", "--show"])
            .args(extra)
            .arg(backing)
            .output()
            .ok()?;
        if !out.status.success() {
            eprintln!(
                "loop devices unavailable ({}): block-device path not tested",
                String::from_utf8_lossy(&out.stderr).trim()
            );
            return None;
        }
        let dev = String::from_utf8(out.stdout).ok()?.trim().to_string();
        Some(Loop { dev: dev.into() })
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
    }
}

fn read_dev(dev: &Path, offset: u64, len: usize) -> Vec<u8> {
    let f = File::open(dev).expect("open device");
    let mut buf = vec![0u8; len];
    f.read_exact_at(&mut buf, offset).expect("read device");
    buf
}

/// A backing file full of an "old system" (0xAA), on a loop device.
fn old_disk(dir: &Path, size: u64) -> Option<Loop> {
    let backing = dir.join("disk.img");
    std::fs::write(&backing, vec![0xaau8; size as usize]).expect("backing");
    Loop::attach(&backing)
}

#[test]
fn block_device_commit_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 16 * MIB;
    let Some(lo) = old_disk(dir.path(), size) else {
        return;
    };
    let mut t = Target::open(&lo.dev, false).expect("open loop device");
    assert!(t.is_block_device());
    assert_eq!(t.size(), Some(size));
    assert_eq!(t.logical_sector_size(), 512);
    assert_eq!(t.name(), lo.dev.display().to_string());

    // Exclusive: a second opener is refused while this one holds it.
    let err = Target::open(&lo.dev, false).expect_err("busy");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot open {}: Device or resource busy (it is mounted or in use: byol opens the \
             disk exclusively)",
            lo.dev.display()
        )
    );

    assert_eq!(
        t.check_fits(size + 1).unwrap_err().to_string(),
        format!(
            "image provided has a size of `{}` bytes which is larger than `{}` of `{size}` bytes",
            size + 1,
            lo.dev.display()
        )
    );
    t.check_fits(size).expect("fits");
    // Nothing written yet.
    assert!(read_dev(&lo.dev, 0, 4096).iter().all(|&b| b == 0xaa));

    let image_len = 10 * MIB;
    t.prepare(image_len).expect("prepare");
    // Start wipe: first and last MiB zero, the middle untouched.
    assert!(read_dev(&lo.dev, 0, MIB as usize).iter().all(|&b| b == 0));
    assert!(
        read_dev(&lo.dev, size - MIB, MIB as usize)
            .iter()
            .all(|&b| b == 0)
    );
    assert!(read_dev(&lo.dev, MIB, 4096).iter().all(|&b| b == 0xaa));

    let image = data(image_len as usize, 61);
    for (i, chunk) in image.chunks(3 * MIB as usize / 2).enumerate() {
        t.write_at((i * (3 * MIB as usize / 2)) as u64, chunk)
            .expect("write");
    }
    // BLKZEROOUT over an aligned range, zero bytes at unaligned edges.
    t.write_zeroes(3 * MIB, 2 * MIB).expect("zero aligned");
    t.write_zeroes(6 * MIB + 7, 70_000).expect("zero unaligned");
    let mut want = image.clone();
    want[3 * MIB as usize..5 * MIB as usize].fill(0);
    want[6 * MIB as usize + 7..6 * MIB as usize + 70_007].fill(0);

    let before = read_dev(&lo.dev, 0, image_len as usize);
    assert!(
        before[..MIB as usize].iter().all(|&b| b == 0),
        "head held back"
    );
    assert!(before[MIB as usize..] == want[MIB as usize..]);

    let err = t.write_at(size - 2, &[0u8; 4]).expect_err("past the end");
    assert_eq!(
        err.to_string(),
        format!(
            "cannot write 4 bytes at offset {} of {}: that is past its end ({size} bytes)",
            size - 2,
            lo.dev.display()
        )
    );

    t.commit().expect("commit");
    assert!(read_dev(&lo.dev, 0, image_len as usize) == want);
    // Past the image: the old content, except the wiped last MiB.
    assert!(
        read_dev(&lo.dev, image_len, 4096)
            .iter()
            .all(|&b| b == 0xaa)
    );
}

#[test]
fn block_device_invalidate_path() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 8 * MIB;
    let Some(lo) = old_disk(dir.path(), size) else {
        return;
    };
    // Refused before writing: untouched, even by invalidate.
    let t = Target::open(&lo.dev, false).expect("open");
    assert!(t.check_fits(size * 2).is_err());
    t.invalidate().expect("invalidate");
    assert!(read_dev(&lo.dev, 0, 4096).iter().all(|&b| b == 0xaa));

    // Written without prepare, then failed (say, a bad checksum): head zero, body kept.
    let mut t = Target::open(&lo.dev, false).expect("open");
    let image = data(4 * MIB as usize, 62);
    t.write_at(0, &image).expect("write");
    t.invalidate().expect("invalidate");
    let after = read_dev(&lo.dev, 0, 4 * MIB as usize);
    assert!(after[..MIB as usize].iter().all(|&b| b == 0));
    assert!(after[MIB as usize..] == image[MIB as usize..]);
}

#[test]
fn block_device_with_4k_sectors() {
    let dir = tempfile::tempdir().expect("tempdir");
    let size = 4 * MIB;
    let backing = dir.path().join("disk4k.img");
    std::fs::write(&backing, vec![0xaau8; size as usize]).expect("backing");
    let Some(lo) = Loop::attach_with(&backing, &["--sector-size", "4096"]) else {
        return;
    };
    let mut t = Target::open(&lo.dev, false).expect("open");
    assert_eq!(t.logical_sector_size(), 4096);
    t.prepare(size).expect("prepare");
    t.write_at(0, &vec![0x11u8; size as usize]).expect("write");
    // Edges not 4096-aligned: zeroes written there, BLKZEROOUT over the aligned middle.
    t.write_zeroes(MIB + 512, 3 * 4096).expect("zero");
    t.commit().expect("commit");
    let out = read_dev(&lo.dev, 0, size as usize);
    let (a, b) = ((MIB + 512) as usize, (MIB + 512 + 3 * 4096) as usize);
    assert!(out[..a].iter().all(|&x| x == 0x11));
    assert!(out[a..b].iter().all(|&x| x == 0));
    assert!(out[b..].iter().all(|&x| x == 0x11));
}
