//! Integer division by a divisor fixed for a whole kernel launch, as a multiply and a shift.
//!
//! The element-wise kernels find an element's bias column or head from its flat index. A GPU has
//! no integer divide: `i / d` and `i % d` compile to a subroutine of some twenty instructions
//! (more for 64 bits), where a bf16 element moved at full memory bandwidth leaves room for about
//! as many in all, so the head split, with four divisions per element, ran several times below
//! the card's bandwidth. With a magic number `m` and a shift `s` computed here, once per launch,
//! the kernels compute `n / d = (umulhi(n, m) + n) >> s` in three instructions, for every `n <
//! 2³¹` (Granlund and Montgomery, "Division by invariant integers using multiplication", 1994, as
//! PyTorch's `IntDivider` does; kernels.cu's `fdiv`). Indices from 2³¹ on take the plain division.

use candle_core::{Result, bail};

/// A divisor `d` (1 ≤ d ≤ 2³¹) with its magic number and shift, laid out as kernels.cu's
/// `FastDiv`, to which it is passed by value.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FastDiv {
    d: u32,
    m: u32,
    s: u32,
}

impl FastDiv {
    /// Largest index the multiply-and-shift divides exactly (`umulhi(n, m) + n` must fit 32 bits).
    pub(crate) const LIMIT: u64 = 1 << 31;

    pub(crate) fn new(d: usize) -> Result<Self> {
        if d == 0 || d as u64 > Self::LIMIT {
            bail!("losa ops: a dimension of {d} is out of the kernels' range");
        }
        let d64 = d as u64;
        // s = ⌈log2 d⌉ and m = ⌊2³² (2ˢ − d) / d⌋ + 1, which is below 2³² for every d ≤ 2³¹.
        let s = (0..32).find(|&s| (1u64 << s) >= d64).unwrap_or(31);
        let m = ((1u64 << 32) * ((1u64 << s) - d64)) / d64 + 1;
        Ok(Self { d: d as u32, m: m as u32, s })
    }

    /// `n / d` for `n < 2³¹`, exactly as the kernels compute it.
    #[cfg(test)]
    fn div(self, n: u32) -> u32 {
        let hi = ((n as u64 * self.m as u64) >> 32) as u32;
        (hi + n) >> self.s
    }
}

#[cfg(test)]
mod tests {
    use super::FastDiv;

    #[test]
    fn the_multiply_and_shift_divides_exactly_below_two_to_the_31() {
        let last = (FastDiv::LIMIT - 1) as u32;
        let mut divisors: Vec<u64> = (1..=4100).collect();
        divisors.extend((1..=31).flat_map(|k| [(1u64 << k) - 1, 1 << k, (1 << k) + 1]));
        divisors.extend([197, 257, 577, 3072, 2_147_483_629, 2_147_483_647, 1 << 31]);
        // A fixed pseudo-random spread of dividends besides the edges.
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        let mut spread = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x % FastDiv::LIMIT) as u32
        };
        for d in divisors.into_iter().filter(|&d| d <= FastDiv::LIMIT) {
            let f = FastDiv::new(d as usize).unwrap();
            let d32 = d as u32;
            let top = last - last % d32;
            let mut ns = vec![0, 1, d32 - 1, d32, last, last - 1, top, top.wrapping_sub(1)];
            ns.extend((0..200).map(|_| spread()));
            ns.extend(
                (1..50u32).filter_map(|k| k.checked_mul(d32)).flat_map(|q| [q - 1, q, q.wrapping_add(1)]),
            );
            for n in ns.into_iter().filter(|&n| (n as u64) < FastDiv::LIMIT) {
                assert_eq!(f.div(n), n / d32, "{n} / {d}");
            }
        }
    }

    #[test]
    fn a_divisor_out_of_range_is_refused() {
        assert!(FastDiv::new(0).is_err());
        assert!(FastDiv::new((1 << 31) + 1).is_err());
    }
}
