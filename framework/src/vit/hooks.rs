//! Where adaptation methods reach into the backbone's forward pass.

use candle_core::{Result, Tensor};

/// A linear layer of a block that a method may add a delta to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum LinearSite {
    /// The fused query/key/value projection (output 3·d, rows q;k;v).
    Qkv,
    /// The attention output projection.
    Proj,
    /// The MLP's first layer.
    Fc1,
    /// The MLP's second layer.
    Fc2,
}

/// Callbacks a method uses to change the backbone's computation. Every default leaves it as is,
/// so a method implements only the hooks it needs.
pub trait Hooks {
    /// Tokens entering block `i` ([batch, tokens, width]); VPT inserts its prompts here.
    fn before_block(&self, _block: usize, tokens: Tensor) -> Result<Tensor> {
        Ok(tokens)
    }

    /// Tokens leaving block `i`; deep VPT drops that block's prompts here.
    fn after_block(&self, _block: usize, tokens: Tensor) -> Result<Tensor> {
        Ok(tokens)
    }

    /// A term added to the output of linear layer `site` of block `i`, given the layer's input
    /// (LoRA's `scale·B A x`).
    fn linear_delta(&self, _block: usize, _site: LinearSite, _input: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }

    /// A term added beside block `i`'s MLP branch, given the residual stream entering that branch
    /// (AdaptFormer's parallel adapter).
    fn mlp_parallel(&self, _block: usize, _residual: &Tensor) -> Result<Option<Tensor>> {
        Ok(None)
    }
}

/// No changes: the plain backbone.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoHooks;

impl Hooks for NoHooks {}
