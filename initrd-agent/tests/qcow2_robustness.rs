//! The qcow2 format layer on hostile input: hand-made headers and tables that break each rule,
//! and a bounded proptest that mutates real images (header, L1, L2, data) and feeds random
//! buffers. Nothing may panic, and no call may allocate beyond a bound set by the bytes it was
//! given (checked with a counting allocator), whatever the header claims.

use std::alloc::{GlobalAlloc, Layout, System};
use std::path::Path;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use byol_agent::image::qcow2::{
    Decompressor, Extent, Header, MAX_L1_BYTES, MetadataKind, Plan, Qcow2Error, decompress,
    l2_tables, parse_l1, parse_l2,
};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// A counting allocator: the peak of live heap bytes since the last reset.

struct Counting;

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(layout) };
        if !p.is_null() {
            let live = LIVE.fetch_add(layout.size(), Ordering::Relaxed) + layout.size();
            PEAK.fetch_max(live, Ordering::Relaxed);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if !p.is_null() {
            if new_size >= layout.size() {
                let grow = new_size - layout.size();
                let live = LIVE.fetch_add(grow, Ordering::Relaxed) + grow;
                PEAK.fetch_max(live, Ordering::Relaxed);
            } else {
                LIVE.fetch_sub(layout.size() - new_size, Ordering::Relaxed);
            }
        }
        p
    }
}

#[global_allocator]
static ALLOCATOR: Counting = Counting;

/// Runs `f` and returns its result with the peak heap growth during it. Other tests of this
/// binary running at the same time only make the figure larger, never smaller.
fn peak_growth<T>(f: impl FnOnce() -> T) -> (T, usize) {
    let base = LIVE.load(Ordering::Relaxed);
    PEAK.store(base, Ordering::Relaxed);
    let out = f();
    (out, PEAK.load(Ordering::Relaxed).saturating_sub(base))
}

// ---------------------------------------------------------------------------------------------
// The whole read path on one in-memory file, never panicking.

fn slice(file: &[u8], offset: u64, len: u64) -> Result<&[u8], Qcow2Error> {
    let short = || Qcow2Error::PastEnd {
        what: "a table".into(),
        end: offset.saturating_add(len),
        file_len: file.len() as u64,
    };
    let start = usize::try_from(offset).map_err(|_| short())?;
    let len = usize::try_from(len).map_err(|_| short())?;
    file.get(start..start.checked_add(len).ok_or_else(short)?)
        .ok_or_else(short)
}

fn header(file: &[u8]) -> Result<Header, Qcow2Error> {
    match Header::parse(&file[..file.len().min(Header::PROBE_LEN)]) {
        Err(Qcow2Error::NeedMoreHeader { needed, .. }) => {
            assert!(needed <= Header::MAX_LEN, "asked for {needed} header bytes");
            Header::parse(&file[..file.len().min(needed)])
        }
        other => other,
    }
}

/// Header, L1, L2, plan, the ordered-pass queries, and a few decompressions.
fn read_path(file: &[u8]) -> Result<Plan, Qcow2Error> {
    let h = header(file)?;
    let (l1_off, l1_len) = h.l1_range();
    assert!(l1_len <= MAX_L1_BYTES);
    let l1 = parse_l1(&h, slice(file, l1_off, l1_len)?)?;
    let mut extents = Vec::new();
    for (i, off) in l2_tables(&l1) {
        let table = parse_l2(&h, i, slice(file, off, h.l2_table_bytes())?)?;
        for e in &table {
            assert!(!e.is_empty() && e.guest_range().end <= h.virtual_size());
        }
        extents.extend(table);
    }
    let plan = Plan::new(&h, &l1, extents)?;
    plan.check(Some(file.len() as u64))?;

    // The queries an ordered pass makes, window by window.
    let window = 64 * 1024;
    let mut at = 0;
    while at < plan.read_end().min(file.len() as u64 + window) {
        for e in plan.extents_in(at..at + window) {
            let r = e.file_range().expect("stored extent");
            assert!(r.start < at + window && r.end > at);
        }
        let _ = plan.metadata_in(at..at + window);
        at += window;
    }
    let mut dec = Decompressor::new(&h);
    let mut cluster = vec![0u8; h.cluster_size() as usize];
    let compressed = plan
        .extents_by_file_offset()
        .iter()
        .filter_map(|e| match *e {
            Extent::Compressed {
                file: f, comp_len, ..
            } => Some((f, comp_len)),
            _ => None,
        })
        .take(8);
    for (f, comp_len) in compressed {
        let end = f.saturating_add(comp_len).min(file.len() as u64);
        let _ = dec.decompress(slice(file, f, end.saturating_sub(f))?, &mut cluster);
    }
    Ok(plan)
}

