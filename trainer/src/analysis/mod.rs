//! The study's analyses, each writing `DIR/KIND.json` and `DIR/KIND.png`:
//! attention distance and entropy per layer and head, linear CKA between the
//! layers of two models, cls attention maps with their 50%-mass region,
//! reversed attention of the tokens a later shot drops, and per-shot loss curves.

pub mod plot;

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use cmae_engine::{Device, Tape, Tensor};
use image::{Rgb, RgbImage};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde_json::{Value, json};

use crate::config::{ModelConfig, Shot, parse_shots, validate_shots};
use crate::data::augment::Transform;
use crate::data::{self, DataSpec};
use crate::masking::MaskPlan;
use crate::model::vit::Taps;
use crate::model::{LoadedEncoder, Mae, Route, VitEncoder};
use crate::safetensors_io::write_atomic;
use crate::train::checkpoint::CheckpointFile;
use crate::train::metrics::MetricsLine;
#[cfg(not(target_arch = "wasm32"))]
use crate::train::metrics::MetricsLog;
use crate::train::recon::save_png;
use plot::Series;

/// Mean attention distance (pixels) and entropy (nats) of one layer, per head.
///
/// Distance: for each patch query i, Σ_j a_ij·‖c_i − c_j‖ over patch keys j,
/// renormalised over those keys (the cls token has no position), averaged
/// over queries and images; c are patch centres in pixels. Entropy: −Σ_j a_ij
/// ln a_ij over the whole row (cls included), averaged over patch queries.
pub fn attention_stats(
    probs: &[f32],
    batch: usize,
    heads: usize,
    tokens: usize,
    grid: usize,
    patch: usize,
) -> (Vec<f64>, Vec<f64>) {
    let centre = |k: usize| (((k - 1) % grid) as f64 * patch as f64, ((k - 1) / grid) as f64 * patch as f64);
    let mut dist = vec![0.0; heads];
    let mut ent = vec![0.0; heads];
    for b in 0..batch {
        for h in 0..heads {
            let m = &probs[(b * heads + h) * tokens * tokens..(b * heads + h + 1) * tokens * tokens];
            for i in 1..tokens {
                let row = &m[i * tokens..(i + 1) * tokens];
                let (ci, mass) = (centre(i), row[1..].iter().map(|&v| f64::from(v)).sum::<f64>());
                let d: f64 = (1..tokens)
                    .map(|j| {
                        let cj = centre(j);
                        f64::from(row[j]) * ((ci.0 - cj.0).powi(2) + (ci.1 - cj.1).powi(2)).sqrt()
                    })
                    .sum();
                dist[h] += d / mass.max(1e-30);
                ent[h] -= row.iter().map(|&v| f64::from(v)).filter(|&v| v > 0.0).map(|v| v * v.ln()).sum::<f64>();
            }
        }
    }
    let n = (batch * (tokens - 1)) as f64;
    (dist.iter().map(|v| v / n).collect(), ent.iter().map(|v| v / n).collect())
}

/// Linear CKA of two representations with the same rows (samples):
/// ‖YᵀX‖²_F / (‖XᵀX‖_F·‖YᵀY‖_F) after centring each column.
pub fn linear_cka(x: &[f32], dx: usize, y: &[f32], dy: usize) -> f64 {
    let n = x.len() / dx;
    let centred = |m: &[f32], d: usize| -> Vec<f64> {
        let mut mean = vec![0.0; d];
        for r in 0..n {
            for c in 0..d {
                mean[c] += f64::from(m[r * d + c]) / n as f64;
            }
        }
        (0..n * d).map(|i| f64::from(m[i]) - mean[i % d]).collect()
    };
    let (x, y) = (centred(x, dx), centred(y, dy));
    // Frobenius norm of AᵀB for n×da and n×db matrices.
    let cross = |a: &[f64], da: usize, b: &[f64], db: usize| -> f64 {
        let mut s = 0.0;
        for i in 0..da {
            for j in 0..db {
                let dot: f64 = (0..n).map(|r| a[r * da + i] * b[r * db + j]).sum();
                s += dot * dot;
            }
        }
        s
    };
    let xy = cross(&x, dx, &y, dy);
    xy / (cross(&x, dx, &x, dx).sqrt() * cross(&y, dy, &y, dy).sqrt()).max(1e-300)
}

