//! The checks the agent makes on the image it wrote before committing its first MiB: the
//! partition table (GPT at LBA 1 for 512- or 4096-byte sectors, else MBR), exactly one
//! partition, inside the disk, and the filesystem in it. The input's first 9 bytes choose the
//! disk's size and sector size; the rest is the disk's head (what the engine holds back), with
//! nothing readable after it. Nothing may panic or allocate without bound; what is accepted lies in the disk.
#![no_main]

use byol_agent::agent::install::image::inspect;
use byol_agent::disk::DiskView;
use libfuzzer_sys::fuzz_target;

/// The disk as the check sees it: the input's bytes at its start, nothing readable after them.
struct Head<'a> {
    bytes: &'a [u8],
    size: u64,
    sector: u32,
}

impl DiskView for Head<'_> {
    fn read_upto(&self, buf: &mut [u8], offset: u64) -> std::io::Result<usize> {
        let from = usize::try_from(offset).map_or(&[][..], |o| self.bytes.get(o..).unwrap_or(&[]));
        let n = from.len().min(buf.len());
        buf[..n].copy_from_slice(&from[..n]);
        Ok(n)
    }
    fn size(&self) -> std::io::Result<u64> {
        Ok(self.size)
    }
    fn logical_sector(&self) -> u32 {
        self.sector
    }
    fn name(&self) -> &str {
        "/dev/fuzz"
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 9 {
        return;
    }
    let sector: u32 = if data[0] & 1 == 0 { 512 } else { 4096 };
    let size = u64::from_le_bytes(data[1..9].try_into().unwrap()) >> (data[0] >> 1).min(63);
    let v = Head {
        bytes: &data[9..],
        size,
        sector,
    };
    match inspect(&v) {
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
