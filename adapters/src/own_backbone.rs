//! A copy of the backbone some of whose tensors are trained (full finetuning, BitFit).

use std::collections::HashMap;

use candle_core::{DType, Result, Tensor, Var};
use losa_framework::vit::{Vit, VitConfig};

/// Rebuilds `vit` without its head, in `dtype`, with the tensors `trained` selects as variables.
pub fn with_trained(
    vit: &Vit,
    dtype: DType,
    trained: impl Fn(&str) -> bool,
) -> Result<(Vit, Vec<(String, Var)>)> {
    let config = VitConfig { num_classes: None, pre_logits: None, ..vit.config };
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    let mut vars = Vec::new();
    let source: HashMap<String, Tensor> = vit.tensors().into_iter().collect();
    for (name, _) in config.tensor_shapes() {
        let t = source
            .get(&name)
            .cloned()
            .ok_or_else(|| candle_core::Error::Msg(format!("backbone lacks {name}")))?
            .to_dtype(dtype)?;
        if trained(&name) {
            let var = Var::from_tensor(&t)?;
            tensors.insert(name.clone(), var.as_tensor().clone());
            vars.push((name, var));
        } else {
            tensors.insert(name, t);
        }
    }
    Ok((Vit::new(config, &tensors)?, vars))
}