/// Patches (row-major ids) that hold at least half of `weights`' mass, heaviest first.
pub fn half_mass_region(weights: &[f64]) -> Vec<usize> {
    let total: f64 = weights.iter().sum();
    let mut order: Vec<usize> = (0..weights.len()).collect();
    order.sort_by(|&a, &b| weights[b].total_cmp(&weights[a]));
    let mut acc = 0.0;
    let mut out = Vec::new();
    for i in order {
        if acc >= 0.5 * total {
            break;
        }
        acc += weights[i];
        out.push(i);
    }
    out
}

/// The first `n` test images of a dataset (a synthetic one drawn 512 long),
/// normalised, and the transform.
fn analysis_images(spec: &str, model: &ModelConfig, n: usize) -> Result<(Vec<f32>, usize, Transform)> {
    data::first_test_images(&DataSpec::parse(spec)?, 512, model, n)
}

/// The encoder of any cmae checkpoint (pretrained MAE, probe or fine-tuned).
pub fn encoder(dev: &Device, path: &Path) -> Result<LoadedEncoder> {
    LoadedEncoder::from_file(dev, CheckpointFile::read(path)?)
}

/// Runs the full (unmasked) encoder and returns what `taps` asked for.
fn run_encoder(
    dev: &Device,
    model: &VitEncoder<'_>,
    images: &[f32],
    n: usize,
    attention: bool,
    hidden: bool,
) -> Result<Taps> {
    let c = &model.cfg;
    let imgs = Tensor::from_f32(dev, images, &[n, c.in_chans, c.img_size, c.img_size])?;
    let mut taps = Taps { attention: attention.then(Vec::new), hidden: hidden.then(Vec::new) };
    model.forward(&Tape::no_grad(dev), &imgs, &Route::default(), &mut taps)?;
    Ok(taps)
}

#[cfg(not(target_arch = "wasm32"))]
fn label_of(path: &Path) -> String {
    path.parent()
        .and_then(|p| p.file_name())
        .map_or_else(|| path.display().to_string(), |n| n.to_string_lossy().into_owned())
}

/// `attention-distance` and `attention-entropy`: per layer and head for each checkpoint.
#[cfg(not(target_arch = "wasm32"))]
pub fn attention_layers(
    dev: &Device,
    checkpoints: &[PathBuf],
    spec: &str,
    n: usize,
    out: &Path,
    entropy: bool,
) -> Result<Value> {
    let kind = if entropy { "attention-entropy" } else { "attention-distance" };
    let mut models = Vec::new();
    let mut series = Vec::new();
    for path in checkpoints {
        let model = encoder(dev, path)?;
        let c = model.cfg.clone();
        let (images, n, _) = analysis_images(spec, &c, n)?;
        let taps = run_encoder(dev, &model.encoder(), &images, n, true, false)?;
        let mut per_layer = Vec::new();
        for probs in taps.attention.unwrap_or_default() {
            let (d, e) =
                attention_stats(&probs.wait_f32(dev)?, n, c.num_heads, 1 + c.num_patches(), c.grid(), c.patch_size);
            per_layer.push(if entropy { e } else { d });
        }
        let label = label_of(path);
        let means: Vec<(f64, f64)> =
            per_layer.iter().enumerate().map(|(l, h)| (l as f64, h.iter().sum::<f64>() / h.len() as f64)).collect();
        series.push(Series { label: format!("{label} (head mean)"), points: means, dots: true });
        models.push(json!({"checkpoint": path.display().to_string(), "label": label, "per_layer_head": per_layer}));
    }
    let (unit, what) = if entropy { ("nats", "attention entropy") } else { ("pixels", "mean attention distance") };
    plot::lines(&out.join(format!("{kind}.png")), &format!("{what} per layer"), "layer", unit, &series)?;
    Ok(json!({"kind": kind, "unit": unit, "images": n, "models": models}))
}

