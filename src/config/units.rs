//! Sizes and durations as people write them: `"10GB"`, `"4MiB"`, `"24h"`, `"1h30m"`.

use std::time::Duration;

/// Size units, largest first; matched case-insensitively.
const SIZE_UNITS: [(&str, u64); 9] = [
    ("TiB", 1 << 40),
    ("TB", 1_000_000_000_000),
    ("GiB", 1 << 30),
    ("GB", 1_000_000_000),
    ("MiB", 1 << 20),
    ("MB", 1_000_000),
    ("KiB", 1 << 10),
    ("KB", 1_000),
    ("B", 1),
];

/// Duration units in milliseconds, largest first.
const DURATION_UNITS: [(&str, u64); 6] = [
    ("w", 7 * 86_400_000),
    ("d", 86_400_000),
    ("h", 3_600_000),
    ("m", 60_000),
    ("s", 1_000),
    ("ms", 1),
];

/// Parses `"10GB"` (10^9), `"4MiB"` (4 * 2^20), `"1.5GB"`, `"100B"` or bare bytes
/// `"1024"`; units B, KB, KiB, MB, MiB, GB, GiB, TB, TiB in any case.
pub fn parse_size(s: &str) -> Result<u64, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (number, unit) = (&t[..split], t[split..].trim_start());
    let (int, frac) = number.split_once('.').unwrap_or((number, ""));
    if int.is_empty() || number.ends_with('.') || frac.contains('.') || number.len() > 20 {
        return Err(format!(
            "invalid size {s:?}: expected a number and a unit, e.g. \"4MiB\""
        ));
    }
    let multiplier = match SIZE_UNITS
        .iter()
        .find(|(u, _)| u.eq_ignore_ascii_case(unit))
    {
        Some((_, m)) => *m,
        None if unit.is_empty() => 1,
        None => {
            let units = "B, KB, KiB, MB, MiB, GB, GiB, TB, TiB";
            return Err(format!(
                "invalid size {s:?}: unknown unit {unit:?} (use {units})"
            ));
        }
    };
    // At most 20 digits: fits in u128 even times 2^40.
    let digits: u128 = format!("{int}{frac}")
        .parse()
        .map_err(|_| format!("invalid size {s:?}"))?;
    let (bytes, scale) = (
        digits * u128::from(multiplier),
        10u128.pow(frac.len() as u32),
    );
    if bytes % scale != 0 {
        return Err(format!("invalid size {s:?}: not a whole number of bytes"));
    }
    u64::try_from(bytes / scale).map_err(|_| format!("invalid size {s:?}: too large"))
}

/// Renders bytes with the largest unit that divides them exactly (`4MiB`, `10GB`, `100B`).
pub fn format_size(bytes: u64) -> String {
    match SIZE_UNITS.iter().find(|(_, m)| bytes % m == 0) {
        Some((unit, m)) if bytes > 0 => format!("{}{unit}", bytes / m),
        _ => "0B".to_string(),
    }
}

/// Parses `"24h"`, `"90d"`, `"500ms"`, `"1w"` or combinations like `"1h30m"`
/// (units ms, s, m, h, d, w); a bare number is rejected.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let bad = |why: String| format!("invalid duration {s:?}: {why}");
    let (units, mut rest, mut total) = ("ms, s, m, h, d, w", s.trim(), 0u64);
    if rest.is_empty() {
        return Err(bad("empty".into()));
    }
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let u_end = rest[n_end..]
            .find(|c: char| !c.is_ascii_alphabetic())
            .map_or(rest.len(), |i| n_end + i);
        let (number, unit) = (&rest[..n_end], &rest[n_end..u_end]);
        let millis = match DURATION_UNITS.iter().find(|(u, _)| *u == unit) {
            _ if number.is_empty() => Err("expected a number and a unit, e.g. \"24h\"".into()),
            Some((_, ms)) => Ok(*ms),
            None if unit.is_empty() && n_end == rest.len() => Err(format!("add a unit ({units})")),
            None if unit.is_empty() => Err(format!("unexpected {:?}", &rest[n_end..])),
            None => Err(format!("unknown unit {unit:?} (use {units})")),
        };
        let n = number.parse::<u64>().ok();
        let sum = millis.map(|ms| n.and_then(|n| n.checked_mul(ms)?.checked_add(total)));
        total = sum.map_err(bad)?.ok_or_else(|| bad("too large".into()))?;
        rest = &rest[u_end..];
    }
    Ok(Duration::from_millis(total))
}

/// Renders a duration with the largest unit that divides it exactly (`1d`, `90m`,
/// `500ms`); sub-millisecond parts are dropped.
pub fn format_duration(d: Duration) -> String {
    let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
    match DURATION_UNITS.iter().find(|(_, m)| ms % m == 0) {
        Some((unit, m)) if ms > 0 => format!("{}{unit}", ms / m),
        _ => "0s".to_string(),
    }
}
