//! `cmae study`: the paper's core comparison end to end, small. Pretrains
//! L(0; 0.75), L(0,j; 0.75,0.1) and L(0,j,k; 0.75,0.1,0.1) (j, k the last two
//! blocks) with identical budgets and seeds, then linear-probes, fine-tunes
//! and evaluates each (plus a from-scratch baseline), runs the analyses and
//! writes `report.md`. Every stage records that it finished, so running the
//! same command again resumes where it stopped.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use anyhow::{Context, Result, bail};
use cmae_engine::Device;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

use crate::analysis;
use crate::classify::{self, Accuracy, ClassifyConfig, ClassifyResults, Mode};
use crate::config::{PretrainConfig, parse_shots};
use crate::data::{self, DataSpec};
use crate::safetensors_io::write_atomic;
use crate::train::checkpoint;
use crate::train::pretrain;
use crate::train::runner::RunFlags;

/// Training lengths of each stage: epochs, or steps when given.
#[derive(Debug, Clone, Copy)]
pub struct Budget {
    pub epochs: f64,
    pub steps: Option<usize>,
}

#[derive(Debug, Clone)]
pub struct StudyOptions {
    pub preset: String,
    pub data: String,
    pub out: PathBuf,
    pub seeds: usize,
    pub pretrain: Budget,
    pub probe: Budget,
    pub finetune: Budget,
    /// Overrides for every pretraining run (`--set`).
    pub set: Vec<String>,
    /// Overrides for every probe / fine-tuning run (`--set-classify`).
    pub set_classify: Vec<String>,
    /// Overrides for the linear probes only (`--set-probe`), after `set_classify`.
    pub set_probe: Vec<String>,
    /// Overrides for the fine-tuning runs only (`--set-finetune`), after `set_classify`.
    pub set_finetune: Vec<String>,
    pub quiet: bool,
    /// Test images for the analyses.
    pub analysis_images: usize,
}

/// `fmnist` alone means Debian's copy of Fashion-MNIST.
pub fn expand_data(spec: &str) -> String {
    match spec {
        "fmnist" => "fmnist:/usr/share/datasets/fashion-mnist".into(),
        other => other.into(),
    }
}

/// The three arms of the comparison for a model of `depth` blocks.
pub fn arms(depth: usize) -> Vec<(String, String)> {
    let j = depth.saturating_sub(2).max(1);
    let k = (j + 1).min(depth);
    vec![
        ("mae".to_string(), "0:0.75".to_string()),
        ("two-shot".to_string(), format!("0:0.75,{j}:0.1")),
        ("three-shot".to_string(), format!("0:0.75,{j}:0.1,{k}:0.1")),
    ]
}

fn done_marker(dir: &Path) -> PathBuf {
    dir.join("study-done.json")
}

fn mark_done(dir: &Path, what: &impl Serialize) -> Result<()> {
    write_atomic(&done_marker(dir), serde_json::to_string_pretty(what)?.as_bytes())
}

fn read_json<T: DeserializeOwned>(path: &Path) -> Result<T> {
    serde_json::from_str(&std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?)
        .with_context(|| format!("parsing {}", path.display()))
}

/// `(resume?, already finished?)` for a stage directory.
fn stage(dir: &Path) -> Result<(bool, bool)> {
    if done_marker(dir).is_file() {
        return Ok((false, true));
    }
    Ok((checkpoint::latest(dir)?.is_some(), false))
}

fn stopped(interrupt: &AtomicBool) -> Result<()> {
    if interrupt.load(Ordering::SeqCst) {
        bail!("interrupted; run the same command again to resume the study");
    }
    Ok(())
}

/// What a finished pretraining stage records in its done marker.
#[derive(Serialize)]
struct PretrainDone {
    loss: Option<f64>,
    step: u64,
}

/// `OUT/study-time.json`: the wall time of all invocations so far.
#[derive(Serialize, Deserialize)]
struct StudyTime {
    #[serde(default)]
    seconds: f64,
}

/// The study's wall time over all its invocations, kept in
/// `OUT/study-time.json` after every arm so that a resumed study still reports
/// what the whole comparison cost.
struct StudyClock {
    path: PathBuf,
    before: f64,
    started: std::time::Instant,
}

