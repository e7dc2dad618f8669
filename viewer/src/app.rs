//! The viewer's UI: controls on the left, the chosen panel in the middle.
//! All model work goes to the worker; the UI only draws what came back.
//! The desktop app and the page (`cmae-web`) draw this same UI; what only a
//! desktop has (paths, followed run directories, a training thread, saving
//! PNGs) simply never starts in a page.

use std::path::{Path, PathBuf};
use std::sync::mpsc::{Receiver, Sender};
use std::time::{Duration, Instant, SystemTime};

use cmae::analysis::plot::Series;
use cmae::config::{Shot, shots_to_string, validate_shots};
use cmae::train::metrics::{MetricsLine, MetricsLog};
use eframe::egui;
use eframe::egui::{Color32, ColorImage, Pos2, Sense, Stroke, TextureHandle, TextureOptions, Vec2};
use image::RgbImage;

use crate::training::Training;
use crate::worker::{Job, ModelInfo, Picture, Reply, Source, Worker};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Panel {
    Reconstruction,
    Attention,
    Reversed,
    Charts,
    Loss,
}

impl Panel {
    pub const ALL: [Panel; 5] = [Panel::Reconstruction, Panel::Attention, Panel::Reversed, Panel::Charts, Panel::Loss];

    pub fn name(self) -> &'static str {
        match self {
            Panel::Reconstruction => "reconstruction",
            Panel::Attention => "attention",
            Panel::Reversed => "reversed",
            Panel::Charts => "charts",
            Panel::Loss => "loss",
        }
    }

    pub fn parse(s: &str) -> Option<Panel> {
        Panel::ALL.into_iter().find(|p| p.name() == s)
    }
}

/// A run directory the viewer follows while `cmae pretrain` (or the viewer's
/// own training thread) writes it.
pub struct Follow {
    pub dir: PathBuf,
    metrics_seen: Option<SystemTime>,
    checkpoint_seen: Option<SystemTime>,
    last_poll: Option<Instant>,
}

impl Follow {
    pub fn new(dir: PathBuf) -> Self {
        Self { dir, metrics_seen: None, checkpoint_seen: None, last_poll: None }
    }
}

/// Offers bytes to the user as a file of the given name.
pub type Download = Box<dyn Fn(&str, &[u8]) -> anyhow::Result<()>>;

pub struct ViewerApp {
    pub worker: Worker,
    pub panel: Panel,
    pub info: Option<ModelInfo>,
    pub shots: Vec<Shot>,
    pub seed: u64,
    pub layer: usize,
    /// None: the mean over heads.
    pub head: Option<usize>,
    /// None: the cls token's attention.
    pub query: Option<usize>,
    pub data_spec: String,
    pub data_index: usize,
    pub file_path: String,
    pub status: String,
    pub error: Option<String>,
    pub follow: Option<Follow>,
    pub training: Option<Training>,
    /// The loss panel's metrics: of the followed run, or the page's own.
    pub metrics: Vec<MetricsLine>,
    /// Saves bytes as a file the user downloads (a page; a desktop writes paths).
    pub download: Option<Download>,
    /// The layer was chosen on the command line: keep it when a checkpoint loads.
    pub pin_layer: bool,
    /// The shots were chosen on the command line: keep them when a checkpoint loads.
    pub pin_shots: bool,
    /// Opens the page's file picker (a page cannot read paths); it sends
    /// the choice to [`Self::file_sender`].
    pub file_picker: Option<Box<dyn Fn()>>,
    /// Files chosen or dropped, opened on the next frame.
    files: (Sender<Source>, Receiver<Source>),
    /// The last reconstruction's numbers (`Reconstruction::report`).
    pub last_report: Option<serde_json::Value>,
    /// The attention map on screen: one weight per patch.
    pub attention_weights: Option<Vec<f64>>,
    /// Where "save panel as PNG" writes.
    pub save_path: String,
    /// Where the panel's picture was drawn last frame (headless clicks aim at it).
    pub image_rect: Option<egui::Rect>,
    images: std::collections::HashMap<Panel, (RgbImage, TextureHandle)>,
    picture: Option<TextureHandle>,
    stats: Option<(Vec<f64>, Vec<f64>)>,
    reversed_shares: Option<[f64; 3]>,
    pending_picture: Option<Picture>,
    /// The picture on screen, kept when another checkpoint is opened.
    current_picture: Option<Picture>,
}

