//! Renders the viewer's UI offscreen to a PNG, with no window system: the
//! same egui frames, tessellated and drawn by egui-wgpu into a texture on the
//! engine's device, then read back. CI and the README's pictures use this.

use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use cmae_engine::Device;
use eframe::egui_wgpu::{Renderer, RendererOptions, ScreenDescriptor};
use eframe::{egui, wgpu};

use crate::app::ViewerApp;

/// egui blends in gamma space, so it draws into a non-sRGB target.
const FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8Unorm;

/// egui frames drawn with no window: fixed screen size, input we make up.
struct Offscreen<'a> {
    ctx: egui::Context,
    renderer: Renderer,
    device: &'a wgpu::Device,
    queue: &'a wgpu::Queue,
    size: (u32, u32),
}

impl Offscreen<'_> {
    fn frame(&mut self, app: &mut ViewerApp, events: Vec<egui::Event>) -> egui::FullOutput {
        let (w, h) = self.size;
        let input = egui::RawInput {
            screen_rect: Some(egui::Rect::from_min_size(egui::Pos2::ZERO, egui::vec2(w as f32, h as f32))),
            events,
            ..Default::default()
        };
        let mut output = self.ctx.run_ui(input, |ui| app.ui(ui));
        for (id, deltas) in output.textures_delta.set.drain() {
            for delta in deltas {
                self.renderer.update_texture(self.device, self.queue, id, &delta);
            }
        }
        for id in output.textures_delta.free.drain() {
            self.renderer.free_texture(&id);
        }
        output
    }

    /// Runs frames until the worker has answered every job, then two more so
    /// layouts that depend on the last replies settle; returns the last frame.
    fn settle(&mut self, app: &mut ViewerApp, deadline: Instant) -> Result<egui::FullOutput> {
        // A few frames first, so the first jobs reach the worker.
        for _ in 0..3 {
            self.frame(app, Vec::new());
        }
        while app.worker.busy {
            if Instant::now() > deadline {
                bail!("the model work did not finish in time");
            }
            std::thread::sleep(Duration::from_millis(20));
            self.frame(app, Vec::new());
        }
        self.frame(app, Vec::new());
        Ok(self.frame(app, Vec::new()))
    }

    /// Clicks the centre of patch `q` of the panel's image.
    fn click_patch(&mut self, app: &mut ViewerApp, q: usize) -> Result<()> {
        let (rect, grid) = match (app.image_rect, &app.info) {
            (Some(r), Some(info)) => (r, info.config.grid()),
            _ => bail!("--click-patch: the {} panel shows no image to click", app.panel.name()),
        };
        if q >= grid * grid {
            bail!("--click-patch {q}: the image has {} patches", grid * grid);
        }
        let cell = rect.size() / grid as f32;
        let at = rect.min + egui::vec2(((q % grid) as f32 + 0.5) * cell.x, ((q / grid) as f32 + 0.5) * cell.y);
        let press = |pressed| egui::Event::PointerButton {
            pos: at,
            button: egui::PointerButton::Primary,
            pressed,
            modifiers: egui::Modifiers::default(),
        };
        self.frame(app, vec![egui::Event::PointerMoved(at)]);
        self.frame(app, vec![press(true)]);
        self.frame(app, vec![press(false)]);
        Ok(())
    }
}

/// Runs frames until the model work is done (or `timeout`), optionally
/// clicks a patch of the panel's image the way a user would, then writes the
/// last frame to `out`.
pub fn screenshot(
    dev: &Device,
    app: &mut ViewerApp,
    (w, h): (u32, u32),
    click_patch: Option<usize>,
    timeout: Duration,
    out: &Path,
) -> Result<()> {
    let device = dev.wgpu_device();
    let queue = dev.wgpu_queue();
    let mut screen = Offscreen {
        ctx: egui::Context::default(),
        renderer: Renderer::new(device, FORMAT, RendererOptions::PREDICTABLE),
        device,
        queue,
        size: (w, h),
    };
    let deadline = Instant::now() + timeout;
    let mut output = screen.settle(app, deadline)?;
    if let Some(q) = click_patch {
        screen.click_patch(app, q)?;
        output = screen.settle(app, deadline)?;
    }
    let (ctx, mut renderer) = (screen.ctx, screen.renderer);

    let target = device.create_texture(&wgpu::TextureDescriptor {
        label: Some("cmae-viewer screenshot"),
        size: wgpu::Extent3d { width: w, height: h, depth_or_array_layers: 1 },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: FORMAT,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
        view_formats: &[],
    });
    let view = target.create_view(&wgpu::TextureViewDescriptor::default());
    let jobs = ctx.tessellate(output.shapes, output.pixels_per_point);
    let screen = ScreenDescriptor { size_in_pixels: [w, h], pixels_per_point: output.pixels_per_point };
    let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor { label: Some("screenshot") });
    let extra = renderer.update_buffers(device, queue, &mut encoder, &jobs, &screen);
    {
        let pass = encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
            label: Some("egui"),
            color_attachments: &[Some(wgpu::RenderPassColorAttachment {
                view: &view,
                resolve_target: None,
                depth_slice: None,
                ops: wgpu::Operations { load: wgpu::LoadOp::Clear(wgpu::Color::BLACK), store: wgpu::StoreOp::Store },
            })],
            depth_stencil_attachment: None,
            timestamp_writes: None,
            occlusion_query_set: None,
            multiview_mask: None,
        });
        renderer.render(&mut pass.forget_lifetime(), &jobs, &screen);
    }
    // Rows of a buffer copy are padded to 256 bytes.
    let row = (w * 4).next_multiple_of(256);
    let buffer = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("screenshot readback"),
        size: u64::from(row * h),
        usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
        mapped_at_creation: false,
    });
    encoder.copy_texture_to_buffer(
        target.as_image_copy(),
        wgpu::TexelCopyBufferInfo {
            buffer: &buffer,
            layout: wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(row), rows_per_image: Some(h) },
        },
        wgpu::Extent3d { width: w, height: h, depth_or_array_layers: 1 },
    );
    queue.submit(extra.into_iter().chain([encoder.finish()]));
    let (tx, rx) = std::sync::mpsc::channel();
    buffer.map_async(wgpu::MapMode::Read, .., move |r| {
        let _ = tx.send(r);
    });
    device.poll(wgpu::PollType::wait_indefinitely()).context("waiting for the GPU")?;
    rx.recv().context("the readback never finished")?.context("reading the screenshot back")?;
    let pixels: Vec<u8> = {
        let data = buffer.get_mapped_range(..).context("mapping the screenshot")?;
        (0..h as usize).flat_map(|y| data[y * row as usize..y * row as usize + w as usize * 4].to_vec()).collect()
    };
    let img = image::RgbaImage::from_raw(w, h, pixels).context("screenshot size")?;
    let rgb = image::DynamicImage::ImageRgba8(img).to_rgb8();
    cmae::train::recon::save_png(&rgb, out)
}