/// `cka`: linear CKA between every layer of A and every layer of B (tokens as samples).
#[cfg(not(target_arch = "wasm32"))]
pub fn cka(dev: &Device, a: &Path, b: &Path, spec: &str, n: usize, out: &Path) -> Result<Value> {
    let (ma, mb) = (encoder(dev, a)?, encoder(dev, b)?);
    if (ma.cfg.img_size, ma.cfg.in_chans, ma.cfg.patch_size) != (mb.cfg.img_size, mb.cfg.in_chans, mb.cfg.patch_size) {
        bail!("cka needs models that read the same images and tokens ({} and {} differ)", a.display(), b.display());
    }
    let (images, n, _) = analysis_images(spec, &ma.cfg, n)?;
    let ha: Vec<Vec<f32>> = run_encoder(dev, &ma.encoder(), &images, n, false, true)?
        .hidden
        .unwrap_or_default()
        .iter()
        .map(|t| t.wait_f32(dev))
        .collect::<Result<_, _>>()?;
    let hb: Vec<Vec<f32>> = run_encoder(dev, &mb.encoder(), &images, n, false, true)?
        .hidden
        .unwrap_or_default()
        .iter()
        .map(|t| t.wait_f32(dev))
        .collect::<Result<_, _>>()?;
    let m: Vec<Vec<f64>> =
        ha.iter().map(|x| hb.iter().map(|y| linear_cka(x, ma.cfg.embed_dim, y, mb.cfg.embed_dim)).collect()).collect();
    plot::heatmap(
        &out.join("cka.png"),
        &format!("linear CKA: {} vs {}", label_of(a), label_of(b)),
        &format!("layer of {}", label_of(b)),
        &format!("layer of {}", label_of(a)),
        &m,
        (0.0, 1.0),
    )?;
    Ok(json!({"kind": "cka", "a": a.display().to_string(), "b": b.display().to_string(), "images": n, "cka": m}))
}

/// Draws `weights` (one per patch) over the image as a heat overlay and
/// outlines the patches of `region`.
pub fn overlay(img: &RgbImage, weights: &[f64], region: &[usize], grid: usize) -> RgbImage {
    let (w, h) = img.dimensions();
    let patch = w as usize / grid;
    let max = weights.iter().cloned().fold(1e-30, f64::max);
    let inside: std::collections::HashSet<usize> = region.iter().copied().collect();
    RgbImage::from_fn(w, h, |x, y| {
        let (gx, gy) = (x as usize / patch, y as usize / patch);
        let k = gy * grid + gx;
        let heat = plot::ramp(weights[k] / max);
        let p = img.get_pixel(x, y);
        // Region border: an edge pixel of a patch whose neighbour across the edge is outside.
        let (lx, ly) = (x as usize % patch, y as usize % patch);
        let out = |nx: isize, ny: isize| {
            nx < 0
                || ny < 0
                || nx >= grid as isize
                || ny >= grid as isize
                || !inside.contains(&(ny as usize * grid + nx as usize))
        };
        let border = inside.contains(&k)
            && ((lx == 0 && out(gx as isize - 1, gy as isize))
                || (lx + 1 == patch && out(gx as isize + 1, gy as isize))
                || (ly == 0 && out(gx as isize, gy as isize - 1))
                || (ly + 1 == patch && out(gx as isize, gy as isize + 1)));
        if border {
            Rgb([255, 255, 255])
        } else {
            let mix = |a: u8, b: u8| ((f64::from(a) * 0.4) + (f64::from(b) * 0.6)).round() as u8;
            Rgb([mix(p[0], heat.0), mix(p[1], heat.1), mix(p[2], heat.2)])
        }
    })
}

/// One normalised CHW image as 8-bit RGB, each pixel `scale`× larger.
pub fn upscaled(t: &Transform, chw: &[f32], scale: u32) -> RgbImage {
    let px = t.to_pixels(chw);
    let s = t.size as u32;
    RgbImage::from_fn(s * scale, s * scale, |x, y| {
        let i = ((y / scale) * s + x / scale) as usize * t.chans;
        if t.chans == 1 { Rgb([px[i]; 3]) } else { Rgb([px[i], px[i + 1], px[i + 2]]) }
    })
}