fn to_texture(ctx: &egui::Context, name: &str, img: &RgbImage) -> TextureHandle {
    let color = ColorImage::from_rgb([img.width() as usize, img.height() as usize], img.as_raw());
    ctx.load_texture(name, color, TextureOptions::NEAREST)
}

impl ViewerApp {
    pub fn new(worker: Worker, data_spec: String) -> Self {
        Self {
            worker,
            panel: Panel::Reconstruction,
            info: None,
            shots: cmae::config::parse_shots("0:0.75").expect("a valid default"),
            seed: 0,
            layer: 0,
            head: None,
            query: None,
            data_spec,
            data_index: 0,
            file_path: String::new(),
            status: "starting".into(),
            error: None,
            follow: None,
            training: None,
            metrics: Vec::new(),
            download: None,
            pin_layer: false,
            pin_shots: false,
            file_picker: None,
            files: std::sync::mpsc::channel(),
            last_report: None,
            attention_weights: None,
            save_path: String::new(),
            image_rect: None,
            images: Default::default(),
            picture: None,
            stats: None,
            reversed_shares: None,
            pending_picture: None,
            current_picture: None,
        }
    }

    /// Hands a job to the worker. The error shown is the first one after the
    /// latest request: later jobs often fail only because an earlier one did.
    fn send(&mut self, job: Job) {
        self.error = None;
        self.worker.send(job);
    }

    /// Opens a checkpoint; the current picture is reloaded against it.
    pub fn open(&mut self, checkpoint: Source, picture: Option<Picture>) {
        self.status = format!("loading {}", checkpoint.name());
        self.send(Job::Load(checkpoint));
        let p = picture.unwrap_or(Picture::Dataset { spec: self.data_spec.clone(), index: self.data_index });
        self.pending_picture = Some(p);
    }

    /// Shows `p` with the next checkpoint opened (nothing is computed before).
    pub fn prefer_picture(&mut self, p: Picture) {
        self.current_picture = Some(p);
    }

    /// Where a file picker sends what the user chose.
    pub fn file_sender(&self) -> Sender<Source> {
        self.files.0.clone()
    }

    /// A file the user chose or dropped: a checkpoint (`.safetensors`, shown
    /// with the current picture) or an image.
    pub fn open_file(&mut self, file: Source) {
        if file.is_checkpoint() {
            let picture = self.pending_picture.clone().or_else(|| self.current_picture.clone());
            self.open(file, picture);
        } else {
            self.file_path = file.name();
            self.choose_picture(Picture::File(file));
        }
    }

    /// Recomputes every view of the current model and picture.
    fn refresh(&mut self) {
        let Some(info) = &self.info else { return };
        let is_mae = info.shots.is_some();
        let shots_ok = validate_shots(&self.shots, &info.config);
        if is_mae && shots_ok.is_ok() {
            self.send(Job::Reconstruct { shots: self.shots.clone(), seed: self.seed });
            if self.shots.iter().any(|s| s.layer > 0 && s.ratio > 0.0) {
                self.send(Job::Reversed { shots: self.shots.clone(), seed: self.seed });
            }
        }
        self.send(Job::Attention { layer: self.layer, head: self.head, query: self.query });
        self.send(Job::Stats);
        if is_mae && let Err(e) = shots_ok {
            self.error = Some(format!("{e}"));
        }
    }

    fn set_picture(&mut self, p: Picture) {
        self.current_picture = Some(p.clone());
        self.send(Job::Picture(p));
        self.refresh();
    }

    /// A picture the user chose: a patch query of the old one means nothing here.
    fn choose_picture(&mut self, p: Picture) {
        self.query = None;
        self.set_picture(p);
    }

