//! Peak memory of a run. On the CPU: the process's peak resident set (VmHWM), reset at the start
//! of each run through /proc/self/clear_refs, so each run reports its own peak.

/// The process's peak resident set since the last reset, in bytes (None where /proc is absent).
pub fn peak_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// The process's current resident set, in bytes.
pub fn current_rss() -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

/// Resets the peak resident set to the current one (Linux: writing 5 to /proc/self/clear_refs).
/// Returns whether the reset happened.
pub fn reset_peak() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_follows_a_large_allocation_and_resets() {
        let (Some(before), true) = (current_rss(), reset_peak()) else {
            return; // no /proc on this system: nothing to measure
        };
        let big = vec![1u8; 256 << 20];
        let touched: u64 = big.iter().step_by(4096).map(|b| *b as u64).sum();
        assert!(touched > 0);
        let peak = peak_rss().unwrap();
        assert!(peak >= before + (200 << 20), "peak {peak} after allocating 256 MiB on {before}");
        drop(big);
        assert!(reset_peak());
        let after = peak_rss().unwrap();
        assert!(after < peak - (100 << 20), "the reset peak {after} still holds the freed 256 MiB ({peak})");
    }
}
