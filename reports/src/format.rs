//! How numbers are printed in the report and summary.md: accuracy with the decimals papers use,
//! costs with three significant digits and a unit.

/// A number with `digits` significant digits, without trailing zeros or exponent notation
/// (0.0461 → "0.0461", 85.79 → "85.8", 1234.6 → "1235" with 3 digits).
pub fn significant(v: f64, digits: i32) -> String {
    if v == 0.0 || !v.is_finite() {
        return if v == 0.0 { "0".into() } else { v.to_string() };
    }
    let magnitude = v.abs().log10().floor() as i32;
    let decimals = (digits - 1 - magnitude).max(0) as usize;
    let s = format!("{v:.decimals$}");
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_owned() } else { s }
}

/// Accuracy in percent with `decimals` places (1 for tasks, 2 for averages, as papers print).
pub fn percent(v: f64, decimals: usize) -> String {
    format!("{v:.decimals$}")
}

/// Parameters in millions ("0.29", "85.8", "0").
pub fn millions(n: f64) -> String {
    significant(n / 1e6, 3)
}

/// A size in bytes with a binary unit ("904 KiB", "1.21 MiB", "2.33 GiB").
pub fn bytes(n: f64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < UNITS.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{} {}", significant(v, 3), UNITS[unit])
}

/// Bytes in GiB ("2.33"), for a column whose header carries the unit.
pub fn gib(n: f64) -> String {
    significant(n / f64::from(1u32 << 30), 3)
}

/// A duration ("42.1 s", "12.4 min", "1.62 h").
pub fn duration(s: f64) -> String {
    if s < 60.0 {
        format!("{} s", significant(s, 3))
    } else if s < 3600.0 {
        format!("{} min", significant(s / 60.0, 3))
    } else {
        format!("{} h", significant(s / 3600.0, 3))
    }
}

/// A throughput ("830", "12.5").
pub fn rate(v: f64) -> String {
    significant(v, 3)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_print_as_papers_print_them() {
        assert_eq!(significant(0.0461, 3), "0.0461");
        assert_eq!(significant(85.798656, 3), "85.8");
        assert_eq!(significant(1234.6, 3), "1235");
        assert_eq!(significant(0.29, 3), "0.29");
        assert_eq!(significant(2.0, 3), "2");
        assert_eq!(significant(0.0, 3), "0");
        assert_eq!(percent(72.249, 2), "72.25");
        assert_eq!(percent(72.26, 1), "72.3");
        assert_eq!(millions(85_798_656.0), "85.8");
        assert_eq!(millions(294_912.0), "0.295");
        assert_eq!(millions(0.0), "0");
        assert_eq!(bytes(904.0 * 1024.0), "904 KiB");
        assert_eq!(bytes(500.0), "500 B");
        assert_eq!(bytes(2.5 * 1024.0 * 1024.0 * 1024.0), "2.5 GiB");
        assert_eq!(gib(2_500_000_000.0), "2.33");
        assert_eq!(duration(42.13), "42.1 s");
        assert_eq!(duration(745.0), "12.4 min");
        assert_eq!(duration(5832.0), "1.62 h");
        assert_eq!(rate(830.4), "830");
    }
}
