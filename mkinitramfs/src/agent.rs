//! Whether a binary can be the initramfs' `/init`: an x86-64 ELF executable (static or
//! static-pie) that asks for no program interpreter, since the initramfs has no ld.so and no
//! shared libraries.

use crate::Error;

const PT_INTERP: u32 = 3;
const EM_X86_64: u16 = 62;

/// What the ELF header says about a valid `/init`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AgentElf {
    /// `ET_EXEC` (false) or `ET_DYN` i.e. static-pie (true).
    pub pie: bool,
}

/// Checks `bin` is a static x86-64 ELF executable.
pub fn check_static(bin: &[u8]) -> Result<AgentElf, Error> {
    let fail = |what: String| Error::Agent(what);
    if bin.len() < 64 || &bin[..4] != b"\x7fELF" {
        return Err(fail("not an ELF file".into()));
    }
    if bin[4] != 2 || bin[5] != 1 {
        return Err(fail("not a little-endian ELF64 file".into()));
    }
    let u16_at = |at: usize| u16::from_le_bytes([bin[at], bin[at + 1]]);
    let machine = u16_at(0x12);
    if machine != EM_X86_64 {
        return Err(fail(format!(
            "built for ELF machine {machine}, not x86-64 (the kernel is amd64)"
        )));
    }
    let pie = match u16_at(0x10) {
        2 => false,
        3 => true,
        t => return Err(fail(format!("ELF type {t} is not an executable"))),
    };
    let mut off = [0u8; 8];
    off.copy_from_slice(&bin[0x20..0x28]);
    let phoff = usize::try_from(u64::from_le_bytes(off))
        .map_err(|_| fail("program header offset too large".into()))?;
    let (phentsize, phnum) = (usize::from(u16_at(0x36)), usize::from(u16_at(0x38)));
    for i in 0..phnum {
        let at = phoff + i * phentsize;
        let ph = bin
            .get(at..at + 56)
            .ok_or_else(|| fail("program headers past the end of the file".into()))?;
        let ty = u32::from_le_bytes([ph[0], ph[1], ph[2], ph[3]]);
        if ty == PT_INTERP {
            let mut o = [0u8; 8];
            o.copy_from_slice(&ph[8..16]);
            let mut s = [0u8; 8];
            s.copy_from_slice(&ph[32..40]);
            let interp = usize::try_from(u64::from_le_bytes(o))
                .ok()
                .zip(usize::try_from(u64::from_le_bytes(s)).ok())
                .and_then(|(o, s)| bin.get(o..o + s))
                .map(|b| String::from_utf8_lossy(b).trim_end_matches('\0').to_owned())
                .unwrap_or_default();
            return Err(fail(format!(
                "dynamically linked (needs {interp}): build it with RUSTFLAGS=\"-C target-feature=+crt-static\" --target x86_64-unknown-linux-gnu"
            )));
        }
    }
    Ok(AgentElf { pie })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// The smallest x86-64 ELF executable header (no program headers).
    pub(crate) fn fake_static_elf() -> Vec<u8> {
        let mut b = vec![0u8; 64];
        b[..4].copy_from_slice(b"\x7fELF");
        b[4] = 2;
        b[5] = 1;
        b[6] = 1;
        b[0x10] = 2;
        b[0x12] = EM_X86_64 as u8;
        b[0x36] = 56;
        b
    }

    #[test]
    fn accepts_static_refuses_dynamic() {
        assert_eq!(
            check_static(&fake_static_elf()).unwrap(),
            AgentElf { pie: false }
        );
        // the test binary itself is dynamically linked
        let me = std::fs::read(std::env::current_exe().unwrap()).unwrap();
        let e = check_static(&me).unwrap_err().to_string();
        assert!(
            e.contains("dynamically linked (needs /lib64/ld-linux"),
            "{e}"
        );
        assert!(check_static(b"#!/bin/sh\n").is_err());
    }
}
