//! `cmae check-fixture`: replays a `cmae-fixture-v1` file (a Conditional MAE
//! pass computed by PyTorch + timm) on the GPU and compares loss, per-shot
//! losses, prediction, every gradient and one AdamW step against it.
//!
//! With `--precision f16` the pass runs under mixed precision (loss scaled by
//! 2¹⁶, gradients unscaled) and each quantity's error against the reference
//! may be up to twice the error PyTorch's own f16 autocast makes on the same
//! pass (the fixture's `autocast.*` tensors, from `tools/make_fixtures.py
//! --autocast`), on top of the f32 bound. Both store the same things in f16
//! with the same rounding unit, in different places (PyTorch's CPU autocast
//! also rounds LayerNorm and softmax outputs; cmae keeps the residual stream
//! f32 and LayerNorm's input centred), so an equally careful implementation
//! lands within a small factor of PyTorch's error; a misplaced rounding, a
//! lost loss scale or a wrong formula misses it by orders of magnitude.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use cmae_engine::kernels::elementwise::full;
use cmae_engine::kernels::elementwise::zeros;
use cmae_engine::kernels::optim::{AdamWStep, adamw};
use cmae_engine::{Device, Gradients, Precision, Tape, Tensor, TensorMut};
use serde::Deserialize;

use crate::config::{ModelConfig, Shot, validate_shots};
use crate::masking::MaskPlan;
use crate::model::params::{Init, Kind};
use crate::model::{Mae, ParamStore, decays, param_specs};
use crate::safetensors_io::{self, HostTensor};

/// One comparison: passes when `error ≤ bound`.
#[derive(Debug, Clone)]
pub struct Check {
    pub name: String,
    pub error: f64,
    pub bound: f64,
}

impl Check {
    pub fn passed(&self) -> bool {
        self.error <= self.bound
    }
}

/// Why a fixture could not be checked at all (exit code 2).
#[derive(Debug)]
pub struct Unusable(pub anyhow::Error);

#[derive(Deserialize)]
struct FixtureConfig {
    img_size: usize,
    patch_size: usize,
    in_chans: usize,
    embed_dim: usize,
    depth: usize,
    num_heads: usize,
    mlp_ratio: f64,
    decoder_embed_dim: usize,
    decoder_depth: usize,
    decoder_num_heads: usize,
    norm_pix_loss: bool,
    shots: Vec<(usize, f64)>,
    loss_weights: Option<Vec<f64>>,
}

#[derive(Deserialize)]
struct AdamWMeta {
    lr: f64,
    beta1: f64,
    beta2: f64,
    eps: f64,
    weight_decay: f64,
}

struct Fixture {
    model: ModelConfig,
    shots: Vec<Shot>,
    adamw: Option<AdamWMeta>,
    tensors: HashMap<String, HostTensor>,
}

fn parse(path: &Path) -> Result<Fixture> {
    let file = safetensors_io::read(path)?;
    match file.metadata.get("format").map(String::as_str) {
        Some("cmae-fixture-v1") => {}
        other => bail!("{} is not a cmae-fixture-v1 file (metadata format = {other:?})", path.display()),
    }
    let cfg: FixtureConfig =
        serde_json::from_str(file.metadata.get("config").ok_or_else(|| anyhow!("metadata has no config"))?)
            .context("metadata config")?;
    let model = ModelConfig {
        img_size: cfg.img_size,
        patch_size: cfg.patch_size,
        in_chans: cfg.in_chans,
        embed_dim: cfg.embed_dim,
        depth: cfg.depth,
        num_heads: cfg.num_heads,
        mlp_ratio: cfg.mlp_ratio,
        decoder_embed_dim: cfg.decoder_embed_dim,
        decoder_depth: cfg.decoder_depth,
        decoder_num_heads: cfg.decoder_num_heads,
        norm_pix_loss: cfg.norm_pix_loss,
    };
    model.validate().context("unsupported model config")?;
    if let Some(w) = &cfg.loss_weights
        && w.len() != cfg.shots.len()
    {
        bail!("{} loss weights for {} shots", w.len(), cfg.shots.len());
    }
    let shots: Vec<Shot> = cfg
        .shots
        .iter()
        .enumerate()
        .map(|(i, &(layer, ratio))| Shot { layer, ratio, loss_weight: cfg.loss_weights.as_ref().map(|w| w[i]) })
        .collect();
    validate_shots(&shots, &model).context("unsupported shots")?;
    let adamw = match file.metadata.get("adamw") {
        Some(text) => Some(serde_json::from_str(text).context("metadata adamw")?),
        None => None,
    };
    Ok(Fixture { model, shots, adamw, tensors: file.tensors })
}

