//! Shared command-line pieces: building a config from the flags.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::config::{PretrainConfig, parse_shots, set_loss_weights, shots_to_string};

/// Flags that choose and adjust a pretraining config.
#[derive(Args, Debug, Clone, Default)]
pub struct ConfigArgs {
    /// A shipped preset: micro, tiny, fmnist, vit-s16, vit-b16, vit-l16.
    #[arg(long, conflicts_with = "config")]
    pub preset: Option<String>,
    /// A RON config file (see trainer/presets/ for the format).
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// synthetic, fmnist:DIR, mnist:DIR, cifar10:DIR, cifar100:DIR or folder:DIR.
    #[arg(long)]
    pub data: Option<String>,
    /// Masking shots LAYER:RATIO,... e.g. 0:0.75,10:0.1 for L(0,10; 0.75,0.1).
    #[arg(long)]
    pub shots: Option<String>,
    /// Per-shot loss weights, e.g. 0.75,0.15 (default: one mean over all dropped patches).
    #[arg(long)]
    pub loss_weights: Option<String>,
    /// Override any config field: --set train.blr=1e-3 --set model.depth=6.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
    #[command(flatten)]
    pub length: LengthArgs,
}

/// Run length, batch and seed flags, the same for every training command.
#[derive(Args, Debug, Clone, Default)]
pub struct LengthArgs {
    #[arg(long, conflicts_with = "steps")]
    pub epochs: Option<f64>,
    /// Train for this many optimizer steps (the schedule is compressed to fit).
    #[arg(long)]
    pub steps: Option<usize>,
    #[arg(long)]
    pub batch: Option<usize>,
    #[arg(long)]
    pub seed: Option<u64>,
}

impl LengthArgs {
    /// Applies the flags that were given; `--epochs` replaces a configured step count.
    pub fn apply(&self, epochs: &mut f64, steps: &mut Option<usize>, batch: &mut usize, seed: &mut u64) {
        if let Some(e) = self.epochs {
            *epochs = e;
            *steps = None;
        }
        if let Some(s) = self.steps {
            *steps = Some(s);
        }
        if let Some(b) = self.batch {
            *batch = b;
        }
        if let Some(s) = self.seed {
            *seed = s;
        }
    }
}

impl ConfigArgs {
    /// The config the flags describe (preset `tiny` when none is named).
    pub fn build(&self) -> Result<PretrainConfig> {
        let mut cfg = match (&self.preset, &self.config) {
            (_, Some(path)) => PretrainConfig::load(path)?,
            (Some(name), None) => PretrainConfig::preset(name)?,
            (None, None) => PretrainConfig::preset("tiny")?,
        };
        for s in &self.set {
            cfg.set(s)?;
        }
        if let Some(s) = &self.shots {
            cfg.shots = parse_shots(s)?;
        }
        if let Some(w) = &self.loss_weights {
            set_loss_weights(&mut cfg.shots, w)?;
        }
        if let Some(d) = &self.data {
            cfg.data.spec = d.clone();
        }
        let t = &mut cfg.train;
        self.length.apply(&mut t.epochs, &mut t.steps, &mut t.batch, &mut t.seed);
        cfg.validate()?;
        Ok(cfg)
    }

    /// A fresh run directory name: `runs/<preset>-L<shots>-<UTC time>`.
    pub fn default_out(&self, cfg: &PretrainConfig) -> Result<PathBuf> {
        let name = match (&self.preset, &self.config) {
            (_, Some(p)) => p.file_stem().map_or("run".into(), |s| s.to_string_lossy().into_owned()),
            (Some(p), None) => p.clone(),
            (None, None) => "tiny".into(),
        };
        let shots = shots_to_string(&cfg.shots).replace([':', ','], "_");
        fresh_run_dir(&format!("{name}-L{shots}"))
    }
}

/// `runs/<name>-<UTC time>`, which must not exist yet.
pub fn fresh_run_dir(name: &str) -> Result<PathBuf> {
    let stamp = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let stamp: String = stamp.chars().filter(|c| c.is_ascii_digit() || *c == 'T').collect::<String>().replace('T', "-");
    let dir = PathBuf::from("runs").join(format!("{name}-{stamp}"));
    if dir.exists() {
        bail!("{} already exists; pass --out", dir.display());
    }
    Ok(dir)
}

/// Flags of `cmae linprobe` and `cmae finetune`.
#[derive(Args, Debug, Clone, Default)]
pub struct ClassifyArgs {
    /// The pretrained checkpoint whose encoder is probed / fine-tuned
    /// (required unless `finetune --from-scratch`; checked when building the config).
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// synthetic, fmnist:DIR, mnist:DIR, cifar10:DIR, cifar100:DIR or folder:DIR.
    #[arg(long)]
    pub data: String,
    #[command(flatten)]
    pub length: LengthArgs,
    /// Override any config field: --set train.blr=1e-3 --set train.mixup=0.
    #[arg(long = "set", value_name = "KEY=VALUE")]
    pub set: Vec<String>,
}

impl ClassifyArgs {
    /// The run's config: the recipe for `mode` on the checkpoint's encoder
    /// (or `scratch_model` for a from-scratch baseline), then the flags.
    pub fn build(
        &self,
        mode: crate::classify::Mode,
        scratch_model: Option<crate::config::ModelConfig>,
    ) -> Result<crate::classify::ClassifyConfig> {
        use crate::classify::ClassifyConfig;
        let (model, init) = match (&self.checkpoint, scratch_model) {
            (Some(c), _) => (crate::train::checkpoint::model_config_of(c)?, c.display().to_string()),
            (None, Some(m)) => (m, String::new()),
            (None, None) => bail!("give --checkpoint (or --from-scratch for fine-tuning)"),
        };
        let spec = crate::data::DataSpec::parse(&self.data)?;
        let classes = spec.num_classes()?;
        let mut cfg = ClassifyConfig::recipe(mode, model, classes, init, &self.data);
        for s in &self.set {
            cfg.set(s)?;
        }
        let t = &mut cfg.train;
        self.length.apply(&mut t.epochs, &mut t.steps, &mut t.batch, &mut t.seed);
        cfg.validate()?;
        Ok(cfg)
    }
}
