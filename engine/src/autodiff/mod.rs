//! Tape-based reverse-mode autodiff.
//!
//! Every differentiable op appends a node holding a closure that captures what
//! its backward needs (input tensors, saved statistics). `backward(loss)` walks
//! the tape in reverse, hands each node the gradient of its output, adds the
//! returned input gradients into place, and drops the node, so intermediates
//! go back to the buffer pool as soon as their gradient has been used.
//! Parameters are named leaves; their gradients land in a [`Gradients`] map
//! that keeps accumulating across backward calls (gradient accumulation).
//! With grad disabled (evaluation, the viewer) nothing is recorded at all.
//!
//! Under mixed precision ([`Precision::F16`]) the products read f16
//! operands: each weight's f16 copy is made once per tape, an activation is
//! cast where a product reads it, and what the backward pass keeps of them
//! is the f16 copy. Values and gradients keep one rule: a gradient is stored
//! like the value it belongs to, so the residual stream, norms, losses and
//! parameter gradients stay f32, while the qkv projection, attention and the
//! MLP's hidden activation (and their gradients) are f16.
//!
//! Backward hands each op a *sink* for every input whose gradient already has
//! a place: the input's member of [`Gradients::packed`] (parameters' gradients
//! in one pack laid out like the parameters, for a one-dispatch optimizer
//! step), or the gradient summed so far for an activation used twice (the
//! residual stream) when nothing else holds it. Ops whose kernels can
//! accumulate in place (linear layers' dX and dW matmuls and bias sums,
//! LayerNorm's dx, dγ and dβ) add straight into the sink, so no separate
//! addition is dispatched.

mod ops;

use std::cell::RefCell;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::device::{Access, Binding, Device, PendingRead, Storage};
use crate::error::{Error, Result};
use crate::kernels::{cast, elementwise};
use crate::tensor::{DType, Tensor, TensorMut};

/// How a tape stores what its products read and what it keeps for the
/// backward pass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    /// Everything f32.
    #[default]
    F32,
    /// Mixed precision: f16 operands and saved activations, f32 accumulation,
    /// statistics, residual stream and gradients of parameters (needs `SHADER_F16`).
    F16,
}

impl Precision {
    pub fn name(self) -> &'static str {
        match self {
            Precision::F32 => "f32",
            Precision::F16 => "f16",
        }
    }

    /// Whether `dev` can run this precision: f16 needs `SHADER_F16` (else
    /// an error naming the feature and the adapter).
    pub fn check_adapter(self, dev: &Device) -> Result<()> {
        if self == Precision::F16 && !dev.kernel_families().shader_f16 {
            return Err(Error::NoAdapter(format!(
                "f16 mixed precision needs the SHADER_F16 feature, which {} does not have",
                dev.info().name
            )));
        }
        Ok(())
    }
}

impl std::str::FromStr for Precision {
    type Err = String;

    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "f16" => Ok(Precision::F16),
            other => Err(format!("{other:?} is not a precision: use f32 or f16")),
        }
    }
}

/// How the backward pass gets back a value it did not keep.
#[derive(Clone)]
pub(crate) enum Recompute {
    /// LayerNorm of an f32 input, run again on it (the same result, bit for bit).
    Norm { x: Tensor, gamma: Tensor, beta: Tensor, eps: f32 },
    /// Mixed precision's f16 LayerNorm output, from its kept centred input.
    Centered { centered: Tensor, gamma: Tensor, beta: Tensor, stats: Tensor },
}

/// What an op's backward keeps of an input: the tensor, or how to remake it.
pub(crate) enum Kept {
    Tensor(Tensor),
    Recompute(Recompute),
}

impl Kept {
    pub(crate) fn get(&self, dev: &Device) -> Result<Tensor> {
        match self {
            Kept::Tensor(t) => Ok(t.clone()),
            Kept::Recompute(Recompute::Norm { x, gamma, beta, eps }) => {
                Ok(crate::kernels::layernorm::layer_norm(dev, x, gamma, beta, *eps)?.0)
            }
            Kept::Recompute(Recompute::Centered { centered, gamma, beta, stats }) => {
                crate::kernels::layernorm::layer_norm_from_centered(dev, centered, gamma, beta, stats)
            }
        }
    }
}

