//! AdamW (decoupled weight decay) and SGD with momentum, as PyTorch defines them, with global
//! gradient-norm clipping and the usual exemptions from weight decay.

use candle_core::{Result, Tensor, Var};

use crate::recipe::{Optimizer as Kind, TrainConfig};

/// Whether a variable gets weight decay: not biases, norm parameters, 1-D tensors, the position
/// embedding, the class token or prompts (timm's rule), unless the recipe asks to decay all.
pub fn decays(name: &str, var: &Var, decay_all: bool) -> bool {
    if decay_all {
        return true;
    }
    let exempt = var.rank() <= 1
        || name.ends_with(".bias")
        || name.contains("norm")
        || ["pos_embed", "cls_token"].contains(&name)
        || name.starts_with("vpt.prompts");
    !exempt
}

#[derive(Debug)]
struct Slot {
    name: String,
    var: Var,
    decay: bool,
    /// AdamW's first moment, or SGD's momentum buffer.
    first: Option<Tensor>,
    /// AdamW's second moment.
    second: Option<Tensor>,
}

/// An optimiser over named variables.
#[derive(Debug)]
pub struct Optimizer {
    kind: Kind,
    slots: Vec<Slot>,
    weight_decay: f64,
    betas: [f64; 2],
    eps: f64,
    momentum: f64,
    grad_clip: Option<f64>,
    steps: u64,
}

impl Optimizer {
    /// The optimiser `train` describes, over `vars`.
    pub fn new(train: &TrainConfig, vars: Vec<(String, Var)>) -> Self {
        let slots = vars
            .into_iter()
            .map(|(name, var)| {
                let decay = decays(&name, &var, train.decay_all);
                Slot { name, var, decay, first: None, second: None }
            })
            .collect();
        Self {
            kind: train.optimizer,
            slots,
            weight_decay: train.weight_decay,
            betas: train.betas,
            eps: train.eps,
            momentum: train.momentum,
            grad_clip: train.grad_clip,
            steps: 0,
        }
    }

    /// Names of the variables that get weight decay.
    pub fn decayed(&self) -> Vec<&str> {
        self.slots.iter().filter(|s| s.decay).map(|s| s.name.as_str()).collect()
    }

    /// Steps taken so far.
    pub fn steps(&self) -> u64 {
        self.steps
    }

    /// One step at learning rate `lr` with the gradients of a backward pass; returns the global
    /// gradient norm before clipping.
    pub fn step(&mut self, grads: &candle_core::backprop::GradStore, lr: f64) -> Result<f64> {
        let found: Vec<Option<Tensor>> =
            self.slots.iter().map(|s| grads.get(s.var.as_tensor()).cloned()).collect();
        self.step_with(found, lr)
    }

    /// One step with the gradient of each variable (in the order given at construction; `None`
    /// for a variable that got none, which is then left as it is).
    pub fn step_with(&mut self, grads: Vec<Option<Tensor>>, lr: f64) -> Result<f64> {
        let mut sum_sq = 0.0;
        for g in grads.iter().flatten() {
            sum_sq += g.to_dtype(candle_core::DType::F64)?.sqr()?.sum_all()?.to_scalar::<f64>()?;
        }
        let norm = sum_sq.sqrt();
        // PyTorch's clip_grad_norm_: scale by max_norm / (norm + 1e-6) when that is below one.
        let clip = self.grad_clip.map(|max| max / (norm + 1e-6)).filter(|c| *c < 1.0);
        self.steps += 1;
        let t = self.steps as i32;
        for (slot, grad) in self.slots.iter_mut().zip(grads) {
            let Some(mut g) = grad else { continue };
            if let Some(c) = clip {
                g = (g * c)?;
            }
            let p = slot.var.as_tensor();
            let wd = if slot.decay { self.weight_decay } else { 0.0 };
            let updated = match self.kind {
                Kind::Adamw => {
                    let [b1, b2] = self.betas;
                    let m = match &slot.first {
                        Some(m) => ((m * b1)? + (&g * (1.0 - b1))?)?,
                        None => (&g * (1.0 - b1))?,
                    };
                    let v = match &slot.second {
                        Some(v) => ((v * b2)? + (g.sqr()? * (1.0 - b2))?)?,
                        None => (g.sqr()? * (1.0 - b2))?,
                    };
                    let step_size = lr / (1.0 - b1.powi(t));
                    let denom = ((v.sqrt()? / (1.0 - b2.powi(t)).sqrt())? + self.eps)?;
                    let decayed = (p * (1.0 - lr * wd))?;
                    let new = (decayed - ((&m / denom)? * step_size)?)?;
                    slot.first = Some(m);
                    slot.second = Some(v);
                    new
                }
                Kind::Sgd => {
                    let g = if wd > 0.0 { (g + (p * wd)?)? } else { g };
                    let buf = match &slot.first {
                        Some(b) => ((b * self.momentum)? + &g)?,
                        None => g,
                    };
                    let new = (p - (&buf * lr)?)?;
                    slot.first = Some(buf);
                    new
                }
            };
            slot.var.set(&updated)?;
        }
        Ok(norm)
    }

    /// The optimiser's state as named tensors (for resuming a run).
    pub fn state(&self) -> Vec<(String, Tensor)> {
        let mut out = Vec::new();
        for s in &self.slots {
            if let Some(m) = &s.first {
                out.push((format!("{}.first", s.name), m.clone()));
            }
            if let Some(v) = &s.second {
                out.push((format!("{}.second", s.name), v.clone()));
            }
        }
        out
    }

    /// Restores a state from [`Optimizer::state`] after `steps` steps.
    pub fn restore(&mut self, state: &std::collections::HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for s in &mut self.slots {
            s.first =
                state.get(&format!("{}.first", s.name)).map(|t| t.to_device(s.var.device())).transpose()?;
            s.second =
                state.get(&format!("{}.second", s.name)).map(|t| t.to_device(s.var.device())).transpose()?;
        }
        self.steps = steps;
        Ok(())
    }
}

#[cfg(test)]
#[path = "optim_tests.rs"]
mod tests;
