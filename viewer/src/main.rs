//! `cmae-viewer`: live reconstructions and attention maps of Conditional MAE
//! models, on the same GPU (wgpu device) as the model runs.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Parser;
use cmae_engine::Device;
use cmae_engine::device::AdapterRequest;
use eframe::{egui, egui_wgpu, wgpu};

use cmae_viewer::app::{Follow, Panel, ViewerApp};
use cmae_viewer::headless;
use cmae_viewer::training::Training;
use cmae_viewer::worker::{Picture, Source, Worker};

#[derive(Parser)]
#[command(name = "cmae-viewer", version, about = "Watch Conditional MAE models reconstruct and attend")]
struct Cli {
    /// Explore a checkpoint (pretrained MAE, linear probe or fine-tuned).
    #[arg(long)]
    checkpoint: Option<PathBuf>,
    /// Follow a run directory while `cmae pretrain` writes it.
    #[arg(long, conflicts_with = "checkpoint")]
    run: Option<PathBuf>,
    /// Train this RON config in the viewer (pause/resume in the UI).
    #[arg(long, conflicts_with_all = ["checkpoint", "run"])]
    train: Option<PathBuf>,
    /// The run directory for --train (default: runs/viewer-<time>).
    #[arg(long, requires = "train")]
    out: Option<PathBuf>,
    /// Images come from this dataset's test split (synthetic, fmnist, folder:DIR, …).
    #[arg(long, default_value = "synthetic")]
    data: String,
    /// Which test image.
    #[arg(long, default_value_t = 0)]
    index: usize,
    /// A PNG/JPEG file instead of a dataset image.
    #[arg(long)]
    image: Option<PathBuf>,
    /// Masking shots, e.g. 0:0.75,10:0.1 (default: the checkpoint's own).
    #[arg(long)]
    shots: Option<String>,
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Attention layer (default: the last).
    #[arg(long)]
    layer: Option<usize>,
    /// Attention head (default: the mean over heads).
    #[arg(long)]
    head: Option<usize>,
    /// Show where this patch attends instead of the cls token (like a click).
    #[arg(long)]
    query: Option<usize>,
    /// reconstruction, attention, reversed, charts or loss.
    #[arg(long, default_value = "reconstruction")]
    panel: String,
    /// Render offscreen to this PNG and exit (no window system needed).
    #[arg(long)]
    screenshot: Option<PathBuf>,
    /// With --screenshot: also save the panel itself as PNG (its picture, or its charts via plotters).
    #[arg(long, requires = "screenshot")]
    save_panel: Option<PathBuf>,
    /// Screenshot size, WIDTHxHEIGHT.
    #[arg(long, default_value = "1280x800")]
    size: String,
    /// With --screenshot: click this patch of the panel's image first, as a user would.
    #[arg(long, requires = "screenshot")]
    click_patch: Option<usize>,
    /// Close the window after this many frames (smoke tests).
    #[arg(long)]
    frames: Option<u64>,
}

fn parse_size(s: &str) -> Result<(u32, u32)> {
    let (w, h) = s.split_once('x').context("--size must be WIDTHxHEIGHT, e.g. 1280x800")?;
    Ok((w.parse().context("--size width")?, h.parse().context("--size height")?))
}

/// Applies the command line to a fresh app: opens the checkpoint/run and sets the view.
fn configure(app: &mut ViewerApp, cli: &Cli) -> Result<()> {
    app.panel = Panel::parse(&cli.panel).with_context(|| {
        let names: Vec<&str> = Panel::ALL.iter().map(|p| p.name()).collect();
        format!("--panel {:?} is not one of {}", cli.panel, names.join(", "))
    })?;
    app.seed = cli.seed;
    if let Some(l) = cli.layer {
        app.layer = l;
        app.pin_layer = true;
    }
    app.head = cli.head;
    app.query = cli.query;
    app.data_index = cli.index;
    if let Some(s) = &cli.shots {
        app.shots = cmae::config::parse_shots(s)?;
        app.pin_shots = true;
    }
    let picture = match &cli.image {
        Some(p) => {
            app.file_path = p.display().to_string();
            Picture::File(Source::Path(p.clone()))
        }
        None => Picture::Dataset { spec: app.data_spec.clone(), index: cli.index },
    };
    if let Some(c) = &cli.checkpoint {
        if !c.is_file() {
            bail!("checkpoint {} does not exist", c.display());
        }
        app.open(Source::Path(c.clone()), Some(picture));
    } else if let Some(r) = &cli.run {
        if !r.is_dir() {
            bail!("run directory {} does not exist", r.display());
        }
        app.follow = Some(Follow::new(r.clone()));
    }
    Ok(())
}