/// A tensor on the tape. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Var {
    id: usize,
    value: Tensor,
    requires_grad: bool,
}

impl Var {
    pub fn value(&self) -> &Tensor {
        &self.value
    }

    pub fn shape(&self) -> &[usize] {
        self.value.shape()
    }

    pub fn requires_grad(&self) -> bool {
        self.requires_grad
    }
}

/// Computes the input gradients from the output gradient: `Some` for each
/// input that needs one, unless the op added it into that input's sink.
type BackwardFn = Box<dyn FnOnce(&mut Backward<'_>, &Tensor) -> Result<Vec<Option<Tensor>>>>;

/// What an op's backward gets besides its output's gradient.
pub(crate) struct Backward<'a> {
    pub(crate) dev: &'a Device,
    needs: &'a [bool],
    sinks: &'a mut [Option<TensorMut>],
}

impl Backward<'_> {
    /// Whether input `i` wants a gradient (a linear layer on the images skips dX).
    pub(crate) fn needs(&self, i: usize) -> bool {
        self.needs[i]
    }

    /// Where input `i`'s gradient accumulates, when it has such a place (a
    /// packed parameter gradient): the op adds its contribution into it in
    /// place and returns `None` for that input.
    pub(crate) fn sink(&mut self, i: usize) -> Option<&mut TensorMut> {
        self.sinks.get_mut(i)?.as_mut()
    }

    /// The sinks of several distinct inputs at once.
    pub(crate) fn sinks<const N: usize>(&mut self, inputs: [usize; N]) -> [Option<&mut TensorMut>; N] {
        match self.sinks.get_disjoint_mut(inputs) {
            Ok(sinks) => sinks.map(Option::as_mut),
            Err(_) => [const { None }; N],
        }
    }
}

struct Node {
    output: usize,
    inputs: Vec<usize>,
    needs: Vec<bool>,
    backward: BackwardFn,
}

#[derive(Default)]
struct Inner {
    nodes: Vec<Node>,
    next_id: usize,
    params: HashMap<usize, String>,
}

/// One forward pass's record. Make a new tape for every step.
pub struct Tape {
    dev: Device,
    grad_enabled: bool,
    precision: Precision,
    inner: RefCell<Inner>,
    /// f16 copies of parameters by name, made once per tape (mixed precision).
    half_params: RefCell<HashMap<String, Tensor>>,
    /// Values the backward may recompute instead of keeping, by var id.
    recomputable: RefCell<HashMap<usize, Recompute>>,
}

/// Parameter gradients by name, accumulating over backward calls
/// (gradient accumulation).
#[derive(Default)]
pub struct Gradients {
    map: HashMap<String, Tensor>,
    /// Packed members by name, in pack order (see [`Gradients::packed`]).
    /// A member is `None` only while an op writes into it during backward.
    packed: Vec<(String, Option<TensorMut>)>,
    packed_index: HashMap<String, usize>,
    /// Told each packed member's index once backward has recorded the last
    /// addition into it (see [`Gradients::on_ready`]).
    ready: Option<ReadyHook>,
}

/// Called with a packed member's index as soon as backward has recorded
/// everything that adds into it, so data-parallel training can start moving
/// that gradient while the rest of backward still runs.
pub type ReadyHook = Box<dyn FnMut(&Device, &Gradients, usize) -> Result<()>>;

