//! The qcow2 format layer against real images made by qemu-img and qemu-io, with
//! `qemu-img convert -O raw` as the oracle: every image is read into memory, turned into a
//! plan, materialised by a small reference "apply plan" and compared byte for byte. Also the
//! refusals (backing file, encryption, external data file, corrupt bit, unknown features).

mod common;

use std::path::{Path, PathBuf};

use byol_agent::image::qcow2::{
    Decompressor, Extent, Header, MetadataKind, Plan, Qcow2Error, l2_tables, parse_l1, parse_l2,
};

const KIB: u64 = 1024;
const MIB: u64 = 1024 * 1024;

struct Dir(tempfile::TempDir);

impl Dir {
    fn new() -> Dir {
        Dir(tempfile::tempdir().expect("tempdir"))
    }

    fn path(&self, name: &str) -> PathBuf {
        self.0.path().join(name)
    }
}

fn run(program: &str, args: &[&str]) {
    common::run_tool(program, args);
}

fn s(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

fn qemu_img(args: &[&str]) {
    run("qemu-img", args);
}

/// Runs qemu-io commands on a qcow2 image, in order.
fn qemu_io(img: &Path, cmds: &[String]) {
    let mut args = vec!["-f".to_string(), "qcow2".to_string()];
    for c in cmds {
        args.push("-c".into());
        args.push(c.clone());
    }
    args.push(s(img).into());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run("qemu-io", &args);
}

/// Deterministic bytes: xorshift noise.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Deterministic compressible bytes: words from a small vocabulary.
fn text(seed: u64, len: usize) -> Vec<u8> {
    const WORDS: [&str; 12] = [
        "qcow2 ", "cluster ", "stream ", "byol ", "disk ", "image\n", "zstd ", "deflate ",
        "sector ", "guest ", "host ", "table ",
    ];
    let picks = noise(seed, len);
    let mut out = Vec::with_capacity(len + 16);
    let mut i = 0;
    while out.len() < len {
        out.extend_from_slice(WORDS[picks[i % picks.len()] as usize % WORDS.len()].as_bytes());
        i += 1;
    }
    out.truncate(len);
    out
}

/// A pattern file for `qemu-io write -s` (its length is not a power of two, so misplaced
/// bytes within a cluster show).
fn pattern(dir: &Dir, name: &str, seed: u64) -> PathBuf {
    let p = dir.path(name);
    std::fs::write(&p, noise(seed, 1000)).expect("write pattern");
    p
}

/// A raw disk with runs of noise (incompressible), text (compressible), 0xff and zeros.
fn raw_disk(dir: &Dir, name: &str, size: u64, seed: u64) -> PathBuf {
    let size = size as usize;
    let mut disk = vec![0u8; size];
    let mut at = 0usize;
    let mut k = seed;
    while at < size {
        let run = (noise(k, 1)[0] as usize % 7 + 1) * 23 * KIB as usize + 777;
        let end = (at + run).min(size);
        match k % 4 {
            0 => disk[at..end].copy_from_slice(&noise(k, end - at)),
            1 => disk[at..end].copy_from_slice(&text(k, end - at)),
            2 => disk[at..end].fill(0xff),
            _ => {}
        }
        at = end;
        k += 1;
    }
    let p = dir.path(name);
    std::fs::write(&p, disk).expect("write raw disk");
    p
}

fn slice(file: &[u8], offset: u64, len: u64) -> Result<&[u8], Qcow2Error> {
    let start = usize::try_from(offset).map_err(|_| Qcow2Error::InvalidArgument("big".into()))?;
    let end = start
        .checked_add(usize::try_from(len).map_err(|_| Qcow2Error::InvalidArgument("big".into()))?)
        .ok_or_else(|| Qcow2Error::InvalidArgument("overflow".into()))?;
    file.get(start..end).ok_or(Qcow2Error::PastEnd {
        what: "a table".into(),
        end: end as u64,
        file_len: file.len() as u64,
    })
}

fn header(file: &[u8]) -> Result<Header, Qcow2Error> {
    let probe = &file[..file.len().min(Header::PROBE_LEN)];
    match Header::parse(probe) {
        Err(Qcow2Error::NeedMoreHeader { needed, .. }) => {
            Header::parse(&file[..file.len().min(needed)])
        }
        other => other,
    }
}

fn plan(file: &[u8]) -> Result<(Header, Plan), Qcow2Error> {
    let h = header(file)?;
    let (off, len) = h.l1_range();
    let l1 = parse_l1(&h, slice(file, off, len)?)?;
    let mut extents = Vec::new();
    for (i, off) in l2_tables(&l1) {
        extents.extend(parse_l2(&h, i, slice(file, off, h.l2_table_bytes())?)?);
    }
    let plan = Plan::new(&h, &l1, extents)?;
    plan.check(Some(file.len() as u64))?;
    Ok((h, plan))
}

/// The reference "apply plan": data and decompressed clusters at their guest offsets, zeros
/// elsewhere. Also checks that the extents tile the guest disk.
fn materialise(file: &[u8]) -> Result<(Header, Plan, Vec<u8>), Qcow2Error> {
    let (h, plan) = plan(file)?;
    let mut tiles: Vec<(u64, u64)> = plan
        .extents_by_file_offset()
        .iter()
        .chain(plan.zero_extents())
        .map(|e| (e.guest(), e.len()))
        .collect();
    tiles.sort_unstable();
    let mut cursor = 0;
    for (g, l) in tiles {
        assert_eq!(g, cursor, "extents do not tile the guest disk");
        cursor = g + l;
    }
    assert_eq!(cursor, plan.virtual_size());

    let mut raw = vec![0u8; plan.virtual_size() as usize];
    let mut dec = Decompressor::new(&h);
    let mut cluster = vec![0u8; h.cluster_size() as usize];
    for e in plan.extents_by_file_offset() {
        match *e {
            Extent::Data {
                guest,
                file: f,
                len,
            } => {
                let (g, l) = (guest as usize, len as usize);
                raw[g..g + l].copy_from_slice(slice(file, f, len)?);
            }
            Extent::Compressed {
                guest,
                len,
                file: f,
                comp_len,
            } => {
                let end = (f + comp_len).min(file.len() as u64);
                dec.decompress(slice(file, f, end - f)?, &mut cluster)?;
                let (g, l) = (guest as usize, len as usize);
                raw[g..g + l].copy_from_slice(&cluster[..l]);
            }
            Extent::Zero { .. } | Extent::Unallocated { .. } => unreachable!("not in by-file"),
        }
    }
    Ok((h, plan, raw))
}

/// Materialises the image and compares it with `qemu-img convert -O raw`.
fn assert_matches_oracle(dir: &Dir, img: &Path) -> (Header, Plan) {
    let out = dir.path("oracle.raw");
    qemu_img(&["convert", "-f", "qcow2", "-O", "raw", s(img), s(&out)]);
    let expected = std::fs::read(&out).expect("read oracle");
    let file = std::fs::read(img).expect("read image");
    let (h, plan, raw) = materialise(&file).unwrap_or_else(|e| panic!("{}: {e}", img.display()));
    assert_eq!(
        raw.len(),
        expected.len(),
        "virtual size of {}",
        img.display()
    );
    if let Some(i) = raw.iter().zip(&expected).position(|(a, b)| a != b) {
        panic!("{}: first difference at guest byte {i:#x}", img.display());
    }
    // The ordered-pass queries agree with the full list.
    let all = plan.extents_by_file_offset();
    if let (Some(first), Some(last)) = (all.first(), all.last()) {
        let r = first.file_range().expect("file range");
        let end = last.file_range().expect("file range").end;
        assert_eq!(plan.extents_in(r.start..end).len(), all.len());
        assert_eq!(plan.extents_in(0..1), &[] as &[Extent]);
        for (i, e) in all.iter().enumerate() {
            let r = e.file_range().expect("file range");
            assert!(plan.extents_in(r.clone()).contains(e));
            assert!(plan.extents_in(r.start..r.start + 1).contains(&all[i]));
        }
    }
    assert!(plan.metadata_in(0..1)[0].kind == MetadataKind::Header);
    (h, plan)
}

fn create(img: &Path, opts: &str, size: u64) {
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-o",
        opts,
        s(img),
        &size.to_string(),
    ]);
}

