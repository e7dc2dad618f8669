//! Dynamic loss scaling on the GPU (`shaders/scaler.wgsl`), with PyTorch
//! GradScaler's rules: start at 2¹⁶, halve and skip the step on any
//! non-finite gradient, double after 2000 good steps in a row. The state
//! lives in a device buffer, so checking gradients and updating the scale
//! never wait for the host; the host reads it like the loss, a step later.

use super::{expect_f32, grid, u32_of};
use crate::device::{Access, Binding, Device, KernelSpec, PendingRead};
use crate::error::{Result, shape_err};
use crate::shaders;
use crate::tensor::{DType, Span, Tensor, TensorMut};

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct Params {
    n: u32,
    growth_interval: u32,
    multiplier: f32,
    _pad: u32,
}

/// The scaler's state as the host reads it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct ScaleState {
    pub scale: f32,
    /// Good steps in a row since the scale last changed.
    pub good_steps: u32,
    /// Steps skipped for non-finite gradients, in all.
    pub skipped_steps: u32,
    /// A non-finite gradient was found since the last update.
    pub found_nonfinite: bool,
}

impl ScaleState {
    /// A fresh scaler's state: [`LossScaler::INITIAL_SCALE`], no steps counted.
    pub fn initial() -> Self {
        Self { scale: LossScaler::INITIAL_SCALE, good_steps: 0, skipped_steps: 0, found_nonfinite: false }
    }

    /// Decodes the state buffer's four words.
    pub fn from_words(words: &[u32]) -> Result<Self> {
        let [scale, good_steps, skipped_steps, found] = words else {
            return Err(shape_err("loss scaler", format!("{} state words, not 4", words.len())));
        };
        Ok(Self {
            scale: f32::from_bits(*scale),
            good_steps: *good_steps,
            skipped_steps: *skipped_steps,
            found_nonfinite: *found != 0,
        })
    }
}

/// A dynamic loss scale and its bookkeeping, on the device.
pub struct LossScaler {
    state: TensorMut,
    growth_interval: u32,
}

impl LossScaler {
    /// GradScaler's defaults.
    pub const INITIAL_SCALE: f32 = 65536.0;
    pub const GROWTH_INTERVAL: u32 = 2000;

    /// A scaler resuming from `state` (a fresh one: [`LossScaler::INITIAL_SCALE`], zero counts).
    pub fn new(dev: &Device, state: ScaleState, growth_interval: u32) -> Result<Self> {
        if growth_interval == 0 || !(state.scale.is_finite() && state.scale > 0.0) {
            return Err(shape_err("loss scaler", format!("scale {} every {growth_interval} steps", state.scale)));
        }
        let words = [state.scale.to_bits(), state.good_steps, state.skipped_steps, u32::from(state.found_nonfinite)];
        let state = Tensor::from_u32(dev, &words, &[4])?.into_mut()?;
        Ok(Self { state, growth_interval })
    }

    /// The backward pass's starting gradient, scale × `multiplier` (1 in
    /// training), as a one-element tensor that never leaves the device.
    pub fn seed(&self, dev: &Device, multiplier: f32) -> Result<Tensor> {
        let out = TensorMut::uninit(dev, &[1], DType::F32)?;
        let spec = KernelSpec::new(&shaders::SCALER, "seed", "loss_scale_seed", 1);
        let p = self.params(0, multiplier);
        dev.dispatch(spec, &p, &[self.state().bind(2), out.bind_mut(3)], [1, 1, 1])?;
        Ok(out.freeze())
    }

    /// Raises the flag if any element of `grads` (f32) is ±∞ or NaN.
    pub fn find_nonfinite(&mut self, dev: &Device, grads: &Tensor) -> Result<()> {
        expect_f32("find_nonfinite", "gradients", grads)?;
        self.check(dev, grads.numel(), grads.bind(1))
    }

    /// [`LossScaler::find_nonfinite`] over every member of one gradient pack
    /// ([`crate::Gradients::packed`]) in one dispatch. The pack's padding is
    /// zeros, so it raises nothing.
    pub fn find_nonfinite_in_pack(&mut self, dev: &Device, members: &[&Tensor]) -> Result<()> {
        let span = Span::of("find_nonfinite", members)?;
        self.check(dev, span.len(), span.bind(1, Access::Read))
    }

    fn check(&mut self, dev: &Device, n: usize, grads: Binding<'_>) -> Result<()> {
        let spec = KernelSpec::new(&shaders::SCALER, "find_nonfinite", "find_nonfinite", 256);
        let p = self.params(u32_of("find_nonfinite", n)?, 1.0);
        dev.dispatch(spec, &p, &[grads, self.state.bind_mut(2)], grid(n.div_ceil(4), spec.workgroup))
    }

    fn params(&self, n: u32, multiplier: f32) -> Params {
        Params { n, growth_interval: self.growth_interval, multiplier, _pad: 0 }
    }

    /// Ends a step: the scale halves (and a skipped step is counted) if the
    /// flag is up, or doubles after enough good steps; the flag comes down.
    pub fn update(&mut self, dev: &Device) -> Result<()> {
        let spec = KernelSpec::new(&shaders::SCALER, "update", "loss_scale_update", 1);
        dev.dispatch(spec, &self.params(0, 1.0), &[self.state.bind_mut(2)], [1, 1, 1])
    }

    /// The state words, once this stream's work has run ([`ScaleState::from_words`]).
    pub fn read(&self, dev: &Device) -> Result<PendingRead<u32>> {
        self.state.read_u32(dev)
    }

    /// The state buffer, for the optimizer that unscales and skips by it.
    pub(crate) fn state(&self) -> &Tensor {
        &self.state
    }
}
