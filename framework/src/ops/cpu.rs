//! CPU building blocks of the ops: element types with their accumulation type, and dtype dispatch.

use std::ops::{Add, AddAssign, Div, Mul, MulAssign, Sub, SubAssign};

use candle_core::{Layout, Result, WithDType, bail};

/// The type an op computes in: f32, or f64 for f64 inputs.
pub(crate) trait Acc:
    Copy
    + Send
    + Sync
    + Add<Output = Self>
    + AddAssign
    + Sub<Output = Self>
    + SubAssign
    + Mul<Output = Self>
    + MulAssign
    + Div<Output = Self>
    + WithDType
{
    /// Zero.
    const ZERO: Self;
    /// `v` rounded to this type.
    fn of(v: f64) -> Self;
    /// Square root.
    fn sqrt(self) -> Self;
    /// e^self.
    fn exp(self) -> Self;
    /// The natural logarithm.
    fn ln(self) -> Self;
    /// The error function, as candle's `gelu_erf` computes it (so the forward matches exactly).
    fn erf(self) -> Self;
}

impl Acc for f32 {
    const ZERO: Self = 0.0;
    fn of(v: f64) -> Self {
        v as f32
    }
    fn sqrt(self) -> Self {
        f32::sqrt(self)
    }
    fn exp(self) -> Self {
        f32::exp(self)
    }
    fn ln(self) -> Self {
        f32::ln(self)
    }
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f32(self)
    }
}

impl Acc for f64 {
    const ZERO: Self = 0.0;
    fn of(v: f64) -> Self {
        v
    }
    fn sqrt(self) -> Self {
        f64::sqrt(self)
    }
    fn exp(self) -> Self {
        f64::exp(self)
    }
    fn ln(self) -> Self {
        f64::ln(self)
    }
    fn erf(self) -> Self {
        candle_core::cpu::erf::erf_f64(self)
    }
}

/// A tensor element the ops take, loaded into and stored from its accumulation type.
pub(crate) trait Elem: WithDType + Send + Sync {
    /// The accumulation type.
    type A: Acc;
    /// Widens.
    fn load(self) -> Self::A;
    /// Rounds.
    fn store(a: Self::A) -> Self;
}

impl Elem for f32 {
    type A = f32;
    fn load(self) -> f32 {
        self
    }
    fn store(a: f32) -> Self {
        a
    }
}

impl Elem for f64 {
    type A = f64;
    fn load(self) -> f64 {
        self
    }
    fn store(a: f64) -> Self {
        a
    }
}

impl Elem for half::f16 {
    type A = f32;
    fn load(self) -> f32 {
        self.to_f32()
    }
    fn store(a: f32) -> Self {
        half::f16::from_f32(a)
    }
}

impl Elem for half::bf16 {
    type A = f32;
    fn load(self) -> f32 {
        self.to_f32()
    }
    fn store(a: f32) -> Self {
        half::bf16::from_f32(a)
    }
}

/// The elements of a contiguous tensor (the ops' wrappers make their inputs contiguous).
pub(crate) fn slice<'a, T>(data: &'a [T], layout: &Layout, op: &str) -> Result<&'a [T]> {
    match layout.contiguous_offsets() {
        Some((start, end)) => Ok(&data[start..end]),
        None => bail!("{op}: input must be contiguous"),
    }
}

/// The CPU storage of an optional input that an op reads besides its operands (a captured tensor,
/// or a flagged extra); an error if it lives on another device.
pub(crate) fn extra_input<'a>(
    input: Option<(&'a candle_core::Storage, &'a Layout)>,
    op: &str,
) -> Result<Option<(&'a candle_core::CpuStorage, &'a Layout)>> {
    match input {
        None => Ok(None),
        Some((candle_core::Storage::Cpu(s), l)) => Ok(Some((s, l))),
        Some(_) => bail!("{op}: inputs on different devices"),
    }
}

/// Calls `f::<T>(extra.., (slice, layout)..)` with `T` the storages' common element type.
macro_rules! cpu_dispatch {
    ($op:expr, $f:ident($($extra:expr),*; $($s:ident : $l:ident),+)) => {{
        use candle_core::CpuStorage as C;
        match ($($s,)+) {
            ($(C::F32($s),)+) => $f::<f32>($($extra,)* $(($s.as_slice(), $l)),+),
            ($(C::F64($s),)+) => $f::<f64>($($extra,)* $(($s.as_slice(), $l)),+),
            ($(C::F16($s),)+) => $f::<half::f16>($($extra,)* $(($s.as_slice(), $l)),+),
            ($(C::BF16($s),)+) => $f::<half::bf16>($($extra,)* $(($s.as_slice(), $l)),+),
            _ => candle_core::bail!("{}: needs f32, f64, f16 or bf16 inputs of one dtype", $op),
        }
    }};
}
pub(crate) use cpu_dispatch;

/// `$call` with `$x` bound to the elements of `$storage`, whatever its float type (ops whose
/// other inputs are of another type, or captured); an error naming `$op` for any other type.
macro_rules! on_float {
    ($op:expr, $storage:expr, $x:ident => $call:expr) => {{
        use candle_core::CpuStorage as C;
        match $storage {
            C::F32($x) => $call,
            C::F64($x) => $call,
            C::F16($x) => $call,
            C::BF16($x) => $call,
            other => {
                candle_core::bail!(
                    "{}: no kernel for {:?}",
                    $op,
                    candle_core::backend::BackendStorage::dtype(other)
                )
            }
        }
    }};
}
pub(crate) use on_float;

/// `Σ a·b` in eight interleaved partial sums, so that the loop vectorises.
pub(crate) fn dot<A: Acc>(a: &[A], b: &[A]) -> A {
    let mut acc = [A::ZERO; 8];
    let (ca, cb) = (a.chunks_exact(8), b.chunks_exact(8));
    let tail: A = ca.remainder().iter().zip(cb.remainder()).fold(A::ZERO, |s, (&x, &y)| s + x * y);
    for (a, b) in ca.zip(cb) {
        for i in 0..8 {
            acc[i] += a[i] * b[i];
        }
    }
    acc.iter().fold(tail, |s, &v| s + v)
}
