//! The model side of the viewer, apart from the UI so the UI never waits
//! for the GPU: it owns the loaded checkpoint and the current image, takes
//! jobs from the UI and sends back pictures. When jobs pile up (a slider
//! being dragged) only the newest of each kind is done.
//!
//! Its work is async (GPU reads are awaited), so the same code runs on a
//! thread of its own natively (driven by `Device::block_on`) and as a task
//! of the page's event loop in a browser, which has no threads to give.

use std::borrow::Cow;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};

use anyhow::{Context, Result, bail};
use cmae::analysis::{self, attention_stats, half_mass_region};
use cmae::config::{Shot, validate_shots};
use cmae::data::augment::Transform;
use cmae::data::{self, DataSpec, Split};
use cmae::masking::MaskPlan;
use cmae::model::vit::Taps;
use cmae::model::{LoadedEncoder, Mae, Route, VitEncoder};
use cmae::train::checkpoint::CheckpointFile;
use cmae::train::recon;
use cmae_engine::{Device, Tape, Tensor};
use image::RgbImage;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A file: a path natively, or bytes (a page's picker, download or drop,
/// or a file dropped without a path).
#[derive(Debug, Clone, PartialEq)]
pub enum Source {
    Path(PathBuf),
    Bytes {
        name: String,
        bytes: Arc<[u8]>,
    },
    /// A file the browser could not read, and why.
    Unreadable {
        name: String,
        why: String,
    },
}

impl Source {
    /// How messages name it.
    pub fn name(&self) -> String {
        match self {
            Source::Path(p) => p.display().to_string(),
            Source::Bytes { name, .. } | Source::Unreadable { name, .. } => name.clone(),
        }
    }

    fn bytes(&self) -> Result<Cow<'_, [u8]>> {
        match self {
            Source::Path(p) => {
                Ok(Cow::Owned(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?))
            }
            Source::Bytes { bytes, .. } => Ok(Cow::Borrowed(bytes)),
            Source::Unreadable { name, why } => bail!("cannot read {name}: {why}"),
        }
    }

    /// Whether it is named like a checkpoint rather than an image.
    pub fn is_checkpoint(&self) -> bool {
        self.name().to_ascii_lowercase().ends_with(".safetensors")
    }
}

/// Where the current image comes from.
#[derive(Debug, Clone, PartialEq)]
pub enum Picture {
    Dataset {
        spec: String,
        index: usize,
    },
    /// A photo (PNG/JPEG), read as `cmae reconstruct` reads its images.
    File(Source),
}

#[derive(Debug, Clone, PartialEq)]
pub enum Job {
    Load(Source),
    Picture(Picture),
    Reconstruct {
        shots: Vec<Shot>,
        seed: u64,
    },
    /// `head` None = mean over heads; `query` None = the cls token, else a patch.
    Attention {
        layer: usize,
        head: Option<usize>,
        query: Option<usize>,
    },
    Reversed {
        shots: Vec<Shot>,
        seed: u64,
    },
    /// Mean attention distance and entropy per layer over the picture set.
    Stats,
}

impl Job {
    fn kind(&self) -> u8 {
        match self {
            Job::Load(_) => 0,
            Job::Picture(_) => 1,
            Job::Reconstruct { .. } => 2,
            Job::Attention { .. } => 3,
            Job::Reversed { .. } => 4,
            Job::Stats => 5,
        }
    }
}

/// What the loaded checkpoint is.
#[derive(Debug, Clone, PartialEq)]
pub struct ModelInfo {
    /// The checkpoint's path or name.
    pub name: String,
    pub config: cmae::config::ModelConfig,
    /// The shots it was pretrained with (None for a classifier).
    pub shots: Option<Vec<Shot>>,
}

#[derive(Debug, Clone)]
pub enum Reply {
    Loaded(ModelInfo),
    Picture(RgbImage),
    Reconstruction {
        image: RgbImage,
        /// `Reconstruction::report` of the picture set (the chosen image first).
        report: serde_json::Value,
    },
    Attention {
        image: RgbImage,
        /// The map drawn: one weight per patch (row-major), summing to the
        /// query's attention to patches.
        weights: Vec<f64>,
    },
    Reversed {
        image: RgbImage,
        to_cls: f64,
        to_kept: f64,
        to_dropped: f64,
    },
    Stats {
        distance: Vec<f64>,
        entropy: Vec<f64>,
    },
    Error(String),
    /// The worker has taken this many jobs in all and has none left.
    Idle(u64),
}

