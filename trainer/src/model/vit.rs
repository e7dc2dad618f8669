//! ViT building blocks on named parameters, shared by the MAE and the
//! classifiers: timm's pre-norm `Block`, LayerNorm and Linear by prefix, and
//! the patch embedding (a conv with kernel = stride = patch, as a matmul).

use anyhow::{Result, bail};
use cmae_engine::kernels::patch::{PatchOrder, patchify};
use cmae_engine::{Tape, Tensor, Var};

use super::params::{Init, Kind, ParamSpec, ParamStore};
use crate::config::ModelConfig;

pub const LN_EPS: f32 = 1e-6;

/// The parameters of `depth` blocks named `{prefix}blocks.{i}.…`.
pub fn block_specs(specs: &mut Vec<ParamSpec>, prefix: &str, depth: usize, dim: usize, hidden: usize) {
    for i in 0..depth {
        let p = format!("{prefix}blocks.{i}");
        specs.extend([
            ParamSpec::new(format!("{p}.norm1.weight"), &[dim], Init::Ones),
            ParamSpec::new(format!("{p}.norm1.bias"), &[dim], Init::Zeros),
            ParamSpec::new(format!("{p}.attn.qkv.weight"), &[3 * dim, dim], Init::Xavier),
            ParamSpec::new(format!("{p}.attn.qkv.bias"), &[3 * dim], Init::Zeros),
            ParamSpec::new(format!("{p}.attn.proj.weight"), &[dim, dim], Init::Xavier),
            ParamSpec::new(format!("{p}.attn.proj.bias"), &[dim], Init::Zeros),
            ParamSpec::new(format!("{p}.norm2.weight"), &[dim], Init::Ones),
            ParamSpec::new(format!("{p}.norm2.bias"), &[dim], Init::Zeros),
            ParamSpec::new(format!("{p}.mlp.fc1.weight"), &[hidden, dim], Init::Xavier),
            ParamSpec::new(format!("{p}.mlp.fc1.bias"), &[hidden], Init::Zeros),
            ParamSpec::new(format!("{p}.mlp.fc2.weight"), &[dim, hidden], Init::Xavier),
            ParamSpec::new(format!("{p}.mlp.fc2.bias"), &[dim], Init::Zeros),
        ]);
    }
}

/// Per-sample residual-branch scales for stochastic depth: 0 (dropped) or
/// 1/keep, one `[B]` tensor for the attention branch and one for the MLP.
pub struct DropPath<'a> {
    pub attn: &'a Tensor,
    pub mlp: &'a Tensor,
}

/// What a forward pass may record besides its output.
#[derive(Default)]
pub struct Taps {
    /// Attention probabilities `[B·H, T, T]` of each block, when Some.
    pub attention: Option<Vec<Tensor>>,
    /// Each block's output tokens `[B, T, D]`, when Some.
    pub hidden: Option<Vec<Tensor>>,
}

/// Tape operations on one model's named parameters.
pub struct Layers<'a> {
    pub tape: &'a Tape,
    pub params: &'a ParamStore,
}

