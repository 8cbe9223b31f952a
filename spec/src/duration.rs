//! duration: the durations operators write on the command line and in requests: a number and
//! a unit, `90s`, `30m`, `24h`, `2d`, or several of them run together (`1h30m`).

/// Seconds in `s`, or what is wrong with it.
pub fn parse_duration(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if t.is_empty() {
        return Err("an empty duration: write it like `90s`, `30m`, `24h`".into());
    }
    let mut total: u64 = 0;
    let mut num = String::new();
    for c in t.chars() {
        if c.is_ascii_digit() {
            num.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86400,
            _ => {
                return Err(format!(
                    "`{s}` is not a duration: units are s, m, h and d (e.g. `90s`, `30m`, `24h`)"
                ));
            }
        };
        let n: u64 = num.parse().map_err(|_| {
            format!("`{s}` is not a duration: a number must come before each unit (e.g. `30m`)")
        })?;
        num.clear();
        total = n
            .checked_mul(unit)
            .and_then(|v| total.checked_add(v))
            .ok_or_else(|| format!("`{s}` is too long a duration"))?;
    }
    if !num.is_empty() {
        return Err(format!(
            "`{s}` has no unit: write `{num}s`, `{num}m` or `{num}h`"
        ));
    }
    Ok(total)
}

/// `seconds` the way [`parse_duration`] reads it back, largest units first (`1h30m`, `45s`).
pub fn format_duration(seconds: u64) -> String {
    if seconds == 0 {
        return "0s".into();
    }
    let mut out = String::new();
    let mut left = seconds;
    for (unit, n) in [("d", 86400), ("h", 3600), ("m", 60), ("s", 1)] {
        if left >= n {
            out.push_str(&format!("{}{unit}", left / n));
            left %= n;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90s"), Ok(90));
        assert_eq!(parse_duration("30m"), Ok(1800));
        assert_eq!(parse_duration(" 24h "), Ok(86400));
        assert_eq!(parse_duration("1h30m"), Ok(5400));
        assert_eq!(parse_duration("2d"), Ok(172800));
        assert!(parse_duration("30").unwrap_err().contains("`30m`"));
        assert!(parse_duration("").is_err());
        assert!(parse_duration("m").unwrap_err().contains("number"));
        assert!(parse_duration("5w").unwrap_err().contains("units"));
        assert!(parse_duration("99999999999999999999d").is_err());
        for s in [0, 45, 60, 1800, 5400, 90061] {
            assert_eq!(parse_duration(&format_duration(s)), Ok(s), "{s}");
        }
        assert_eq!(format_duration(5400), "1h30m");
    }
}
