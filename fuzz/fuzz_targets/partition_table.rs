//! The checks the agent makes on the image it wrote before committing its first MiB: the
//! partition table (GPT at LBA 1 for 512- or 4096-byte sectors, else MBR), exactly one
//! partition, inside the disk, and the filesystem in it. The input's first 9 bytes choose the
//! disk's size and sector size; the rest is the disk's head (what the engine holds back), over
//! an empty file. Nothing may panic or allocate without bound; what is accepted lies in the disk.
#![no_main]

use std::sync::OnceLock;

use byol_agent::agent::install::image::{View, inspect};
use libfuzzer_sys::fuzz_target;

fn empty_file() -> &'static std::fs::File {
    static FILE: OnceLock<std::fs::File> = OnceLock::new();
    FILE.get_or_init(|| std::fs::File::open("/dev/null").expect("/dev/null opens"))
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let sector: u32 = if data[0] & 1 == 0 { 512 } else { 4096 };
    let size = u64::from_le_bytes(data[1..9].try_into().unwrap()) >> (data[0] >> 1).min(63);
    let head = &data[9..];
    let v = View {
        head,
        file: empty_file(),
    };
    match inspect(&v, "/dev/fuzz", size, sector) {
        Ok(info) => {
            assert_eq!(info.sector_size, sector);
            assert!(info.start <= info.end, "{info:?}");
            let sectors = size / u64::from(sector);
            assert!(
                info.end < sectors,
                "{info:?} past the end of a {sectors}-sector disk"
            );
            let _ = info.summary();
        }
        Err(e) => assert!(!e.is_empty()),
    }
});
