//! The page (wasm32 only): the viewer's UI drawn by eframe on the page's
//! canvas, with the model on eframe's own WebGPU device; the checkpoint and
//! image fetched from the URL's parameters (or the bundled ones), a file
//! picker and drops for others. Nothing here blocks: GPU reads and fetches
//! are awaited on the page's event loop.

use std::cell::RefCell;
use std::rc::Rc;
use std::sync::Arc;
use std::sync::mpsc::Sender;

use anyhow::{Context, Result, anyhow};
use cmae_engine::device::AdapterRequest;
use cmae_engine::{Device, TuneConfig};
use cmae_viewer::app::{Panel, ViewerApp};
use cmae_viewer::training::Training;
use cmae_viewer::worker::{Picture, Source, Worker};
use eframe::{egui, egui_wgpu, wgpu};
use wasm_bindgen::JsCast;
use wasm_bindgen::prelude::*;
use wasm_bindgen_futures::{JsFuture, spawn_local};

use crate::{BUNDLED_IMAGES, PAGE_PRESETS, PageParams, adapter_name, bundled_image, page_preset, result_json};

thread_local! {
    /// The running viewer: eframe stops when its runner is dropped.
    static RUNNER: RefCell<Option<eframe::WebRunner>> = const { RefCell::new(None) };
}

fn log(line: &str) {
    web_sys::console::log_1(&line.into());
}

fn js_error(e: &JsValue) -> String {
    e.as_string().unwrap_or_else(|| format!("{e:?}"))
}

fn window() -> Result<web_sys::Window> {
    web_sys::window().context("this page has no window")
}

/// Writes `text` in the page's status line, outside the canvas, so it reads
/// even when nothing can draw.
fn show_status(text: &str) {
    if let Some(el) = web_sys::window().and_then(|w| w.document()).and_then(|d| d.get_element_by_id("status")) {
        el.set_text_content(Some(text));
    }
}

/// The id of the page's canvas (see `index.html`).
const CANVAS: &str = "cmae";

/// Starts the viewer on the page's canvas; on failure (no WebGPU, a bad URL
/// parameter) shows and logs why in one line and returns it.
#[wasm_bindgen]
pub async fn start() -> String {
    match run(CANVAS).await {
        Ok(()) => "started".into(),
        Err(e) => {
            show_status(&format!("{e:#}"));
            let line = format!("cmae-web error {e:#}");
            log(&line);
            line
        }
    }
}

/// `smoke.html`: opens the adapter, runs [`crate::smoke`] and logs one line saying how it went.
#[wasm_bindgen]
pub async fn run_smoke() -> String {
    let outcome = async { crate::smoke(&crate::open().await?).await }.await;
    let line = match outcome {
        Ok(report) => format!("cmae-web smoke {report}"),
        Err(e) => format!("cmae-web error {e}"),
    };
    log(&line);
    line
}

fn url_params() -> Result<PageParams> {
    let search = window()?.location().search().map_err(|e| anyhow!("reading the URL: {}", js_error(&e)))?;
    let query = web_sys::UrlSearchParams::new_with_str(&search).map_err(|e| anyhow!("{}", js_error(&e)))?;
    let mut pairs = Vec::new();
    for entry in js_sys::try_iter(&query.entries()).ok().flatten().into_iter().flatten() {
        let pair = js_sys::Array::from(&entry.map_err(|e| anyhow!("{}", js_error(&e)))?);
        pairs.push((pair.get(0).as_string().unwrap_or_default(), pair.get(1).as_string().unwrap_or_default()));
    }
    PageParams::from_pairs(pairs)
}

async fn run(canvas_id: &str) -> Result<()> {
    let params = url_params()?;
    // The engine's own adapter search first: without WebGPU it says so in
    // one sentence, where eframe would fail in its own words (or fall back
    // to WebGL, which has no compute shaders).
    cmae_engine::device::choose_async(&AdapterRequest::from_env()?).await?;
    let canvas = window()?
        .document()
        .context("this page has no document")?
        .get_element_by_id(canvas_id)
        .with_context(|| format!("the page has no element #{canvas_id}"))?
        .dyn_into::<web_sys::HtmlCanvasElement>()
        .map_err(|_| anyhow!("#{canvas_id} is not a canvas"))?;
    let mut wgpu_options = egui_wgpu::WgpuConfiguration::default();
    if let egui_wgpu::WgpuSetup::CreateNew(new) = &mut wgpu_options.wgpu_setup {
        new.instance_descriptor.backends = wgpu::Backends::BROWSER_WEBGPU;
        new.device_descriptor = Arc::new(cmae_viewer::device_descriptor);
    }
    let options = eframe::WebOptions { wgpu_options, ..Default::default() };
    let runner = eframe::WebRunner::new();
    runner
        .start(canvas, options, Box::new(move |cc| Ok(Box::new(Page::new(cc, params)?) as Box<dyn eframe::App>)))
        .await
        .map_err(|e| anyhow!("the viewer could not start: {}", js_error(&e)))?;
    RUNNER.with(|r| *r.borrow_mut() = Some(runner));
    show_status("");
    Ok(())
}

