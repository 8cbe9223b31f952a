//! ids: the identifiers the install makes up: GPT partition GUIDs (random, version 4) and FAT
//! volume ids (the `UUID=ABCD-1234` of fstab). They must be unique, not secret: the kernel's
//! `getrandom` without waiting (GRND_INSECURE, which never blocks even before the random pool
//! is seeded), else a mix of the clock and the process id.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// `GRND_INSECURE` (Linux ≥ 5.6).
const GRND_INSECURE: libc::c_uint = 0x0004;

/// `N` bytes that are unique enough for identifiers.
pub fn unique_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    for flags in [GRND_INSECURE, libc::GRND_NONBLOCK] {
        // SAFETY: getrandom writes at most N bytes into the valid buffer.
        let n = unsafe { libc::getrandom(b.as_mut_ptr().cast(), N, flags) };
        if n == N as isize {
            return b;
        }
    }
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let mut state = nanos
        ^ (u64::from(std::process::id()) << 32)
        ^ COUNTER
            .fetch_add(1, Ordering::Relaxed)
            .wrapping_mul(0x9e37_79b9_7f4a_7c15);
    for chunk in b.chunks_mut(8) {
        // splitmix64
        state = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        chunk.copy_from_slice(&z.to_le_bytes()[..chunk.len()]);
    }
    b
}

/// A random (version 4) GUID in the GPT's on-disk byte order.
pub fn random_guid() -> [u8; 16] {
    let mut g = unique_bytes::<16>();
    // The version is the high nibble of the third field, stored little-endian (byte 7).
    g[7] = (g[7] & 0x0f) | 0x40;
    g[8] = (g[8] & 0x3f) | 0x80;
    g
}

/// A FAT volume id (never 0).
pub fn fat_volume_id() -> u32 {
    let id = u32::from_le_bytes(unique_bytes::<4>());
    if id == 0 { 0x2024_1125 } else { id }
}

/// `C12A7328-F81F-11D2-BA4B-00A0C93EC93B` → the GPT's on-disk bytes (the first three fields
/// little-endian). None when it is not a GUID.
pub fn parse_guid(s: &str) -> Option<[u8; 16]> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if hex.len() != 32 || s.len() != 36 || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let mut be = [0u8; 16];
    for (i, b) in be.iter_mut().enumerate() {
        *b = u8::from_str_radix(&hex[2 * i..2 * i + 2], 16).ok()?;
    }
    let mut g = be;
    g[0..4].reverse();
    g[4..6].reverse();
    g[6..8].reverse();
    Some(g)
}

/// The GPT's on-disk bytes → `C12A7328-F81F-11D2-BA4B-00A0C93EC93B`.
pub fn format_guid(g: &[u8; 16]) -> String {
    let mut be = *g;
    be[0..4].reverse();
    be[4..6].reverse();
    be[6..8].reverse();
    let h = hex::encode_upper(be);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn guid_bytes() {
        let esp = parse_guid("C12A7328-F81F-11D2-BA4B-00A0C93EC93B").unwrap();
        assert_eq!(
            esp,
            [
                0x28, 0x73, 0x2A, 0xC1, 0x1F, 0xF8, 0xD2, 0x11, 0xBA, 0x4B, 0x00, 0xA0, 0xC9, 0x3E,
                0xC9, 0x3B
            ]
        );
        assert_eq!(format_guid(&esp), "C12A7328-F81F-11D2-BA4B-00A0C93EC93B");
        assert_eq!(parse_guid("C12A7328F81F11D2BA4B00A0C93EC93B"), None);
        let r = random_guid();
        assert_eq!(format_guid(&r).as_bytes()[14], b'4');
        assert_ne!(random_guid(), random_guid());
        assert_ne!(fat_volume_id(), 0);
    }
}
