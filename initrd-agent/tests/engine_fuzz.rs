//! The whole engine on hostile input: mutated qcow2 images (header, tables and data bytes)
//! streamed in both modes must give an error or a result, never a panic, a hang or a huge
//! allocation (the format layer's limits bound what a table can ask for).

use std::process::Command;

use byol_agent::image::engine::{WriteOptions, write_image};
use byol_agent::image::progress::NoProgress;
use proptest::prelude::*;

fn seed_image() -> Vec<u8> {
    let d = tempfile::tempdir().unwrap();
    let raw = d.path().join("s.raw");
    let data: Vec<u8> = (0..256u32 << 10)
        .map(|i| {
            if (i / 4096) % 3 == 0 {
                0
            } else {
                (i % 253) as u8
            }
        })
        .collect();
    std::fs::write(&raw, data).unwrap();
    let q = d.path().join("s.qcow2");
    let st = Command::new("qemu-img")
        .args(["convert", "-O", "qcow2", "-o", "cluster_size=4096"])
        .arg(&raw)
        .arg(&q)
        .status()
        .expect("qemu-img (cargo xtask test installs it)");
    assert!(st.success());
    std::fs::read(q).unwrap()
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 1000, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn mutated_images_never_panic(
        muts in proptest::collection::vec((0usize..40960, any::<u8>()), 1..12),
        ordered in any::<bool>(),
    ) {
        thread_local!(static SEED: Vec<u8> = seed_image());
        let mut img = SEED.with(|s| s.clone());
        for (at, v) in muts {
            let i = at % img.len();
            img[i] = v;
        }
        let d = tempfile::tempdir().unwrap();
        let src = d.path().join("m.qcow2");
        std::fs::write(&src, &img).unwrap();
        let mut o = WriteOptions::new(src.to_str().unwrap(), d.path().join("out"));
        o.create_target = true;
        o.use_range = !ordered;
        o.memory_budget = 64 << 10;
        // an error is fine; a panic fails the test
        let _ = write_image(&o, &mut NoProgress);
    }
}