/// The URL's checkpoint (none when training first) and image.
type Fetched = (Option<Source>, Source);

/// The viewer in the page, and the one result line it owes the page's reader.
struct Page {
    app: ViewerApp,
    params: PageParams,
    dev: Device,
    adapter: String,
    fetched: Rc<RefCell<Option<Result<Fetched>>>>,
    reported: bool,
    /// The training form: preset and steps.
    form: (usize, usize),
    /// The page preset of the run.
    form_preset: String,
    /// The run's last weights, once it has ended and said so.
    trained: Option<String>,
    /// The canvas, to log a picture of the frame after the result's.
    canvas: Option<web_sys::HtmlCanvasElement>,
}

impl Page {
    fn new(cc: &eframe::CreationContext<'_>, params: PageParams) -> Result<Self> {
        let rs = cc.wgpu_render_state.as_ref().context("the page has no WebGPU renderer")?;
        // The model shares eframe's device: the UI and the model on one GPU queue.
        let dev = Device::from_wgpu(rs.device.clone(), rs.queue.clone(), rs.adapter.get_info(), TuneConfig::off());
        let ctx = cc.egui_ctx.clone();
        let wake = ctx.clone();
        let mut app = ViewerApp::new(Worker::start(dev.clone(), move || wake.request_repaint()), "synthetic".into());
        if let Some(shots) = &params.shots {
            app.shots = shots.clone();
            app.pin_shots = true;
        }
        app.seed = params.seed;
        app.file_picker = Some(file_picker(app.file_sender(), ctx.clone())?);
        app.download = Some(Box::new(download));
        let checkpoint = params.train.is_none().then(|| params.checkpoint.clone());
        app.status = format!("fetching {}", checkpoint.as_deref().unwrap_or(&params.image));
        let fetched = Rc::new(RefCell::new(None));
        let (slot, image) = (fetched.clone(), params.image.clone());
        spawn_local(async move {
            let both = async {
                let checkpoint = match checkpoint {
                    Some(url) => Some(fetch(&url).await?),
                    None => None,
                };
                Ok((checkpoint, fetch(&image).await?))
            }
            .await;
            *slot.borrow_mut() = Some(both);
            ctx.request_repaint();
        });
        let form = (0, page_preset(PAGE_PRESETS[0])?.train.steps.unwrap_or(200));
        let adapter = adapter_name(&dev);
        let form_preset = String::new();
        Ok(Self { app, params, dev, adapter, fetched, reported: false, form, form_preset, trained: None, canvas: None })
    }

    /// Starts pretraining page preset `name` (`steps` optimizer steps, or
    /// the preset's), showing its loss curve and its reconstructions.
    fn start_training(&mut self, ctx: &egui::Context, name: &str, steps: Option<usize>) {
        let started = page_preset(name).and_then(|mut cfg| {
            if steps.is_some() {
                cfg.train.steps = steps;
            }
            let wake = ctx.clone();
            Training::start(cfg, self.dev.clone(), move || wake.request_repaint(), clock_s)
        });
        match started {
            Ok(t) => {
                self.form_preset = name.to_string();
                self.app.training = Some(t);
                self.app.metrics.clear();
                self.app.panel = Panel::Loss;
                self.trained = None;
            }
            Err(e) => self.app.error = Some(format!("cannot start training: {e:#}")),
        }
    }