pub struct Worker {
    tx: Option<Sender<Job>>,
    pub rx: Receiver<Reply>,
    #[cfg(not(target_arch = "wasm32"))]
    handle: Option<std::thread::JoinHandle<()>>,
    /// In a page: starts a task to drain the queue when none is running.
    #[cfg(target_arch = "wasm32")]
    kick: Box<dyn Fn()>,
    sent: u64,
    /// Jobs sent and not yet done (an `Idle` counting all of them has not come back).
    pub busy: bool,
}

/// The queue's end the model side reads, and where it answers.
struct Queue {
    jobs: Receiver<Job>,
    replies: Sender<Reply>,
    taken: u64,
}

impl Queue {
    /// Every job waiting, keeping only the newest of each kind, in the
    /// order of the kinds; empty when none waits.
    fn take_newest(&mut self, first: Option<Job>) -> Vec<Job> {
        let mut batch: Vec<Job> = Vec::new();
        for job in first.into_iter().chain(std::iter::from_fn(|| self.jobs.try_recv().ok())) {
            self.taken += 1;
            match batch.iter_mut().find(|j| j.kind() == job.kind()) {
                Some(slot) => *slot = job,
                None => batch.push(job),
            }
        }
        batch.sort_by_key(Job::kind);
        batch
    }

    /// Runs `first` and every job waiting (newest of each kind) until none
    /// waits, answering each, then says the worker is idle; an error once
    /// the UI is gone.
    async fn drain(&mut self, state: &mut State, first: Option<Job>, wake: &dyn Fn()) -> Result<()> {
        let mut batch = self.take_newest(first);
        while !batch.is_empty() {
            for job in batch {
                let reply = state.run(job).await.unwrap_or_else(|e| Reply::Error(format!("{e:#}")));
                self.replies.send(reply).map_err(|_| anyhow::anyhow!("the viewer closed"))?;
                wake();
            }
            batch = self.take_newest(None);
        }
        let _ = self.replies.send(Reply::Idle(self.taken));
        wake();
        Ok(())
    }
}

impl Worker {
    /// Starts the model side on a stream of its own (see `Training::resume`);
    /// `wake` is called after each reply (to repaint the UI).
    #[cfg(not(target_arch = "wasm32"))]
    pub fn start(dev: Device, wake: impl Fn() + Send + 'static) -> Self {
        let dev = dev.new_stream();
        let (tx, jobs) = channel::<Job>();
        let (replies, rx) = channel::<Reply>();
        let handle = std::thread::Builder::new()
            .name("cmae-viewer-model".into())
            .spawn(move || {
                let mut queue = Queue { jobs, replies, taken: 0 };
                let mut state = State::new(dev.clone());
                while let Ok(first) = queue.jobs.recv() {
                    if dev.block_on(queue.drain(&mut state, Some(first), &wake)).is_err() {
                        return;
                    }
                }
            })
            .expect("a thread can be spawned");
        Self { tx: Some(tx), rx, handle: Some(handle), sent: 0, busy: false }
    }

    /// Starts the model side as tasks of the page's event loop: a task
    /// drains the queue whenever jobs arrive and none is running.
    #[cfg(target_arch = "wasm32")]
    pub fn start(dev: Device, wake: impl Fn() + 'static) -> Self {
        use std::cell::RefCell;
        use std::rc::Rc;
        let (tx, jobs) = channel::<Job>();
        let (replies, rx) = channel::<Reply>();
        // The queue and state are lent to one task at a time: a task that
        // finds them taken leaves the jobs to the running one.
        let side = Rc::new(RefCell::new(Some((Queue { jobs, replies, taken: 0 }, State::new(dev.new_stream())))));
        let wake: Rc<dyn Fn()> = Rc::new(wake);
        let kick = Box::new(move || {
            let Some((mut queue, mut state)) = side.borrow_mut().take() else { return };
            let (side, wake) = (side.clone(), wake.clone());
            wasm_bindgen_futures::spawn_local(async move {
                if queue.drain(&mut state, None, &*wake).await.is_ok() {
                    *side.borrow_mut() = Some((queue, state));
                }
            });
        });
        Self { tx: Some(tx), rx, kick, sent: 0, busy: false }
    }

    pub fn send(&mut self, job: Job) {
        if let Some(tx) = &self.tx
            && tx.send(job).is_ok()
        {
            self.sent += 1;
            self.busy = true;
            #[cfg(target_arch = "wasm32")]
            (self.kick)();
        }
    }

    /// Notes that the worker has taken `taken` jobs and has none left.
    pub fn idle(&mut self, taken: u64) {
        self.busy = taken < self.sent;
    }
}