    /// Applies the worker's replies; true when something changed.
    pub fn poll_worker(&mut self, ctx: &egui::Context) -> bool {
        let mut changed = false;
        while let Ok(reply) = self.worker.rx.try_recv() {
            changed = true;
            match reply {
                Reply::Loaded(info) => {
                    let depth = info.config.depth;
                    if self.info.is_none() && !self.pin_layer {
                        self.layer = depth.saturating_sub(1);
                    }
                    self.layer = self.layer.min(depth.saturating_sub(1));
                    if let Some(s) = &info.shots
                        && self.info.is_none()
                        && !self.pin_shots
                    {
                        self.shots = s.clone();
                    }
                    self.status = format!("{} (depth {}, {} heads)", info.name, depth, info.config.num_heads);
                    // The numbers shown belong to the model they came from.
                    self.last_report = None;
                    self.attention_weights = None;
                    self.info = Some(info);
                    self.error = None;
                    if let Some(p) = self.pending_picture.take() {
                        self.set_picture(p);
                    } else {
                        self.refresh();
                    }
                }
                Reply::Picture(img) => self.picture = Some(to_texture(ctx, "picture", &img)),
                Reply::Reconstruction { image, report } => {
                    self.last_report = Some(report);
                    self.store(ctx, Panel::Reconstruction, image);
                }
                Reply::Attention { image, weights } => {
                    self.attention_weights = Some(weights);
                    self.store(ctx, Panel::Attention, image);
                }
                Reply::Reversed { image, to_cls, to_kept, to_dropped } => {
                    self.reversed_shares = Some([to_cls, to_kept, to_dropped]);
                    self.store(ctx, Panel::Reversed, image);
                }
                Reply::Stats { distance, entropy } => self.stats = Some((distance, entropy)),
                Reply::Error(e) => {
                    self.error.get_or_insert(e);
                }
                Reply::Idle(taken) => self.worker.idle(taken),
            }
        }
        changed
    }

    fn store(&mut self, ctx: &egui::Context, panel: Panel, img: RgbImage) {
        let tex = to_texture(ctx, panel.name(), &img);
        self.images.insert(panel, (img, tex));
    }

    /// The line charts of the chart panels: (title, x label, y label, series).
    fn charts(&self) -> Vec<Chart> {
        let indexed = |v: &[f64]| v.iter().enumerate().map(|(i, &y)| (i as f64, y)).collect();
        let one = |label: &str, points| vec![Series { label: label.into(), points, dots: true }];
        match (self.panel, &self.stats, &self.metrics) {
            (Panel::Charts, Some((d, e)), _) => vec![
                Chart {
                    title: "mean attention distance per layer (over the reconstruction images)",
                    x: "layer",
                    y: "distance (px)",
                    series: one("distance", indexed(d)),
                },
                Chart {
                    title: "attention entropy per layer (over the reconstruction images)",
                    x: "layer",
                    y: "entropy (nats)",
                    series: one("entropy", indexed(e)),
                },
            ],
            (Panel::Loss, _, metrics) if !metrics.is_empty() => {
                let series = cmae::analysis::loss_series(metrics);
                vec![Chart { title: "pretraining loss", x: "step", y: "loss", series }]
            }
            _ => Vec::new(),
        }
    }

    /// Saves the current panel as PNG: pictures as drawn, charts via plotters.
    #[cfg(not(target_arch = "wasm32"))]
    pub fn save_panel(&self, path: &Path) -> anyhow::Result<()> {
        match self.panel {
            Panel::Charts | Panel::Loss => {
                let charts = self.charts();
                anyhow::ensure!(!charts.is_empty(), "the {} panel has nothing to save yet", self.panel.name());
                // Several charts go to PATH, PATH-1.png, ... in order.
                for (k, c) in charts.iter().enumerate() {
                    let target = match k {
                        0 => path.to_path_buf(),
                        _ => path.with_file_name(format!(
                            "{}-{k}.png",
                            path.file_stem().unwrap_or_default().to_string_lossy()
                        )),
                    };
                    cmae::analysis::plot::lines(&target, c.title, c.x, c.y, &c.series)?;
                }
                Ok(())
            }
            p => {
                let img = self
                    .images
                    .get(&p)
                    .map(|(i, _)| i)
                    .ok_or_else(|| anyhow::anyhow!("the {} panel has nothing to save yet", p.name()))?;
                cmae::train::recon::save_png(img, path)
            }
        }
    }