    /// The page's own windows (starting a run, the bundled images), and a
    /// run's end: logged as `cmae-web trained {json}` (and downloaded, when
    /// the URL asks).
    fn page_windows(&mut self, ctx: &egui::Context) {
        if let Some(t) = &self.app.training
            && t.finished
            && self.trained.is_none()
            && let Some((step, bytes)) = t.latest()
        {
            let losses: Vec<f64> = self.app.metrics.iter().map(|m| m.loss).collect();
            let elapsed = self.app.metrics.last().map_or(0.0, |m| m.elapsed_s);
            let report = serde_json::json!({
                "steps": step,
                "losses": losses,
                "steps_per_s": step as f64 / elapsed.max(1e-9),
                "images_per_s": self.app.metrics.iter().map(|m| m.images_per_s).sum::<f64>() / losses.len().max(1) as f64,
                "model": self.form_preset,
                "adapter": self.adapter,
            });
            log(&format!("cmae-web trained {report}"));
            let name = format!("cmae-pretrain-step-{step:08}.safetensors");
            if self.params.download
                && let Err(e) = download(&name, &bytes)
            {
                self.app.error = Some(format!("{e:#}"));
            }
            self.trained = Some(format!("cmae-page-step-{step:08}.safetensors"));
        }
        let mut start = None;
        egui::Window::new("train in this page").default_open(false).default_pos([12.0, 520.0]).show(ctx, |ui| {
            let running = self.app.training.as_ref().is_some_and(Training::running);
            egui::ComboBox::from_label("model").selected_text(PAGE_PRESETS[self.form.0]).show_ui(ui, |ui| {
                for (k, name) in PAGE_PRESETS.iter().enumerate() {
                    ui.selectable_value(&mut self.form.0, k, *name);
                }
            });
            ui.add(egui::DragValue::new(&mut self.form.1).range(1..=100_000).prefix("steps "));
            ui.label("on synthetic images, on this page's GPU; pause, resume and download in the controls");
            if ui.add_enabled(!running, egui::Button::new("start a fresh run")).clicked() {
                start = Some((PAGE_PRESETS[self.form.0], self.form.1));
            }
        });
        if let Some((name, steps)) = start {
            self.start_training(ctx, name, Some(steps));
        }
        egui::Window::new("bundled images").default_pos([12.0, 480.0]).default_open(false).show(ctx, |ui| {
            ui.label("Fashion-MNIST test images");
            ui.horizontal_wrapped(|ui| {
                for k in 0..BUNDLED_IMAGES {
                    if ui.button(k.to_string()).clicked() {
                        let (files, ctx, url) = (self.app.file_sender(), ctx.clone(), bundled_image(k));
                        spawn_local(async move {
                            let file = fetch(&url)
                                .await
                                .unwrap_or_else(|e| Source::Unreadable { name: url, why: format!("{e:#}") });
                            let _ = files.send(file);
                            ctx.request_repaint();
                        });
                    }
                }
            });
        });
    }

    /// Logs the result line once the first reconstruction and attention map
    /// are drawn (or the first error); when training first, those of the
    /// run's last weights.
    fn report(&mut self) {
        if self.reported || self.app.worker.busy {
            return;
        }
        if self.params.train.is_some()
            && self.app.error.is_none()
            && (self.trained.is_none() || self.app.info.as_ref().map(|i| &i.name) != self.trained.as_ref())
        {
            return;
        }
        let line = match (&self.app.error, &self.app.last_report, &self.app.attention_weights) {
            (Some(e), _, _) => format!("cmae-web error {e}"),
            (None, Some(report), Some(attention)) => {
                let mut json = result_json(report, attention, self.app.layer, &self.params, &self.adapter);
                // Milliseconds since navigation began: the first-load figure.
                json["ms_since_navigation"] =
                    serde_json::json!(window().ok().and_then(|w| w.performance()).map(|p| p.now()));
                format!("cmae-web result {json}")
            }
            _ => return,
        };
        self.reported = true;
        log(&line);
    }

    /// Logs `cmae-web screenshot data:image/png;base64,…`: the canvas as
    /// last presented, for a test to check that the panel is drawn.
    fn log_screenshot(&mut self) {
        if let Some(canvas) = self.canvas.take() {
            match canvas.to_data_url() {
                Ok(url) => log(&format!("cmae-web screenshot {url}")),
                Err(e) => log(&format!("cmae-web error a picture of the page: {}", js_error(&e))),
            }
        }
    }
}

