//! AdamW over a model's named parameters, with its state kept on the GPU:
//! parameters, gradients, m and v are packs laid out alike, so a step is one
//! dispatch (`adamw_packed`) however many tensors the model has.

use crate::safetensors_io::{F32Map, NamedF32};

use anyhow::{Context, Result, anyhow, bail};
use cmae_engine::kernels::elementwise::{packed_zeros, zeros};
use cmae_engine::kernels::optim::{AdamWStep, LarsStep, adamw_packed, lars};
use cmae_engine::kernels::scaler::LossScaler;
use cmae_engine::{Device, Gradients, TensorMut};

use crate::model::ParamStore;

/// AdamW hyper-parameters (MAE pretraining: β = (0.9, 0.95), eps 1e-8, decay 0.05).
#[derive(Debug, Clone, Copy)]
pub struct AdamWConfig {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
    /// Which parameters get weight decay (by name and shape).
    pub decays: fn(&str, &[usize]) -> bool,
}

pub struct AdamW {
    pub cfg: AdamWConfig,
    /// Optimizer steps taken.
    pub step: u64,
    /// First and second moments, packed like the trainable parameters (spec order).
    m: Vec<TensorMut>,
    v: Vec<TensorMut>,
    names: Vec<String>,
}

impl AdamW {
    pub fn new(dev: &Device, params: &ParamStore, cfg: AdamWConfig) -> Result<Self> {
        let shapes: Vec<Vec<usize>> = params.trainable().map(|(_, t)| t.shape().to_vec()).collect();
        let m = packed_zeros(dev, &shapes)?;
        let v = packed_zeros(dev, &shapes)?;
        let names = params.trainable().map(|(n, _)| n.to_string()).collect();
        Ok(Self { cfg, step: 0, m, v, names })
    }

    /// Zeroed gradients packed like the parameters, for one optimizer step
    /// (backward accumulates into them in place).
    pub fn new_gradients(&self, dev: &Device, params: &ParamStore) -> Result<Gradients> {
        Ok(Gradients::packed(dev, &params.trainable_layout())?)
    }

    /// One update of every trainable parameter. `lr_scale(name)` scales the
    /// learning rate per tensor (layer-wise decay; 1 for pretraining). With
    /// a loss `scaler` (mixed precision) the gradients are checked and
    /// unscaled on the device, the step is skipped when one is not finite,
    /// and the scale is updated. The host's step count (bias correction)
    /// counts skipped steps too, unlike PyTorch's, whose skipped
    /// `optimizer.step()` never runs: they differ only after an overflow.
    pub fn update(
        &mut self,
        dev: &Device,
        params: &mut ParamStore,
        grads: &Gradients,
        (lr, grad_scale): (f64, f32),
        lr_scale: impl Fn(&str) -> f64,
        mut scaler: Option<&mut LossScaler>,
    ) -> Result<()> {
        self.step += 1;
        let mut steps = Vec::with_capacity(self.names.len());
        let mut grad_members = Vec::with_capacity(self.names.len());
        let mut members = Vec::with_capacity(self.names.len());
        for ((name, p), want) in params.trainable_mut().zip(&self.names) {
            if name != want {
                bail!("parameter {name} is not the one the optimizer state was made for ({want})");
            }
            grad_members.push(grads.get(name).ok_or_else(|| anyhow!("no gradient for parameter {name}"))?);
            steps.push(AdamWStep {
                lr: (lr * lr_scale(name)) as f32,
                beta1: self.cfg.beta1 as f32,
                beta2: self.cfg.beta2 as f32,
                eps: self.cfg.eps as f32,
                weight_decay: if (self.cfg.decays)(name, p.shape()) { self.cfg.weight_decay as f32 } else { 0.0 },
                step: self.step,
                grad_scale,
            });
            members.push(p);
        }
        let mut m: Vec<&mut TensorMut> = self.m.iter_mut().collect();
        let mut v: Vec<&mut TensorMut> = self.v.iter_mut().collect();
        let packed = "AdamW needs gradients from AdamW::new_gradients";
        if let Some(s) = scaler.as_deref_mut() {
            s.find_nonfinite_in_pack(dev, &grad_members).context(packed)?;
        }
        adamw_packed(dev, &mut members, &grad_members, &mut m, &mut v, &steps, scaler.as_deref()).context(packed)?;
        if let Some(s) = scaler {
            s.update(dev)?;
        }
        Ok(())
    }

