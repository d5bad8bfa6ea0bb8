//! Parameter gradients handed over outside candle's graph.
//!
//! candle's backward gives every input of every graph node a zero-filled gradient and adds the
//! node's contribution into it. For an op over many small parameter tensors (a LoSA side block
//! reads eleven) that is, per parameter, a concatenation into the op's input, a zero-fill and an
//! addition for routing the gradient back out of it, and a copy into the packed gradient: about
//! four kernel launches per tensor, some fifty per side block, which on a GPU cost more host time
//! than the block's arithmetic takes on the device. An op that computes its parameters'
//! gradients in its own backward puts them here instead, and the method's
//! [`crate::adaptation::Adaptation::backward`] adds them to candle's gradient store.

use std::sync::{Arc, Mutex};

use candle_core::backprop::GradStore;
use candle_core::{DType, Device, Result, Tensor, Var};

/// Collects `(parameter, gradient)` pairs from backward passes until [`GradSink::deliver`].
/// Clones share one collection.
#[derive(Debug, Clone)]
pub struct GradSink {
    /// A one-element variable that an op takes as a graph input in place of its parameters, so
    /// that candle's backward reaches the op even where nothing else it reads needs a gradient
    /// (LoSA's first side block reads only the frozen backbone's outputs). It gets no gradient.
    handle: Var,
    pending: Arc<Mutex<Vec<(Tensor, Tensor)>>>,
}

impl GradSink {
    /// An empty sink for ops on `device`.
    pub fn new(device: &Device) -> Result<Self> {
        Ok(Self { handle: Var::zeros(1, DType::F32, device)?, pending: Arc::default() })
    }

    /// The graph input that stands for the parameters.
    pub(crate) fn handle(&self) -> &Tensor {
        self.handle.as_tensor()
    }

    /// The pending gradients; an error if a thread panicked while holding them.
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Vec<(Tensor, Tensor)>>> {
        self.pending.lock().map_err(|_| candle_core::Error::Msg("grad sink poisoned".into()))
    }

    /// Records `grad` as (a contribution to) the gradient of `param`.
    pub(crate) fn put(&self, param: &Tensor, grad: Tensor) -> Result<()> {
        self.lock()?.push((param.clone(), grad));
        Ok(())
    }

    /// Forgets what backward passes put here and nobody delivered.
    pub fn clear(&self) {
        if let Ok(mut pending) = self.pending.lock() {
            pending.clear();
        }
    }

    /// Moves the collected gradients into `grads`, adding to any gradient a parameter already has
    /// there (from other uses in the graph, or from several ops that read it).
    pub fn deliver(&self, grads: &mut GradStore) -> Result<()> {
        let pending = std::mem::take(&mut *self.lock()?);
        for (param, grad) in pending {
            let sum = match grads.remove(&param) {
                Some(earlier) => (earlier + grad)?,
                None => grad,
            };
            grads.insert(&param, sum);
        }
        Ok(())
    }

    /// `loss.backward()` with this sink's gradients delivered into the store; what an earlier,
    /// undelivered backward left here is dropped first.
    pub fn backward(&self, loss: &Tensor) -> Result<GradStore> {
        self.clear();
        let mut grads = loss.backward()?;
        self.deliver(&mut grads)?;
        Ok(grads)
    }
}