#[cfg(not(target_arch = "wasm32"))]
impl Drop for Worker {
    fn drop(&mut self) {
        self.tx = None;
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// One checkpoint, read once and uploaded once: a pretrained MAE (whose
/// encoder the attention panels use) or the encoder of a classifier.
enum Model {
    Mae(Box<Mae>, Vec<Shot>),
    Encoder(LoadedEncoder),
}

impl Model {
    fn encoder(&self) -> VitEncoder<'_> {
        match self {
            Model::Mae(mae, _) => mae.encoder(),
            Model::Encoder(e) => e.encoder(),
        }
    }
}

/// How many dataset images the reconstruction panel shows: the chosen one
/// and the next ones, a fixed set to compare checkpoints on.
pub const RECONSTRUCTION_ROWS: usize = 4;

struct LoadedPicture {
    /// Normalised CHW pixels for the model: the chosen image first, then the
    /// rest of the reconstruction set.
    chw: Vec<f32>,
    rows: usize,
    transform: Transform,
}

impl LoadedPicture {
    /// The chosen image alone.
    fn first(&self) -> &[f32] {
        &self.chw[..self.chw.len() / self.rows]
    }
}

struct State {
    dev: Device,
    model: Option<Model>,
    picture: Option<LoadedPicture>,
    /// Attention probabilities `[rows·heads, T, T]` of every block for the
    /// current picture set (cached); the chosen image is the first.
    probs: Option<Vec<Vec<f32>>>,
}

impl State {
    fn new(dev: Device) -> Self {
        Self { dev, model: None, picture: None, probs: None }
    }

    fn model(&self) -> Result<&Model> {
        self.model.as_ref().context("open a checkpoint first")
    }

    fn picture(&self) -> Result<&LoadedPicture> {
        self.picture.as_ref().context("choose an image first")
    }

    async fn run(&mut self, job: Job) -> Result<Reply> {
        match job {
            Job::Load(source) => self.load(&source),
            Job::Picture(p) => self.set_picture(&p),
            Job::Reconstruct { shots, seed } => self.reconstruct(&shots, seed).await,
            Job::Attention { layer, head, query } => self.attention(layer, head, query).await,
            Job::Reversed { shots, seed } => self.reversed(&shots, seed).await,
            Job::Stats => self.stats().await,
        }
    }

    fn load(&mut self, source: &Source) -> Result<Reply> {
        let file = CheckpointFile::parse(&source.bytes()?, &source.name())?;
        let model = if file.task.as_deref() == Some("pretrain") {
            let loaded = file.into_mae(&self.dev, None)?;
            Model::Mae(Box::new(loaded.mae), loaded.config.shots)
        } else {
            Model::Encoder(LoadedEncoder::from_file(&self.dev, file)?)
        };
        let info = ModelInfo {
            name: source.name(),
            config: model.encoder().cfg.clone(),
            shots: match &model {
                Model::Mae(_, s) => Some(s.clone()),
                Model::Encoder(_) => None,
            },
        };
        self.model = Some(model);
        self.probs = None;
        Ok(Reply::Loaded(info))
    }

    fn set_picture(&mut self, p: &Picture) -> Result<Reply> {
        let c = self.model()?.encoder().cfg.clone();
        let (chw, rows, transform) = match p {
            Picture::Dataset { spec, index } => {
                let set = data::open(&DataSpec::parse(spec)?, Split::Test, 512, c.img_size)?;
                if set.is_empty() {
                    bail!("{spec} has no test images");
                }
                let rows = RECONSTRUCTION_ROWS.min(set.len());
                let transform = Transform::new(c.img_size, c.in_chans, set.mean_std(), false);
                let mut chw = Vec::new();
                for k in 0..rows {
                    let i = (index + k) % set.len();
                    let image = set.get(i).with_context(|| set.describe(i))?.0;
                    chw.extend(transform.apply(&image, &mut ChaCha8Rng::seed_from_u64(0)));
                }
                (chw, rows, transform)
            }
            Picture::File(source) => {
                let photo = data::centre_cropped(&source.bytes()?, &source.name())?;
                let (chw, transform) = recon::photo_batch(&c, &[photo]);
                (chw, 1, transform)
            }
        };
        let picture = LoadedPicture { chw, rows, transform };
        let preview = analysis::upscaled(&picture.transform, picture.first(), (256 / c.img_size as u32).max(1));
        self.picture = Some(picture);
        self.probs = None;
        Ok(Reply::Picture(preview))
    }

