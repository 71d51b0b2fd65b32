//! Time arguments: RFC 3339 (`2026-11-30T08:00:00Z`), `now`, relative to now (`-6h`, `-90m`,
//! `-2d`, `-30s`, `+5m`) or milliseconds since the epoch.

/// Milliseconds since the epoch for `arg`, relative forms taken from `now_ms`.
pub fn parse_time(arg: &str, now_ms: i64) -> Result<i64, String> {
    let a = arg.trim();
    if a.eq_ignore_ascii_case("now") {
        return Ok(now_ms);
    }
    if let Some(rest) = a.strip_prefix('-').or_else(|| a.strip_prefix('+'))
        && let Some(d) = duration_ms(rest)
    {
        let d = d.map_err(|e| format!("time '{arg}': {e}"))?;
        return Ok(if a.starts_with('-') {
            now_ms.saturating_sub(d)
        } else {
            now_ms.saturating_add(d)
        });
    }
    if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) {
        return a.parse::<i64>().map_err(|e| format!("time '{arg}': {e}"));
    }
    chrono::DateTime::parse_from_rfc3339(a)
        .map(|t| t.timestamp_millis())
        .map_err(|e| {
            format!("time '{arg}': {e} (use RFC 3339 like 2026-11-30T08:00:00Z, now, -6h, or ms)")
        })
}

/// `6h` → 21,600,000; `None` when `s` has no unit suffix (not a duration).
fn duration_ms(s: &str) -> Option<Result<i64, String>> {
    let unit = s.chars().last()?;
    let per = match unit {
        's' => 1_000,
        'm' => 60_000,
        'h' => 3_600_000,
        'd' => 86_400_000,
        'w' => 7 * 86_400_000,
        _ => return None,
    };
    let n = &s[..s.len() - 1];
    Some(
        n.parse::<i64>()
            .ok()
            .filter(|n| *n >= 0)
            .and_then(|n| n.checked_mul(per))
            .ok_or_else(|| format!("'{s}' is not a whole, non-negative duration")),
    )
}

/// A duration argument: `6h`, `90m`, `2d`, `30s`, `1w`, or milliseconds.
pub fn parse_duration(arg: &str) -> Result<i64, String> {
    let a = arg.trim();
    if !a.is_empty() && a.bytes().all(|b| b.is_ascii_digit()) {
        return a
            .parse::<i64>()
            .map_err(|e| format!("duration '{arg}': {e}"));
    }
    match duration_ms(a) {
        Some(r) => r,
        None => Err(format!(
            "duration '{arg}': use a number with s, m, h, d or w (like 6h), or ms"
        )),
    }
}

/// RFC 3339 in UTC with milliseconds.
pub fn format_time(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms).map_or_else(
        || ms.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    const NOW: i64 = 1_780_000_000_000;

    #[test]
    fn every_form() {
        assert_eq!(parse_time("now", NOW), Ok(NOW));
        assert_eq!(parse_time("-6h", NOW), Ok(NOW - 6 * 3_600_000));
        assert_eq!(parse_time("+5m", NOW), Ok(NOW + 300_000));
        assert_eq!(parse_time("-2d", NOW), Ok(NOW - 2 * 86_400_000));
        assert_eq!(parse_time("1700000000000", NOW), Ok(1_700_000_000_000));
        assert_eq!(
            parse_time("2026-11-30T08:00:00Z", NOW),
            Ok(1_796_025_600_000)
        );
        assert_eq!(
            parse_time("2026-11-30T09:00:00+01:00", NOW),
            Ok(1_796_025_600_000)
        );
    }

    #[test]
    fn bad_forms_say_what_is_expected() {
        for bad in [
            "",
            "-h",
            "-1.5h",
            "yesterday",
            "-99999999999999999d",
            "2026-13-01",
        ] {
            let e = parse_time(bad, NOW).unwrap_err();
            assert!(e.contains(bad) || e.contains("duration"), "{bad}: {e}");
        }
    }

    #[test]
    fn formats_back() {
        assert_eq!(format_time(1_796_025_600_123), "2026-11-30T08:00:00.123Z");
    }
}