impl eframe::App for Page {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let fetched = self.fetched.borrow_mut().take();
        if let Some(fetched) = fetched {
            match fetched {
                Ok((Some(checkpoint), image)) => {
                    self.app.file_path = image.name();
                    self.app.open(checkpoint, Some(Picture::File(image)));
                }
                Ok((None, image)) => {
                    self.app.file_path = image.name();
                    self.app.prefer_picture(Picture::File(image));
                    let (name, steps) = (self.params.train.clone().unwrap_or_default(), self.params.steps);
                    self.start_training(&ui.ctx().clone(), &name, steps);
                }
                Err(e) => self.app.error = Some(format!("{e:#}")),
            }
        }
        self.page_windows(&ui.ctx().clone());
        // The frame after the result's: the result's frame is on the canvas.
        self.log_screenshot();
        self.app.ui(ui);
        let was = self.reported;
        self.report();
        if !was && self.reported {
            self.canvas = canvas();
            ui.ctx().request_repaint();
        }
    }
}

fn canvas() -> Option<web_sys::HtmlCanvasElement> {
    let element = web_sys::window()?.document()?.get_element_by_id(CANVAS)?;
    element.dyn_into().ok()
}

/// The page's clock in seconds.
fn clock_s() -> f64 {
    web_sys::window().and_then(|w| w.performance()).map_or(0.0, |p| p.now() / 1000.0)
}

/// Offers `bytes` as a file download named `name`. The object URL is not
/// revoked: a browser may still be reading it after the click returns, and
/// it is freed with the page.
fn download(name: &str, bytes: &[u8]) -> Result<()> {
    let failed = |e: JsValue| anyhow!("cannot download {name}: {}", js_error(&e));
    let parts = js_sys::Array::of1(&js_sys::Uint8Array::from(bytes));
    let blob = web_sys::Blob::new_with_u8_array_sequence(&parts).map_err(failed)?;
    let url = web_sys::Url::create_object_url_with_blob(&blob).map_err(failed)?;
    let document = window()?.document().context("this page has no document")?;
    let link: web_sys::HtmlAnchorElement =
        document.create_element("a").map_err(failed)?.dyn_into().map_err(|_| anyhow!("an anchor element"))?;
    link.set_href(&url);
    link.set_download(name);
    link.click();
    Ok(())
}

/// A file at `url` (relative to the page), named by its URL.
async fn fetch(url: &str) -> Result<Source> {
    let failed = |e: JsValue| anyhow!("cannot fetch {url}: {}", js_error(&e));
    let response: web_sys::Response =
        JsFuture::from(window()?.fetch_with_str(url)).await.map_err(failed)?.dyn_into().map_err(failed)?;
    if !response.ok() {
        anyhow::bail!("cannot fetch {url}: HTTP {} {}", response.status(), response.status_text());
    }
    let body = JsFuture::from(response.array_buffer().map_err(failed)?).await.map_err(failed)?;
    Ok(Source::Bytes { name: url.to_string(), bytes: js_sys::Uint8Array::new(&body).to_vec().into() })
}

/// A hidden `<input type=file>`: the returned function opens the browser's
/// picker, and the chosen file's bytes go to `files`.
fn file_picker(files: Sender<Source>, ctx: egui::Context) -> Result<Box<dyn Fn()>> {
    let document = window()?.document().context("this page has no document")?;
    let input: web_sys::HtmlInputElement = document
        .create_element("input")
        .map_err(|e| anyhow!("{}", js_error(&e)))?
        .dyn_into()
        .map_err(|_| anyhow!("an input element"))?;
    input.set_type("file");
    input.set_accept(".safetensors,.png,.jpg,.jpeg");
    input.set_hidden(true);
    document.body().context("this page has no body")?.append_child(&input).map_err(|e| anyhow!("{}", js_error(&e)))?;
    let chosen = input.clone();
    let on_change = Closure::<dyn FnMut()>::new(move || {
        let Some(file) = chosen.files().and_then(|list| list.get(0)) else { return };
        // Choosing the same file again must fire again.
        chosen.set_value("");
        let (files, ctx) = (files.clone(), ctx.clone());
        spawn_local(async move {
            let name = file.name();
            let source = match JsFuture::from(file.array_buffer()).await {
                Ok(body) => Source::Bytes { name, bytes: js_sys::Uint8Array::new(&body).to_vec().into() },
                Err(e) => Source::Unreadable { name, why: js_error(&e) },
            };
            let _ = files.send(source);
            ctx.request_repaint();
        });
    });
    input.set_onchange(Some(on_change.as_ref().unchecked_ref()));
    // The input lives as long as the page, and so does its handler.
    on_change.forget();
    Ok(Box::new(move || input.click()))
}
