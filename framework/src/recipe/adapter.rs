//! Adaptation methods a recipe compares, one variant per `kind`.
//!
//! Every method trains a fresh classification head (its pooling is the method's own `pool`), may
//! carry a `label` for reports (so two settings of one kind can be told apart) and may override
//! single training settings in its own `train` table.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::overrides::TrainOverrides;
use super::sweep::SweepGrid;

/// An adaptation method, chosen by `kind`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AdapterConfig {
    /// Train only the classification head on the frozen backbone's pooled feature.
    LinearProbe(LinearProbeConfig),
    /// Train every backbone weight and the head.
    Full(FullConfig),
    /// Low-rank updates `W x + (alpha/rank)·B A x` on chosen linear layers of the frozen backbone.
    Lora(LoraConfig),
    /// Visual prompt tuning: learnable tokens prepended to the sequence (shallow) or to every
    /// block's input (deep).
    Vpt(VptConfig),
    /// Low-rank side adaptation (Mercea et al., CVPR 2024): a parallel side network of low-rank
    /// channel- and token-mixing MLPs refines the frozen backbone's per-block features; no gradient
    /// flows through the backbone.
    Losa(LosaConfig),
    /// Train only the backbone's biases (and the head).
    Bitfit(BitfitConfig),
    /// AdaptFormer: a bottleneck MLP in parallel with each block's MLP, scaled.
    Adaptformer(AdaptformerConfig),
}

/// How the head pools the token sequence into one feature vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Pool {
    /// The class token after the final norm.
    Token,
    /// The mean of the patch tokens (class and prompt tokens excluded) after the final norm.
    Mean,
}

/// Which backbone blocks a method touches: "all", or a list of 0-based block indices.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Blocks {
    /// The word "all".
    All(AllBlocks),
    /// 0-based block indices, each below the backbone's depth.
    List(Vec<usize>),
}

/// The literal "all".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum AllBlocks {
    /// Every block.
    All,
}

impl Default for Blocks {
    fn default() -> Self {
        Blocks::All(AllBlocks::All)
    }
}

impl Blocks {
    /// The selected block indices for a backbone of `depth` blocks.
    pub fn indices(&self, depth: usize) -> Vec<usize> {
        match self {
            Blocks::All(_) => (0..depth).collect(),
            Blocks::List(list) => list.clone(),
        }
    }
}