fn write_s(pattern: &Path, off: u64, len: u64) -> String {
    format!("write -q -s {} {off} {len}", s(pattern))
}

#[test]
fn v2_512_byte_clusters_written_out_of_order() {
    let dir = Dir::new();
    let img = dir.path("v2.qcow2");
    create(&img, "compat=0.10,cluster_size=512", 4 * MIB);
    let (a, b) = (pattern(&dir, "a", 1), pattern(&dir, "b", 2));
    qemu_io(
        &img,
        &[
            write_s(&a, 3 * MIB + 512, 70 * KIB),
            write_s(&b, 1000, 3000),
            write_s(&a, 2 * MIB - 4096, 12 * KIB),
            write_s(&b, 0, 512),
            format!("write -q -z {} 1024", 3 * MIB + 1024),
            write_s(&b, 4 * MIB - 1536, 1536),
        ],
    );
    let (h, plan) = assert_matches_oracle(&dir, &img);
    assert_eq!((h.version(), h.cluster_size()), (2, 512));
    // Written out of order: guest order and file order differ.
    let guests: Vec<u64> = plan
        .extents_by_file_offset()
        .iter()
        .map(Extent::guest)
        .collect();
    assert!(guests.windows(2).any(|w| w[0] > w[1]));
}

#[test]
fn v3_64k_zero_clusters_discard_and_partial_writes() {
    let dir = Dir::new();
    let img = dir.path("v3.qcow2");
    create(&img, "compat=1.1,cluster_size=64k", 6 * MIB);
    let (a, b) = (pattern(&dir, "a", 3), pattern(&dir, "b", 4));
    qemu_io(
        &img,
        &[
            write_s(&a, 5 * MIB, MIB),
            write_s(&b, 100, 200 * KIB),
            // Zero flag on allocated clusters (the offset stays) and on unallocated ones.
            format!("write -q -z {} {}", 64 * KIB, 128 * KIB),
            format!("write -q -z {} {}", 3 * MIB, 256 * KIB),
            format!("discard -q {} {}", 5 * MIB + 64 * KIB, 64 * KIB),
            write_s(&a, 2 * MIB + 7, 5),
        ],
    );
    let (h, plan) = assert_matches_oracle(&dir, &img);
    assert_eq!((h.version(), h.cluster_size()), (3, 64 * KIB));
    assert!(
        plan.zero_extents()
            .iter()
            .any(|e| matches!(e, Extent::Zero { .. }))
    );
}

