//! The viewer, run as users and CI run it: the real binary rendering its UI
//! offscreen (`--screenshot`) on a micro checkpoint. Each test asserts on the
//! pixels: the screenshot and the panel's own picture (`--save-panel`).

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use cmae::config::PretrainConfig;
use cmae_engine::Device;
use image::RgbImage;

/// A 16-px, 4-px-patch (4×4 grid) MAE pretrained for a few steps with
/// `L(0, 2; 0.75, 0.5)`: 4 patches kept by the first shot, 2 by the second.
fn run_dir() -> &'static Path {
    static RUN: OnceLock<PathBuf> = OnceLock::new();
    RUN.get_or_init(|| {
        let dev = Device::from_env().expect("a GPU adapter (CI installs lavapipe)");
        let out = std::env::temp_dir().join(format!("cmae-viewer-test-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&out);
        let mut cfg = PretrainConfig::preset("micro").unwrap();
        cfg.output.log_every = 1;
        cfg.shots = cmae::config::parse_shots("0:0.75,2:0.5").unwrap();
        cfg.train.steps = Some(4);
        let opts = cmae::train::runner::RunFlags { out: out.clone(), resume: false, quiet: true, stop_at: None };
        cmae::train::pretrain::pretrain(&dev, &cfg, &opts, &AtomicBool::new(false)).unwrap();
        out
    })
}

fn checkpoint() -> PathBuf {
    run_dir().join("checkpoint.safetensors")
}

fn out_path(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cmae-viewer-shots-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    dir.join(name)
}

fn viewer(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_cmae-viewer")).args(args).env("RUST_LOG", "off").output().unwrap()
}

/// Screenshots `args` into `NAME.png` and saves the panel into `NAME-panel.png`.
fn shoot(name: &str, args: &[&str]) -> (RgbImage, RgbImage) {
    let (shot, panel, _) = shoot_with_rect(name, args);
    (shot, panel)
}

fn distinct_colors(img: &RgbImage) -> usize {
    img.pixels().map(|p| p.0).collect::<std::collections::HashSet<_>>().len()
}

/// `shoot` that also returns where the panel's picture was drawn (x, y, w, h).
fn shoot_with_rect(name: &str, args: &[&str]) -> (RgbImage, RgbImage, Option<[f32; 4]>) {
    let (shot, panel) = (out_path(&format!("{name}.png")), out_path(&format!("{name}-panel.png")));
    let mut all = vec!["--screenshot", shot.to_str().unwrap(), "--save-panel", panel.to_str().unwrap()];
    all.extend_from_slice(&["--size", "640x400"]);
    all.extend_from_slice(args);
    let out = viewer(&all);
    assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let rect = stdout.lines().find_map(|l| l.strip_prefix("panel image at ")).map(|r| {
        let v: Vec<f32> = r.split(' ').map(|x| x.parse().unwrap()).collect();
        [v[0], v[1], v[2], v[3]]
    });
    (image::open(&shot).unwrap().to_rgb8(), image::open(&panel).unwrap().to_rgb8(), rect)
}

/// Share of the screenshot's pixels inside the drawn rectangle that show the
/// saved panel's texel there (nearest sampling, within rounding). The edge
/// rows and columns, which the rectangle cuts, are left out.
fn drawn_share(shot: &RgbImage, panel: &RgbImage, [x, y, w, h]: [f32; 4]) -> f64 {
    let (pw, ph) = panel.dimensions();
    let (mut same, mut all) = (0usize, 0usize);
    for sy in (y.ceil() as u32 + 1)..((y + h).floor() as u32).saturating_sub(1) {
        for sx in (x.ceil() as u32 + 1)..((x + w).floor() as u32).saturating_sub(1) {
            let tx = (((sx as f32 + 0.5 - x) * pw as f32 / w) as u32).min(pw - 1);
            let ty = (((sy as f32 + 0.5 - y) * ph as f32 / h) as u32).min(ph - 1);
            let s = shot.get_pixel(sx, sy);
            // The texel or a neighbour: where a screen pixel centre falls on a
            // texel edge, the GPU's rounding may pick either side.
            let near = |t: u32, n: u32| t.saturating_sub(1)..(t + 2).min(n);
            let hit = near(ty, ph).any(|ny| {
                near(tx, pw).any(|nx| panel.get_pixel(nx, ny).0.iter().zip(s.0).all(|(a, b)| a.abs_diff(b) <= 2))
            });
            same += usize::from(hit);
            all += 1;
        }
    }
    assert!(all > 100, "a drawn rectangle of {all} pixels");
    same as f64 / all as f64
}

/// Screenshot pixels near one of the chart series' colours (UI text is grey).
fn chart_line_pixels(shot: &RgbImage) -> usize {
    let series = [[31, 119, 180], [255, 127, 14], [44, 160, 44]];
    shot.pixels()
        .filter(|p| series.iter().any(|c: &[u8; 3]| p.0.iter().zip(c).all(|(a, b)| a.abs_diff(*b) <= 24)))
        .count()
}

#[test]
fn every_panel_screenshots_with_real_content() {
    let ckpt = checkpoint();
    let run = run_dir();
    for (panel, source) in [
        ("reconstruction", ["--checkpoint", ckpt.to_str().unwrap()]),
        ("attention", ["--checkpoint", ckpt.to_str().unwrap()]),
        ("reversed", ["--checkpoint", ckpt.to_str().unwrap()]),
        ("charts", ["--checkpoint", ckpt.to_str().unwrap()]),
        ("loss", ["--run", run.to_str().unwrap()]),
    ] {
        let (shot, saved, rect) = shoot_with_rect(&format!("panel-{panel}"), &[source[0], source[1], "--panel", panel]);
        assert_eq!(shot.dimensions(), (640, 400), "{panel}");
        assert!(distinct_colors(&saved) > 10, "{panel} saved: {} colours", distinct_colors(&saved));
        match rect {
            // The picture itself is on screen, pixel for pixel; egui places it
            // at fractional points, so a few percent of samples land a texel off
            // (a missing or different picture scores far lower).
            Some(rect) => {
                let share = drawn_share(&shot, &saved, rect);
                assert!(share > 0.95, "{panel}: {:.1}% of the panel's pixels drawn at {rect:?}", 100.0 * share);
            }
            // Charts: the series lines are drawn, not just axis labels.
            None => {
                assert!(matches!(panel, "charts" | "loss"), "{panel} drew no picture");
                let lines = chart_line_pixels(&shot);
                assert!(lines > 40, "{panel}: {lines} pixels of chart lines");
            }
        }
    }
}

/// Cells of the reconstruction grid: 16-px images drawn 6× (96 px) with 2-px gaps.
const CELL: u32 = 96;
const PATCH: u32 = 24;

fn patch_pixels(img: &RgbImage, row: u32, col: u32, patch: u32) -> Vec<[u8; 3]> {
    let (x0, y0) = (2 + col * (CELL + 2) + (patch % 4) * PATCH, 2 + row * (CELL + 2) + (patch / 4) * PATCH);
    (0..PATCH).flat_map(|y| (0..PATCH).map(move |x| img.get_pixel(x0 + x, y0 + y).0)).collect()
}

#[test]
fn the_reconstruction_fills_exactly_the_dropped_patches() {
    let (_, grid) = shoot("recon", &["--checkpoint", checkpoint().to_str().unwrap()]);
    // Columns: original | kept after shot 0 | kept after shot 1 | reconstruction | error; four images.
    assert_eq!(grid.dimensions(), (5 * (CELL + 2) + 2, 4 * (CELL + 2) + 2));
    let grey = |px: &[[u8; 3]]| px.iter().all(|p| *p == [128, 128, 128]);
    let mut differs = 0;
    for row in 0..4 {
        let dropped_first = (0..16).filter(|&p| grey(&patch_pixels(&grid, row, 1, p))).count();
        let dropped: Vec<u32> = (0..16).filter(|&p| grey(&patch_pixels(&grid, row, 2, p))).collect();
        assert_eq!((dropped_first, dropped.len()), (12, 14), "row {row}: 12 dropped by η1 = 0.75, 2 more by η2 = 0.5");
        for p in 0..16 {
            let (orig, recon, err) =
                (patch_pixels(&grid, row, 0, p), patch_pixels(&grid, row, 3, p), patch_pixels(&grid, row, 4, p));
            if dropped.contains(&p) {
                assert!(!grey(&recon), "row {row} patch {p}: a dropped patch is predicted, not left grey");
                differs += usize::from(recon != orig);
            } else {
                assert_eq!(recon, orig, "row {row} patch {p}: visible patches are shown as they are");
                assert!(err.iter().all(|p| *p == [0, 0, 0]), "row {row} patch {p}: no error on visible patches");
            }
        }
    }
    // A model trained 4 steps does not reproduce the pixels it never saw.
    assert!(differs > 40, "{differs} of 56 dropped patches differ from the original");
}

#[test]
fn reseeding_and_editing_the_shots_change_the_masks() {
    let ckpt = checkpoint();
    let c = ckpt.to_str().unwrap();
    let (_, seed0) = shoot("seed0", &["--checkpoint", c]);
    let (_, seed1) = shoot("seed1", &["--checkpoint", c, "--seed", "1"]);
    assert_eq!(seed0.dimensions(), seed1.dimensions());
    assert_ne!(seed0, seed1, "another seed draws other masks");
    let (_, one_shot) = shoot("one-shot", &["--checkpoint", c, "--shots", "0:0.5"]);
    assert_eq!(one_shot.width(), 4 * (CELL + 2) + 2, "one shot: original | kept | reconstruction | error");
    let out =
        viewer(&["--checkpoint", c, "--shots", "0:0.75,5:0.1", "--screenshot", out_path("bad.png").to_str().unwrap()]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("shot 1") && err.contains("depth"), "{err}");
}

#[test]
fn clicking_a_patch_shows_where_it_attends() {
    let c = checkpoint();
    let c = c.to_str().unwrap();
    let (shot_cls, cls) = shoot("attn-cls", &["--checkpoint", c, "--panel", "attention"]);
    let (shot_click, clicked) = shoot("attn-click", &["--checkpoint", c, "--panel", "attention", "--click-patch", "5"]);
    assert_eq!(cls.dimensions(), clicked.dimensions());
    assert_ne!(cls, clicked, "the attention of patch 5 is not the cls token's");
    assert_ne!(shot_cls, shot_click);
    // The click landed on patch 5: the same picture as asking for it directly.
    let (_, asked) = shoot("attn-query", &["--checkpoint", c, "--panel", "attention", "--query", "5"]);
    assert_eq!(clicked, asked);
    let (_, head) = shoot("attn-head", &["--checkpoint", c, "--panel", "attention", "--head", "1", "--layer", "0"]);
    assert_ne!(head, cls, "another layer and head attend elsewhere");
}

/// The one line a failed start prints (no log noise: RUST_LOG=off).
fn one_error_line(args: &[&str], envs: &[(&str, &str)]) -> String {
    let out = Command::new(env!("CARGO_BIN_EXE_cmae-viewer"))
        .args(args)
        .env("RUST_LOG", "off")
        .envs(envs.iter().copied())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{args:?} should fail");
    assert!(!err.contains("panicked"), "{err}");
    let lines: Vec<&str> = err.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "one sentence: {err}");
    assert!(lines[0].starts_with("error: "), "{err}");
    lines[0].to_string()
}

