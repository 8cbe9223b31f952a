//! MAC addresses as they arrive in `/ipxe/<mac>`: the accepted spellings and the one byol stores.

/// Accepts `52:54:00:AB:cd:01`, `52-54-00-ab-cd-01` and `525400abcd01` (any case, one separator
/// kind throughout) and returns the lowercase colon form (`52:54:00:ab:cd:01`, what iPXE prints
/// for `${netX/mac}`). Anything else, including surrounding whitespace, is `None`.
pub fn normalize_mac(s: &str) -> Option<String> {
    let b = s.as_bytes();
    let digits: Vec<u8> = match b.len() {
        12 => b.to_vec(),
        17 => {
            let sep = b[2];
            if sep != b':' && sep != b'-' {
                return None;
            }
            let mut digits = Vec::with_capacity(12);
            for (i, &c) in b.iter().enumerate() {
                if i % 3 == 2 {
                    if c != sep {
                        return None;
                    }
                } else {
                    digits.push(c);
                }
            }
            digits
        }
        _ => return None,
    };
    if !digits.iter().all(u8::is_ascii_hexdigit) {
        return None;
    }
    let mut out = String::with_capacity(17);
    for (i, pair) in digits.chunks(2).enumerate() {
        if i > 0 {
            out.push(':');
        }
        for &c in pair {
            out.push(char::from(c.to_ascii_lowercase()));
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepted_spellings() {
        let want = Some("52:54:00:ab:cd:01".to_string());
        assert_eq!(normalize_mac("52:54:00:AB:cd:01"), want);
        assert_eq!(normalize_mac("52-54-00-ab-cd-01"), want);
        assert_eq!(normalize_mac("525400abcd01"), want);
        assert_eq!(normalize_mac("525400ABCD01"), want);
        assert_eq!(normalize_mac("52:54:00:ab:cd:01"), want);
        assert_eq!(
            normalize_mac("00:00:00:00:00:00").as_deref(),
            Some("00:00:00:00:00:00")
        );
        assert_eq!(
            normalize_mac("FF-FF-FF-FF-FF-FF").as_deref(),
            Some("ff:ff:ff:ff:ff:ff")
        );
    }

    #[test]
    fn refused() {
        for bad in [
            "",
            "52:54:00:ab:cd",
            "52:54:00:ab:cd:01:02",
            "52:54:00-ab:cd:01",
            "52.54.00.ab.cd.01",
            "5254.00ab.cd01",
            "52:54:00:ab:cd:0g",
            "525400abcd0",
            "525400abcd011",
            " 52:54:00:ab:cd:01",
            "52:54:00:ab:cd:01 ",
            "52:54:00:ab:cd:01\n",
            "52:54:00:ab:cd:1",
            "5:254:00:ab:cd:01",
            "52::54:00:ab:cd:01",
            "${netX/mac}",
            "52:54:00:ab:cd:\u{e9}",
            "٥٢:54:00:ab:cd:01",
            "52:54:00:ab:cd:01;shell",
            "0x525400abcd",
        ] {
            assert_eq!(normalize_mac(bad), None, "{bad:?}");
        }
    }
}