impl Fixture {
    fn tensor(&self, name: &str) -> Result<&HostTensor> {
        self.tensors.get(name).ok_or_else(|| anyhow!("the fixture has no tensor {name}"))
    }

    fn f32s(&self, name: &str) -> Result<(Vec<usize>, Vec<f32>)> {
        match self.tensor(name)? {
            HostTensor::F32(s, v) => Ok((s.clone(), v.clone())),
            _ => bail!("tensor {name} must be f32"),
        }
    }

    /// The reference for `name`: the f64 tensor `{f64_prefix}{name}` when present, else the f32 one.
    fn reference(&self, f32_name: &str, f64_name: &str) -> Result<Vec<f64>> {
        match self.tensors.get(f64_name) {
            Some(t) => t.to_f64(),
            None => self.tensor(f32_name)?.to_f64(),
        }
    }
}

/// A parameter's gradient against the reference. A gradient that never
/// reached the parameter, or one of the wrong size, is the implementation's
/// failure (a failed check, exit 1), not the file's.
fn gradient_check(name: &str, got: Option<&[f32]>, want: &[f64]) -> Check {
    let name = format!("grad.{name}");
    match got {
        Some(g) if g.len() == want.len() => {
            let (error, bound) = rel_l2(g, want);
            Check { name, error, bound }
        }
        Some(g) => Check { name: format!("{name} ({} values, reference {})", g.len(), want.len()), ..failed(name) },
        None => Check { name: format!("{name} (no gradient reached it)"), ..failed(name) },
    }
}

fn failed(name: String) -> Check {
    Check { name, error: f64::INFINITY, bound: 0.0 }
}

/// The absolute part of FIXTURES.md's tensor bound.
const ABSOLUTE_FLOOR: f64 = 1e-7;

fn rel_l2(got: &[f32], want: &[f64]) -> (f64, f64) {
    let diff: f64 = got.iter().zip(want).map(|(g, w)| (f64::from(*g) - w).powi(2)).sum::<f64>().sqrt();
    let norm: f64 = want.iter().map(|w| w * w).sum::<f64>().sqrt();
    (diff, 1e-3 * norm + ABSOLUTE_FLOOR)
}

/// The `.safetensors` files in `dir`, sorted (the committed suite is
/// `tests/fixtures`).
pub fn files_in(dir: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut files = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "safetensors") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// Runs every check of FIXTURES.md in f32. `Err(Unusable)` when the file can't be used.
pub fn check(dev: &Device, path: &Path) -> Result<Vec<Check>, Unusable> {
    check_in(dev, path, Precision::F32)
}

/// [`check`] with the pass in `precision` (f16: against the fixture's
/// autocast reference, see the module doc).
pub fn check_in(dev: &Device, path: &Path, precision: Precision) -> Result<Vec<Check>, Unusable> {
    let fx = parse(path).map_err(Unusable)?;
    if precision == Precision::F16 {
        crate::train::precision::check_adapter(dev, precision).map_err(Unusable)?;
        if !fx.tensors.contains_key("autocast.out.loss") {
            return Err(Unusable(anyhow!(
                "{} has no f16 autocast reference (autocast.* tensors); add it with tools/make_fixtures.py --autocast {}",
                path.display(),
                path.display()
            )));
        }
    }
    run_checks(dev, &fx, precision).map_err(|e| Unusable(e.context(format!("checking {}", path.display()))))
}