impl StudyClock {
    fn open(out: &Path) -> Result<Self> {
        let path = out.join("study-time.json");
        let before = if path.is_file() { read_json::<StudyTime>(&path)?.seconds } else { 0.0 };
        Ok(Self { path, before, started: std::time::Instant::now() })
    }

    fn this_invocation(&self) -> f64 {
        self.started.elapsed().as_secs_f64()
    }

    fn total(&self) -> f64 {
        self.before + self.this_invocation()
    }

    fn save(&self) -> Result<()> {
        write_atomic(&self.path, serde_json::to_string(&StudyTime { seconds: self.total() })?.as_bytes())
    }
}

struct Arm {
    name: String,
    shots: String,
    pretrained: Option<PathBuf>,
    probe: Vec<ClassifyResults>,
    finetune: Vec<ClassifyResults>,
    /// The fine-tuned models' robustness.
    eval: Vec<Accuracy>,
}

/// The preset with the study's data and `--set` overrides.
fn base_config(o: &StudyOptions) -> Result<PretrainConfig> {
    let mut cfg = PretrainConfig::preset(&o.preset)?;
    cfg.data.spec = expand_data(&o.data);
    for s in &o.set {
        cfg.set(s)?;
    }
    Ok(cfg)
}

fn pretrain_stage(
    dev: &Device,
    o: &StudyOptions,
    shots: &str,
    seed: u64,
    dir: &Path,
    interrupt: &AtomicBool,
) -> Result<PathBuf> {
    let (resume, done) = stage(dir)?;
    if !done {
        let mut cfg = base_config(o)?;
        cfg.shots = parse_shots(shots)?;
        cfg.train.seed = seed;
        cfg.train.epochs = o.pretrain.epochs;
        cfg.train.steps = o.pretrain.steps;
        let opts = RunFlags { out: dir.to_path_buf(), resume, quiet: o.quiet, stop_at: None };
        let s = pretrain::pretrain(dev, &cfg, &opts, interrupt)?;
        stopped(interrupt)?;
        mark_done(dir, &PretrainDone { loss: s.last_loss, step: s.step })?;
    }
    Ok(dir.join("checkpoint.safetensors"))
}

fn classify_stage(
    dev: &Device,
    o: &StudyOptions,
    mode: Mode,
    init: Option<&Path>,
    seed: u64,
    dir: &Path,
    interrupt: &AtomicBool,
) -> Result<(ClassifyResults, PathBuf)> {
    let (resume, done) = stage(dir)?;
    if !done {
        let spec = expand_data(&o.data);
        let model = match init {
            Some(p) => checkpoint::model_config_of(p)?,
            None => base_config(o)?.model,
        };
        let classes = DataSpec::parse(&spec)?.num_classes()?;
        let init_text = init.map(|p| p.display().to_string()).unwrap_or_default();
        let mut cfg = ClassifyConfig::recipe(mode, model, classes, init_text, &spec);
        let per_mode = if mode == Mode::Linprobe { &o.set_probe } else { &o.set_finetune };
        for s in o.set_classify.iter().chain(per_mode) {
            cfg.set(s)?;
        }
        let budget = if mode == Mode::Linprobe { o.probe } else { o.finetune };
        cfg.train.epochs = budget.epochs;
        cfg.train.steps = budget.steps;
        cfg.train.seed = seed;
        let flags = RunFlags { out: dir.to_path_buf(), resume, quiet: o.quiet, stop_at: None };
        let (_, results) = classify::train(dev, &cfg, &flags, interrupt)?;
        stopped(interrupt)?;
        if let Some(results) = results {
            mark_done(dir, &results)?;
        }
    }
    Ok((read_json(&dir.join("results.json"))?, dir.join("checkpoint.safetensors")))
}

fn eval_stage(dev: &Device, o: &StudyOptions, checkpoint: &Path, path: &Path) -> Result<Accuracy> {
    if !path.is_file() {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        let (model, cfg) = classify::load_classifier(dev, checkpoint)?;
        // The same test images as the run's own accuracy, so the robustness
        // columns compare with the clean one.
        let spec = DataSpec::parse(&expand_data(&o.data))?;
        let test = data::test_subset(&spec, cfg.data.synthetic_size, cfg.model.img_size, cfg.data.test_images)?;
        let acc = classify::evaluate(dev, &model, test, cfg.data.bad_images, 128, 0, true)?;
        write_atomic(path, serde_json::to_string_pretty(&acc)?.as_bytes())?;
    }
    read_json(path)
}

