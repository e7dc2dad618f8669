//! Named parameters in timm/MAE layout (`blocks.3.attn.qkv.weight`, weights
//! `[out, in]`), so a checkpoint is a state dict PyTorch/timm load as-is.

use crate::safetensors_io::{F32Map, NamedF32};
use std::collections::HashMap;

use anyhow::{Context, Result, anyhow, bail};
use cmae_engine::{Device, Tensor, TensorMut};
use rand::Rng;
use rand_distr::{Distribution, Normal};

/// How a parameter starts (MAE's `initialize_weights`).
#[derive(Debug, Clone)]
pub enum Init {
    /// xavier_uniform on the weight viewed as `[shape[0], rest]`.
    Xavier,
    Zeros,
    Ones,
    Normal(f64),
    /// A fixed table (position embeddings): stored, never trained.
    Fixed(Vec<f32>),
    /// State a training forward pass updates (BatchNorm running statistics).
    Buffer(Vec<f32>),
    /// A trainable parameter that starts from a table (fine-tuned position embeddings).
    Table(Vec<f32>),
}

#[derive(Debug, Clone)]
pub struct ParamSpec {
    pub name: String,
    pub shape: Vec<usize>,
    pub init: Init,
}

impl ParamSpec {
    pub fn new(name: impl Into<String>, shape: &[usize], init: Init) -> Self {
        Self { name: name.into(), shape: shape.to_vec(), init }
    }

    pub fn kind(&self) -> Kind {
        match self.init {
            Init::Fixed(_) => Kind::Fixed,
            Init::Buffer(_) => Kind::Buffer,
            _ => Kind::Trainable,
        }
    }

    fn initial_values(&self, rng: &mut impl Rng) -> Vec<f32> {
        let n: usize = self.shape.iter().product();
        match &self.init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Fixed(v) | Init::Table(v) | Init::Buffer(v) => v.clone(),
            Init::Normal(std) => {
                let dist = Normal::new(0.0, *std).expect("a positive std");
                (0..n).map(|_| dist.sample(rng) as f32).collect()
            }
            Init::Xavier => {
                let fan_out = self.shape[0];
                let fan_in = n / fan_out;
                let bound = (6.0 / (fan_in + fan_out) as f64).sqrt();
                (0..n).map(|_| rng.random_range(-bound..bound) as f32).collect()
            }
        }
    }
}

/// MAE/timm's decay rule: no weight decay on 1-D parameters (norms, biases) and biases.
pub fn decays(name: &str, shape: &[usize]) -> bool {
    shape.len() > 1 && !name.ends_with(".bias")
}

/// One named tensor of a model. Parameters are read by forward passes and
/// written only by the optimizer (`trainable_mut`); fixed tables are never
/// written; buffers (BatchNorm running statistics) are state a training
/// forward pass updates, kept apart from the parameters as PyTorch's
/// `register_buffer`, so no optimizer sees them and no tape reads them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Trainable,
    Fixed,
    Buffer,
}

pub struct Param {
    pub tensor: TensorMut,
    pub kind: Kind,
}

/// A model's named tensors in a fixed order (the order of their specs): the
/// checkpoint's state dict, parameters and buffers alike. The trainable ones
/// are the members of one pack, in spec order, so the optimizer updates them
/// all in one dispatch (see `AdamW`).
pub struct ParamStore {
    entries: Vec<(String, Param)>,
    index: HashMap<String, usize>,
}

impl ParamStore {
    /// Fresh parameters from their specs and a seeded RNG.
    pub fn init(dev: &Device, specs: &[ParamSpec], rng: &mut impl Rng) -> Result<Self> {
        let values: Vec<Vec<f32>> = specs.iter().map(|s| s.initial_values(rng)).collect();
        Self::build(dev, specs, values)
    }

    /// The store of `specs` holding `values` (one per spec, checked against its shape).
    fn build(dev: &Device, specs: &[ParamSpec], values: Vec<Vec<f32>>) -> Result<Self> {
        let trainable: Vec<Vec<usize>> =
            specs.iter().filter(|s| s.kind() == Kind::Trainable).map(|s| s.shape.clone()).collect();
        let mut packed = cmae_engine::kernels::elementwise::packed_zeros(dev, &trainable)?.into_iter();
        let mut store = Self { entries: Vec::new(), index: HashMap::new() };
        for (s, values) in specs.iter().zip(values) {
            let tensor = match s.kind() {
                Kind::Trainable => {
                    let mut member = packed.next().expect("one pack member per trainable spec");
                    member.write(dev, bytemuck::cast_slice(&values)).with_context(|| s.name.clone())?;
                    member
                }
                _ => TensorMut::from_f32(dev, &values, &s.shape).with_context(|| s.name.clone())?,
            };
            store.insert(&s.name, tensor, s.kind());
        }
        Ok(store)
    }

    /// Parameters from host tensors (a checkpoint or fixture): every spec must
    /// be present with its exact shape. Returns the store and the names found
    /// in `tensors` that no spec wants.
    pub fn load(dev: &Device, specs: &[ParamSpec], mut tensors: F32Map) -> Result<(Self, Vec<String>)> {
        let mut values = Vec::with_capacity(specs.len());
        for s in specs {
            let (shape, data) = tensors
                .remove(&s.name)
                .ok_or_else(|| anyhow!("parameter {} is missing; the checkpoint is from another model", s.name))?;
            if shape != s.shape {
                bail!(
                    "parameter {} has shape {:?} but this model needs {:?}; the checkpoint is from another model config",
                    s.name,
                    shape,
                    s.shape
                );
            }
            values.push(data);
        }
        let mut extra: Vec<String> = tensors.into_keys().collect();
        extra.sort();
        Ok((Self::build(dev, specs, values)?, extra))
    }