/// Tiles `rows` of equal-size cells into one picture.
fn tile(rows: &[Vec<RgbImage>]) -> RgbImage {
    let (cw, ch) = rows[0][0].dimensions();
    let cols = rows.iter().map(Vec::len).max().unwrap_or(1) as u32;
    let gap = 2;
    let mut out =
        RgbImage::from_pixel(cols * (cw + gap) + gap, rows.len() as u32 * (ch + gap) + gap, Rgb([255, 255, 255]));
    for (r, row) in rows.iter().enumerate() {
        for (c, cell) in row.iter().enumerate() {
            image::imageops::replace(
                &mut out,
                cell,
                i64::from(gap + c as u32 * (cw + gap)),
                i64::from(gap + r as u32 * (ch + gap)),
            );
        }
    }
    out
}

/// `attention-maps`: the last block's cls attention per head and averaged,
/// over each image, with its 50%-mass region outlined.
pub fn attention_maps(dev: &Device, checkpoint: &Path, spec: &str, n: usize, out: &Path) -> Result<Value> {
    let model = encoder(dev, checkpoint)?;
    let c = model.cfg.clone();
    let (images, n, t) = analysis_images(spec, &c, n.min(8))?;
    let taps = run_encoder(dev, &model.encoder(), &images, n, true, false)?;
    let last = taps.attention.unwrap_or_default().pop().context("the model has no blocks")?.wait_f32(dev)?;
    let (tokens, heads, l) = (1 + c.num_patches(), c.num_heads, c.num_patches());
    let scale = (96 / c.img_size as u32).max(1);
    let plane = c.in_chans * c.img_size * c.img_size;
    let mut rows = Vec::new();
    let mut per_image = Vec::new();
    for b in 0..n {
        let base = upscaled(&t, &images[b * plane..(b + 1) * plane], scale);
        let mut cells = vec![base.clone()];
        let mut mean = vec![0.0; l];
        let mut heads_json = Vec::new();
        for h in 0..heads {
            let row = &last[((b * heads + h) * tokens) * tokens..((b * heads + h) * tokens + 1) * tokens];
            let w: Vec<f64> = row[1..].iter().map(|&v| f64::from(v)).collect();
            for (m, v) in mean.iter_mut().zip(&w) {
                *m += v / heads as f64;
            }
            let region = half_mass_region(&w);
            cells.push(overlay(&base, &w, &region, c.grid()));
            heads_json.push(json!({"region_patches": region.len(), "cls_to_cls": row[0]}));
        }
        let region = half_mass_region(&mean);
        cells.push(overlay(&base, &mean, &region, c.grid()));
        per_image.push(json!({"heads": heads_json, "mean_region_patches": region.len(), "mean_region": region}));
        rows.push(cells);
    }
    save_png(&tile(&rows), &out.join("attention-maps.png"))?;
    Ok(
        json!({"kind": "attention-maps", "checkpoint": checkpoint.display().to_string(), "block": c.depth - 1, "images": per_image,
              "columns": "image | head 0 .. head H-1 | head mean; white outline: patches holding 50% of the cls attention"}),
    )
}