impl Gradients {
    /// Zeroed gradients for `params` (name and shape, in order) in one pack,
    /// like the parameters' own pack, for [`crate::kernels::optim::adamw_packed`].
    /// Backward accumulates into them in place. Parameters not listed get
    /// their gradient by name as usual.
    pub fn packed(dev: &Device, params: &[(&str, &[usize])]) -> Result<Self> {
        let shapes: Vec<Vec<usize>> = params.iter().map(|(_, s)| s.to_vec()).collect();
        let members = elementwise::packed_zeros(dev, &shapes)?;
        let packed: Vec<(String, Option<TensorMut>)> =
            params.iter().zip(members).map(|((n, _), t)| (n.to_string(), Some(t))).collect();
        let packed_index = packed.iter().enumerate().map(|(i, (n, _))| (n.clone(), i)).collect();
        Ok(Self { map: HashMap::new(), packed, packed_index, ready: None })
    }

    /// Calls `hook` during the next backward passes (until replaced or
    /// removed with `None`) for every packed member, once its gradient is
    /// complete: members an op uses right after that op's backward, the
    /// others when backward ends.
    pub fn on_ready(&mut self, hook: Option<ReadyHook>) {
        self.ready = hook;
    }

    /// Names of the packed members, in pack order.
    pub fn packed_names(&self) -> impl Iterator<Item = &str> {
        self.packed.iter().map(|(n, _)| n.as_str())
    }

    /// Elements of packed member `i`.
    pub fn packed_numel(&self, i: usize) -> usize {
        self.packed[i].1.as_ref().map_or(0, |t| t.numel())
    }

    /// The bytes of the pack from member `members.start` to the end of
    /// member `members.end − 1`, as f32 (the alignment gaps between members
    /// hold zeros): one copy, read back once this stream's batch has run.
    pub fn read_packed(&self, dev: &Device, members: Range<usize>) -> Result<PendingRead<f32>> {
        let (storage, offset, bytes) = self.packed_range(members)?;
        let shape = [(bytes / 4) as usize];
        dev.read_later(&Binding {
            slot: 0,
            access: Access::Read,
            storage: &storage,
            offset,
            shape: &shape,
            bytes,
            shared: false,
        })
    }

    /// Overwrites what [`Gradients::read_packed`] reads for `members` with
    /// `values` (e.g. the gradients summed over data-parallel ranks).
    pub fn write_packed(&mut self, dev: &Device, members: Range<usize>, values: &[f32]) -> Result<()> {
        let (storage, offset, bytes) = self.packed_range(members)?;
        let shape = [(bytes / 4) as usize];
        dev.write_bytes(
            &Binding { slot: 0, access: Access::Write, storage: &storage, offset, shape: &shape, bytes, shared: false },
            bytemuck::cast_slice(values),
        )
    }

    fn packed_range(&self, members: Range<usize>) -> Result<(Arc<Storage>, u64, u64)> {
        let member = |i: usize| self.packed.get(i).and_then(|(_, t)| t.as_ref());
        let (Some(first), Some(last)) = (member(members.start), members.end.checked_sub(1).and_then(member)) else {
            return Err(Error::Autodiff(format!(
                "packed members {members:?} of {} are not all present",
                self.packed.len()
            )));
        };
        let (storage, start) = first.region_of();
        let (last_storage, last_start) = last.region_of();
        if !Arc::ptr_eq(storage, last_storage) || last_start < start {
            return Err(Error::Autodiff(format!("packed members {members:?} are not one range of one pack")));
        }
        Ok((storage.clone(), start, last_start + last.byte_len() - start))
    }

    pub fn get(&self, name: &str) -> Option<&Tensor> {
        match self.packed_index.get(name) {
            Some(&i) => self.packed[i].1.as_ref().map(|t| t.as_tensor()),
            None => self.map.get(name),
        }
    }

    pub fn iter(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        let packed = self.packed.iter().filter_map(|(n, t)| Some((n.as_str(), t.as_ref()?.as_tensor())));
        packed.chain(self.map.iter().map(|(n, t)| (n.as_str(), t)))
    }