    /// Reloads metrics and the newest checkpoint of a followed run when they change.
    fn poll_follow(&mut self) {
        let Some(f) = self.follow.as_mut() else { return };
        if f.last_poll.is_some_and(|t| t.elapsed() < Duration::from_millis(700)) {
            return;
        }
        f.last_poll = Some(Instant::now());
        let modified = |p: &Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
        let metrics = f.dir.join("metrics.jsonl");
        if let Some(t) = modified(&metrics)
            && f.metrics_seen != Some(t)
        {
            f.metrics_seen = Some(t);
            if let Ok(m) = MetricsLog::read(&metrics) {
                self.metrics = m;
            }
        }
        let ckpt = f.dir.join("checkpoint.safetensors");
        if let Some(t) = modified(&ckpt)
            && f.checkpoint_seen != Some(t)
        {
            f.checkpoint_seen = Some(t);
            let picture = Picture::Dataset { spec: self.data_spec.clone(), index: self.data_index };
            self.open(Source::Path(ckpt), Some(picture));
        }
    }

    pub fn ui(&mut self, ui: &mut egui::Ui) {
        let ctx = ui.ctx().clone();
        self.poll_worker(&ctx);
        self.poll_follow();
        if let Some(t) = self.training.as_mut() {
            let news = t.poll();
            if let Some(e) = &t.error {
                self.error.get_or_insert_with(|| e.clone());
            }
            self.metrics.extend(news.metrics);
            if let Some(weights) = news.checkpoint {
                let picture = self.pending_picture.clone().or_else(|| self.current_picture.clone());
                self.open(weights, picture);
            }
        }
        take_dropped_files(&ctx, &self.files.0);
        while let Ok(file) = self.files.1.try_recv() {
            self.open_file(file);
        }
        egui::Panel::top("top").show(ui, |ui| self.top_bar(ui));
        egui::Panel::left("controls").default_size(300.0).show(ui, |ui| self.controls(ui));
        egui::CentralPanel::default().show(ui, |ui| self.central(ui));
        if self.worker.busy || self.follow.is_some() || self.training.as_ref().is_some_and(Training::running) {
            ctx.request_repaint_after(Duration::from_millis(250));
        }
    }

    fn top_bar(&mut self, ui: &mut egui::Ui) {
        ui.horizontal(|ui| {
            ui.heading("cmae viewer");
            let before = self.panel;
            for p in Panel::ALL {
                ui.selectable_value(&mut self.panel, p, p.name());
            }
            // The default file name follows the panel until the user edits it.
            if self.panel != before && self.save_path == format!("cmae-{}.png", before.name()) {
                self.save_path.clear();
            }
            if self.save_path.is_empty() {
                self.save_path = format!("cmae-{}.png", self.panel.name());
            }
            #[cfg(not(target_arch = "wasm32"))]
            {
                ui.add(egui::TextEdit::singleline(&mut self.save_path).desired_width(160.0));
                if ui.button("save panel as PNG").clicked() {
                    let path = PathBuf::from(&self.save_path);
                    self.status = match self.save_panel(&path) {
                        Ok(()) => format!("saved {}", path.display()),
                        Err(e) => format!("could not save: {e:#}"),
                    };
                }
            }
            if self.worker.busy {
                ui.spinner();
            }
            ui.label(&self.status);
        });
        if let Some(e) = &self.error {
            ui.colored_label(Color32::from_rgb(220, 60, 60), e);
        }
    }