/// Reversed attention for one normalised image: the picture (the attention
/// the tokens dropped at the first later shot send, over the image, dropped
/// patches outlined) and the shares sent to cls, kept and dropped tokens.
/// Async for the page; native code runs it with `Device::block_on`.
pub async fn reversed_attention_one(
    dev: &Device,
    mae: &Mae,
    chw: &[f32],
    t: &Transform,
    shots: &[Shot],
    seed: u64,
) -> Result<(RgbImage, [f64; 3])> {
    let c = &mae.cfg;
    let Some(k) = shots.iter().position(|s| s.layer > 0 && s.ratio > 0.0) else {
        bail!("reversed attention needs a later shot (e.g. 0:0.75,10:0.1)");
    };
    let plan = MaskPlan::random(shots, 1, c.num_patches(), &mut ChaCha8Rng::seed_from_u64(seed));
    let imgs = Tensor::from_f32(dev, chw, &[1, c.in_chans, c.img_size, c.img_size])?;
    let mut taps = Taps { attention: Some(Vec::new()), hidden: None };
    mae.encode_masked(&Tape::no_grad(dev), &imgs, &plan.upload(dev, shots)?, &mut taps)?;
    let probs = taps.attention.unwrap_or_default()[shots[k].layer - 1].read_f32(dev)?.await?;
    let sp = &plan.shots[k];
    let (tokens, heads) = (1 + sp.visible, c.num_heads);
    // Original patch ids of the tokens visible before shot k.
    let visible: Vec<u32> =
        if k == 0 { (0..c.num_patches() as u32).collect() } else { plan.shots[k - 1].kept_patches.clone() };
    let kept: std::collections::HashSet<u32> = sp.ids_keep.iter().copied().collect();
    let dropped: Vec<usize> = (0..sp.visible).filter(|i| !kept.contains(&(*i as u32))).collect();
    let mut sent = vec![0.0; c.num_patches()];
    let mut shares = [0.0; 3];
    for h in 0..heads {
        for &i in &dropped {
            let row = &probs[(h * tokens + 1 + i) * tokens..(h * tokens + 2 + i) * tokens];
            shares[0] += f64::from(row[0]);
            for j in 0..sp.visible {
                let v = f64::from(row[1 + j]);
                sent[visible[j] as usize] += v / (heads * dropped.len()) as f64;
                shares[if kept.contains(&(j as u32)) { 1 } else { 2 }] += v;
            }
        }
    }
    let rows = (heads * dropped.len()).max(1) as f64;
    let base = upscaled(t, chw, (96 / c.img_size as u32).max(1));
    let dropped_patches: Vec<usize> = dropped.iter().map(|&i| visible[i] as usize).collect();
    Ok((overlay(&base, &sent, &dropped_patches, c.grid()), shares.map(|s| s / rows)))
}

/// `reversed-attention`: in the block just before a later shot, where the
/// tokens that shot drops send their attention (MAE checkpoints with shots,
/// or `shots` given).
pub fn reversed_attention(
    dev: &Device,
    checkpoint: &Path,
    spec: &str,
    n: usize,
    shots: Option<&str>,
    out: &Path,
) -> Result<Value> {
    let loaded = crate::train::checkpoint::load_model(dev, checkpoint, None)?;
    let c = loaded.config.model.clone();
    let shots: Vec<Shot> = match shots {
        Some(s) => parse_shots(s)?,
        None => loaded.config.shots.clone(),
    };
    validate_shots(&shots, &c)?;
    let Some(k) = shots.iter().position(|s| s.layer > 0 && s.ratio > 0.0) else {
        bail!("reversed attention needs a later shot (e.g. --shots 0:0.75,10:0.1); {} has none", checkpoint.display());
    };
    let (images, n, t) = analysis_images(spec, &c, n.min(8))?;
    let plane = c.in_chans * c.img_size * c.img_size;
    let mut rows = Vec::new();
    let mut shares = [0.0; 3];
    for b in 0..n {
        let chw = &images[b * plane..(b + 1) * plane];
        let (img, s) = dev.block_on(reversed_attention_one(dev, &loaded.mae, chw, &t, &shots, b as u64))?;
        for (acc, v) in shares.iter_mut().zip(s) {
            *acc += v / n as f64;
        }
        rows.push(vec![upscaled(&t, chw, (96 / c.img_size as u32).max(1)), img]);
    }
    save_png(&tile(&rows), &out.join("reversed-attention.png"))?;
    Ok(json!({
        "kind": "reversed-attention", "checkpoint": checkpoint.display().to_string(),
        "shots": crate::config::shots_to_string(&shots), "shot": k, "block": shots[k].layer - 1,
        "share_to_cls": shares[0], "share_to_kept": shares[1], "share_to_dropped": shares[2],
        "columns": "image | attention the tokens dropped at the shot send, averaged over them and the heads; white outline: the dropped patches",
    }))
}

/// The total loss and each shot's loss over the steps of `metrics.jsonl`'s
/// lines, one series each ("loss", "shot 0", ...); a shot's series has no
/// points where the shot never dropped a patch.
pub fn loss_series(lines: &[MetricsLine]) -> Vec<Series> {
    let steps = |value: &dyn Fn(&MetricsLine) -> Option<f64>| {
        lines.iter().filter_map(|l| value(l).map(|v| (l.step as f64, v))).collect()
    };
    let shots = lines.iter().map(|l| l.loss_per_shot.len()).max().unwrap_or(0);
    std::iter::once(Series { label: "loss".into(), points: steps(&|l| Some(l.loss)), dots: false })
        .chain((0..shots).map(|s| Series {
            label: format!("shot {s}"),
            points: steps(&|l| l.loss_per_shot.get(s).copied().flatten()),
            dots: false,
        }))
        .collect()
}

