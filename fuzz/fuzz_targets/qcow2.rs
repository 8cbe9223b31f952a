//! The qcow2 format layer on a whole file held in memory, in the order the engine reads it:
//! header, active L1 table, L2 tables, the plan and its checks against the file's length, then
//! every compressed cluster decompressed. Anything may be refused; nothing may panic, and what
//! the checks accept must hold: every stored extent lies inside the file and the virtual disk.
#![no_main]

use byol_agent::image::qcow2::{Decompressor, Extent, Header, Plan, l2_tables, parse_l1, parse_l2};
use libfuzzer_sys::fuzz_target;

fn slice(data: &[u8], offset: u64, len: u64) -> Option<&[u8]> {
    let start = usize::try_from(offset).ok()?;
    let end = start.checked_add(usize::try_from(len).ok()?)?;
    data.get(start..end)
}

fuzz_target!(|data: &[u8]| {
    let Ok(h) = Header::parse(data) else { return };
    let (l1_offset, l1_len) = h.l1_range();
    let Some(l1_bytes) = slice(data, l1_offset, l1_len) else {
        return;
    };
    let Ok(l1) = parse_l1(&h, l1_bytes) else {
        return;
    };
    let mut extents = Vec::new();
    for (index, offset) in l2_tables(&l1) {
        let Some(table) = slice(data, offset, h.l2_table_bytes()) else {
            return;
        };
        match parse_l2(&h, index, table) {
            Ok(e) => extents.extend(e),
            Err(_) => return,
        }
    }
    let Ok(plan) = Plan::new(&h, &l1, extents) else {
        return;
    };
    let file_len = data.len() as u64;
    if plan.check(Some(file_len)).is_err() {
        return;
    }
    assert!(plan.virtual_size() == h.virtual_size());
    let mut out = vec![0u8; h.cluster_size() as usize];
    let mut decompressor = Decompressor::new(&h);
    for e in plan.extents_by_file_offset() {
        let guest = e.guest_range();
        assert!(
            guest.end <= plan.virtual_size(),
            "{e:?} past the virtual disk"
        );
        match *e {
            Extent::Data { file, len, .. } => {
                assert!(
                    file + len <= file_len,
                    "{e:?} past the end of a {file_len}-byte file"
                );
            }
            Extent::Compressed { file, comp_len, .. } => {
                assert!(file < file_len, "{e:?} starts past the end of the file");
                let end = file.saturating_add(comp_len).min(file_len);
                let _ = decompressor.decompress(&data[file as usize..end as usize], &mut out);
            }
            _ => {}
        }
    }
});