#[test]
fn v3_2m_clusters() {
    let dir = Dir::new();
    let img = dir.path("big.qcow2");
    create(&img, "cluster_size=2M", 16 * MIB);
    let a = pattern(&dir, "a", 5);
    qemu_io(
        &img,
        &[
            write_s(&a, 10 * MIB + 3, 3 * MIB),
            write_s(&a, 0, 4096),
            format!("write -q -z {} {}", 4 * MIB, 2 * MIB),
        ],
    );
    let (h, _) = assert_matches_oracle(&dir, &img);
    assert_eq!(h.cluster_size(), 2 * MIB);
}

#[test]
fn partial_last_cluster() {
    let dir = Dir::new();
    let img = dir.path("partial.qcow2");
    // Not a multiple of the cluster size: the last cluster is partial.
    create(&img, "cluster_size=64k", 3 * MIB + 5 * 512);
    let a = pattern(&dir, "a", 6);
    qemu_io(&img, &[write_s(&a, 3 * MIB - 512, 512 + 5 * 512)]);
    let (_, plan) = assert_matches_oracle(&dir, &img);
    assert_eq!(plan.virtual_size(), 3 * MIB + 5 * 512);

    // A size that is not a multiple of 512 (qemu never writes one): rounded down like qemu.
    let mut file = std::fs::read(&img).expect("read");
    file[24..32].copy_from_slice(&(3 * MIB + 5 * 512 - 100).to_be_bytes());
    std::fs::write(&img, &file).expect("write");
    let (_, plan) = assert_matches_oracle(&dir, &img);
    assert_eq!(plan.virtual_size(), 3 * MIB + 4 * 512);
}