impl Layers<'_> {
    /// A parameter on the tape: a named leaf when it trains, a constant when
    /// it is a fixed table (MAE's sin-cos position embeddings).
    pub fn p(&self, name: &str) -> Result<Var> {
        let p = self.params.entry(name)?;
        Ok(match p.kind {
            Kind::Trainable => self.tape.param(name, &p.tensor),
            _ => self.tape.constant(p.tensor.as_tensor().clone()),
        })
    }

    pub fn layer_norm(&self, x: &Var, prefix: &str) -> Result<Var> {
        let (w, b) = (self.p(&format!("{prefix}.weight"))?, self.p(&format!("{prefix}.bias"))?);
        Ok(self.tape.layer_norm(x, &w, &b, LN_EPS)?)
    }

    /// LayerNorm in the tape's compute precision ([`Tape::layer_norm_compute`]).
    fn norm_for_products(&self, x: &Var, prefix: &str) -> Result<Var> {
        let (w, b) = (self.p(&format!("{prefix}.weight"))?, self.p(&format!("{prefix}.bias"))?);
        Ok(self.tape.layer_norm_compute(x, &w, &b, LN_EPS)?)
    }

    pub fn linear(&self, x: &Var, prefix: &str) -> Result<Var> {
        let (w, b) = (self.p(&format!("{prefix}.weight"))?, self.p(&format!("{prefix}.bias"))?);
        Ok(self.tape.linear(x, &w, Some(&b))?)
    }

    /// timm's pre-norm `Block`: x + attn(norm1(x)), then + mlp(norm2(x)),
    /// each branch optionally scaled per sample (drop path).
    pub fn block(
        &self,
        x: &Var,
        prefix: &str,
        heads: usize,
        drop: Option<&DropPath<'_>>,
        taps: &mut Taps,
    ) -> Result<Var> {
        let t = self.tape;
        // The norms' outputs feed only products: f16 under mixed precision.
        let h = self.norm_for_products(x, &format!("{prefix}.norm1"))?;
        // Only attention reads qkv: under mixed precision it is stored f16.
        let (w, b) = (self.p(&format!("{prefix}.attn.qkv.weight"))?, self.p(&format!("{prefix}.attn.qkv.bias"))?);
        let qkv = t.linear_compute(&h, &w, Some(&b))?;
        let a = match taps.attention.as_mut() {
            Some(out) => {
                let (a, p) = t.attention_with_probs(&qkv, heads)?;
                out.push(p);
                a
            }
            None => t.attention(&qkv, heads)?,
        };
        // Without drop path the residual additions ride in the projections'
        // epilogues; with it, each branch is scaled per sample first.
        let proj = format!("{prefix}.attn.proj");
        let x = match drop {
            None => t.linear_add(&a, &self.p(&format!("{proj}.weight"))?, &self.p(&format!("{proj}.bias"))?, x)?,
            Some(d) => t.add(x, &t.scale_rows(&self.linear(&a, &proj)?, d.attn)?)?,
        };
        let h = self.norm_for_products(&x, &format!("{prefix}.norm2"))?;
        let param = |layer: &str, kind: &str| self.p(&format!("{prefix}.mlp.{layer}.{kind}"));
        let (fc1, fc2) =
            ((param("fc1", "weight")?, param("fc1", "bias")?), (param("fc2", "weight")?, param("fc2", "bias")?));
        let out = match drop {
            None => t.mlp(&h, (&fc1.0, &fc1.1), (&fc2.0, &fc2.1), Some(&x))?,
            Some(d) => t.add(&x, &t.scale_rows(&t.mlp(&h, (&fc1.0, &fc1.1), (&fc2.0, &fc2.1), None)?, d.mlp)?)?,
        };
        if let Some(hidden) = taps.hidden.as_mut() {
            hidden.push(out.value().clone());
        }
        Ok(out)
    }

    /// Patch embedding without position embeddings: `[B, C, H, W]` → `[B, L, D]`.
    pub fn patch_embed(&self, cfg: &ModelConfig, imgs: &Tensor) -> Result<Var> {
        match imgs.shape() {
            [_, ch, h, w] if *ch == cfg.in_chans && *h == cfg.img_size && *w == cfg.img_size => {}
            s => bail!("images {s:?} do not fit the model ([B, {}, {}, {}])", cfg.in_chans, cfg.img_size, cfg.img_size),
        }
        let t = self.tape;
        let patches = t.constant(patchify(t.device(), imgs, cfg.patch_size, PatchOrder::ChannelFirst)?);
        // The conv weight [D, C, p, p] is a linear weight [D, C·p·p] in this patch order.
        let w = t.reshape(&self.p("patch_embed.proj.weight")?, &[cfg.embed_dim, cfg.patch_dim()])?;
        let b = self.p("patch_embed.proj.bias")?;
        Ok(t.linear(&patches, &w, Some(&b))?)
    }
}
