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

/// The peak memory of one run on its device. On the CPU: the process's peak resident set, reset
/// when the meter starts. On CUDA: the device memory in use (as the driver reports it) above what
/// was in use when the meter started, sampled at the moments of a training step when the most is
/// held (after the backward pass, before the gradients are dropped) and at evaluation.
#[derive(Debug)]
pub struct Meter {
    cuda: Option<candle_core::Device>,
    baseline: u64,
    peak: std::cell::Cell<u64>,
}

impl Meter {
    /// Starts measuring on `device`.
    pub fn start(device: &candle_core::Device) -> Self {
        let cuda = device.is_cuda().then(|| device.clone());
        let baseline = match &cuda {
            Some(d) => device_in_use(d).unwrap_or(0),
            None => {
                reset_peak();
                0
            }
        };
        Self { cuda, baseline, peak: std::cell::Cell::new(baseline) }
    }

    /// Starts measuring on `device` against the baseline of an earlier meter (e.g. one started
    /// before the model was loaded, so that the peak includes the weights, as PyTorch's peak
    /// reserved memory does).
    pub fn start_from(device: &candle_core::Device, earlier: &Meter) -> Self {
        let meter = Self::start(device);
        Self { baseline: earlier.baseline, ..meter }
    }

    /// Records the memory in use now (CUDA; the CPU's kernel keeps its own peak).
    pub fn sample(&self) {
        if let Some(d) = &self.cuda {
            let now = device_in_use(d).unwrap_or(0);
            self.peak.set(self.peak.get().max(now));
        }
    }

    /// The peak so far, in bytes, and how it was measured.
    pub fn peak(&self) -> crate::record::PeakMemory {
        use crate::record::{MemoryMeasure, PeakMemory};
        match &self.cuda {
            Some(_) => {
                self.sample();
                PeakMemory {
                    bytes: self.peak.get().saturating_sub(self.baseline),
                    measured: MemoryMeasure::CudaAboveBaseline,
                }
            }
            None => PeakMemory { bytes: peak_rss().unwrap_or(0), measured: MemoryMeasure::CpuProcessPeak },
        }
    }
}

/// Device memory in use on a CUDA device: total − free, as the driver reports it.
#[cfg(feature = "cuda")]
fn device_in_use(device: &candle_core::Device) -> Option<u64> {
    let cuda = device.as_cuda_device().ok()?;
    let (free, total) = cuda.cuda_stream().context().mem_get_info().ok()?;
    Some((total - free) as u64)
}

#[cfg(not(feature = "cuda"))]
fn device_in_use(_device: &candle_core::Device) -> Option<u64> {
    None
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
