//! The one ViT encoder of cmae, shared by the MAE, the classifiers, the
//! analyses and the viewer. Read it beside timm's
//! `VisionTransformer.forward_features` and MAE's `models_vit.py`:
//!
//! ```text
//! x = patch_embed(imgs)                       # conv p×p stride p, as a matmul
//! x = cat(cls_token, x) + pos_embed           # timm's _pos_embed
//! for i in 0..depth:
//!     x = gather(x, rows) if a gather is at i # masking shot / removed patches
//!     x = blocks[i](x)                        # pre-norm attention + MLP
//! x = gather(x, rows) if a gather is at depth
//! x = norm(x)                                 # unless global-pool fine-tuning
//! ```
//!
//! MAE's `forward_encoder` adds the position embeddings to the patches, masks,
//! then adds `pos_embed[0]` to cls. Adding before the gather is the same
//! arithmetic on every kept token, so both orders give identical values; the
//! timm order lets input masking be the layer-0 case of a later shot.

use anyhow::{Context, Result, bail};
use cmae_engine::{Device, Tape, Tensor, Var};

use super::params::{Init, ParamSpec, ParamStore};
use super::posembed::sincos_2d;
use super::vit::{DropPath, Layers, Taps, block_specs};
use crate::config::ModelConfig;
use crate::safetensors_io::F32Map;
use crate::train::checkpoint::CheckpointFile;

/// Whether the encoder's position embeddings train (timm fine-tuning) or stay
/// the fixed sin-cos table (MAE pretraining, linear probing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PosEmbed {
    Fixed,
    Trained,
}

/// The encoder's parameters (timm/MAE names) without the final norm, which
/// its users name themselves (`norm` for MAE and probing, none for global pooling).
pub fn encoder_specs(c: &ModelConfig, pos: PosEmbed) -> Vec<ParamSpec> {
    let (d, l, p) = (c.embed_dim, c.num_patches(), c.patch_size);
    let table = sincos_2d(d, c.grid());
    let mut specs = vec![
        ParamSpec::new("cls_token", &[1, 1, d], Init::Normal(0.02)),
        match pos {
            PosEmbed::Fixed => ParamSpec::new("pos_embed", &[1, 1 + l, d], Init::Fixed(table)),
            PosEmbed::Trained => ParamSpec::new("pos_embed", &[1, 1 + l, d], Init::Table(table)),
        },
        ParamSpec::new("patch_embed.proj.weight", &[d, c.in_chans, p, p], Init::Xavier),
        ParamSpec::new("patch_embed.proj.bias", &[d], Init::Zeros),
    ];
    block_specs(&mut specs, "", c.depth, d, c.mlp_hidden());
    specs
}

/// The final norm's parameters (`norm.weight`, `norm.bias`).
pub fn final_norm_specs(c: &ModelConfig) -> [ParamSpec; 2] {
    [
        ParamSpec::new("norm.weight", &[c.embed_dim], Init::Ones),
        ParamSpec::new("norm.bias", &[c.embed_dim], Init::Zeros),
    ]
}

/// How tokens move through the encoder besides the blocks.
#[derive(Default)]
pub struct Route<'a> {
    /// `[B, L]` patch order applied before the position embeddings: the
    /// same as shuffling the image's patches (robustness).
    pub shuffle: Option<&'a Tensor>,
    /// `(layer, [B, 1 + keep] rows)`, cls at row 0, in increasing layer
    /// order: the rows kept just before block `layer` (`layer == depth`:
    /// after the last block). Masking shots; removed patches (robustness).
    pub gathers: Vec<(usize, &'a Tensor)>,
    /// Per-block stochastic depth; empty for none.
    pub drop_path: &'a [DropPath<'a>],
}

/// A view of the encoder's parameters in a model's store.
#[derive(Clone, Copy)]
pub struct VitEncoder<'a> {
    pub cfg: &'a ModelConfig,
    pub params: &'a ParamStore,
    /// Whether `norm` ends the encoder (MAE, probing) or not (global-pool fine-tuning).
    pub final_norm: bool,
}

impl VitEncoder<'_> {
    /// Encoder tokens `[B, 1 + kept, D]` for images `[B, C, H, W]`, recording
    /// what `taps` asks for.
    pub fn forward(&self, tape: &Tape, imgs: &Tensor, route: &Route<'_>, taps: &mut Taps) -> Result<Var> {
        let (c, layers) = (self.cfg, Layers { tape, params: self.params });
        let mut x = layers.patch_embed(c, imgs)?;
        if let Some(order) = route.shuffle {
            x = tape.gather_rows(&x, order)?;
        }
        let x = tape.prepend_token(&x, &layers.p("cls_token")?)?;
        let pos = tape.reshape(&layers.p("pos_embed")?, &[1 + c.num_patches(), c.embed_dim])?;
        let mut x = tape.add_broadcast(&x, &pos)?;
        if route.gathers.windows(2).any(|w| w[0].0 >= w[1].0) || route.gathers.iter().any(|(l, _)| *l > c.depth) {
            let layers: Vec<usize> = route.gathers.iter().map(|(l, _)| *l).collect();
            bail!("token gathers at layers {layers:?} must increase and be ≤ depth {}", c.depth);
        }
        let mut gathers = route.gathers.iter().peekable();
        for i in 0..c.depth {
            if let Some((_, rows)) = gathers.next_if(|(layer, _)| *layer == i) {
                x = tape.gather_rows(&x, rows)?;
            }
            x = layers.block(&x, &format!("blocks.{i}"), c.num_heads, route.drop_path.get(i), taps)?;
        }
        if let Some((_, rows)) = gathers.next() {
            x = tape.gather_rows(&x, rows)?;
        }
        if self.final_norm { layers.layer_norm(&x, "norm") } else { Ok(x) }
    }
}

/// The encoder part of any checkpoint (pretrained MAE, probe or fine-tuned)
/// with its own parameters: what the analyses and the viewer run when no
/// decoder or head is needed. Decoder and head tensors are left on the host.
pub struct LoadedEncoder {
    pub cfg: ModelConfig,
    pub params: ParamStore,
    final_norm: bool,
}

impl LoadedEncoder {
    pub fn from_tensors(dev: &Device, cfg: &ModelConfig, tensors: F32Map) -> Result<Self> {
        cfg.validate()?;
        let mut specs = encoder_specs(cfg, PosEmbed::Fixed);
        // A global-pool fine-tuned model has no final norm (it ends in fc_norm).
        let final_norm = tensors.contains_key("norm.weight");
        if final_norm {
            specs.extend(final_norm_specs(cfg));
        }
        let (params, _decoder_or_head) = ParamStore::load(dev, &specs, tensors)?;
        Ok(Self { cfg: cfg.clone(), params, final_norm })
    }

    /// The encoder of a checkpoint already read, in the shape the file holds.
    pub fn from_file(dev: &Device, file: CheckpointFile) -> Result<Self> {
        let path = file.path.display().to_string();
        let cfg = file.model_config()?;
        Self::from_tensors(dev, &cfg, file.tensors).with_context(|| format!("loading the encoder of {path}"))
    }

    pub fn encoder(&self) -> VitEncoder<'_> {
        VitEncoder { cfg: &self.cfg, params: &self.params, final_norm: self.final_norm }
    }
}