/// Bounds of the checks: FIXTURES.md's in f32; under mixed precision, twice
/// the error PyTorch's autocast makes on top.
struct Bounds<'a> {
    fx: &'a Fixture,
    precision: Precision,
}

impl Bounds<'_> {
    /// A loss: `1e-4·max(1, |ref|)`, plus `2·|autocast[k] − ref|` in f16.
    fn scalar(&self, reference: f64, autocast: &str, k: usize) -> Result<f64> {
        let f32_bound = 1e-4 * reference.abs().max(1.0);
        if self.precision == Precision::F32 {
            return Ok(f32_bound);
        }
        let theirs = self.fx.tensor(autocast)?.to_f64()?;
        Ok(f32_bound + 2.0 * (theirs[k] - reference).abs())
    }

    /// A tensor (by its L2 error): `1e-3·‖ref‖ + 1e-7` in f32; in f16
    /// `1e-3·‖ref‖ + 2·‖autocast − ref‖`, without the absolute floor (there
    /// for gradients that are 0, it would dwarf f16 errors of the small
    /// gradients these fixtures have).
    fn tensor(&self, reference: &[f64], autocast: &str) -> Result<f64> {
        let norm = reference.iter().map(|w| w * w).sum::<f64>().sqrt();
        if self.precision == Precision::F32 {
            return Ok(1e-3 * norm + ABSOLUTE_FLOOR);
        }
        let theirs = self.fx.tensor(autocast)?.to_f64()?;
        let distance = theirs.iter().zip(reference).map(|(x, y)| (x - y).powi(2)).sum::<f64>().sqrt();
        Ok(1e-3 * norm + 2.0 * distance)
    }
}

