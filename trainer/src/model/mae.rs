//! Conditional MAE: the ViT encoder with masking shots and the MAE decoder,
//! written to be checked line by line against facebookresearch/mae
//! `models_mae.py` and the paper's L(0, j, k; η1, η2, η3).

use anyhow::Result;
use cmae_engine::kernels::patch::{PatchOrder, norm_pix_in_place, patchify};
use cmae_engine::kernels::reduce::weighted_sums;
use cmae_engine::{Device, Tape, Tensor, Var};
use rand::Rng;

use super::encoder::{PosEmbed, Route, VitEncoder, encoder_specs, final_norm_specs};
use super::params::{Init, ParamSpec, ParamStore};
use super::posembed::sincos_2d;
use super::vit::{Layers, Taps, block_specs};
use crate::config::ModelConfig;
use crate::masking::GpuPlan;

/// The MAE parameter list with MAE's initialisation.
pub fn param_specs(c: &ModelConfig) -> Vec<ParamSpec> {
    let (dd, l) = (c.decoder_embed_dim, c.num_patches());
    let mut specs = encoder_specs(c, PosEmbed::Fixed);
    specs.extend(final_norm_specs(c));
    specs.extend([
        ParamSpec::new("decoder_embed.weight", &[dd, c.embed_dim], Init::Xavier),
        ParamSpec::new("decoder_embed.bias", &[dd], Init::Zeros),
        ParamSpec::new("mask_token", &[1, 1, dd], Init::Normal(0.02)),
        ParamSpec::new("decoder_pos_embed", &[1, 1 + l, dd], Init::Fixed(sincos_2d(dd, c.grid()))),
    ]);
    block_specs(&mut specs, "decoder_", c.decoder_depth, dd, c.decoder_mlp_hidden());
    specs.extend([
        ParamSpec::new("decoder_norm.weight", &[dd], Init::Ones),
        ParamSpec::new("decoder_norm.bias", &[dd], Init::Zeros),
        ParamSpec::new("decoder_pred.weight", &[c.patch_dim(), dd], Init::Xavier),
        ParamSpec::new("decoder_pred.bias", &[c.patch_dim()], Init::Zeros),
    ]);
    specs
}

/// What one forward pass produces.
pub struct MaeOutput {
    /// The training loss (union mean or weighted per-shot means).
    pub loss: Var,
    /// `[B, L, p·p·C]` reconstruction (MAE's `decoder_pred` layout).
    pub pred: Var,
    /// `[B·L]` per-patch MSE.
    pub patch_loss: Tensor,
    /// `[shots]` mean patch loss over each shot's dropped patches (NaN-free:
    /// a shot that drops nothing reads 0 here; callers report it as NaN).
    pub per_shot: Tensor,
    /// `[B, L, p·p·C]` the (normalised, with norm-pix) target.
    pub target: Tensor,
    /// Attention probabilities `[B·H, T, T]` of every encoder block, when asked for.
    pub attention: Vec<Tensor>,
}

/// The MAE: the shared [`VitEncoder`] (with the masking shots as token
/// gathers) and the decoder, on one parameter store.
pub struct Mae {
    pub cfg: ModelConfig,
    pub params: ParamStore,
}

impl Mae {
    pub fn new(dev: &Device, cfg: &ModelConfig, rng: &mut impl Rng) -> Result<Self> {
        cfg.validate()?;
        let params = ParamStore::init(dev, &param_specs(cfg), rng)?;
        Ok(Self::with_params(cfg, params))
    }

    pub fn with_params(cfg: &ModelConfig, params: ParamStore) -> Self {
        Self { cfg: cfg.clone(), params }
    }

    fn layers<'a>(&'a self, tape: &'a Tape) -> Layers<'a> {
        Layers { tape, params: &self.params }
    }

    /// The encoder on this model's parameters, ending in `norm`.
    pub fn encoder(&self) -> VitEncoder<'_> {
        VitEncoder { cfg: &self.cfg, params: &self.params, final_norm: true }
    }

    /// The masked encoder: every shot is a token gather before its block.
    /// Returns `[B, 1 + keep_final, D]`.
    pub fn encode_masked(&self, tape: &Tape, imgs: &Tensor, plan: &GpuPlan, taps: &mut Taps) -> Result<Var> {
        let route = Route { gathers: plan.gathers.iter().map(|(l, rows)| (*l, rows)).collect(), ..Route::default() };
        self.encoder().forward(tape, imgs, &route, taps)
    }

    /// The MAE decoder on the final kept tokens: un-shuffle with mask tokens,
    /// position embeddings, blocks, norm, prediction head; cls dropped.
    pub fn decode(&self, tape: &Tape, latent: &Var, plan: &GpuPlan) -> Result<Var> {
        let l = self.cfg.num_patches();
        let layers = self.layers(tape);
        let x = layers.linear(latent, "decoder_embed")?;
        let mask = layers.p("mask_token")?;
        let x = tape.unshuffle(&x, &plan.restore, &mask, 1 + l, &plan.mask_rows)?;
        let pos = tape.reshape(&layers.p("decoder_pos_embed")?, &[1 + l, self.cfg.decoder_embed_dim])?;
        let mut x = tape.add_broadcast(&x, &pos)?;
        for i in 0..self.cfg.decoder_depth {
            x = layers.block(
                &x,
                &format!("decoder_blocks.{i}"),
                self.cfg.decoder_num_heads,
                None,
                &mut Taps::default(),
            )?;
        }
        let x = layers.layer_norm(&x, "decoder_norm")?;
        let x = layers.linear(&x, "decoder_pred")?;
        Ok(tape.drop_first_token(&x)?)
    }

    /// MAE's reconstruction target: patchify (row, col, channel), optionally norm-pix.
    pub fn target(&self, dev: &Device, imgs: &Tensor) -> Result<Tensor> {
        let t = patchify(dev, imgs, self.cfg.patch_size, PatchOrder::ChannelLast)?;
        if !self.cfg.norm_pix_loss {
            return Ok(t);
        }
        let mut t = t.into_mut()?;
        norm_pix_in_place(dev, &mut t)?;
        Ok(t.freeze())
    }

    /// The whole pretraining pass.
    pub fn forward(&self, tape: &Tape, imgs: &Tensor, plan: &GpuPlan, capture_attention: bool) -> Result<MaeOutput> {
        let mut taps = Taps { attention: capture_attention.then(Vec::new), hidden: None };
        let latent = self.encode_masked(tape, imgs, plan, &mut taps)?;
        let attention = taps.attention.unwrap_or_default();
        let pred = self.decode(tape, &latent, plan)?;
        let target = self.target(tape.device(), imgs)?;
        let (loss, patch_loss) = tape.weighted_mse(&pred, &target, &plan.loss_weights)?;
        let per_shot = weighted_sums(tape.device(), &patch_loss, &plan.shot_weights)?;
        Ok(MaeOutput { loss, pred, patch_loss, per_shot, target, attention })
    }
}
