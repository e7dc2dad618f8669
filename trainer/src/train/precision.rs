//! Mixed precision in the training loop: the tape a micro-batch records on,
//! the seed of its backward pass, and the dynamic loss scale the optimizer
//! unscales by. An f32 run carries no scaler and scales nothing.

use anyhow::{Result, anyhow};
use cmae_engine::kernels::scaler::{LossScaler, ScaleState};
use cmae_engine::{Device, Gradients, PendingRead, Precision, Tape, Var};

use crate::model::ParamStore;
use crate::safetensors_io::{F32Map, NamedF32};

/// The checkpoint entry holding the scaler: `[scale, good steps, skipped steps]`.
const STATE_KEY: &str = "loss_scaler";

/// Refuses f16 on an adapter without `SHADER_F16` (the engine's check),
/// naming the feature, the adapter and the fix in the run's terms.
pub fn check_adapter(dev: &Device, precision: Precision) -> Result<()> {
    precision.check_adapter(dev).map_err(|e| {
        anyhow!(
            "train.precision={}: {e}; set train.precision=f32 or pick another adapter (CMAE_ADAPTER)",
            precision.name()
        )
    })
}

pub struct Amp {
    precision: Precision,
    scaler: Option<LossScaler>,
}

impl Amp {
    /// `precision` on `dev`, with a fresh loss scale when it is f16 and
    /// `scaled` (a run whose gradients flow through f16 products).
    pub fn new(dev: &Device, precision: Precision, scaled: bool) -> Result<Self> {
        check_adapter(dev, precision)?;
        let scaler = match precision {
            Precision::F16 if scaled => Some(LossScaler::new(dev, ScaleState::initial(), LossScaler::GROWTH_INTERVAL)?),
            _ => None,
        };
        Ok(Self { precision, scaler })
    }

    /// A recording tape in the run's precision; under f16 with the f16 copy
    /// of `params`' trainable weights made in one dispatch.
    pub fn tape(&self, dev: &Device, params: &ParamStore) -> Result<Tape> {
        let tape = Tape::with_precision(dev, true, self.precision)?;
        tape.cast_params(&params.trainable().collect::<Vec<_>>())?;
        Ok(tape)
    }

    /// Back-propagates `loss`, scaled by the loss scale when there is one.
    pub fn backward(&self, dev: &Device, tape: &Tape, loss: &Var, grads: &mut Gradients) -> Result<()> {
        match &self.scaler {
            Some(s) => tape.backward_from(loss, &s.seed(dev, 1.0)?, grads)?,
            None => tape.backward(loss, grads)?,
        }
        Ok(())
    }

    /// The scaler the optimizer unscales by, checks and updates.
    pub fn scaler_mut(&mut self) -> Option<&mut LossScaler> {
        self.scaler.as_mut()
    }

    /// The scaler's state after the work queued so far (read with the loss).
    pub fn read(&self, dev: &Device) -> Result<Option<PendingRead<u32>>> {
        self.scaler.as_ref().map(|s| s.read(dev)).transpose().map_err(Into::into)
    }

    /// The scaler's state for a checkpoint (nothing in an unscaled run).
    pub fn state_to_host(&self, dev: &Device) -> Result<Vec<NamedF32>> {
        let Some(s) = &self.scaler else { return Ok(Vec::new()) };
        let st = ScaleState::from_words(&s.read(dev)?.wait()?)?;
        let values = vec![st.scale, st.good_steps as f32, st.skipped_steps as f32];
        Ok(vec![(STATE_KEY.to_string(), vec![3], values)])
    }

    /// Restores the scaler from a checkpoint's optimizer state. A checkpoint
    /// without one (an f32 run resumed in f16) starts a fresh scale.
    pub fn load_state(&mut self, dev: &Device, state: &mut F32Map) -> Result<()> {
        let saved = state.remove(STATE_KEY);
        let (Some(s), Some((shape, v))) = (&mut self.scaler, saved) else { return Ok(()) };
        let [scale, good, skipped] = v[..] else {
            return Err(anyhow!("checkpoint entry {STATE_KEY} has shape {shape:?}, not [3]"));
        };
        let st = ScaleState { scale, good_steps: good as u32, skipped_steps: skipped as u32, found_nonfinite: false };
        *s = LossScaler::new(dev, st, LossScaler::GROWTH_INTERVAL)?;
        Ok(())
    }
}