    /// `(exp_avg.NAME | exp_avg_sq.NAME, shape, values)` for a checkpoint.
    pub fn state_to_host(&self, dev: &Device, params: &ParamStore) -> Result<Vec<NamedF32>> {
        let mut out = Vec::new();
        for ((name, p), (m, v)) in params.trainable().zip(self.m.iter().zip(&self.v)) {
            out.push((format!("exp_avg.{name}"), p.shape().to_vec(), m.wait_f32(dev)?));
            out.push((format!("exp_avg_sq.{name}"), p.shape().to_vec(), v.wait_f32(dev)?));
        }
        Ok(out)
    }

    /// Restores the state written by [`AdamW::state_to_host`].
    pub fn load_state(&mut self, dev: &Device, step: u64, mut host: F32Map) -> Result<()> {
        for (slot, prefix) in [(&mut self.m, "exp_avg"), (&mut self.v, "exp_avg_sq")] {
            for (name, t) in self.names.iter().zip(slot.iter_mut()) {
                restore(dev, &mut host, &format!("{prefix}.{name}"), t)?;
            }
        }
        self.step = step;
        Ok(())
    }
}

/// LARS (MAE's linear probe) over the parameters `which` selects.
pub struct Lars {
    momentum: f64,
    weight_decay: f64,
    trust: f64,
    mu: Vec<(String, TensorMut)>,
}

impl Lars {
    pub fn new(
        dev: &Device,
        params: &ParamStore,
        which: fn(&str) -> bool,
        momentum: f64,
        weight_decay: f64,
        trust: f64,
    ) -> Result<Self> {
        let mu = params
            .trainable()
            .filter(|(n, _)| which(n))
            .map(|(n, t)| Ok((n.to_string(), zeros(dev, t.shape())?)))
            .collect::<Result<Vec<_>>>()?;
        if mu.is_empty() {
            bail!("LARS has no parameters to train");
        }
        Ok(Self { momentum, weight_decay, trust, mu })
    }

    pub fn update(
        &mut self,
        dev: &Device,
        params: &mut ParamStore,
        grads: &Gradients,
        lr: f64,
        grad_scale: f32,
    ) -> Result<()> {
        for (name, mu) in &mut self.mu {
            let p = params.trainable_by_name(name)?;
            let g = grads.get(name).ok_or_else(|| anyhow!("no gradient for parameter {name}"))?.reshape(p.shape())?;
            // Biases and other 1-D parameters get neither decay nor the trust ratio.
            let scaled = p.shape().len() > 1;
            let step = LarsStep {
                lr: lr as f32,
                momentum: self.momentum as f32,
                weight_decay: self.weight_decay as f32,
                trust: self.trust as f32,
                scaled,
                grad_scale,
            };
            lars(dev, p, &g, mu, step)?;
        }
        Ok(())
    }

    /// `(momentum.NAME, shape, values)` for a checkpoint.
    pub fn state_to_host(&self, dev: &Device) -> Result<Vec<crate::safetensors_io::NamedF32>> {
        self.mu.iter().map(|(n, t)| Ok((format!("momentum.{n}"), t.shape().to_vec(), t.wait_f32(dev)?))).collect()
    }

    pub fn load_state(&mut self, dev: &Device, mut host: crate::safetensors_io::F32Map) -> Result<()> {
        for (name, t) in &mut self.mu {
            restore(dev, &mut host, &format!("momentum.{name}"), t)?;
        }
        Ok(())
    }
}

/// Overwrites `t` (in place: it may be a member of a pack) with the
/// checkpoint's `key`, which must have `t`'s shape.
fn restore(dev: &Device, host: &mut F32Map, key: &str, t: &mut TensorMut) -> Result<()> {
    let (shape, data) = host.remove(key).ok_or_else(|| anyhow!("optimizer state has no {key}"))?;
    if shape != t.shape() {
        bail!("optimizer state {key} has shape {shape:?}, the parameter {:?}", t.shape());
    }
    t.write(dev, bytemuck::cast_slice(&data))?;
    Ok(())
}