    pub fn len(&self) -> usize {
        self.packed.len() + self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Tells the hook that members `done` are complete.
    fn announce_ready(&mut self, dev: &Device, done: impl IntoIterator<Item = usize>) -> Result<()> {
        let Some(mut hook) = self.ready.take() else {
            return Ok(());
        };
        let told = done.into_iter().try_for_each(|i| hook(dev, self, i));
        self.ready = Some(hook);
        told
    }

    /// Takes `name`'s packed member out while an op adds into it.
    fn take_sink(&mut self, name: &str) -> Option<TensorMut> {
        self.packed.get_mut(*self.packed_index.get(name)?)?.1.take()
    }

    fn put_sink(&mut self, name: &str, t: TensorMut) {
        if let Some(&i) = self.packed_index.get(name) {
            self.packed[i].1 = Some(t);
        }
    }

    /// Adds `g` to the gradient of `name`: in place into its packed member,
    /// else out of place (a stored tensor may be shared with another
    /// parameter's gradient).
    fn add(&mut self, dev: &Device, name: &str, g: Tensor) -> Result<()> {
        if let Some(mut sink) = self.take_sink(name) {
            let shape = sink.shape().to_vec();
            let added = g.reshape(&shape).and_then(|g| elementwise::accumulate(dev, &mut sink, &g, 1.0));
            self.put_sink(name, sink);
            return added;
        }
        let sum = match self.map.get(name) {
            Some(old) => elementwise::add(dev, old, &g)?,
            None => g,
        };
        self.map.insert(name.to_string(), sum);
        Ok(())
    }
}

impl Tape {
    /// A tape that records (training).
    pub fn new(dev: &Device) -> Self {
        Self::make(dev, true, Precision::F32)
    }

    /// A tape that records nothing (evaluation).
    pub fn no_grad(dev: &Device) -> Self {
        Self::make(dev, false, Precision::F32)
    }

    /// A tape in `precision`, recording or not; f16 needs an adapter with
    /// `SHADER_F16` (else an error naming the feature and the adapter).
    pub fn with_precision(dev: &Device, grad_enabled: bool, precision: Precision) -> Result<Self> {
        precision.check_adapter(dev)?;
        Ok(Self::make(dev, grad_enabled, precision))
    }

    fn make(dev: &Device, grad_enabled: bool, precision: Precision) -> Self {
        Self {
            dev: dev.clone(),
            grad_enabled,
            precision,
            inner: RefCell::default(),
            half_params: RefCell::default(),
            recomputable: RefCell::default(),
        }
    }

    pub fn precision(&self) -> Precision {
        self.precision
    }

    /// How products store results that only f16-reading kernels consume
    /// (f16 under mixed precision, else f32).
    pub(crate) fn compute_dtype(&self) -> DType {
        match self.precision {
            Precision::F32 => DType::F32,
            Precision::F16 => DType::F16,
        }
    }

    /// Under mixed precision, the f16 copies of `params` (name and value:
    /// every member of one parameter pack, in order) in one dispatch, for
    /// the products that read them on this tape; nothing in f32.
    pub fn cast_params(&self, params: &[(&str, &Tensor)]) -> Result<()> {
        if self.precision == Precision::F32 || params.is_empty() {
            return Ok(());
        }
        let values: Vec<&Tensor> = params.iter().map(|(_, t)| *t).collect();
        let halves = cast::to_f16_packed(&self.dev, &values)?;
        let mut cache = self.half_params.borrow_mut();
        for ((name, _), half) in params.iter().zip(halves) {
            cache.insert(name.to_string(), half);
        }
        Ok(())
    }

    /// Marks `v` as one the backward recomputes by `recipe` rather than keeps.
    pub(crate) fn recomputable(&self, v: &Var, recipe: Recompute) {
        if self.grad_enabled {
            self.recomputable.borrow_mut().insert(v.id, recipe);
        }
    }

    /// What a backward keeps of `v`, whose operand form is `operand`: the
    /// recipe when it can be recomputed, else the operand.
    pub(crate) fn kept(&self, v: &Var, operand: Tensor) -> Kept {
        match self.recomputable.borrow().get(&v.id) {
            Some(recipe) => Kept::Recompute(recipe.clone()),
            None => Kept::Tensor(operand),
        }
    }