/// Settings common to every method, written out in each variant (serde cannot combine flattened
/// fields with `deny_unknown_fields`). The macro keeps their names, docs and defaults identical.
macro_rules! adapter_config {
    (
        $(#[$meta:meta])*
        $name:ident, pool = $pool:ident ($pool_name:literal), { $($(#[$fmeta:meta])* $field:ident : $ty:ty = $default:expr,)* }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
        #[serde(deny_unknown_fields, default)]
        pub struct $name {
            /// Name in reports. Default: the kind, e.g. "losa".
            #[serde(skip_serializing_if = "Option::is_none")]
            pub label: Option<String>,
            /// Pooling of the classification head: "token" (class token) or "mean" (patch tokens).
            #[doc = concat!("Default: \"", $pool_name, "\".")]
            pub pool: Pool,
            /// Overrides of single `[train]` settings for this method, e.g. `{ lr = 3e-4 }`.
            /// Default: none.
            #[serde(skip_serializing_if = "TrainOverrides::is_empty")]
            pub train: TrainOverrides,
            /// Keys swept for this method, over `[sweep.grid]`, e.g. `{ "train.lr" = [1e-3, 3e-3] }`.
            /// Default: none.
            #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
            pub sweep: SweepGrid,
            $($(#[$fmeta])* pub $field: $ty,)*
        }

        impl Default for $name {
            fn default() -> Self {
                Self {
                    label: None,
                    pool: Pool::$pool,
                    train: TrainOverrides::default(),
                    sweep: SweepGrid::default(),
                    $($field: $default,)*
                }
            }
        }
    };
}

adapter_config!(
    /// Linear probe: only the head is trained.
    LinearProbeConfig, pool = Token ("token"), {}
);

adapter_config!(
    /// Full finetuning: the whole backbone and the head are trained.
    FullConfig, pool = Token ("token"), {}
);

adapter_config!(
    /// LoRA on the frozen backbone's linear layers.
    LoraConfig, pool = Token ("token"), {
        /// Rank r of each update (1 ≤ r ≤ the layer's smaller dimension). Default: 8.
        rank: usize = 8,
        /// Scale numerator: the update is multiplied by alpha / rank. Default: 8.0.
        alpha: f64 = 8.0,
        /// Dropout on the LoRA branch's input during training, in [0, 1). Default: 0.0.
        dropout: f64 = 0.0,
        /// Layers adapted in each selected block: "qkv" (the fused projection whole), "q", "k",
        /// "v" (slices of it), "proj", "fc1", "fc2". Default: ["q", "v"].
        targets: Vec<LoraTarget> = vec![LoraTarget::Q, LoraTarget::V],
        /// Blocks adapted. Default: "all".
        blocks: Blocks = Blocks::default(),
    }
);

/// A linear layer of a ViT block that LoRA can adapt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LoraTarget {
    /// The fused query/key/value projection, as one matrix (out 3·d).
    Qkv,
    /// The query slice of the fused projection.
    Q,
    /// The key slice of the fused projection.
    K,
    /// The value slice of the fused projection.
    V,
    /// The attention output projection.
    Proj,
    /// The MLP's first layer.
    Fc1,
    /// The MLP's second layer.
    Fc2,
}

adapter_config!(
    /// Visual prompt tuning.
    VptConfig, pool = Token ("token"), {
        /// "shallow" (prompts after the patch embedding) or "deep" (fresh prompts at every
        /// selected block's input, dropped after it). Default: "deep".
        mode: VptMode = VptMode::Deep,
        /// Prompt tokens per block (deep) or in total (shallow); at least 1. Default: 10.
        prompts: usize = 10,
        /// Initial prompts: "xavier" (uniform in ±√(6 / (3·patch² + width)), as VPT's code) or
        /// "normal" (std 0.02). Default: "xavier".
        init: PromptInit = PromptInit::Xavier,
        /// Dropout on the prompt tokens during training, in [0, 1). Default: 0.0.
        dropout: f64 = 0.0,
        /// Blocks that receive prompts (deep mode only). Default: "all".
        blocks: Blocks = Blocks::default(),
    }
);

/// How VPT's prompts start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromptInit {
    /// Uniform in ±√(6 / (3·patch² + width)).
    Xavier,
    /// Normal with std 0.02, truncated at ±0.04.
    Normal,
}

/// Where VPT inserts prompts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum VptMode {
    /// Once, after the patch embedding.
    Shallow,
    /// At every selected block's input.
    Deep,
}

adapter_config!(
    /// LoSA's side network: `y_0 = b_L`, `y_i = y_{i-1} + g_i(b_i + y_{i-1})`, prediction from `y_L`.
    /// Each `g_i` is a low-rank mixer whose up-projections start at zero, so training starts as a
    /// linear probe on the final features.
    LosaConfig, pool = Mean ("mean"), {
        /// Rank of the channel-mixing MLP (d → rank → d); at most the backbone width. Default: 8.
        channel_rank: usize = 8,
        /// Rank of the token-mixing MLP (n → rank → n); at most the token count. Default: 8.
        token_rank: usize = 8,
        /// The mixers of each g_i, in order: ["channel", "token"] (default), ["token", "channel"],
        /// ["channel"] or ["token"] for the ablations. Default: ["channel", "token"].
        mixers: Vec<Mixer> = vec![Mixer::Channel, Mixer::Token],
        /// Normalisation at each mixer's input: "layer_norm" or "none". Default: "layer_norm".
        norm: MixerNorm = MixerNorm::LayerNorm,
        /// Activation between the down- and up-projection. Default: "gelu".
        activation: Activation = Activation::Gelu,
        /// Dropout inside the mixers during training, in [0, 1). Default: 0.0.
        dropout: f64 = 0.0,
        /// Backbone blocks whose outputs feed the side network. Default: "all".
        blocks: Blocks = Blocks::default(),
        /// Number format of the side network's activations: "backbone" (the frozen backbone's,
        /// so bf16 on CUDA by default, as PyTorch's bf16 autocast runs the reference, except that
        /// norms return bf16 here) or "f32". Parameters, their gradients and the optimiser state
        /// are f32 either way. Default: "backbone".
        side_dtype: SideDtype = SideDtype::Backbone,
    }
);

/// Number format of LoSA's side network's activations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SideDtype {
    /// The frozen backbone's dtype (`backbone.dtype`): half the memory traffic of f32 with a
    /// half-precision backbone.
    Backbone,
    /// The parameters' own dtype (f32 in every run), whatever the backbone computes in: the
    /// behaviour before this setting existed.
    F32,
}

/// One low-rank mixing MLP of LoSA.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Mixer {
    /// Mixes over the channel axis (d).
    Channel,
    /// Mixes over the token axis (n).
    Token,
}

/// Normalisation in front of each LoSA mixer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum MixerNorm {
    /// LayerNorm over the mixed axis' complement (channels), with learned scale and bias.
    LayerNorm,
    /// No normalisation.
    None,
}