    async fn reconstruct(&self, shots: &[Shot], seed: u64) -> Result<Reply> {
        let Model::Mae(mae, _) = self.model()? else {
            bail!("reconstructions need a pretrained MAE checkpoint; this one is a classifier");
        };
        validate_shots(shots, &mae.cfg)?;
        let pic = self.picture()?;
        let plan = MaskPlan::random(shots, pic.rows, mae.cfg.num_patches(), &mut ChaCha8Rng::seed_from_u64(seed));
        let r = recon::reconstruct(&self.dev, mae, &pic.chw, pic.rows, shots, plan).await?;
        let report = r.report(shots, seed, &self.dev.info().name);
        Ok(Reply::Reconstruction { image: recon::render(&r, mae, &pic.transform), report })
    }

    async fn ensure_probs(&mut self) -> Result<()> {
        if self.probs.is_some() {
            return Ok(());
        }
        let enc = self.model()?.encoder();
        let c = enc.cfg;
        let pic = self.picture()?;
        let imgs = Tensor::from_f32(&self.dev, &pic.chw, &[pic.rows, c.in_chans, c.img_size, c.img_size])?;
        let mut taps = Taps { attention: Some(Vec::new()), hidden: None };
        enc.forward(&Tape::no_grad(&self.dev), &imgs, &Route::default(), &mut taps)?;
        let mut probs = Vec::new();
        for p in taps.attention.unwrap_or_default() {
            probs.push(p.read_f32(&self.dev)?.await?);
        }
        self.probs = Some(probs);
        Ok(())
    }

    async fn attention(&mut self, layer: usize, head: Option<usize>, query: Option<usize>) -> Result<Reply> {
        self.ensure_probs().await?;
        let c = self.model()?.encoder().cfg.clone();
        let probs = self.probs.as_ref().expect("just computed");
        let p = probs.get(layer).with_context(|| format!("layer {layer} of {}", probs.len()))?;
        let (t, heads, l) = (1 + c.num_patches(), c.num_heads, c.num_patches());
        let row = query.map_or(0, |q| 1 + q.min(l - 1));
        let mut w = vec![0.0; l];
        let chosen: Vec<usize> = match head {
            Some(h) => vec![h.min(heads - 1)],
            None => (0..heads).collect(),
        };
        for &h in &chosen {
            let r = &p[(h * t + row) * t..(h * t + row + 1) * t];
            for (wi, &v) in w.iter_mut().zip(&r[1..]) {
                *wi += f64::from(v) / chosen.len() as f64;
            }
        }
        let pic = self.picture()?;
        let base = analysis::upscaled(&pic.transform, pic.first(), (256 / c.img_size as u32).max(1));
        let mut img = analysis::overlay(&base, &w, &half_mass_region(&w), c.grid());
        if let Some(q) = query {
            mark_patch(&mut img, q.min(l - 1), c.grid());
        }
        Ok(Reply::Attention { image: img, weights: w })
    }

    async fn reversed(&self, shots: &[Shot], seed: u64) -> Result<Reply> {
        let Model::Mae(mae, _) = self.model()? else {
            bail!("reversed attention needs a pretrained MAE checkpoint");
        };
        validate_shots(shots, &mae.cfg)?;
        let pic = self.picture()?;
        let r = analysis::reversed_attention_one(&self.dev, mae, pic.first(), &pic.transform, shots, seed).await?;
        Ok(Reply::Reversed { image: r.0, to_cls: r.1[0], to_kept: r.1[1], to_dropped: r.1[2] })
    }

    /// Mean attention distance and entropy per layer over the picture set.
    async fn stats(&mut self) -> Result<Reply> {
        self.ensure_probs().await?;
        let rows = self.picture()?.rows;
        let c = self.model()?.encoder().cfg.clone();
        let probs = self.probs.as_ref().expect("just computed");
        let mut distance = Vec::new();
        let mut entropy = Vec::new();
        for p in probs {
            let (d, e) = attention_stats(p, rows, c.num_heads, 1 + c.num_patches(), c.grid(), c.patch_size);
            distance.push(d.iter().sum::<f64>() / d.len() as f64);
            entropy.push(e.iter().sum::<f64>() / e.len() as f64);
        }
        Ok(Reply::Stats { distance, entropy })
    }
}

/// Draws a white frame around patch `q`.
fn mark_patch(img: &mut RgbImage, q: usize, grid: usize) {
    let side = img.width() as usize / grid;
    let (x0, y0) = ((q % grid) * side, (q / grid) * side);
    for i in 0..side {
        for (x, y) in [(x0 + i, y0), (x0 + i, y0 + side - 1), (x0, y0 + i), (x0 + side - 1, y0 + i)] {
            if x < img.width() as usize && y < img.height() as usize {
                img.put_pixel(x as u32, y as u32, image::Rgb([255, 255, 255]));
            }
        }
    }
}