fn mean_std(values: &[f64]) -> String {
    if values.is_empty() {
        return "–".into();
    }
    let n = values.len() as f64;
    let mean = values.iter().sum::<f64>() / n;
    if values.len() == 1 {
        return format!("{mean:.2}");
    }
    let std = (values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1.0)).sqrt();
    format!("{mean:.2} ± {std:.2}")
}

/// One figure of every seed's results, where the results have it.
fn column<T>(results: &[T], figure: impl Fn(&T) -> Option<f64>) -> Vec<f64> {
    results.iter().filter_map(figure).collect()
}

/// Runs (or resumes) the whole study and writes `OUT/report.md`.
pub fn run(dev: &Device, o: &StudyOptions, interrupt: &AtomicBool) -> Result<PathBuf> {
    let depth = base_config(o)?.model.depth;
    std::fs::create_dir_all(&o.out).with_context(|| format!("cannot create {}", o.out.display()))?;
    let clock = StudyClock::open(&o.out)?;
    let mut arms: Vec<Arm> = arms(depth)
        .into_iter()
        .map(|(name, shots)| Arm {
            name,
            shots,
            pretrained: None,
            probe: Vec::new(),
            finetune: Vec::new(),
            eval: Vec::new(),
        })
        .collect();
    let mut scratch = Arm {
        name: "from scratch".into(),
        shots: "–".into(),
        pretrained: None,
        probe: Vec::new(),
        finetune: Vec::new(),
        eval: Vec::new(),
    };
    for seed in 0..o.seeds as u64 {
        for arm in &mut arms {
            let tag = format!("{}-s{seed}", arm.name);
            log::info!("study: {tag} ({})", arm.shots);
            let ckpt = pretrain_stage(dev, o, &arm.shots, seed, &o.out.join("pretrain").join(&tag), interrupt)?;
            let (probe, _) = classify_stage(
                dev,
                o,
                Mode::Linprobe,
                Some(&ckpt),
                seed,
                &o.out.join("linprobe").join(&tag),
                interrupt,
            )?;
            let (ft, ft_ckpt) = classify_stage(
                dev,
                o,
                Mode::Finetune,
                Some(&ckpt),
                seed,
                &o.out.join("finetune").join(&tag),
                interrupt,
            )?;
            let ev = eval_stage(dev, o, &ft_ckpt, &o.out.join("eval").join(format!("{tag}.json")))?;
            if seed == 0 {
                arm.pretrained = Some(ckpt);
            }
            arm.probe.push(probe);
            arm.finetune.push(ft);
            arm.eval.push(ev);
            clock.save()?;
        }
        let tag = format!("scratch-s{seed}");
        let (ft, ft_ckpt) =
            classify_stage(dev, o, Mode::Finetune, None, seed, &o.out.join("finetune").join(&tag), interrupt)?;
        scratch.eval.push(eval_stage(dev, o, &ft_ckpt, &o.out.join("eval").join(format!("{tag}.json")))?);
        scratch.finetune.push(ft);
        clock.save()?;
    }

    // Analyses of the seed-0 pretrained encoders.
    let figs = o.out.join("figures");
    std::fs::create_dir_all(&figs)?;
    let pretrained: Vec<PathBuf> = arms.iter().filter_map(|a| a.pretrained.clone()).collect();
    let data = expand_data(&o.data);
    let n = o.analysis_images;
    for (kind, value) in [
        ("attention-distance", analysis::attention_layers(dev, &pretrained, &data, n, &figs, false)?),
        ("attention-entropy", analysis::attention_layers(dev, &pretrained, &data, n, &figs, true)?),
    ] {
        analysis::write_json(&figs, kind, &value)?;
    }
    let cka_dir = figs.join("cka-mae-vs-two-shot");
    std::fs::create_dir_all(&cka_dir)?;
    analysis::write_json(
        &cka_dir,
        "cka",
        &analysis::cka(dev, &pretrained[0], &pretrained[1], &data, n.min(8), &cka_dir)?,
    )?;
    for (arm, p) in arms.iter().zip(&pretrained) {
        let dir = figs.join(&arm.name);
        std::fs::create_dir_all(&dir)?;
        analysis::write_json(&dir, "attention-maps", &analysis::attention_maps(dev, p, &data, 8, &dir)?)?;
        analysis::write_json(
            &dir,
            "loss-curves",
            &analysis::loss_curves(&p.parent().unwrap_or(Path::new(".")).join("metrics.jsonl"), &dir)?,
        )?;
        if arm.name != "mae" {
            analysis::write_json(
                &dir,
                "reversed-attention",
                &analysis::reversed_attention(dev, p, &data, 4, None, &dir)?,
            )?;
        }
    }

    clock.save()?;
    let mut md = String::new();
    md.push_str("# Conditional MAE study\n\n");
    md.push_str(&format!(
        "Preset `{}`, data `{}`, {} seed(s). Pretraining {}, linear probe {}, fine-tuning {} per run. Adapter: {}. Wall time: {:.1} min over all invocations ({:.1} min this one).\n\n",
        o.preset,
        data,
        o.seeds,
        budget_text(o.pretrain),
        budget_text(o.probe),
        budget_text(o.finetune),
        dev.info().name,
        clock.total() / 60.0,
        clock.this_invocation() / 60.0
    ));
    let overrides = |what: &str, list: &[String]| {
        if list.is_empty() { String::new() } else { format!(" {what}: `{}`.", list.join(" ")) }
    };
    let all = [
        overrides("pretraining", &o.set),
        overrides("probes and fine-tuning", &o.set_classify),
        overrides("probes", &o.set_probe),
        overrides("fine-tuning", &o.set_finetune),
    ]
    .concat();
    md.push_str(&format!("Overrides of the preset's recipes:{}\n\n", if all.is_empty() { " none." } else { &all }));
    md.push_str("Top-1 accuracy in % on the test split (mean ± std over seeds). Robustness: top-1 of the fine-tuned model with 50% of the patches removed and with the patches shuffled.\n\n");
    md.push_str("| setting | shots | linear probe | fine-tune | fine-tune top-5 | 50% patches removed | patches shuffled |\n|---|---|---|---|---|---|---|\n");
    for a in arms.iter().chain(std::iter::once(&scratch)) {
        md.push_str(&format!(
            "| {} | `{}` | {} | {} | {} | {} | {} |\n",
            a.name,
            a.shots,
            mean_std(&column(&a.probe, |r| Some(r.top1))),
            mean_std(&column(&a.finetune, |r| Some(r.top1))),
            mean_std(&column(&a.finetune, |r| Some(r.top5))),
            mean_std(&column(&a.eval, |e| e.top1_occlusion50)),
            mean_std(&column(&a.eval, |e| e.top1_shuffled)),
        ));
    }
    md.push_str("\n## Analyses (seed 0, pretrained encoders)\n\n");
    md.push_str("![attention distance](figures/attention-distance.png)\n\n![attention entropy](figures/attention-entropy.png)\n\n");
    md.push_str("![CKA MAE vs two-shot](figures/cka-mae-vs-two-shot/cka.png)\n\n");
    for a in &arms {
        md.push_str(&format!("### {} (`{}`)\n\n![loss curves](figures/{0}/loss-curves.png)\n\n![attention maps](figures/{0}/attention-maps.png)\n\n", a.name, a.shots));
        if a.name != "mae" {
            md.push_str(&format!("![reversed attention](figures/{}/reversed-attention.png)\n\n", a.name));
        }
    }
    let path = o.out.join("report.md");
    write_atomic(&path, md.as_bytes())?;
    Ok(path)
}

fn budget_text(b: Budget) -> String {
    match b.steps {
        Some(s) => format!("{s} steps"),
        None => format!("{} epochs", b.epochs),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn arms_are_the_papers_settings_for_twelve_blocks() {
        let a = arms(12);
        assert_eq!(a[0].1, "0:0.75");
        assert_eq!(a[1].1, "0:0.75,10:0.1");
        assert_eq!(a[2].1, "0:0.75,10:0.1,11:0.1");
        assert_eq!(expand_data("fmnist"), "fmnist:/usr/share/datasets/fashion-mnist");
        assert_eq!(mean_std(&[1.0, 3.0]), "2.00 ± 1.41");
        assert_eq!(mean_std(&[5.0]), "5.00");
    }
}