#[test]
fn start_up_errors_are_one_clear_sentence() {
    let shot = out_path("error.png");
    let s = shot.to_str().unwrap();
    let e = one_error_line(&["--checkpoint", "/nonexistent/c.safetensors", "--screenshot", s], &[]);
    assert!(e.contains("/nonexistent/c.safetensors") && e.contains("does not exist"), "{e}");

    let garbage = out_path("garbage.safetensors");
    std::fs::write(&garbage, b"definitely not a checkpoint").unwrap();
    let e = one_error_line(&["--checkpoint", garbage.to_str().unwrap(), "--screenshot", s], &[]);
    assert!(e.contains("garbage.safetensors") && e.contains("not a safetensors file"), "{e}");

    // A checkpoint whose tensors do not match the model its metadata describes.
    let mut file = cmae::safetensors_io::read(&checkpoint()).unwrap();
    let config = file.metadata["config"].replace("embed_dim: 32", "embed_dim: 48");
    file.metadata.insert("config".into(), config);
    let wrong = out_path("wrong-shape.safetensors");
    cmae::safetensors_io::write_host(&wrong, &file).unwrap();
    let e = one_error_line(&["--checkpoint", wrong.to_str().unwrap(), "--screenshot", s], &[]);
    assert!(e.contains("shape"), "{e}");

    let not_image = out_path("not-an-image.png");
    std::fs::write(&not_image, b"\x89PNG but truncated").unwrap();
    let c = checkpoint();
    let e = one_error_line(
        &["--checkpoint", c.to_str().unwrap(), "--image", not_image.to_str().unwrap(), "--screenshot", s],
        &[],
    );
    assert!(e.contains("not-an-image.png") && e.contains("cannot decode"), "{e}");

    let e = one_error_line(&["--checkpoint", c.to_str().unwrap(), "--panel", "nope", "--screenshot", s], &[]);
    assert!(e.contains("\"nope\"") && e.contains("reconstruction"), "{e}");

    // No adapter for the backend asked for: the message names the fix.
    if cfg!(target_os = "linux") {
        let e = one_error_line(&["--checkpoint", c.to_str().unwrap(), "--screenshot", s], &[("CMAE_BACKEND", "dx12")]);
        assert!(e.contains("no adapter") && e.contains("CMAE_BACKEND"), "{e}");
    }
}
