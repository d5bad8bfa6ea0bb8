//! AdamW (decoupled weight decay) and SGD with momentum, as PyTorch defines them, with global
//! gradient-norm clipping and the usual exemptions from weight decay.

use candle_core::{DType, Result, Tensor, Var};

use crate::ops::{self, AdamWStep};

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
    /// AdamW's moments, `[2, n]` (first then second, for `ops::adamw_update`), or SGD's
    /// momentum buffer, shaped like the variable; none before the first step.
    state: Option<Tensor>,
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
                Slot { name, var, decay, state: None }
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

    /// One step at learning rate `lr` with the gradients of a backward pass, which must hold one
    /// for every variable: a variable without one means the backward never reached it (a
    /// gradient taken with `loss.backward()` where the method's own `Adaptation::backward` was
    /// due), and training on would silently leave it as it is.
    pub fn step(&mut self, grads: &candle_core::backprop::GradStore, lr: f64) -> Result<()> {
        let found: Vec<Option<Tensor>> =
            self.slots.iter().map(|s| grads.get(s.var.as_tensor()).cloned()).collect();
        if let Some((slot, _)) = self.slots.iter().zip(&found).find(|(_, g)| g.is_none()) {
            candle_core::bail!("optimiser: no gradient for {} (the backward did not reach it)", slot.name);
        }
        self.step_with(found, lr)
    }

    /// One step with the gradient of each variable (in the order given at construction; `None`
    /// for a variable that got none, which is then left as it is). Nothing here waits for the
    /// device: with clipping, the global norm and the factor stay on the device, where the
    /// update kernels read them.
    pub fn step_with(&mut self, grads: Vec<Option<Tensor>>, lr: f64) -> Result<()> {
        self.steps += 1;
        let Some(device) = grads.iter().flatten().next().map(|g| g.device().clone()) else { return Ok(()) };
        let clip = match self.grad_clip {
            Some(max) => clip_factor(&grads, max, &device)?,
            None => Tensor::ones(1, DType::F64, &device)?,
        };
        if matches!(self.kind, Kind::Adamw) {
            return self.adamw_step(grads, &clip, lr);
        }
        for (slot, grad) in self.slots.iter_mut().zip(grads) {
            let Some(g) = grad else { continue };
            let p = slot.var.as_tensor();
            let wd = if slot.decay { self.weight_decay } else { 0.0 };
            let g = match self.grad_clip {
                Some(_) => g.broadcast_mul(&clip.to_device(g.device())?.to_dtype(g.dtype())?)?,
                None => g,
            };
            let g = if wd > 0.0 { (g + (p * wd)?)? } else { g };
            let buf = match &slot.state {
                Some(b) => ((b * self.momentum)? + &g)?,
                None => g,
            };
            slot.var.set(&(p - (&buf * lr)?)?)?;
            slot.state = Some(buf);
        }
        Ok(())
    }

    /// AdamW over every variable with a gradient, in one `ops::adamw_update` (a few launches on
    /// CUDA for all of them).
    fn adamw_step(&mut self, grads: Vec<Option<Tensor>>, clip: &Tensor, lr: f64) -> Result<()> {
        let mut held = Vec::new();
        for (slot, grad) in self.slots.iter_mut().zip(grads) {
            let Some(g) = grad else { continue };
            let p = slot.var.as_tensor();
            let state = match &slot.state {
                Some(state) => state.clone(),
                None => Tensor::zeros((2, p.elem_count()), p.dtype(), p.device())?,
            };
            slot.state = Some(state.clone());
            let wd = if slot.decay { self.weight_decay } else { 0.0 };
            held.push((p.clone(), g, state, wd));
        }
        let params: Vec<ops::AdamWParam> = held
            .iter()
            .map(|(param, grad, state, wd)| ops::AdamWParam { param, grad, state, weight_decay: *wd })
            .collect();
        let step = AdamWStep { lr, betas: self.betas, eps: self.eps, step: self.steps };
        ops::adamw_update(&params, clip, &step)
    }

    /// A copy of the optimiser's state in host memory as named tensors (for resuming a run): each
    /// variable's `<name>.first` (AdamW's first moment or SGD's momentum) and `<name>.second`
    /// (AdamW's second moment), shaped like the variable.
    pub fn state(&self) -> Result<Vec<(String, Tensor)>> {
        let mut out = Vec::new();
        for s in &self.slots {
            let Some(state) = &s.state else { continue };
            match self.kind {
                Kind::Adamw => {
                    let shape = s.var.shape();
                    out.push((format!("{}.first", s.name), host_copy(&state.get(0)?.reshape(shape)?)?));
                    out.push((format!("{}.second", s.name), host_copy(&state.get(1)?.reshape(shape)?)?));
                }
                Kind::Sgd => out.push((format!("{}.first", s.name), host_copy(state)?)),
            }
        }
        Ok(out)
    }

    /// Restores a state from [`Optimizer::state`] after `steps` steps.
    pub fn restore(&mut self, state: &std::collections::HashMap<String, Tensor>, steps: u64) -> Result<()> {
        for s in &mut self.slots {
            let (dtype, device) = (s.var.dtype(), s.var.device());
            let get = |part: &str| {
                let t = state.get(&format!("{}.{part}", s.name));
                t.map(|t| t.to_device(device)?.to_dtype(dtype)).transpose()
            };
            s.state = match (self.kind, get("first")?, get("second")?) {
                (Kind::Adamw, Some(m), Some(v)) => {
                    Some(Tensor::stack(&[m.flatten_all()?, v.flatten_all()?], 0)?)
                }
                (Kind::Sgd, Some(b), _) => Some(b),
                _ => None,
            };
        }
        self.steps = steps;
        Ok(())
    }
}

/// PyTorch's `clip_grad_norm_` factor, `min(1, max / (‖g‖ + 1e-6))` over all gradients (the
/// norm summed in f64), as a one-element f64 tensor on `device`.
fn clip_factor(grads: &[Option<Tensor>], max: f64, device: &candle_core::Device) -> Result<Tensor> {
    let sums = grads
        .iter()
        .flatten()
        .map(|g| g.to_dtype(DType::F64)?.sqr()?.sum_all()?.reshape(1)?.to_device(device))
        .collect::<Result<Vec<_>>>()?;
    let norm = Tensor::cat(&sums, 0)?.sum_all()?.sqrt()?;
    ((norm + 1e-6)?.recip()? * max)?.clamp(0.0, 1.0)?.reshape(1)
}

/// `t` copied into host memory: the moments are updated in place, so a saved state must not alias
/// them (on a device, the move to the host is the copy; no second copy on the device).
fn host_copy(t: &Tensor) -> Result<Tensor> {
    match t.device() {
        candle_core::Device::Cpu => t.copy(),
        _ => t.to_device(&candle_core::Device::Cpu),
    }
}

#[cfg(test)]
#[path = "optim_tests.rs"]
mod tests;