    /// `v` as a product reads it: itself in f32, an f16 copy under mixed
    /// precision (a parameter's made once per tape, by [`Tape::cast_params`]
    /// or on first use).
    pub(crate) fn operand(&self, v: &Var) -> Result<Tensor> {
        if self.precision == Precision::F32 || v.value.dtype() == DType::F16 {
            return Ok(v.value.clone());
        }
        let Some(name) = self.inner.borrow().params.get(&v.id).cloned() else {
            return cast::to_f16(&self.dev, &v.value);
        };
        if let Some(t) = self.half_params.borrow().get(&name) {
            return Ok(t.clone());
        }
        let half = cast::to_f16(&self.dev, &v.value)?;
        self.half_params.borrow_mut().insert(name, half.clone());
        Ok(half)
    }

    pub fn device(&self) -> &Device {
        &self.dev
    }

    pub fn grad_enabled(&self) -> bool {
        self.grad_enabled
    }

    fn next_id(&self) -> usize {
        let mut inner = self.inner.borrow_mut();
        inner.next_id += 1;
        inner.next_id
    }

    /// A value that needs no gradient (images, fixed position embeddings).
    pub fn constant(&self, value: Tensor) -> Var {
        Var { id: self.next_id(), value, requires_grad: false }
    }

    /// A named trainable leaf.
    pub fn param(&self, name: &str, value: &Tensor) -> Var {
        let id = self.next_id();
        if self.grad_enabled {
            self.inner.borrow_mut().params.insert(id, name.to_string());
        }
        Var { id, value: value.clone(), requires_grad: self.grad_enabled }
    }

