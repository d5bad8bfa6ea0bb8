//! Trainable parameter counts in closed form, from the recipe alone (no model is built): what
//! `runner plan --json` reports, and what the tests hold every built method to.

use losa_framework::adaptation::ParamCount;
use losa_framework::recipe::{AdapterConfig, Mixer, MixerNorm, VptMode};
use losa_framework::vit::VitConfig;

use crate::lora::Target;

/// The trainable parameters of `adapter` on a backbone of `vit` for `classes` classes.
pub fn count(adapter: &AdapterConfig, vit: &VitConfig, classes: usize) -> ParamCount {
    let s = vit.shape;
    let (d, m, depth) = (s.width, s.mlp_dim, s.depth);
    let head = d * classes + classes;
    let without_head = match adapter {
        AdapterConfig::LinearProbe(_) => 0,
        AdapterConfig::Full(_) => VitConfig { num_classes: None, pre_logits: None, ..*vit }.num_params(),
        AdapterConfig::Bitfit(_) => {
            // patch embedding and final norm biases, and per block: norm1, qkv, proj, norm2, fc1, fc2.
            d + depth * (d + 3 * d + d + d + m + d) + d
        }
        AdapterConfig::Lora(l) => {
            let per_block: usize = l
                .targets
                .iter()
                .map(|&t| {
                    let (fan_in, out) = Target::of(t).dims(d, m);
                    l.rank * (fan_in + out)
                })
                .sum();
            per_block * l.blocks.indices(depth).len()
        }
        AdapterConfig::Vpt(v) => {
            let sets = match v.mode {
                VptMode::Shallow => 1,
                VptMode::Deep => v.blocks.indices(depth).len(),
            };
            sets * v.prompts * d
        }
        AdapterConfig::Losa(l) => {
            let n = vit.num_tokens();
            let norm = if l.norm == MixerNorm::LayerNorm { 2 * d } else { 0 };
            let per_block: usize = l
                .mixers
                .iter()
                .map(|mixer| {
                    // Only the channel mixer's up-projection has a bias (see losa.rs).
                    match mixer {
                        Mixer::Channel => norm + 2 * d * l.channel_rank + l.channel_rank + d,
                        Mixer::Token => norm + 2 * n * l.token_rank + l.token_rank,
                    }
                })
                .sum();
            per_block * l.blocks.indices(depth).len()
        }
        AdapterConfig::Adaptformer(a) => {
            (2 * d * a.bottleneck + a.bottleneck + d) * a.blocks.indices(depth).len()
        }
    };
    ParamCount { without_head, head }
}