fn run_headless(cli: &Cli, out: &std::path::Path) -> Result<ExitCode> {
    if cli.train.is_some() {
        bail!("--screenshot cannot train; screenshot a run with --run DIR instead");
    }
    let dev = Device::from_env()?;
    let mut app = ViewerApp::new(Worker::start(dev.clone(), || {}), cli.data.clone());
    configure(&mut app, cli)?;
    headless::screenshot(&dev, &mut app, parse_size(&cli.size)?, cli.click_patch, Duration::from_secs(600), out)?;
    println!("wrote {}", out.display());
    // Where the panel's picture landed (offscreen points are pixels), so
    // tests and scripts can compare the drawn pixels with --save-panel's.
    if let Some(r) = app.image_rect {
        println!("panel image at {} {} {} {}", r.min.x, r.min.y, r.width(), r.height());
    }
    if let Some(path) = &cli.save_panel {
        app.save_panel(path)?;
        println!("wrote {}", path.display());
    }
    if let Some(e) = &app.error {
        eprintln!("error: {e}");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

/// eframe's device: the adapter the engine would pick (`CMAE_BACKEND`,
/// `CMAE_ADAPTER`, never GL unless asked) among those that can draw to the
/// window, opened with its full limits and the features the engine uses.
fn wgpu_options(req: AdapterRequest) -> egui_wgpu::WgpuConfiguration {
    let mut cfg = egui_wgpu::WgpuConfiguration::default();
    if let egui_wgpu::WgpuSetup::CreateNew(new) = &mut cfg.wgpu_setup {
        new.instance_descriptor.backends = req.backends();
        new.native_adapter_selector =
            Some(Arc::new(move |adapters: &[wgpu::Adapter], surface: Option<&wgpu::Surface<'_>>| {
                let drawable: Vec<wgpu::Adapter> =
                    adapters.iter().filter(|a| surface.is_none_or(|s| a.is_surface_supported(s))).cloned().collect();
                req.pick(&drawable).map_err(|e| e.to_string())
            }));
        new.device_descriptor = Arc::new(cmae_viewer::device_descriptor);
    }
    cfg
}

struct Window {
    app: Option<ViewerApp>,
    error: Option<String>,
    /// `--frames`: close after this many frames drawn with the worker idle.
    frames_left: Option<u64>,
    /// The error showing when the window closed, for the exit status.
    error_at_exit: Arc<Mutex<Option<String>>>,
}

impl eframe::App for Window {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        match &mut self.app {
            Some(app) => app.ui(ui),
            None => {
                egui::CentralPanel::default().show(ui, |ui| {
                    ui.heading("cmae viewer could not start");
                    ui.label(self.error.as_deref().unwrap_or("unknown error"));
                });
            }
        }
        if let Some(n) = self.frames_left.as_mut() {
            if !self.app.as_ref().is_some_and(|a| a.worker.busy) {
                *n = n.saturating_sub(1);
            }
            if *n == 0 {
                ui.ctx().send_viewport_cmd(egui::ViewportCommand::Close);
            }
            ui.ctx().request_repaint();
        }
    }

    /// A training thread is stopped at a checkpoint, so closing the window
    /// never loses training.
    fn on_exit(&mut self) {
        if let Some(app) = &mut self.app {
            if let Some(t) = &mut app.training {
                t.stop_and_wait();
            }
            if let Some(e) = app.error.clone().or_else(|| app.training.as_ref().and_then(|t| t.error.clone())) {
                self.error = Some(e);
            }
        }
        *self.error_at_exit.lock().unwrap_or_else(|e| e.into_inner()) = self.error.clone();
    }
}

fn run_window(cli: Cli) -> Result<ExitCode> {
    let req = AdapterRequest::from_env()?;
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default().with_inner_size([1280.0, 820.0]).with_title("cmae viewer"),
        renderer: eframe::Renderer::Wgpu,
        wgpu_options: wgpu_options(req),
        ..Default::default()
    };
    let error_at_exit = Arc::new(Mutex::new(None));
    let exit_error = error_at_exit.clone();
    eframe::run_native(
        "cmae-viewer",
        options,
        Box::new(move |cc| {
            let started = (|| -> Result<ViewerApp> {
                let rs = cc.wgpu_render_state.as_ref().context("the window has no wgpu renderer")?;
                // The model shares the window's GPU device.
                let tune = cmae_engine::TuneConfig::from_env()?;
                let dev = Device::from_wgpu(rs.device.clone(), rs.queue.clone(), rs.adapter.get_info(), tune);
                dev.warm_start(if cli.train.is_some() { "viewer-train" } else { "viewer" });
                let ctx = cc.egui_ctx.clone();
                let mut app =
                    ViewerApp::new(Worker::start(dev.clone(), move || ctx.request_repaint()), cli.data.clone());
                configure(&mut app, &cli)?;
                if let Some(config) = &cli.train {
                    let cfg = cmae::config::PretrainConfig::load(config)?;
                    let out = match &cli.out {
                        Some(o) => o.clone(),
                        None => cmae::cli::fresh_run_dir("viewer")?,
                    };
                    let t = Training::start(cfg, out.clone(), dev);
                    app.training = Some(t);
                    app.follow = Some(Follow::new(out));
                    app.panel = Panel::Loss;
                }
                Ok(app)
            })();
            let (app, error) = match started {
                Ok(a) => (Some(a), None),
                Err(e) => (None, Some(format!("{e:#}"))),
            };
            Ok(Box::new(Window { app, error, frames_left: cli.frames, error_at_exit: exit_error }))
        }),
    )
    .map_err(|e| anyhow::anyhow!("cannot open a window: {e}; without a display, use --screenshot OUT.png"))?;
    match error_at_exit.lock().unwrap_or_else(|e| e.into_inner()).take() {
        // Already printed when it happened at start-up; repeat it last for scripts.
        Some(e) => bail!("{e}"),
        None => Ok(ExitCode::SUCCESS),
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).format_timestamp(None).init();
    let cli = Cli::parse();
    let result = match cli.screenshot.clone() {
        Some(out) => run_headless(&cli, &out),
        None => run_window(cli),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks its argument graph only in debug builds, at parse time.
    #[test]
    fn the_command_line_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