// ---------------------------------------------------------------------------------------------
// Seed images made by qemu-img and qemu-io, once for the binary.

fn run(program: &str, args: &[&str]) {
    let out = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {program} (install qemu-utils): {e}"));
    assert!(
        out.status.success(),
        "{program} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Seed {
    file: Vec<u8>,
    /// Byte ranges worth mutating: header, L1, L2 tables.
    hot: Vec<(usize, usize)>,
}

fn seeds() -> &'static [Seed] {
    static SEEDS: OnceLock<Vec<Seed>> = OnceLock::new();
    SEEDS.get_or_init(|| {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = |n: &str| dir.path().join(n).to_str().expect("utf-8").to_string();
        let pattern = p("pattern");
        std::fs::write(
            &pattern,
            (0..777u32)
                .map(|i| (i * 7 + i / 13) as u8)
                .collect::<Vec<_>>(),
        )
        .expect("pattern");
        let mut raw = vec![0u8; 192 * 1024];
        for (i, b) in raw.iter_mut().enumerate().skip(8192) {
            *b = if (i / 5000) % 2 == 0 {
                b"qcow2 "[i % 6]
            } else {
                (i * i / 7) as u8
            };
        }
        let raw_path = p("disk.raw");
        std::fs::write(&raw_path, raw).expect("raw");
        let images = [
            ("v2", "compat=0.10,cluster_size=512", false),
            ("v3", "cluster_size=4k", false),
            ("ext", "extended_l2=on,cluster_size=16k", false),
            ("zstd", "compression_type=zstd,cluster_size=4k", true),
            ("zlib", "compression_type=zlib,cluster_size=512", true),
        ];
        images
            .iter()
            .map(|(name, opts, compressed)| {
                let img = p(&format!("{name}.qcow2"));
                if *compressed {
                    run(
                        "qemu-img",
                        &["convert", "-c", "-O", "qcow2", "-o", opts, &raw_path, &img],
                    );
                } else {
                    run(
                        "qemu-img",
                        &["create", "-q", "-f", "qcow2", "-o", opts, &img, "256k"],
                    );
                    run(
                        "qemu-io",
                        &[
                            "-f",
                            "qcow2",
                            "-c",
                            &format!("write -q -s {pattern} 100000 30000"),
                            "-c",
                            &format!("write -q -s {pattern} 2048 6144"),
                            "-c",
                            "write -q -z 40960 8192",
                            &img,
                        ],
                    );
                }
                let file = std::fs::read(Path::new(&img)).expect("read seed");
                let plan = read_path(&file).unwrap_or_else(|e| panic!("seed {name}: {e}"));
                let hot = plan
                    .metadata()
                    .iter()
                    .filter(|m| m.kind != MetadataKind::RefcountTable)
                    .map(|m| {
                        let start = m.offset as usize;
                        let len = if m.kind == MetadataKind::Header {
                            512
                        } else {
                            m.len as usize
                        };
                        (start, (start + len).min(file.len()))
                    })
                    .collect();
                Seed { file, hot }
            })
            .collect()
    })
}

// ---------------------------------------------------------------------------------------------
// The bounded fuzz run.

/// The most the read path may allocate: a small multiple of the bytes it was given (tables
/// become vectors of extents), plus one cluster buffer (≤ 2 MiB) and zstd's window (≤ 8 MiB).
/// Far below what the header fields could ask for (a 32 MiB L1 table, a 2^60-byte disk).
fn allocation_bound(file_len: usize) -> usize {
    16 * file_len + 10 * 1024 * 1024
}