    fn controls(&mut self, ui: &mut egui::Ui) {
        egui::ScrollArea::vertical().show(ui, |ui| {
            ui.strong("image");
            ui.horizontal(|ui| {
                ui.label("dataset");
                let spec = ui
                    .text_edit_singleline(&mut self.data_spec)
                    .on_hover_text("synthetic, fmnist, cifar10:DIR, folder:DIR, …");
                if spec.lost_focus() {
                    self.choose_picture(Picture::Dataset { spec: self.data_spec.clone(), index: self.data_index });
                }
            });
            if ui.add(egui::Slider::new(&mut self.data_index, 0..=999).text("test image")).changed() {
                self.choose_picture(Picture::Dataset { spec: self.data_spec.clone(), index: self.data_index });
            }
            match &self.file_picker {
                Some(pick) => {
                    if ui
                        .button("open a file…")
                        .on_hover_text("an image (PNG/JPEG) or a checkpoint (.safetensors); or drop one on the page")
                        .clicked()
                    {
                        pick();
                    }
                    if !self.file_path.is_empty() {
                        ui.label(&self.file_path);
                    }
                }
                None => {
                    ui.horizontal(|ui| {
                        ui.text_edit_singleline(&mut self.file_path)
                            .on_hover_text("a PNG or JPEG file (or drop one, or a checkpoint, on the window)");
                        if ui.button("open").clicked() {
                            self.choose_picture(Picture::File(Source::Path(PathBuf::from(&self.file_path))));
                        }
                    });
                }
            }
            if let Some(t) = &self.picture {
                ui.add(egui::Image::new(t).fit_to_exact_size(Vec2::splat(128.0)));
            }
            ui.separator();
            self.shots_editor(ui);
            ui.separator();
            self.attention_controls(ui);
            if let Some(t) = self.training.as_mut() {
                ui.separator();
                ui.strong("training");
                ui.label(format!("{} → {}", shots_to_string(&t.config.shots), t.place()));
                if t.finished {
                    ui.label("finished");
                } else if t.paused && t.running() {
                    ui.label("pausing at a checkpoint…");
                } else if !t.running() {
                    if ui.button("resume").clicked() {
                        t.resume();
                    }
                } else if ui.button("pause").clicked() {
                    t.pause();
                }
                if let (Some(download), Some((step, bytes))) = (&self.download, t.latest())
                    && !t.running()
                    && ui.button(format!("download checkpoint (step {step})")).clicked()
                    && let Err(e) = download(&format!("cmae-pretrain-step-{step:08}.safetensors"), &bytes)
                {
                    self.error = Some(format!("{e:#}"));
                }
            }
        });
    }

    fn shots_editor(&mut self, ui: &mut egui::Ui) {
        ui.strong("masking shots");
        let depth = self.info.as_ref().map_or(12, |i| i.config.depth);
        let mut changed = false;
        let mut remove = None;
        for (k, s) in self.shots.iter_mut().enumerate() {
            ui.horizontal(|ui| {
                ui.label(format!("shot {k}"));
                if k == 0 {
                    ui.label("layer 0");
                } else {
                    changed |= ui.add(egui::Slider::new(&mut s.layer, 1..=depth).text("layer")).changed();
                }
                changed |= ui.add(egui::Slider::new(&mut s.ratio, 0.0..=0.95).text("ratio")).changed();
                if k > 0 && ui.small_button("remove").clicked() {
                    remove = Some(k);
                }
            });
        }
        if let Some(k) = remove {
            self.shots.remove(k);
            changed = true;
        }
        ui.horizontal(|ui| {
            if ui.button("add shot").clicked() {
                let layer = (self.shots.last().map_or(0, |s| s.layer) + 1).min(depth);
                self.shots.push(Shot { layer, ratio: 0.1, loss_weight: None });
                changed = true;
            }
            if ui.button("reseed mask").clicked() {
                self.seed += 1;
                changed = true;
            }
        });
        ui.monospace(format!("L: {}", shots_to_string(&self.shots)));
        if changed {
            self.refresh();
        }
    }