#[test]
fn internal_snapshots_are_ignored() {
    let dir = Dir::new();
    let img = dir.path("snap.qcow2");
    create(&img, "cluster_size=4k,refcount_bits=64", 2 * MIB);
    let (a, b) = (pattern(&dir, "a", 19), pattern(&dir, "b", 20));
    qemu_io(&img, &[write_s(&a, 0, MIB)]);
    qemu_img(&["snapshot", "-c", "before", s(&img)]);
    // Copy-on-write: the active L1 table now differs from the snapshot's.
    qemu_io(
        &img,
        &[
            write_s(&b, 10 * KIB, 20 * KIB),
            format!("discard -q {} {}", 512 * KIB, 64 * KIB),
        ],
    );
    let (h, _) = assert_matches_oracle(&dir, &img);
    assert_eq!((h.snapshot_count(), h.refcount_bits()), (1, 64));
}

#[test]
fn converted_with_compression() {
    let dir = Dir::new();
    let raw = raw_disk(&dir, "disk.raw", 5 * MIB + 4096, 7);
    for (ctype, cluster) in [
        ("zlib", "64k"),
        ("zstd", "64k"),
        ("zlib", "512"),
        ("zstd", "4k"),
        ("zstd", "2M"),
        ("zlib", "2M"),
    ] {
        let img = dir.path(&format!("c-{ctype}-{cluster}.qcow2"));
        qemu_img(&[
            "convert",
            "-c",
            "-O",
            "qcow2",
            "-o",
            &format!("compression_type={ctype},cluster_size={cluster}"),
            s(&raw),
            s(&img),
        ]);
        let (h, plan) = assert_matches_oracle(&dir, &img);
        assert_eq!(h.compression().to_string(), ctype);
        let compressed = plan
            .extents_by_file_offset()
            .iter()
            .filter(|e| matches!(e, Extent::Compressed { .. }))
            .count();
        assert!(compressed > 0, "{ctype} {cluster}: no compressed cluster");
    }
}

#[test]
fn compressed_writes_mixed_with_normal_ones() {
    let dir = Dir::new();
    let img = dir.path("mixed.qcow2");
    create(&img, "cluster_size=4k,compression_type=zstd", 2 * MIB);
    let t = dir.path("t");
    std::fs::write(&t, text(9, 1500)).expect("pattern");
    let a = pattern(&dir, "a", 10);
    qemu_io(
        &img,
        &[
            format!("write -q -c -s {} {} {}", s(&t), 64 * KIB, 64 * KIB),
            write_s(&a, 0, 8 * KIB),
            format!("write -q -c -s {} {} {}", s(&t), MIB, 4 * KIB),
            // Overwriting a compressed cluster makes it a normal one.
            write_s(&a, 64 * KIB + 100, 10),
            format!("write -q -c -s {} {} {}", s(&t), 12 * KIB, 4 * KIB),
        ],
    );
    assert_matches_oracle(&dir, &img);
}

#[test]
fn extended_l2_subclusters() {
    let dir = Dir::new();
    let img = dir.path("ext.qcow2");
    create(&img, "extended_l2=on,cluster_size=64k", 4 * MIB);
    let (a, b) = (pattern(&dir, "a", 11), pattern(&dir, "b", 12));
    // Subclusters are 2 KiB.
    qemu_io(
        &img,
        &[
            write_s(&a, 2048, 2048),
            write_s(&b, 3 * MIB + 6 * 2048, 5 * 2048),
            write_s(&a, 64 * KIB, 64 * KIB),
            format!("write -q -z {} {}", 64 * KIB + 4096, 4096),
            format!("write -q -z {} {}", MIB + 2048, 8192),
            write_s(&b, 10, 20),
            format!("discard -q {} {}", 3 * MIB + 8 * 2048, 2048),
        ],
    );
    let (h, plan) = assert_matches_oracle(&dir, &img);
    assert!(h.extended_l2());
    assert_eq!(h.l2_entry_size(), 16);
    assert!(
        plan.extents_by_file_offset()
            .iter()
            .any(|e| e.len() % (64 * KIB) != 0)
    );
}