#[derive(Debug, Clone)]
enum Mutation {
    /// (which hot range, position in it as a fraction, new byte)
    Hot(usize, u16, u8),
    /// (position in the file as a fraction, new byte)
    Anywhere(u16, u8),
    /// Overwrite 8 bytes of a hot range with a value of extremes (0, all ones, 1 << n).
    Word(usize, u16, u64),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let extreme = prop_oneof![
        Just(0u64),
        Just(u64::MAX),
        (0u32..64).prop_map(|n| 1u64 << n),
        any::<u64>()
    ];
    prop_oneof![
        6 => (any::<usize>(), any::<u16>(), any::<u8>()).prop_map(|(r, p, b)| Mutation::Hot(r, p, b)),
        1 => (any::<u16>(), any::<u8>()).prop_map(|(p, b)| Mutation::Anywhere(p, b)),
        3 => (any::<usize>(), any::<u16>(), extreme).prop_map(|(r, p, v)| Mutation::Word(r, p, v)),
    ]
}

fn at_fraction(start: usize, end: usize, frac: u16) -> usize {
    start + (end - start) * frac as usize / (u16::MAX as usize + 1)
}

fn apply(seed: &Seed, mutations: &[Mutation]) -> Vec<u8> {
    let mut file = seed.file.clone();
    for m in mutations {
        match *m {
            Mutation::Hot(r, frac, b) => {
                let (s, e) = seed.hot[r % seed.hot.len()];
                if s < e {
                    file[at_fraction(s, e, frac)] = b;
                }
            }
            Mutation::Anywhere(frac, b) => {
                let at = at_fraction(0, file.len(), frac);
                file[at] = b;
            }
            Mutation::Word(r, frac, v) => {
                let (s, e) = seed.hot[r % seed.hot.len()];
                if e >= s + 8 {
                    let at = at_fraction(s, e - 7, frac) & !7;
                    let at = at.max(s);
                    if at + 8 <= file.len() {
                        file[at..at + 8].copy_from_slice(&v.to_be_bytes());
                    }
                }
            }
        }
    }
    file
}