    fn attention_controls(&mut self, ui: &mut egui::Ui) {
        ui.strong("attention");
        let (depth, heads) = self.info.as_ref().map_or((1, 1), |i| (i.config.depth, i.config.num_heads));
        let mut changed =
            ui.add(egui::Slider::new(&mut self.layer, 0..=depth.saturating_sub(1)).text("layer")).changed();
        egui::ComboBox::from_label("head")
            .selected_text(self.head.map_or("mean".to_string(), |h| h.to_string()))
            .show_ui(ui, |ui| {
                changed |= ui.selectable_value(&mut self.head, None, "mean").changed();
                for h in 0..heads {
                    changed |= ui.selectable_value(&mut self.head, Some(h), h.to_string()).changed();
                }
            });
        ui.label(match self.query {
            Some(q) => format!("query: patch {q} (click the image to change)"),
            None => "query: cls token (click a patch to see where it attends)".into(),
        });
        if self.query.is_some() && ui.button("back to cls").clicked() {
            self.query = None;
            changed = true;
        }
        if changed {
            self.send(Job::Attention { layer: self.layer, head: self.head, query: self.query });
        }
    }

    fn central(&mut self, ui: &mut egui::Ui) {
        match self.panel {
            Panel::Reconstruction => {
                ui.label("original | what each shot kept (dropped patches grey) | reconstruction | per-patch error");
                self.show_image(ui, Panel::Reconstruction);
            }
            Panel::Attention => {
                ui.label("attention over the image; white outline: the patches holding 50% of the mass");
                if let Some(resp) = self.show_image(ui, Panel::Attention)
                    && resp.clicked()
                    && let (Some(pos), Some(info)) = (resp.interact_pointer_pos(), &self.info)
                {
                    let rel = (pos - resp.rect.min) / resp.rect.size();
                    let grid = info.config.grid();
                    let (gx, gy) = ((rel.x * grid as f32) as usize, (rel.y * grid as f32) as usize);
                    self.query = Some(gy.min(grid - 1) * grid + gx.min(grid - 1));
                    self.send(Job::Attention { layer: self.layer, head: self.head, query: self.query });
                }
            }
            Panel::Reversed => {
                ui.label(
                    "where the tokens dropped at the first later shot send their attention, in the block before it",
                );
                if let Some([c, k, d]) = self.reversed_shares {
                    ui.label(format!("share to cls {c:.3}, to kept tokens {k:.3}, to other dropped tokens {d:.3}"));
                }
                self.show_image(ui, Panel::Reversed);
            }
            Panel::Charts | Panel::Loss => {
                if let Some(last) = self.metrics.last().filter(|_| self.panel == Panel::Loss) {
                    ui.label(format!("step {} · loss {:.4} · {:.1} images/s", last.step, last.loss, last.images_per_s));
                }
                let charts = self.charts();
                if charts.is_empty() {
                    ui.label(match self.panel {
                        Panel::Loss => "no metrics yet (follow a run with --run DIR or --train CONFIG)",
                        _ => "no statistics yet",
                    });
                }
                for c in &charts {
                    chart(ui, c);
                }
            }
        }
    }

    fn show_image(&mut self, ui: &mut egui::Ui, panel: Panel) -> Option<egui::Response> {
        let Some((img, tex)) = self.images.get(&panel) else {
            ui.label(if self.worker.busy { "computing…" } else { "nothing to show yet" });
            return None;
        };
        let avail = ui.available_size();
        let scale = (avail.x / img.width() as f32).min(avail.y / img.height() as f32).max(0.1);
        let size = Vec2::new(img.width() as f32, img.height() as f32) * scale;
        let response = ui.add(egui::Image::new(tex).fit_to_exact_size(size).sense(Sense::click()));
        self.image_rect = Some(response.rect);
        Some(response)
    }
}