fn run_checks(dev: &Device, fx: &Fixture, precision: Precision) -> Result<Vec<Check>> {
    let bounds = Bounds { fx, precision };
    let mut checks = Vec::new();
    let specs = param_specs(&fx.model);
    let mut host = HashMap::new();
    for s in &specs {
        host.insert(s.name.clone(), fx.f32s(&s.name)?);
    }
    // Our own position-embedding tables against the fixture's.
    for s in &specs {
        let Init::Fixed(ours) = &s.init else { continue };
        let theirs = &host[&s.name].1;
        let err = ours.iter().zip(theirs).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        checks.push(Check { name: format!("table {}", s.name), error: f64::from(err), bound: 1e-6 });
    }
    let (params, _) = ParamStore::load(dev, &specs, host)?;
    let mae = Mae::with_params(&fx.model, params);

    let (img_shape, imgs) = fx.f32s("input.imgs")?;
    let batch = img_shape[0];
    let mut ids = Vec::new();
    for k in 0..fx.shots.len() {
        match fx.tensor(&format!("shot.{k}.ids_keep"))? {
            HostTensor::I64(_, v) => ids.push(
                v.iter()
                    .map(|&i| u32::try_from(i).map_err(|_| anyhow!("shot {k}: index {i} out of range")))
                    .collect::<Result<Vec<u32>>>()?,
            ),
            _ => bail!("shot.{k}.ids_keep must be i64"),
        }
    }
    let plan = MaskPlan::from_ids(&fx.shots, batch, fx.model.num_patches(), &ids)?;
    let gpu_plan = plan.upload(dev, &fx.shots)?;
    let imgs = Tensor::from_f32(dev, &imgs, &img_shape)?;

    // Mixed precision seeds the backward with GradScaler's initial scale,
    // as training does, and unscales the gradients on the host.
    let tape = Tape::with_precision(dev, true, precision)?;
    let seed = if precision == Precision::F16 { 65536.0 } else { 1.0 };
    let out = mae.forward(&tape, &imgs, &gpu_plan, false)?;
    let mut grads = Gradients::default();
    tape.backward_from(&out.loss, &full(dev, &[1], seed)?, &mut grads)?;

    let loss = f64::from(out.loss.value().wait_f32(dev)?[0]);
    let loss_ref = fx.reference("out.loss", "out.loss_f64")?[0];
    let bound = bounds.scalar(loss_ref, "autocast.out.loss", 0)?;
    checks.push(Check { name: "loss".into(), error: (loss - loss_ref).abs(), bound });
    let per_shot = out.per_shot.wait_f32(dev)?;
    let per_shot_ref = fx.tensor("out.loss_per_shot")?.to_f64()?;
    for (k, want) in per_shot_ref.iter().enumerate() {
        if want.is_nan() {
            continue;
        }
        let got = f64::from(per_shot[k]);
        let bound = bounds.scalar(*want, "autocast.out.loss_per_shot", k)?;
        checks.push(Check { name: format!("loss_per_shot.{k}"), error: (got - want).abs(), bound });
    }
    let pred = out.pred.value().wait_f32(dev)?;
    let pred_ref = fx.tensor("out.pred")?.to_f64()?;
    let (error, _) = rel_l2(&pred, &pred_ref);
    checks.push(Check { name: "pred".into(), error, bound: bounds.tensor(&pred_ref, "autocast.out.pred")? });

    for s in specs.iter().filter(|s| s.kind() == Kind::Trainable) {
        let want = fx.reference(&format!("grad.{}", s.name), &format!("grad_f64.{}", s.name))?;
        let got = grads
            .get(&s.name)
            .map(|g| g.wait_f32(dev).map(|v| v.iter().map(|x| x / seed).collect::<Vec<f32>>()))
            .transpose()?;
        let mut check = gradient_check(&s.name, got.as_deref(), &want);
        // (A bound of 0 marks a gradient that never arrived: it stays failed.)
        if check.bound > 0.0 {
            check.bound = bounds.tensor(&want, &format!("autocast.grad.{}", s.name))?;
        }
        checks.push(check);
    }

    if let Some(h) = &fx.adamw {
        for s in specs
            .iter()
            .filter(|s| s.kind() == Kind::Trainable && fx.tensors.contains_key(&format!("adamw.{}", s.name)))
        {
            let mut p = TensorMut::from_f32(dev, &fx.f32s(&s.name)?.1, &s.shape)?;
            let g = Tensor::from_f32(dev, &fx.f32s(&format!("grad.{}", s.name))?.1, &s.shape)?;
            let (mut m, mut v) = (zeros(dev, &s.shape)?, zeros(dev, &s.shape)?);
            let step = AdamWStep {
                lr: h.lr as f32,
                beta1: h.beta1 as f32,
                beta2: h.beta2 as f32,
                eps: h.eps as f32,
                weight_decay: if decays(&s.name, &s.shape) { h.weight_decay as f32 } else { 0.0 },
                step: 1,
                grad_scale: 1.0,
            };
            adamw(dev, &mut p, &g, &mut m, &mut v, step)?;
            let got = p.wait_f32(dev)?;
            let want = fx.tensor(&format!("adamw.{}", s.name))?.to_f64()?;
            let err = got.iter().zip(&want).map(|(a, b)| (f64::from(*a) - b).abs()).fold(0.0, f64::max);
            checks.push(Check { name: format!("adamw.{}", s.name), error: err, bound: 1e-5 });
        }
    }
    Ok(checks)
}

#[cfg(test)]
mod tests {
    use super::gradient_check;

    #[test]
    fn a_gradient_that_never_arrived_is_a_failed_check() {
        let want = [1.0, 2.0];
        assert!(gradient_check("w", Some(&[1.0, 2.0]), &want).passed());
        assert!(!gradient_check("w", Some(&[1.0, 2.5]), &want).passed());
        let missing = gradient_check("w", None, &want);
        assert!(!missing.passed() && missing.name.contains("no gradient reached"), "{missing:?}");
        assert!(!gradient_check("w", Some(&[1.0]), &want).passed(), "a gradient of the wrong size fails");
    }
}