fn random_buffer() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        proptest::collection::vec(any::<u8>(), 0..1024),
        // A plausible start, then noise: reaches the later checks.
        (
            2u32..=3,
            9u32..=21,
            proptest::collection::vec(any::<u8>(), 0..2048)
        )
            .prop_map(|(version, bits, rest)| {
                let mut b = b"QFI\xfb".to_vec();
                b.extend_from_slice(&version.to_be_bytes());
                b.extend_from_slice(&[0; 12]);
                b.extend_from_slice(&bits.to_be_bytes());
                b.extend(rest);
                b
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 1500,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn mutated_images_never_panic_nor_overallocate(
        which in 0usize..5,
        mutations in proptest::collection::vec(mutation(), 1..12),
    ) {
        let seed = &seeds()[which];
        let file = apply(seed, &mutations);
        let (_, peak) = peak_growth(|| read_path(&file).map(|_| ()));
        prop_assert!(peak <= allocation_bound(file.len()), "peak {peak} bytes");
    }

    #[test]
    fn random_buffers_never_panic(buf in random_buffer()) {
        let (_, peak) = peak_growth(|| read_path(&buf).map(|_| ()));
        prop_assert!(peak <= allocation_bound(buf.len()), "peak {peak} bytes");
        // Decompression of noise fails cleanly, for every cluster size.
        let mut out = vec![0u8; 4096];
        let _ = zlib_header_4k().map(|h| decompress(&h, &buf, &mut out));
    }
}

/// Fields of a 64 KiB image with 4 KiB clusters.
fn fields_4k() -> Fields {
    Fields {
        cluster_bits: 12,
        l1_size: 1,
        l1_offset: 8192,
        rt_offset: 4096,
        ..Fields::default()
    }
}

fn zlib_header_4k() -> Result<Header, Qcow2Error> {
    Header::parse(&build(&fields_4k()))
}

// ---------------------------------------------------------------------------------------------
// Hand-made hostile headers and tables.

#[derive(Clone)]
struct Fields {
    version: u32,
    backing_offset: u64,
    cluster_bits: u32,
    size: u64,
    crypt: u32,
    l1_size: u32,
    l1_offset: u64,
    rt_offset: u64,
    rt_clusters: u32,
    incompat: u64,
    header_length: u32,
    compression_type: u8,
}

impl Default for Fields {
    /// A v3 image of 64 KiB with 512-byte clusters: header at 0, refcount table at 512, L1 at
    /// 1024 (2 entries), room for L2 tables and data after.
    fn default() -> Fields {
        Fields {
            version: 3,
            backing_offset: 0,
            cluster_bits: 9,
            size: 64 * 1024,
            crypt: 0,
            l1_size: 2,
            l1_offset: 1024,
            rt_offset: 512,
            rt_clusters: 1,
            incompat: 0,
            header_length: 112,
            compression_type: 0,
        }
    }
}

fn build(f: &Fields) -> Vec<u8> {
    let mut b = vec![0u8; 8192];
    b[0..4].copy_from_slice(b"QFI\xfb");
    b[4..8].copy_from_slice(&f.version.to_be_bytes());
    b[8..16].copy_from_slice(&f.backing_offset.to_be_bytes());
    b[16..20].copy_from_slice(&4u32.to_be_bytes());
    b[20..24].copy_from_slice(&f.cluster_bits.to_be_bytes());
    b[24..32].copy_from_slice(&f.size.to_be_bytes());
    b[32..36].copy_from_slice(&f.crypt.to_be_bytes());
    b[36..40].copy_from_slice(&f.l1_size.to_be_bytes());
    b[40..48].copy_from_slice(&f.l1_offset.to_be_bytes());
    b[48..56].copy_from_slice(&f.rt_offset.to_be_bytes());
    b[56..60].copy_from_slice(&f.rt_clusters.to_be_bytes());
    b[72..80].copy_from_slice(&f.incompat.to_be_bytes());
    b[96..100].copy_from_slice(&4u32.to_be_bytes());
    b[100..104].copy_from_slice(&f.header_length.to_be_bytes());
    b[104] = f.compression_type;
    b
}

fn put(b: &mut [u8], at: usize, v: u64) {
    b[at..at + 8].copy_from_slice(&v.to_be_bytes());
}

fn parse(f: Fields) -> Result<Header, Qcow2Error> {
    Header::parse(&build(&f))
}

fn malformed(r: Result<impl std::fmt::Debug, Qcow2Error>, needle: &str) {
    match r {
        Err(Qcow2Error::Malformed(m)) => assert!(m.contains(needle), "{m:?} lacks {needle:?}"),
        other => panic!("expected a malformed error about {needle:?}, got {other:?}"),
    }
}

#[test]
fn hostile_header_fields() {
    assert!(parse(Fields::default()).is_ok());

    assert_eq!(
        parse(Fields {
            cluster_bits: 30,
            ..Fields::default()
        }),
        Err(Qcow2Error::UnsupportedClusterSize(30))
    );
    assert_eq!(
        parse(Fields {
            cluster_bits: 8,
            ..Fields::default()
        }),
        Err(Qcow2Error::UnsupportedClusterSize(8))
    );
    assert!(matches!(
        parse(Fields {
            l1_size: u32::MAX,
            ..Fields::default()
        }),
        Err(Qcow2Error::TooLarge {
            what: "L1 table",
            ..
        })
    ));
    assert!(matches!(
        parse(Fields {
            size: u64::MAX,
            ..Fields::default()
        }),
        Err(Qcow2Error::TooLarge {
            what: "virtual size",
            ..
        })
    ));
    // A virtual size the L1 table cannot map.
    malformed(
        parse(Fields {
            size: 1 << 40,
            ..Fields::default()
        }),
        "needs",
    );
    malformed(
        parse(Fields {
            l1_offset: 1 << 63,
            ..Fields::default()
        }),
        "2^56",
    );
    malformed(
        parse(Fields {
            l1_offset: 1000,
            ..Fields::default()
        }),
        "not aligned",
    );
    malformed(
        parse(Fields {
            l1_offset: 0,
            ..Fields::default()
        }),
        "over the header",
    );
    malformed(
        parse(Fields {
            rt_offset: (1 << 56) - 512,
            rt_clusters: 2,
            ..Fields::default()
        }),
        "2^56",
    );
    assert!(matches!(
        parse(Fields {
            rt_clusters: u32::MAX,
            ..Fields::default()
        }),
        Err(Qcow2Error::TooLarge {
            what: "refcount table",
            ..
        })
    ));
    malformed(
        parse(Fields {
            header_length: 0xffff_fff8,
            ..Fields::default()
        }),
        "header_length",
    );
    malformed(
        parse(Fields {
            header_length: 105,
            ..Fields::default()
        }),
        "multiple of 8",
    );
    assert_eq!(
        parse(Fields {
            version: 1,
            ..Fields::default()
        }),
        Err(Qcow2Error::UnsupportedVersion(1))
    );
    assert_eq!(
        parse(Fields {
            crypt: 1,
            ..Fields::default()
        }),
        Err(Qcow2Error::Encrypted {
            method: "AES".into()
        })
    );
    // A backing file name out of the buffer: refused all the same, without the name.
    assert_eq!(
        parse(Fields {
            backing_offset: u64::MAX,
            ..Fields::default()
        }),
        Err(Qcow2Error::BackingFile { name: None })
    );
    // Extended L2 needs 16 KiB clusters.
    malformed(
        parse(Fields {
            incompat: 1 << 4,
            ..Fields::default()
        }),
        "16 KiB",
    );
    // Compression type: bit and field must agree.
    assert_eq!(
        parse(Fields {
            incompat: 1 << 3,
            compression_type: 7,
            ..Fields::default()
        }),
        Err(Qcow2Error::UnknownCompressionType(7))
    );
    malformed(
        parse(Fields {
            compression_type: 1,
            ..Fields::default()
        }),
        "feature bit is not set",
    );
    malformed(
        parse(Fields {
            incompat: 1 << 3,
            ..Fields::default()
        }),
        "compression_type is 0",
    );
    // Sizes that are not a multiple of 512 are rounded down, like qemu does.
    let h = parse(Fields {
        size: 64 * 1024 - 1,
        ..Fields::default()
    })
    .expect("odd size");
    assert_eq!(h.virtual_size(), 63 * 1024 + 512);
}

#[test]
fn hostile_header_extensions() {
    // An extension longer than the first cluster.
    let mut b = build(&Fields::default());
    put(&mut b, 112, 0x1234_5678_ffff_ffff);
    malformed(Header::parse(&b), "runs past the first cluster");

    // An external data file name extension without the feature bit: refused too.
    let mut b = build(&Fields::default());
    b[112..116].copy_from_slice(&0x4441_5441u32.to_be_bytes());
    b[116..120].copy_from_slice(&6u32.to_be_bytes());
    b[120..126].copy_from_slice(b"a.data");
    assert_eq!(
        Header::parse(&b),
        Err(Qcow2Error::ExternalDataFile {
            name: Some("a.data".into())
        })
    );

    // An unknown incompatible feature, named by the image's feature name table.
    let mut b = build(&Fields {
        incompat: 1 << 9,
        ..Fields::default()
    });
    b[112..116].copy_from_slice(&0x6803_f857u32.to_be_bytes());
    b[116..120].copy_from_slice(&48u32.to_be_bytes());
    b[120] = 0;
    b[121] = 9;
    b[122..132].copy_from_slice(b"time warp\n");
    let err = Header::parse(&b).expect_err("unknown feature");
    assert_eq!(
        err.to_string(),
        "qcow2 image uses incompatible features byol does not know (`time warp\\n`, \
         incompatible bit 9): convert it with `qemu-img convert -O qcow2`"
    );

    // Extensions cut by the buffer: ask for the whole first cluster.
    assert_eq!(
        Header::parse(&b[..130]),
        Err(Qcow2Error::NeedMoreHeader {
            needed: 512,
            got: 130
        })
    );
}

/// A complete small image (512-byte clusters, 64 KiB virtual, 2 L1 entries) to break.
fn small_image() -> (Vec<u8>, Header) {
    let mut b = build(&Fields::default());
    put(&mut b, 1024, 1536); // L1[0] → L2 at 1536
    put(&mut b, 1536, 2048 | 1 << 63); // guest 0 → data at 2048
    put(&mut b, 1544, 3072); // guest 512 → data at 3072
    put(&mut b, 1552, 1); // guest 1024 → zero
    b.truncate(4096);
    let h = Header::parse(&b).expect("small image");
    (b, h)
}

fn build_plan(b: &[u8], h: &Header) -> Result<Plan, Qcow2Error> {
    let l1 = parse_l1(h, &b[1024..1040])?;
    let mut extents = Vec::new();
    for (i, off) in l2_tables(&l1) {
        extents.extend(parse_l2(h, i, &b[off as usize..off as usize + 512])?);
    }
    let plan = Plan::new(h, &l1, extents)?;
    plan.check(Some(b.len() as u64))?;
    Ok(plan)
}

#[test]
fn small_image_plan() {
    let (b, h) = small_image();
    let plan = build_plan(&b, &h).expect("plan");
    assert_eq!(
        plan.extents_by_file_offset(),
        &[
            Extent::Data {
                guest: 0,
                file: 2048,
                len: 512
            },
            Extent::Data {
                guest: 512,
                file: 3072,
                len: 512
            },
        ]
    );
    assert_eq!(
        plan.zero_extents(),
        &[
            Extent::Zero {
                guest: 1024,
                len: 512
            },
            Extent::Unallocated {
                guest: 1536,
                len: 64 * 1024 - 1536
            },
        ]
    );
    assert_eq!(plan.extents_in(2500..3073).len(), 2);
    assert_eq!(plan.extents_in(2600..3073).len(), 1);
    assert_eq!(plan.extents_in(2000..2049).len(), 1);
    assert!(plan.extents_in(2560..3072).is_empty());
    assert_eq!(plan.read_end(), 3584);
    assert_eq!(plan.stored_bytes(), 1024);
}

#[test]
fn hostile_tables() {
    let (b, h) = small_image();

    let mut x = b.clone();
    put(&mut x, 1024, 1536 + 8); // bits 0-8 of an L1 entry are reserved
    malformed(build_plan(&x, &h), "reserved bits");

    let mut x = b.clone();
    put(&mut x, 1024, 1536 | 1 << 60); // reserved L1 bits
    malformed(build_plan(&x, &h), "reserved bits");

    let mut x = b.clone();
    put(&mut x, 1536, 2048 + 100); // bits 1-8 of an L2 entry are reserved
    malformed(build_plan(&x, &h), "reserved bits");

    let mut x = b.clone();
    put(&mut x, 1536, 2048 | 1 << 58); // reserved L2 bits
    malformed(build_plan(&x, &h), "reserved bits");

    let mut x = b.clone();
    put(&mut x, 1536, 1 << 62); // compressed at offset 0
    malformed(build_plan(&x, &h), "header cluster");

    let mut x = b.clone();
    put(&mut x, 1544, 2048); // two guest clusters, one host cluster
    assert!(matches!(
        build_plan(&x, &h),
        Err(Qcow2Error::Overlap { .. })
    ));

    let mut x = b.clone();
    put(&mut x, 1544, 1024); // data over the L1 table
    let err = build_plan(&x, &h).expect_err("overlap");
    assert!(err.to_string().contains("the L1 table"), "{err}");

    let mut x = b.clone();
    put(&mut x, 1544, 1536); // data over its own L2 table
    assert!(matches!(
        build_plan(&x, &h),
        Err(Qcow2Error::Overlap { .. })
    ));

    let mut x = b.clone();
    put(&mut x, 1544, 1 << 40); // data past the end of the file
    assert!(matches!(
        build_plan(&x, &h),
        Err(Qcow2Error::PastEnd { .. })
    ));

    let mut x = b.clone();
    put(&mut x, 1544, 0x00ff_ffff_ffff_fe00); // the largest offset there is
    assert!(matches!(
        build_plan(&x, &h),
        Err(Qcow2Error::PastEnd { .. })
    ));

    let mut x = b.clone();
    put(&mut x, 1032, 1536); // both L1 entries share one L2 table
    assert!(matches!(
        build_plan(&x, &h),
        Err(Qcow2Error::Overlap { .. })
    ));

    // The zero flag does not exist in version 2.
    let mut x = build(&Fields {
        version: 2,
        ..Fields::default()
    });
    x.truncate(4096);
    put(&mut x, 1024, 1536);
    put(&mut x, 1536, 1);
    let h2 = Header::parse(&x).expect("v2");
    malformed(build_plan(&x, &h2), "version 2");

    // A missing L2 table and a table given twice.
    let l1 = parse_l1(&h, &b[1024..1040]).expect("l1");
    assert_eq!(
        Plan::new(&h, &l1, Vec::new()),
        Err(Qcow2Error::MissingL2Table {
            l1_index: 0,
            offset: 1536
        })
    );
    let twice: Vec<Extent> = [0, 0]
        .iter()
        .flat_map(|&i| parse_l2(&h, i, &b[1536..2048]).expect("l2"))
        .collect();
    assert!(matches!(
        Plan::new(&h, &l1, twice),
        Err(Qcow2Error::InvalidArgument(_))
    ));
    // Out-of-range L1 index and short tables: errors, not panics.
    assert!(parse_l2(&h, 2, &b[1536..2048]).is_err());
    assert!(parse_l2(&h, usize::MAX, &b[1536..2048]).is_err());
    assert!(matches!(
        parse_l2(&h, 0, &b[1536..1600]),
        Err(Qcow2Error::Truncated { .. })
    ));
    assert!(matches!(
        parse_l1(&h, &b[1024..1030]),
        Err(Qcow2Error::Truncated { .. })
    ));
}

#[test]
fn unaligned_offsets_are_refused() {
    let h = zlib_header_4k().expect("header");
    let mut l1 = [0u8; 8];
    put(&mut l1, 0, 3 * 4096 + 512);
    malformed(parse_l1(&h, &l1), "not aligned");
    let mut table = vec![0u8; 4096];
    put(&mut table, 8, 5 * 4096 + 1024);
    malformed(parse_l2(&h, 0, &table), "not aligned");
    // A zero cluster with a preallocated offset must be aligned too.
    put(&mut table, 8, (5 * 4096 + 1024) | 1);
    malformed(parse_l2(&h, 0, &table), "not aligned");
    put(&mut table, 8, (5 * 4096) | 1);
    assert_eq!(
        parse_l2(&h, 0, &table).expect("zero cluster")[1],
        Extent::Zero {
            guest: 4096,
            len: 4096
        }
    );
}

#[test]
fn compressed_descriptor_split_follows_cluster_bits() {
    for bits in [9u32, 12, 16, 21] {
        let mut f = Fields {
            cluster_bits: bits,
            size: 1 << bits,
            l1_size: 1,
            l1_offset: 2 << bits,
            rt_offset: 1 << bits,
            ..Fields::default()
        };
        if bits == 21 {
            f.rt_clusters = 1;
        }
        let h = Header::parse(&build(&f)).expect("header");
        let x = 62 - (bits - 8);
        let offset = (5u64 << bits) + 1234;
        let extra = (1u64 << (bits - 8)) - 1; // the largest sector count
        let mut table = vec![0u8; 1 << bits];
        put(&mut table, 0, 1 << 62 | extra << x | offset);
        let ext = parse_l2(&h, 0, &table).expect("l2");
        assert_eq!(
            ext,
            vec![Extent::Compressed {
                guest: 0,
                len: 1 << bits,
                file: offset,
                comp_len: (extra + 1) * 512 - 1234 % 512,
            }]
        );
        // Compressed clusters take no subcluster bitmap.
        if bits >= 14 {
            let h = Header::parse(&build(&Fields {
                incompat: 1 << 4,
                ..f.clone()
            }))
            .expect("extended L2 header");
            put(&mut table, 8, 1);
            malformed(parse_l2(&h, 0, &table), "subcluster bitmap");
        }
    }
}

#[test]
fn extended_l2_bitmaps() {
    let f = Fields {
        cluster_bits: 14,
        size: 1 << 14,
        l1_size: 1,
        l1_offset: 2 << 14,
        rt_offset: 1 << 14,
        incompat: 1 << 4,
        ..Fields::default()
    };
    let h = Header::parse(&build(&f)).expect("header");
    let sub = 512u64; // 16 KiB / 32
    let mut table = vec![0u8; 1 << 14];
    // Subclusters 0-1 allocated, 2 zero, 3.. unallocated, 31 allocated.
    put(&mut table, 0, 4 << 14);
    put(&mut table, 8, 0b11 | 1 << 31 | (0b100u64 << 32));
    let ext = parse_l2(&h, 0, &table).expect("l2");
    assert_eq!(
        ext,
        vec![
            Extent::Data {
                guest: 0,
                file: 4 << 14,
                len: 2 * sub
            },
            Extent::Zero {
                guest: 2 * sub,
                len: sub
            },
            Extent::Unallocated {
                guest: 3 * sub,
                len: 28 * sub
            },
            Extent::Data {
                guest: 31 * sub,
                file: (4 << 14) + 31 * sub,
                len: sub
            },
        ]
    );
    put(&mut table, 8, 1 | 1 << 32);
    malformed(parse_l2(&h, 0, &table), "both allocated and zero");
    put(&mut table, 0, 0);
    put(&mut table, 8, 1);
    malformed(parse_l2(&h, 0, &table), "no cluster offset");
    put(&mut table, 0, 4 << 14 | 1);
    put(&mut table, 8, 0);
    malformed(parse_l2(&h, 0, &table), "reserved bits");
}

#[test]
fn decompression_failures_are_errors() {
    let h = zlib_header_4k().expect("header");
    let mut out = vec![0u8; 4096];
    // Not deflate.
    assert!(matches!(
        decompress(&h, &[0xff; 64], &mut out),
        Err(Qcow2Error::Decompress { .. })
    ));
    // A stored deflate block of 10 bytes: ends before the cluster is full.
    let stored = [1u8, 10, 0, !10, !0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10];
    let err = decompress(&h, &stored, &mut out).expect_err("short");
    assert!(err.to_string().contains("ends after 10 of 4096"), "{err}");
    // Empty input.
    assert!(decompress(&h, &[], &mut out).is_err());
    // Wrong output length is the caller's bug.
    assert!(matches!(
        decompress(&h, &stored, &mut out[..100]),
        Err(Qcow2Error::InvalidArgument(_))
    ));
    // A full stored block fills the cluster; trailing garbage is ignored.
    let mut full = vec![1u8, 0x00, 0x10, 0xff, 0xef];
    full.extend((0..4096u32).map(|i| i as u8));
    full.extend([0xde, 0xad]);
    decompress(&h, &full, &mut out).expect("stored block");
    assert!(out.iter().enumerate().all(|(i, &b)| b == i as u8));

    // zstd: noise and a frame holding more than one cluster.
    let hz = Header::parse(&build(&Fields {
        incompat: 1 << 3,
        compression_type: 1,
        ..fields_4k()
    }))
    .expect("zstd header");
    assert!(decompress(&hz, &[0x28, 0xb5, 0x2f, 0xfd, 0, 0, 0], &mut out).is_err());
    let big = zstd_frame(&vec![7u8; 8192]);
    assert!(decompress(&hz, &big, &mut out).is_err());
    let exact = zstd_frame(&vec![9u8; 4096]);
    let mut padded = exact.clone();
    padded.extend([0u8; 300]);
    decompress(&hz, &padded, &mut out).expect("one cluster");
    assert!(out.iter().all(|&b| b == 9));
    // A truncated frame.
    assert!(decompress(&hz, &exact[..exact.len() - 2], &mut out).is_err());
}

/// A zstd frame made by hand: one raw block (no compression needed to test framing).
fn zstd_frame(content: &[u8]) -> Vec<u8> {
    let mut f = vec![0x28, 0xb5, 0x2f, 0xfd];
    // Frame header: single segment, 4-byte content size.
    f.push(0b1010_0000);
    f.extend((content.len() as u32).to_le_bytes());
    let mut chunks = content.chunks(1 << 16).peekable();
    while let Some(chunk) = chunks.next() {
        let last = chunks.peek().is_none() as u32;
        let block_header = last | (chunk.len() as u32) << 3; // raw block
        f.extend(&block_header.to_le_bytes()[..3]);
        f.extend(chunk);
    }
    f
}