    /// Overwrites every tensor with the one of the same name in `weights`
    /// (a checkpoint), checking shapes.
    pub fn replace_from(&mut self, dev: &Device, mut weights: F32Map) -> Result<()> {
        for (name, p) in &mut self.entries {
            let (shape, data) =
                weights.remove(name).ok_or_else(|| anyhow!("the checkpoint has no parameter {name}"))?;
            if shape != p.tensor.shape() {
                bail!("checkpoint parameter {name} has shape {shape:?}, the model {:?}", p.tensor.shape());
            }
            p.tensor.write(dev, bytemuck::cast_slice(&data)).with_context(|| name.clone())?;
        }
        Ok(())
    }

    fn insert(&mut self, name: &str, tensor: TensorMut, kind: Kind) {
        self.index.insert(name.to_string(), self.entries.len());
        self.entries.push((name.to_string(), Param { tensor, kind }));
    }

    fn lookup(&self, name: &str) -> Option<&Param> {
        self.index.get(name).map(|&i| &self.entries[i].1)
    }

    /// A parameter or fixed table (not a buffer), for reading.
    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.entry(name).map(|p| p.tensor.as_tensor())
    }

    pub fn entry(&self, name: &str) -> Result<&Param> {
        match self.lookup(name) {
            Some(p) if p.kind != Kind::Buffer => Ok(p),
            Some(_) => bail!("{name} is a buffer, not a parameter"),
            None => bail!("model has no parameter {name}"),
        }
    }

    /// A buffer, for a forward pass that updates it in place.
    pub fn buffer_mut(&mut self, name: &str) -> Result<&mut TensorMut> {
        match self.index.get(name).map(|&i| &mut self.entries[i].1) {
            Some(p) if p.kind == Kind::Buffer => Ok(&mut p.tensor),
            _ => bail!("model has no buffer {name}"),
        }
    }

    /// Several buffers at once (a BatchNorm's running mean and variance).
    pub fn buffers_mut<const N: usize>(&mut self, names: [&str; N]) -> Result<[&mut TensorMut; N]> {
        let mut at = [0; N];
        for (i, name) in names.iter().enumerate() {
            at[i] = match self.index.get(*name) {
                Some(&i) if self.entries[i].1.kind == Kind::Buffer => i,
                _ => bail!("model has no buffer {name}"),
            };
        }
        let entries = self.entries.get_disjoint_mut(at).map_err(|_| anyhow!("buffers {names:?} repeat"))?;
        Ok(entries.map(|(_, p)| &mut p.tensor))
    }

    /// A buffer, for reading (evaluation-mode BatchNorm).
    pub fn buffer(&self, name: &str) -> Result<&Tensor> {
        match self.lookup(name) {
            Some(p) if p.kind == Kind::Buffer => Ok(p.tensor.as_tensor()),
            _ => bail!("model has no buffer {name}"),
        }
    }

    /// Every tensor in spec order, buffers included (the state dict).
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Param)> {
        self.entries.iter().map(|(n, p)| (n.as_str(), p))
    }

    pub fn trainable(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.iter().filter(|(_, p)| p.kind == Kind::Trainable).map(|(n, p)| (n, p.tensor.as_tensor()))
    }

    /// The trainable parameters for an optimizer step, in spec order.
    pub fn trainable_mut(&mut self) -> impl Iterator<Item = (&str, &mut TensorMut)> {
        self.entries.iter_mut().filter(|(_, p)| p.kind == Kind::Trainable).map(|(n, p)| (n.as_str(), &mut p.tensor))
    }

    /// One trainable parameter, for an optimizer that updates a subset (LARS).
    pub fn trainable_by_name(&mut self, name: &str) -> Result<&mut TensorMut> {
        match self.index.get(name).map(|&i| &mut self.entries[i].1) {
            Some(p) if p.kind == Kind::Trainable => Ok(&mut p.tensor),
            _ => bail!("model has no trainable parameter {name}"),
        }
    }

    /// Names and shapes of the trainable parameters, in pack order.
    pub fn trainable_layout(&self) -> Vec<(&str, &[usize])> {
        self.trainable().map(|(n, t)| (n, t.shape())).collect()
    }

    pub fn count_trainable(&self) -> usize {
        self.trainable().map(|(_, t)| t.numel()).sum()
    }

    /// Every tensor downloaded, in order: `(name, shape, values)`. All reads
    /// go in one submission; async, so a page can await them.
    pub async fn read_to_host(&self, dev: &Device) -> Result<Vec<NamedF32>> {
        let reads = self.iter().map(|(_, p)| p.tensor.read_f32(dev)).collect::<Result<Vec<_>, _>>()?;
        let mut out = Vec::with_capacity(reads.len());
        for ((name, p), read) in self.iter().zip(reads) {
            out.push((name.to_string(), p.tensor.shape().to_vec(), read.await?));
        }
        Ok(out)
    }

    /// [`Self::read_to_host`] for native code.
    pub fn to_host(&self, dev: &Device) -> Result<Vec<NamedF32>> {
        dev.block_on(self.read_to_host(dev))
    }
}