/// Files dropped on the window arrive through `files`: by path natively; in
/// a page by their bytes, which the browser gives only asynchronously.
fn take_dropped_files(ctx: &egui::Context, files: &Sender<Source>) {
    for file in ctx.input(|i| i.raw.dropped_files.clone()) {
        #[cfg(not(target_arch = "wasm32"))]
        let _ = files.send(Source::Path(file.path().to_path_buf()));
        #[cfg(target_arch = "wasm32")]
        {
            let (files, ctx) = (files.clone(), ctx.clone());
            wasm_bindgen_futures::spawn_local(async move {
                let name = file.path().display().to_string();
                let _ = files.send(match file.bytes_async().await {
                    Ok(bytes) => Source::Bytes { name, bytes: bytes.into() },
                    Err(e) => Source::Unreadable { name, why: e },
                });
                ctx.request_repaint();
            });
        }
    }
}

/// One line chart: on screen via the painter, saved via plotters.
struct Chart {
    title: &'static str,
    x: &'static str,
    y: &'static str,
    series: Vec<Series>,
}

/// Draws a line chart with the painter: frame, y range, x range and legend.
fn chart(ui: &mut egui::Ui, c: &Chart) {
    ui.label(format!("{} ({} vs {})", c.title, c.y, c.x));
    let (resp, painter) = ui.allocate_painter(Vec2::new(ui.available_width().min(700.0), 220.0), Sense::hover());
    let r = egui::Rect::from_min_max(resp.rect.min + Vec2::new(56.0, 12.0), resp.rect.max - Vec2::new(72.0, 24.0));
    painter.rect_stroke(r, 0.0, Stroke::new(1.0, Color32::GRAY), egui::StrokeKind::Inside);
    let finite: Vec<(f64, f64)> =
        c.series.iter().flat_map(|s| s.points.iter().copied()).filter(|p| p.1.is_finite()).collect();
    let Some(&first) = finite.first() else { return };
    let (x0, x1, y0, y1) = finite
        .iter()
        .fold((first.0, first.0, first.1, first.1), |(a, b, c, d), &(x, y)| (a.min(x), b.max(x), c.min(y), d.max(y)));
    let (xs, ys) = ((x1 - x0).max(1e-9), (y1 - y0).max(1e-9));
    let at = |x: f64, y: f64| {
        Pos2::new(r.left() + r.width() * ((x - x0) / xs) as f32, r.bottom() - r.height() * ((y - y0) / ys) as f32)
    };
    let small = egui::FontId::proportional(11.0);
    painter.text(r.left_top(), egui::Align2::RIGHT_CENTER, format!("{y1:.3} "), small.clone(), Color32::GRAY);
    painter.text(r.left_bottom(), egui::Align2::RIGHT_CENTER, format!("{y0:.3} "), small.clone(), Color32::GRAY);
    painter.text(r.left_bottom(), egui::Align2::LEFT_TOP, format!("{x0}"), small.clone(), Color32::GRAY);
    painter.text(r.right_bottom(), egui::Align2::RIGHT_TOP, format!("{x1}"), small.clone(), Color32::GRAY);
    painter.text(r.center_bottom(), egui::Align2::CENTER_TOP, c.x, small, Color32::GRAY);
    let colors = [
        Color32::from_rgb(31, 119, 180),
        Color32::from_rgb(255, 127, 14),
        Color32::from_rgb(44, 160, 44),
        Color32::from_rgb(214, 39, 40),
    ];
    for (k, s) in c.series.iter().enumerate() {
        let color = colors[k % colors.len()];
        let pts: Vec<Pos2> = s.points.iter().filter(|p| p.1.is_finite()).map(|&(x, y)| at(x, y)).collect();
        painter.add(egui::Shape::line(pts.clone(), Stroke::new(2.0, color)));
        if s.dots {
            for p in pts {
                painter.circle_filled(p, 3.0, color);
            }
        }
        painter.text(
            Pos2::new(r.right() + 4.0, r.top() + 14.0 * k as f32),
            egui::Align2::LEFT_TOP,
            &s.label,
            egui::FontId::proportional(12.0),
            color,
        );
    }
}