    /// Records an op's result. The backward is kept only when grad is on and
    /// some input requires a gradient.
    pub(crate) fn record(
        &self,
        value: Tensor,
        inputs: &[&Var],
        backward: impl FnOnce(&mut Backward<'_>, &Tensor) -> Result<Vec<Option<Tensor>>> + 'static,
    ) -> Var {
        let needs: Vec<bool> = inputs.iter().map(|v| v.requires_grad).collect();
        let requires_grad = self.grad_enabled && needs.iter().any(|&n| n);
        let id = self.next_id();
        if requires_grad {
            self.inner.borrow_mut().nodes.push(Node {
                output: id,
                inputs: inputs.iter().map(|v| v.id).collect(),
                needs,
                backward: Box::new(backward),
            });
        }
        Var { id, value, requires_grad }
    }

    /// Back-propagates from a one-element `loss`, adding parameter gradients
    /// into `grads`. Consumes the recorded nodes.
    pub fn backward(&self, loss: &Var, grads: &mut Gradients) -> Result<()> {
        let seed = elementwise::full(&self.dev, loss.shape(), 1.0)?;
        self.backward_from(loss, &seed, grads)
    }

    /// [`Tape::backward`] from the gradient `seed` (a one-element f32 tensor)
    /// instead of 1: mixed precision seeds it with the loss scale
    /// ([`crate::kernels::scaler::LossScaler::seed`]), which never leaves the device.
    pub fn backward_from(&self, loss: &Var, seed: &Tensor, grads: &mut Gradients) -> Result<()> {
        if loss.value.numel() != 1 {
            return Err(Error::Autodiff(format!("backward needs a scalar loss, got shape {:?}", loss.shape())));
        }
        if !loss.requires_grad {
            return Err(Error::Autodiff("the loss does not depend on any parameter (or grad is disabled)".into()));
        }
        let (nodes, params) = {
            let mut inner = self.inner.borrow_mut();
            (std::mem::take(&mut inner.nodes), std::mem::take(&mut inner.params))
        };
        // The ops that recompute have their recipes: what they hold is freed with them.
        self.recomputable.borrow_mut().clear();
        if seed.numel() != 1 || seed.dtype() != DType::F32 {
            return Err(Error::Autodiff(format!("the seed gradient must be one f32, got {:?}", seed.shape())));
        }
        let mut pending: HashMap<usize, Tensor> = HashMap::new();
        pending.insert(loss.id, seed.reshape(loss.shape())?);
        // completes[n]: packed members whose last addition is node n's
        // backward; members no node uses are complete when backward ends.
        let mut completes: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        let mut seen = vec![false; grads.packed.len()];
        if grads.ready.is_some() {
            for (n, node) in nodes.iter().enumerate() {
                for (input, _) in node.inputs.iter().zip(&node.needs).filter(|(_, need)| **need) {
                    if let Some(&i) = params.get(input).and_then(|name| grads.packed_index.get(name))
                        && !seen[i]
                    {
                        seen[i] = true;
                        completes[n].push(i);
                    }
                }
            }
        }
        for (n, node) in nodes.into_iter().enumerate().rev() {
            let Some(grad_out) = pending.remove(&node.output) else {
                grads.announce_ready(&self.dev, completes[n].iter().copied())?;
                continue;
            };
            // Gradients this op may add into in place: packed parameter
            // gradients, and sums so far that no other handle shares.
            let sink_names: Vec<Option<&String>> =
                node.inputs.iter().zip(&node.needs).map(|(id, &need)| params.get(id).filter(|_| need)).collect();
            let mut sinks: Vec<Option<TensorMut>> = Vec::with_capacity(node.inputs.len());
            for ((input, &need), name) in node.inputs.iter().zip(&node.needs).zip(&sink_names) {
                let sink = match name {
                    Some(name) => grads.take_sink(name),
                    None if need => pending.remove(input).and_then(|sum| match sum.try_into_mut() {
                        Ok(sink) => Some(sink),
                        Err(shared) => {
                            pending.insert(*input, shared);
                            None
                        }
                    }),
                    None => None,
                };
                sinks.push(sink);
            }
            let grads_in =
                (node.backward)(&mut Backward { dev: &self.dev, needs: &node.needs, sinks: &mut sinks }, &grad_out);
            for ((input, name), sink) in node.inputs.iter().zip(&sink_names).zip(sinks) {
                match (name, sink) {
                    (Some(name), Some(sink)) => grads.put_sink(name, sink),
                    (None, Some(sink)) => {
                        pending.insert(*input, sink.freeze());
                    }
                    _ => {}
                }
            }
            let grads_in = grads_in?;
            if grads_in.len() != node.inputs.len() {
                return Err(Error::Autodiff("an op returned the wrong number of gradients".into()));
            }
            for ((input, need), g) in node.inputs.iter().zip(&node.needs).zip(grads_in) {
                let Some(g) = g.filter(|_| *need) else {
                    continue;
                };
                if let Some(name) = params.get(input)
                    && grads.packed_index.contains_key(name)
                {
                    grads.add(&self.dev, name, g)?;
                    continue;
                }
                let sum = match pending.remove(input) {
                    Some(old) => add_gradients(&self.dev, &old, &g)?,
                    None => g,
                };
                pending.insert(*input, sum);
            }
            grads.announce_ready(&self.dev, completes[n].iter().copied())?;
        }
        for (id, name) in params {
            if let Some(g) = pending.remove(&id) {
                grads.add(&self.dev, &name, g)?;
            }
        }
        grads.announce_ready(&self.dev, seen.iter().enumerate().filter(|(_, s)| !**s).map(|(i, _)| i))
    }
}

/// `a + b` for two gradients of one value: f16 ones (mixed precision) are
/// added in f32 and stored f16 again.
fn add_gradients(dev: &Device, a: &Tensor, b: &Tensor) -> Result<Tensor> {
    if a.dtype() == DType::F32 && b.dtype() == DType::F32 {
        return elementwise::add(dev, a, b);
    }
    let sum = elementwise::add(dev, &cast::to(dev, a, DType::F32)?, &cast::to(dev, b, DType::F32)?)?;
    cast::to(dev, &sum, a.dtype())
}