/// `loss-curves`: total and per-shot pretraining losses from a run's metrics.jsonl.
#[cfg(not(target_arch = "wasm32"))]
pub fn loss_curves(metrics: &Path, out: &Path) -> Result<Value> {
    let lines = MetricsLog::read(metrics)?;
    if lines.is_empty() {
        bail!("{} has no metrics yet", metrics.display());
    }
    let mut series = loss_series(&lines);
    // The total loss always has points; a shot that never dropped a patch has none.
    series.retain(|s| !s.points.is_empty());
    plot::lines(&out.join("loss-curves.png"), "pretraining loss per shot", "step", "mean patch MSE", &series)?;
    let per: Vec<Value> = series.iter().map(|s| json!({"label": s.label, "points": s.points})).collect();
    Ok(json!({"kind": "loss-curves", "metrics": metrics.display().to_string(), "series": per}))
}

/// Writes an analysis result next to its plot.
pub fn write_json(out: &Path, kind: &str, value: &Value) -> Result<PathBuf> {
    let path = out.join(format!("{kind}.json"));
    write_atomic(&path, serde_json::to_string_pretty(value)?.as_bytes())?;
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A 2×2 grid of 4-px patches plus cls. Query patch 0 (top left) puts all
    /// its patch attention on patch 3 (bottom right): distance 4√2 px.
    #[test]
    fn attention_distance_and_entropy_by_hand() {
        let t = 5;
        let mut p = vec![0.0f32; t * t];
        // cls row: uniform (not a patch query, ignored by both measures).
        p[..t].fill(0.2);
        p[t + 4] = 0.5; // patch 0 → patch 3
        p[t] = 0.5; // patch 0 → cls
        for i in 2..t {
            p[i * t + i] = 1.0; // other patches attend to themselves
        }
        let (d, e) = attention_stats(&p, 1, 1, t, 2, 4);
        // Patch 0: 4√2 (mass 0.5 renormalised to 1); patches 1–3: 0. Mean over 4 queries.
        assert!((d[0] - 4.0 * 2f64.sqrt() / 4.0).abs() < 1e-9, "{d:?}");
        // Entropy: patch 0 has two halves (ln 2), the others are certain (0).
        assert!((e[0] - 2f64.ln() / 4.0).abs() < 1e-9, "{e:?}");
    }

    #[test]
    fn cka_is_one_on_itself_and_invariant_to_scale_and_rotation() {
        let n = 40;
        let x: Vec<f32> = (0..n * 3).map(|i| ((i * 37) % 11) as f32 - 5.0).collect();
        assert!((linear_cka(&x, 3, &x, 3) - 1.0).abs() < 1e-12);
        // Y = 2·X·R (an orthogonal mix of columns 0 and 1) has the same geometry.
        let (c, s) = (0.6f32, 0.8f32);
        let y: Vec<f32> = (0..n)
            .flat_map(|r| {
                let (a, b, z) = (x[r * 3], x[r * 3 + 1], x[r * 3 + 2]);
                [2.0 * (c * a - s * b), 2.0 * (s * a + c * b), 2.0 * z]
            })
            .collect();
        assert!((linear_cka(&x, 3, &y, 3) - 1.0).abs() < 1e-9);
        let noise: Vec<f32> = (0..n * 2).map(|i| ((i * 7919) % 13) as f32).collect();
        assert!(linear_cka(&x, 3, &noise, 2) < 0.9);
    }

    #[test]
    fn half_mass_region_takes_the_heaviest_patches() {
        assert_eq!(half_mass_region(&[0.1, 0.4, 0.2, 0.3]), vec![1, 3]);
        assert_eq!(half_mass_region(&[0.6, 0.2, 0.2]), vec![0]);
        assert_eq!(half_mass_region(&[0.25; 4]).len(), 2);
    }
}