#[test]
fn extended_l2_with_compression_and_2m_clusters() {
    let dir = Dir::new();
    let raw = raw_disk(&dir, "disk.raw", 3 * MIB, 13);
    let img = dir.path("ext-c.qcow2");
    qemu_img(&[
        "convert",
        "-c",
        "-O",
        "qcow2",
        "-o",
        "extended_l2=on,cluster_size=16k",
        s(&raw),
        s(&img),
    ]);
    assert_matches_oracle(&dir, &img);

    let img = dir.path("ext-2m.qcow2");
    create(&img, "extended_l2=on,cluster_size=2M", 8 * MIB);
    let a = pattern(&dir, "a", 14);
    qemu_io(
        &img,
        &[
            write_s(&a, 4 * MIB + 64 * KIB, 200 * KIB),
            write_s(&a, 0, 64 * KIB),
        ],
    );
    assert_matches_oracle(&dir, &img);
}

#[test]
fn resized_image_has_its_l1_table_at_the_end() {
    let dir = Dir::new();
    let img = dir.path("resized.qcow2");
    create(&img, "cluster_size=4k", 4 * MIB);
    let a = pattern(&dir, "a", 15);
    qemu_io(&img, &[write_s(&a, 0, 3 * MIB)]);
    let before = header(&std::fs::read(&img).expect("read")).expect("header");
    qemu_img(&["resize", "-q", s(&img), "12M"]);
    qemu_io(&img, &[write_s(&a, 9 * MIB, 100 * KIB)]);
    let (h, plan) = assert_matches_oracle(&dir, &img);
    assert_eq!(h.virtual_size(), 12 * MIB);
    assert!(h.l1_range().0 > before.l1_range().0, "the L1 table moved");
    // The moved L1 table lies after the data written before the resize.
    let data_before_resize = plan
        .extents_by_file_offset()
        .iter()
        .filter(|e| e.guest() < 3 * MIB)
        .filter_map(Extent::file_range)
        .map(|r| r.end)
        .max()
        .expect("data");
    assert!(h.l1_range().0 >= data_before_resize);
}

#[test]
fn preallocated_images() {
    let dir = Dir::new();
    for prealloc in ["metadata", "falloc"] {
        let img = dir.path(&format!("pre-{prealloc}.qcow2"));
        create(
            &img,
            &format!("preallocation={prealloc},cluster_size=64k"),
            3 * MIB,
        );
        let a = pattern(&dir, "a", 16);
        qemu_io(
            &img,
            &[
                write_s(&a, MIB, 100 * KIB),
                format!("write -q -z {} {}", 2 * MIB, 64 * KIB),
            ],
        );
        assert_matches_oracle(&dir, &img);
    }
}

#[test]
fn dirty_bit_is_accepted() {
    let dir = Dir::new();
    let img = dir.path("dirty.qcow2");
    create(&img, "cluster_size=64k", 2 * MIB);
    let a = pattern(&dir, "a", 17);
    qemu_io(&img, &[write_s(&a, 12345, 300 * KIB)]);
    let clean = std::fs::read(&img).expect("read");
    let (_, _, expected) = materialise(&clean).expect("clean image");
    let mut dirty = clean.clone();
    dirty[79] |= 1;
    let (h, _, raw) = materialise(&dirty).expect("dirty image");
    assert!(h.is_dirty());
    assert!(raw == expected);
}

#[test]
fn header_asks_for_more_bytes_when_needed() {
    let dir = Dir::new();
    let img = dir.path("small.qcow2");
    create(&img, "cluster_size=64k", MIB);
    let file = std::fs::read(&img).expect("read");
    assert_eq!(
        Header::parse(&file[..50]),
        Err(Qcow2Error::NeedMoreHeader {
            needed: 72,
            got: 50
        })
    );
    assert_eq!(
        Header::parse(&file[..80]),
        Err(Qcow2Error::NeedMoreHeader {
            needed: 104,
            got: 80
        })
    );
    // qemu's feature name table follows the header: cut inside it, the whole cluster is asked.
    assert_eq!(
        Header::parse(&file[..200]),
        Err(Qcow2Error::NeedMoreHeader {
            needed: 64 * 1024,
            got: 200
        })
    );
    assert!(Header::parse(&file[..Header::PROBE_LEN]).is_ok());
}