/// Activation function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum Activation {
    /// GELU (exact, erf-based).
    Gelu,
    /// ReLU.
    Relu,
    /// SiLU (swish).
    Silu,
    /// No activation (a purely linear low-rank map).
    Identity,
}

adapter_config!(
    /// BitFit: only the backbone's biases are trained.
    BitfitConfig, pool = Token ("token"), {}
);

adapter_config!(
    /// AdaptFormer: `x + mlp(norm2(x)) + scale·up(relu(down(x)))` in each selected block.
    AdaptformerConfig, pool = Token ("token"), {
        /// Bottleneck width of each adapter; at most the backbone width. Default: 64.
        bottleneck: usize = 64,
        /// Scale of the adapter branch. Default: 0.1.
        scale: f64 = 0.1,
        /// Dropout inside the adapter during training, in [0, 1). Default: 0.0.
        dropout: f64 = 0.0,
        /// Blocks that get an adapter. Default: "all".
        blocks: Blocks = Blocks::default(),
    }
);

impl AdapterConfig {
    /// Every kind's name, as written in recipes.
    pub const KINDS: [&'static str; 7] =
        ["linear_probe", "full", "lora", "vpt", "losa", "bitfit", "adaptformer"];

    /// The kind's name, as written in recipes.
    pub fn kind(&self) -> &'static str {
        match self {
            AdapterConfig::LinearProbe(_) => "linear_probe",
            AdapterConfig::Full(_) => "full",
            AdapterConfig::Lora(_) => "lora",
            AdapterConfig::Vpt(_) => "vpt",
            AdapterConfig::Losa(_) => "losa",
            AdapterConfig::Bitfit(_) => "bitfit",
            AdapterConfig::Adaptformer(_) => "adaptformer",
        }
    }

    /// The name shown in reports: the label, else the kind.
    pub fn display_name(&self) -> String {
        self.label().map_or_else(|| self.kind().to_owned(), str::to_owned)
    }

    /// The report label, if set.
    pub fn label(&self) -> Option<&str> {
        self.common().0.as_deref()
    }

    /// The head's pooling.
    pub fn pool(&self) -> Pool {
        *self.common().1
    }

    /// This method's overrides of the recipe's `[train]` table.
    pub fn train_overrides(&self) -> &TrainOverrides {
        self.common().2
    }

    /// The same kind with every setting at its default (for canonical run configs).
    pub fn defaults(&self) -> AdapterConfig {
        match self {
            AdapterConfig::LinearProbe(_) => AdapterConfig::LinearProbe(Default::default()),
            AdapterConfig::Full(_) => AdapterConfig::Full(Default::default()),
            AdapterConfig::Lora(_) => AdapterConfig::Lora(Default::default()),
            AdapterConfig::Vpt(_) => AdapterConfig::Vpt(Default::default()),
            AdapterConfig::Losa(_) => AdapterConfig::Losa(Default::default()),
            AdapterConfig::Bitfit(_) => AdapterConfig::Bitfit(Default::default()),
            AdapterConfig::Adaptformer(_) => AdapterConfig::Adaptformer(Default::default()),
        }
    }

    /// This method's own swept keys.
    pub fn sweep(&self) -> &SweepGrid {
        self.common().3
    }

    fn common(&self) -> (&Option<String>, &Pool, &TrainOverrides, &SweepGrid) {
        macro_rules! common {
            ($c:expr) => {
                (&$c.label, &$c.pool, &$c.train, &$c.sweep)
            };
        }
        match self {
            AdapterConfig::LinearProbe(c) => common!(c),
            AdapterConfig::Full(c) => common!(c),
            AdapterConfig::Lora(c) => common!(c),
            AdapterConfig::Vpt(c) => common!(c),
            AdapterConfig::Losa(c) => common!(c),
            AdapterConfig::Bitfit(c) => common!(c),
            AdapterConfig::Adaptformer(c) => common!(c),
        }
    }
}
