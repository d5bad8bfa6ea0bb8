//! Pieces every method shares: the classification head, seeded initialisers, seeded dropout.

use std::sync::Mutex;

use candle_core::{DType, Device, Result, Shape, Tensor, Var};
use losa_framework::recipe::Pool;
use losa_framework::vit::Vit;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, Normal};

/// Seeded initialisers: the same seed gives the same start on every machine.
#[derive(Debug)]
pub struct Init {
    rng: ChaCha8Rng,
    device: Device,
    dtype: DType,
}

impl Init {
    /// Initialisers drawing from `seed`, making variables of `dtype` on `device`.
    pub fn new(seed: u64, device: &Device, dtype: DType) -> Self {
        Self { rng: ChaCha8Rng::seed_from_u64(seed), device: device.clone(), dtype }
    }

    fn var(&self, values: Vec<f64>, shape: impl Into<Shape>) -> Result<Var> {
        Var::from_tensor(
            &Tensor::from_vec(values, shape, &Device::Cpu)?.to_dtype(self.dtype)?.to_device(&self.device)?,
        )
    }

    /// The device it makes variables on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// All zeros.
    pub fn zeros(&self, shape: impl Into<Shape>) -> Result<Var> {
        let shape = shape.into();
        self.var(vec![0.0; shape.elem_count()], shape)
    }

    /// All ones.
    pub fn ones(&self, shape: impl Into<Shape>) -> Result<Var> {
        let shape = shape.into();
        self.var(vec![1.0; shape.elem_count()], shape)
    }

    /// Normal(0, std) truncated at ±2·std (timm's head and embedding init).
    pub fn trunc_normal(&mut self, shape: impl Into<Shape>, std: f64) -> Result<Var> {
        let shape = shape.into();
        let dist = Normal::new(0.0, std).map_err(|e| candle_core::Error::Msg(e.to_string()))?;
        let values = (0..shape.elem_count())
            .map(|_| {
                loop {
                    let v: f64 = dist.sample(&mut self.rng);
                    if v.abs() <= 2.0 * std {
                        break v;
                    }
                }
            })
            .collect();
        self.var(values, shape)
    }

    /// Uniform(-bound, bound).
    pub fn uniform(&mut self, shape: impl Into<Shape>, bound: f64) -> Result<Var> {
        let shape = shape.into();
        let values = (0..shape.elem_count()).map(|_| self.rng.random_range(-bound..=bound)).collect();
        self.var(values, shape)
    }

    /// LeCun normal for a weight with `fan_in` inputs: std 1/√fan_in (truncated at ±2·std).
    pub fn lecun_normal(&mut self, shape: impl Into<Shape>, fan_in: usize) -> Result<Var> {
        self.trunc_normal(shape, 1.0 / (fan_in as f64).sqrt())
    }

    /// PyTorch's default Linear weight init (kaiming uniform with a = √5): U(±1/√fan_in).
    pub fn kaiming_uniform(&mut self, shape: impl Into<Shape>, fan_in: usize) -> Result<Var> {
        self.uniform(shape, 1.0 / (fan_in as f64).sqrt())
    }

    /// A seed for a method's own random stream (dropout), drawn from this one.
    pub fn fork(&mut self) -> u64 {
        self.rng.random()
    }
}

/// A fresh linear classifier on pooled features.
#[derive(Debug)]
pub struct Head {
    /// [classes, width].
    pub weight: Var,
    /// [classes].
    pub bias: Var,
    /// How the tokens are pooled.
    pub pool: Pool,
}

impl Head {
    /// A head for `classes` classes on features of `width`: weights truncated normal (std 0.02),
    /// bias zero.
    pub fn new(init: &mut Init, width: usize, classes: usize, pool: Pool) -> Result<Self> {
        Ok(Self { weight: init.trunc_normal((classes, width), 0.02)?, bias: init.zeros(classes)?, pool })
    }

    /// Logits for normed tokens [batch, tokens, width].
    pub fn forward(&self, vit: &Vit, tokens: &Tensor) -> Result<Tensor> {
        self.classify(&vit.pool(tokens, self.pool)?)
    }

    /// Logits for pooled features [batch, width].
    pub fn classify(&self, pooled: &Tensor) -> Result<Tensor> {
        let pooled = pooled.to_dtype(self.weight.dtype())?;
        pooled.matmul(&self.weight.as_tensor().t()?)?.broadcast_add(self.bias.as_tensor())
    }

    /// The head's variables, named `head.weight` and `head.bias` as in timm.
    pub fn vars(&self) -> Vec<(String, Var)> {
        vec![("head.weight".into(), self.weight.clone()), ("head.bias".into(), self.bias.clone())]
    }
}

/// Dropout with its own seeded stream, so a run's masks depend only on its seed. Each epoch has
/// its own stream of that seed ([`Dropout::start_epoch`]), so a run resumed at an epoch draws
/// the same masks as one that never stopped, without saving any random state.
#[derive(Debug)]
pub struct Dropout {
    p: f64,
    seed: u64,
    rng: Mutex<ChaCha8Rng>,
}

impl Dropout {
    /// Drops with probability `p` during training.
    pub fn new(p: f64, seed: u64) -> Self {
        Self { p, seed, rng: Mutex::new(ChaCha8Rng::seed_from_u64(seed)) }
    }

    /// Restarts the masks at the stream of epoch `epoch` (0-based).
    pub fn start_epoch(&self, epoch: u64) {
        let mut rng = ChaCha8Rng::seed_from_u64(self.seed);
        rng.set_stream(epoch);
        if let Ok(mut current) = self.rng.lock() {
            *current = rng;
        }
    }

    /// `x` with elements zeroed with probability p and the rest scaled by 1/(1-p), when training.
    pub fn apply(&self, x: &Tensor, train: bool) -> Result<Tensor> {
        match self.mask(x.shape(), x.dtype(), x.device(), train)? {
            Some(mask) => x * mask,
            None => Ok(x.clone()),
        }
    }

    /// The mask that [`Dropout::apply`] would multiply a tensor of this shape by (zeros and
    /// 1/(1-p)), drawn from the same stream; none when not training or p = 0.
    pub fn mask(&self, shape: &Shape, dtype: DType, device: &Device, train: bool) -> Result<Option<Tensor>> {
        if !train || self.p == 0.0 {
            return Ok(None);
        }
        let keep = 1.0 - self.p;
        let mask: Vec<f32> = {
            let mut rng =
                self.rng.lock().map_err(|_| candle_core::Error::Msg("dropout stream poisoned".into()))?;
            (0..shape.elem_count())
                .map(|_| if rng.random::<f64>() < keep { (1.0 / keep) as f32 } else { 0.0 })
                .collect()
        };
        Tensor::from_vec(mask, shape, device)?.to_dtype(dtype).map(Some)
    }
}

/// Applies an activation by name.
pub fn activate(x: &Tensor, activation: losa_framework::recipe::Activation) -> Result<Tensor> {
    use losa_framework::recipe::Activation::*;
    match activation {
        Gelu => x.gelu_erf(),
        Relu => x.relu(),
        Silu => x.silu(),
        Identity => Ok(x.clone()),
    }
}
