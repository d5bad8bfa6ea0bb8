//! The architecture of a ViT and the tensors it is made of, in timm's key names.

use crate::recipe::{BackboneConfig, VitShape};

/// Everything that fixes a ViT's tensors and forward pass.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct VitConfig {
    /// Width, depth, heads, MLP width and patch size.
    pub shape: VitShape,
    /// Input image side in pixels (a multiple of the patch size).
    pub image_size: usize,
    /// LayerNorm epsilon.
    pub norm_eps: f64,
    /// Classes of the checkpoint's own head, if it has one.
    pub num_classes: Option<usize>,
    /// Width of the `pre_logits` layer (Linear + tanh before the head), if the checkpoint has one.
    pub pre_logits: Option<usize>,
}

impl VitConfig {
    /// The config a recipe's backbone describes, without a head.
    pub fn from_recipe(backbone: &BackboneConfig) -> Result<Self, String> {
        let shape = backbone.shape()?;
        let config = Self {
            shape,
            image_size: backbone.image_size,
            norm_eps: backbone.norm_eps,
            num_classes: None,
            pre_logits: None,
        };
        config.check()?;
        Ok(config)
    }

    /// Checks that the sizes fit together.
    pub fn check(&self) -> Result<(), String> {
        let s = &self.shape;
        if [s.width, s.depth, s.heads, s.mlp_dim, s.patch_size].contains(&0) {
            return Err(format!("every ViT dimension must be positive, found {s:?}"));
        }
        if !s.width.is_multiple_of(s.heads) {
            return Err(format!("width {} is not divisible by {} heads", s.width, s.heads));
        }
        if self.image_size == 0 || !self.image_size.is_multiple_of(s.patch_size) {
            return Err(format!(
                "image size {} is not a positive multiple of the patch size {}",
                self.image_size, s.patch_size
            ));
        }
        Ok(())
    }

    /// Patches along one side.
    pub fn grid(&self) -> usize {
        self.image_size / self.shape.patch_size
    }

    /// Number of patch tokens.
    pub fn num_patches(&self) -> usize {
        self.grid() * self.grid()
    }

    /// Tokens in the sequence: the class token and the patches.
    pub fn num_tokens(&self) -> usize {
        self.num_patches() + 1
    }

    /// Every tensor of the model with its shape, in timm's names and order.
    pub fn tensor_shapes(&self) -> Vec<(String, Vec<usize>)> {
        let VitShape { width: d, depth, mlp_dim: m, patch_size: p, .. } = self.shape;
        let mut out: Vec<(String, Vec<usize>)> = vec![
            ("cls_token".into(), vec![1, 1, d]),
            ("pos_embed".into(), vec![1, self.num_tokens(), d]),
            ("patch_embed.proj.weight".into(), vec![d, 3, p, p]),
            ("patch_embed.proj.bias".into(), vec![d]),
        ];
        for i in 0..depth {
            let b = |name: &str| format!("blocks.{i}.{name}");
            out.extend([
                (b("norm1.weight"), vec![d]),
                (b("norm1.bias"), vec![d]),
                (b("attn.qkv.weight"), vec![3 * d, d]),
                (b("attn.qkv.bias"), vec![3 * d]),
                (b("attn.proj.weight"), vec![d, d]),
                (b("attn.proj.bias"), vec![d]),
                (b("norm2.weight"), vec![d]),
                (b("norm2.bias"), vec![d]),
                (b("mlp.fc1.weight"), vec![m, d]),
                (b("mlp.fc1.bias"), vec![m]),
                (b("mlp.fc2.weight"), vec![d, m]),
                (b("mlp.fc2.bias"), vec![d]),
            ]);
        }
        out.extend([("norm.weight".into(), vec![d]), ("norm.bias".into(), vec![d])]);
        let mut head_in = d;
        if let Some(r) = self.pre_logits {
            out.extend([("pre_logits.fc.weight".into(), vec![r, d]), ("pre_logits.fc.bias".into(), vec![r])]);
            head_in = r;
        }
        if let Some(c) = self.num_classes {
            out.extend([("head.weight".into(), vec![c, head_in]), ("head.bias".into(), vec![c])]);
        }
        out
    }

    /// Number of parameters (the closed form of [`Self::tensor_shapes`]).
    pub fn num_params(&self) -> usize {
        self.tensor_shapes().iter().map(|(_, s)| s.iter().product::<usize>()).sum()
    }
}
