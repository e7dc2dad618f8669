//! Named parameters in timm/MAE layout (`blocks.3.attn.qkv.weight`, weights
//! `[out, in]`), so a checkpoint is a state dict PyTorch/timm load as-is.

use crate::safetensors_io::{F32Map, NamedF32};
use std::collections::HashMap;

use anyhow::{Context, Result, anyhow, bail};
use cmae_engine::{Device, Tensor};
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
    /// A fixed table (position embeddings, running statistics): stored, never trained.
    Fixed(Vec<f32>),
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

    pub fn trainable(&self) -> bool {
        !matches!(self.init, Init::Fixed(_))
    }

    fn initial_values(&self, rng: &mut impl Rng) -> Vec<f32> {
        let n: usize = self.shape.iter().product();
        match &self.init {
            Init::Zeros => vec![0.0; n],
            Init::Ones => vec![1.0; n],
            Init::Fixed(v) | Init::Table(v) => v.clone(),
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

pub struct Param {
    pub tensor: Tensor,
    pub trainable: bool,
}

/// Parameters in a fixed order (the order of their specs).
pub struct ParamStore {
    names: Vec<String>,
    map: HashMap<String, Param>,
}

impl ParamStore {
    /// Fresh parameters from their specs and a seeded RNG.
    pub fn init(dev: &Device, specs: &[ParamSpec], rng: &mut impl Rng) -> Result<Self> {
        let mut store = Self { names: Vec::new(), map: HashMap::new() };
        for s in specs {
            let values = s.initial_values(rng);
            store.insert(&s.name, Tensor::from_f32(dev, &values, &s.shape)?, s.trainable());
        }
        Ok(store)
    }

    /// Parameters from host tensors (a checkpoint or fixture): every spec must
    /// be present with its exact shape. Returns the store and the names found
    /// in `tensors` that no spec wants.
    pub fn load(dev: &Device, specs: &[ParamSpec], mut tensors: F32Map) -> Result<(Self, Vec<String>)> {
        let mut store = Self { names: Vec::new(), map: HashMap::new() };
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
            store.insert(&s.name, Tensor::from_f32(dev, &data, &shape).with_context(|| s.name.clone())?, s.trainable());
        }
        let mut extra: Vec<String> = tensors.into_keys().collect();
        extra.sort();
        Ok((store, extra))
    }

    /// Overwrites every parameter with the tensor of the same name in `weights`
    /// (a checkpoint), checking shapes.
    pub fn replace_from(&mut self, dev: &Device, mut weights: F32Map) -> Result<()> {
        for name in &self.names {
            let p = self.map.get_mut(name).expect("names and map agree");
            let (shape, data) =
                weights.remove(name).ok_or_else(|| anyhow!("the checkpoint has no parameter {name}"))?;
            if shape != p.tensor.shape() {
                bail!("checkpoint parameter {name} has shape {shape:?}, the model {:?}", p.tensor.shape());
            }
            p.tensor = Tensor::from_f32(dev, &data, &shape)?;
        }
        Ok(())
    }

    fn insert(&mut self, name: &str, tensor: Tensor, trainable: bool) {
        self.names.push(name.to_string());
        self.map.insert(name.to_string(), Param { tensor, trainable });
    }

    pub fn get(&self, name: &str) -> Result<&Tensor> {
        self.entry(name).map(|p| &p.tensor)
    }

    pub fn entry(&self, name: &str) -> Result<&Param> {
        self.map.get(name).ok_or_else(|| anyhow!("model has no parameter {name}"))
    }

    /// Parameters in spec order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &Param)> {
        self.names.iter().map(|n| (n.as_str(), &self.map[n]))
    }

    pub fn trainable(&self) -> impl Iterator<Item = (&str, &Tensor)> {
        self.iter().filter(|(_, p)| p.trainable).map(|(n, p)| (n, &p.tensor))
    }

    pub fn count_trainable(&self) -> usize {
        self.trainable().map(|(_, t)| t.numel()).sum()
    }

    /// Every parameter downloaded, in order: `(name, shape, values)`.
    pub fn to_host(&self, dev: &Device) -> Result<Vec<NamedF32>> {
        self.iter().map(|(n, p)| Ok((n.to_string(), p.tensor.shape().to_vec(), p.tensor.to_vec_f32(dev)?))).collect()
    }
}
