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

mod ops;

use std::cell::RefCell;
use std::collections::HashMap;

use crate::device::Device;
use crate::error::{Error, Result};
use crate::kernels::elementwise;
use crate::tensor::Tensor;

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

/// Computes the input gradients from the output gradient. `needs[i]` says
/// whether input i wants one, so e.g. a linear layer on the images skips dX.
type BackwardFn = Box<dyn FnOnce(&Device, &Tensor, &[bool]) -> Result<Vec<Option<Tensor>>>>;

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
    inner: RefCell<Inner>,
}

/// Parameter gradients by name.
#[derive(Default)]
pub struct Gradients {
    map: HashMap<String, Tensor>,
}

impl Gradients {
    pub fn get(&self, name: &str) -> Option<&Tensor> {
        self.map.get(name)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&String, &Tensor)> {
        self.map.iter()
    }

    pub fn len(&self) -> usize {
        self.map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.map.is_empty()
    }

    pub fn clear(&mut self) {
        self.map.clear();
    }

    /// Adds `g` to the gradient of `name`. Out of place: a stored tensor may be
    /// shared with another parameter's gradient.
    fn add(&mut self, dev: &Device, name: &str, g: Tensor) -> Result<()> {
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
        Self { dev: dev.clone(), grad_enabled: true, inner: RefCell::default() }
    }

    /// A tape that records nothing (evaluation).
    pub fn no_grad(dev: &Device) -> Self {
        Self { dev: dev.clone(), grad_enabled: false, inner: RefCell::default() }
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
        backward: impl FnOnce(&Device, &Tensor, &[bool]) -> Result<Vec<Option<Tensor>>> + 'static,
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
        let mut pending: HashMap<usize, Tensor> = HashMap::new();
        pending.insert(loss.id, elementwise::full(&self.dev, loss.shape(), 1.0)?);
        for node in nodes.into_iter().rev() {
            let Some(grad_out) = pending.remove(&node.output) else {
                continue;
            };
            let grads_in = (node.backward)(&self.dev, &grad_out, &node.needs)?;
            if grads_in.len() != node.inputs.len() {
                return Err(Error::Autodiff("an op returned the wrong number of gradients".into()));
            }
            for ((input, need), g) in node.inputs.iter().zip(&node.needs).zip(grads_in) {
                let Some(g) = g.filter(|_| *need) else {
                    continue;
                };
                let sum = match pending.remove(input) {
                    Some(old) => elementwise::add(&self.dev, &old, &g)?,
                    None => g,
                };
                pending.insert(*input, sum);
            }
        }
        for (id, name) in params {
            if let Some(g) = pending.remove(&id) {
                grads.add(&self.dev, &name, g)?;
            }
        }
        Ok(())
    }
}