#[test]
fn truncated_file_is_refused() {
    let dir = Dir::new();
    let img = dir.path("trunc.qcow2");
    create(&img, "cluster_size=4k", 2 * MIB);
    let a = pattern(&dir, "a", 18);
    qemu_io(&img, &[write_s(&a, 0, MIB)]);
    let file = std::fs::read(&img).expect("read");
    let cut = &file[..file.len() - 1000];
    let err = plan(cut).expect_err("truncated");
    assert!(
        matches!(err, Qcow2Error::PastEnd { .. }),
        "unexpected error: {err}"
    );
    assert!(err.to_string().contains("truncated"), "{err}");
}

fn refusal(file: &[u8]) -> Qcow2Error {
    header(file).expect_err("must be refused")
}

#[test]
fn backing_file_is_refused() {
    let dir = Dir::new();
    let base = dir.path("base.qcow2");
    create(&base, "cluster_size=64k", MIB);
    let over = dir.path("over.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "-f",
        "qcow2",
        "-b",
        "base.qcow2",
        "-F",
        "qcow2",
        s(&over),
    ]);
    let err = refusal(&std::fs::read(&over).expect("read"));
    assert_eq!(
        err,
        Qcow2Error::BackingFile {
            name: Some("base.qcow2".into())
        }
    );
    assert_eq!(
        err.to_string(),
        "qcow2 image has a backing file (`base.qcow2`): byol installs standalone images only; \
         flatten it with `qemu-img convert -O qcow2`"
    );
}

#[test]
fn encryption_is_refused() {
    let dir = Dir::new();
    let img = dir.path("luks.qcow2");
    qemu_img(&[
        "create",
        "-q",
        "--object",
        "secret,id=sec0,data=byol-test-passphrase",
        "-f",
        "qcow2",
        "-o",
        "encrypt.format=luks,encrypt.key-secret=sec0,encrypt.iter-time=10",
        s(&img),
        "1M",
    ]);
    let err = refusal(&std::fs::read(&img).expect("read"));
    assert_eq!(
        err,
        Qcow2Error::Encrypted {
            method: "LUKS".into()
        }
    );
    assert!(
        err.to_string().starts_with(
            "qcow2 image is encrypted (LUKS): byol cannot decrypt images; write a decrypted copy \
             with `qemu-img convert -O qcow2`"
        ),
        "{err}"
    );
}

#[test]
fn external_data_file_is_refused() {
    let dir = Dir::new();
    let img = dir.path("ext.qcow2");
    let data = dir.path("ext.data");
    create(&img, &format!("data_file={}", s(&data)), MIB);
    let err = refusal(&std::fs::read(&img).expect("read"));
    assert_eq!(
        err,
        Qcow2Error::ExternalDataFile {
            name: Some(s(&data).into())
        }
    );
    assert!(
        err.to_string()
            .contains("keeps its data in an external data file (`"),
        "{err}"
    );
}

#[test]
fn corrupt_bit_and_unknown_features_are_refused() {
    let dir = Dir::new();
    let img = dir.path("c.qcow2");
    create(&img, "cluster_size=64k", MIB);
    let file = std::fs::read(&img).expect("read");

    let mut corrupt = file.clone();
    corrupt[79] |= 2;
    let err = refusal(&corrupt);
    assert_eq!(err, Qcow2Error::MarkedCorrupt);
    assert_eq!(
        err.to_string(),
        "qcow2 image is marked corrupt (incompatible feature bit 1): repair it with \
         `qemu-img check -r all` or rebuild it, then try again"
    );

    let mut unknown = file.clone();
    unknown[79] |= 0x40;
    let err = refusal(&unknown);
    assert_eq!(
        err.to_string(),
        "qcow2 image uses incompatible features byol does not know (incompatible bit 6): \
         convert it with `qemu-img convert -O qcow2`"
    );

    let mut v4 = file;
    v4[7] = 4;
    assert_eq!(refusal(&v4), Qcow2Error::UnsupportedVersion(4));
}

#[test]
fn raw_image_is_not_qcow2() {
    let err = Header::parse(&[0u8; 512]).expect_err("raw");
    assert_eq!(
        err.to_string(),
        "not a qcow2 image: it starts with bytes 0000000000000000 instead of the qcow2 magic \
         `QFI\\xfb`"
    );
}
