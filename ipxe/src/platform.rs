//! The firmware platform, as iPXE reports it in `${platform}`.

use std::fmt;

/// Firmware platform as iPXE reports it in `${platform}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Platform {
    /// Legacy BIOS (`pcbios`).
    Pcbios,
    /// UEFI (`efi`).
    Efi,
}

impl Platform {
    /// `"pcbios"` or `"efi"`, exactly as iPXE prints them (case-sensitive); anything else is `None`.
    pub fn from_ipxe(s: &str) -> Option<Platform> {
        match s {
            "pcbios" => Some(Platform::Pcbios),
            "efi" => Some(Platform::Efi),
            _ => None,
        }
    }

    /// The word iPXE uses for this platform.
    pub fn as_ipxe(self) -> &'static str {
        match self {
            Platform::Pcbios => "pcbios",
            Platform::Efi => "efi",
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_ipxe())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_ipxe_words() {
        assert_eq!(Platform::from_ipxe("pcbios"), Some(Platform::Pcbios));
        assert_eq!(Platform::from_ipxe("efi"), Some(Platform::Efi));
        for bad in [
            "EFI",
            "PCBIOS",
            "efi ",
            " efi",
            "",
            "uefi",
            "bios",
            "efi\n",
            "${platform}",
        ] {
            assert_eq!(Platform::from_ipxe(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn round_trip() {
        for p in [Platform::Pcbios, Platform::Efi] {
            assert_eq!(Platform::from_ipxe(p.as_ipxe()), Some(p));
            assert_eq!(p.to_string(), p.as_ipxe());
        }
    }
}
