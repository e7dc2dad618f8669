//! Conditional MAE: a ViT encoder with masking shots and the MAE decoder,
//! written to be checked line by line against facebookresearch/mae
//! `models_mae.py` and the paper's L(0, j, k; η1, η2, η3).

use anyhow::Result;
use cmae_engine::kernels::patch::{PatchOrder, norm_pix_in_place, patchify};
use cmae_engine::kernels::reduce::weighted_sums;
use cmae_engine::{Device, Tape, Tensor, Var};
use rand::Rng;

use super::params::{Init, ParamSpec, ParamStore};
use super::posembed::sincos_2d;
use super::vit::{Layers, Taps, block_specs};
use crate::config::ModelConfig;
use crate::masking::GpuPlan;

/// The MAE parameter list with MAE's initialisation.
pub fn param_specs(c: &ModelConfig) -> Vec<ParamSpec> {
    let (d, dd, l, p) = (c.embed_dim, c.decoder_embed_dim, c.num_patches(), c.patch_size);
    let mut specs = vec![
        ParamSpec::new("cls_token", &[1, 1, d], Init::Normal(0.02)),
        ParamSpec::new("pos_embed", &[1, 1 + l, d], Init::Fixed(sincos_2d(d, c.grid()))),
        ParamSpec::new("patch_embed.proj.weight", &[d, c.in_chans, p, p], Init::Xavier),
        ParamSpec::new("patch_embed.proj.bias", &[d], Init::Zeros),
    ];
    block_specs(&mut specs, "", c.depth, d, c.mlp_hidden());
    specs.extend([
        ParamSpec::new("norm.weight", &[d], Init::Ones),
        ParamSpec::new("norm.bias", &[d], Init::Zeros),
        ParamSpec::new("decoder_embed.weight", &[dd, d], Init::Xavier),
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

pub struct Mae {
    pub cfg: ModelConfig,
    pub params: ParamStore,
    /// `[L, D]` position embeddings of the patches, `[D]` of cls, `[1+L, Dd]` of the decoder.
    pos_patches: Tensor,
    pos_cls: Tensor,
    dec_pos: Tensor,
}

impl Mae {
    pub fn new(dev: &Device, cfg: &ModelConfig, rng: &mut impl Rng) -> Result<Self> {
        cfg.validate()?;
        let params = ParamStore::init(dev, &param_specs(cfg), rng)?;
        Self::with_params(dev, cfg, params)
    }

    pub fn with_params(dev: &Device, cfg: &ModelConfig, params: ParamStore) -> Result<Self> {
        let (d, dd, l) = (cfg.embed_dim, cfg.decoder_embed_dim, cfg.num_patches());
        let enc = sincos_2d(d, cfg.grid());
        Ok(Self {
            pos_cls: Tensor::from_f32(dev, &enc[..d], &[d])?,
            pos_patches: Tensor::from_f32(dev, &enc[d..], &[l, d])?,
            dec_pos: Tensor::from_f32(dev, &sincos_2d(dd, cfg.grid()), &[1 + l, dd])?,
            cfg: cfg.clone(),
            params,
        })
    }

    fn layers<'a>(&'a self, tape: &'a Tape) -> Layers<'a> {
        Layers { tape, params: &self.params }
    }

    /// Patch embedding + fixed position embeddings: `[B, C, H, W]` → `[B, L, D]`.
    pub fn embed_patches(&self, tape: &Tape, imgs: &Tensor) -> Result<Var> {
        let x = self.layers(tape).patch_embed(&self.cfg, imgs)?;
        Ok(tape.add_broadcast(&x, &tape.constant(self.pos_patches.clone()))?)
    }

    /// `cls_token + pos_embed[0]`, prepended to every sample.
    pub fn prepend_cls(&self, tape: &Tape, x: &Var) -> Result<Var> {
        let cls = tape.add_broadcast(&self.layers(tape).p("cls_token")?, &tape.constant(self.pos_cls.clone()))?;
        Ok(tape.prepend_token(x, &cls)?)
    }

    /// The masked encoder: input masking, blocks with the later shots' gathers
    /// in between, final norm. Returns `[B, 1 + keep_final, D]`.
    pub fn encode_masked(&self, tape: &Tape, imgs: &Tensor, plan: &GpuPlan, taps: &mut Taps) -> Result<Var> {
        let x = self.embed_patches(tape, imgs)?;
        let x = tape.gather_rows(&x, &plan.input_keep)?;
        let mut x = self.prepend_cls(tape, &x)?;
        let mut later = plan.later.iter().peekable();
        for i in 0..self.cfg.depth {
            if let Some((_, rows)) = later.next_if(|(layer, _)| *layer == i) {
                x = tape.gather_rows(&x, rows)?;
            }
            x = self.layers(tape).block(&x, &format!("blocks.{i}"), self.cfg.num_heads, None, taps)?;
        }
        if let Some((_, rows)) = later.next_if(|(layer, _)| *layer == self.cfg.depth) {
            x = tape.gather_rows(&x, rows)?;
        }
        self.layers(tape).layer_norm(&x, "norm")
    }

    /// The MAE decoder on the final kept tokens: un-shuffle with mask tokens,
    /// position embeddings, blocks, norm, prediction head; cls dropped.
    pub fn decode(&self, tape: &Tape, latent: &Var, plan: &GpuPlan) -> Result<Var> {
        let l = self.cfg.num_patches();
        let layers = self.layers(tape);
        let x = layers.linear(latent, "decoder_embed")?;
        let mask = layers.p("mask_token")?;
        let x = tape.unshuffle(&x, &plan.restore, &mask, 1 + l, &plan.mask_rows)?;
        let mut x = tape.add_broadcast(&x, &tape.constant(self.dec_pos.clone()))?;
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
        if self.cfg.norm_pix_loss {
            norm_pix_in_place(dev, &t)?;
        }
        Ok(t)
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
