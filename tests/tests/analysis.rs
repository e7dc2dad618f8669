//! The analyses and the study on a micro model: files, shapes and known answers.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::sync::atomic::AtomicBool;

use cmae::analysis;
use cmae::config::PretrainConfig;
use cmae_tests::{fresh_temp_dir, shared_device};

fn pretrained(out: &Path, shots: &str) -> PathBuf {
    let mut cfg = PretrainConfig::preset("micro").unwrap();
    cfg.output.log_every = 1;
    cfg.shots = cmae::config::parse_shots(shots).unwrap();
    cfg.train.steps = Some(3);
    let opts = cmae::train::runner::RunFlags { out: out.to_path_buf(), resume: false, quiet: true, stop_at: None };
    cmae::train::pretrain::pretrain(shared_device(), &cfg, &opts, &AtomicBool::new(false)).unwrap();
    out.join("checkpoint.safetensors")
}

/// Two micro checkpoints pretrained once for every analysis test:
/// plain MAE and `L(0, 2; 0.75, 0.5)`.
struct Checkpoints {
    base: PathBuf,
    mae: PathBuf,
    two: PathBuf,
}

fn checkpoints() -> &'static Checkpoints {
    static CKPTS: OnceLock<Checkpoints> = OnceLock::new();
    CKPTS.get_or_init(|| {
        let base = fresh_temp_dir("kinds");
        let mae = pretrained(&base.join("mae"), "0:0.75");
        let two = pretrained(&base.join("two"), "0:0.75,2:0.5");
        Checkpoints { base, mae, two }
    })
}

/// A fresh output directory for one analysis.
fn out_dir(kind: &str) -> PathBuf {
    let out = checkpoints().base.join(kind);
    std::fs::create_dir_all(&out).unwrap();
    out
}

fn png(out: &Path, kind: &str) -> image::DynamicImage {
    image::open(out.join(format!("{kind}.png"))).unwrap()
}

#[test]
fn attention_distance_lies_within_the_image() {
    let (c, out) = (checkpoints(), out_dir("distance"));
    let d = analysis::attention_layers(shared_device(), &[c.mae.clone(), c.two.clone()], "synthetic", 4, &out, false)
        .unwrap();
    let per = d["models"][0]["per_layer_head"].as_array().unwrap();
    assert_eq!((per.len(), per[0].as_array().unwrap().len()), (3, 2), "layers × heads");
    // Distances between 4-px patches of a 16-px image lie within [0, 12√2].
    for v in per.iter().flat_map(|l| l.as_array().unwrap()) {
        let v = v.as_f64().unwrap();
        assert!((0.0..=12.0 * 2f64.sqrt()).contains(&v), "{v}");
    }
    assert!(png(&out, "attention-distance").width() > 100);
}

#[test]
fn attention_entropy_lies_between_zero_and_ln_keys() {
    let (c, out) = (checkpoints(), out_dir("entropy"));
    let e =
        analysis::attention_layers(shared_device(), std::slice::from_ref(&c.mae), "synthetic", 4, &out, true).unwrap();
    for v in e["models"][0]["per_layer_head"].as_array().unwrap().iter().flat_map(|l| l.as_array().unwrap()) {
        // 17 keys: entropy between 0 and ln 17.
        assert!((0.0..=17f64.ln() + 1e-9).contains(&v.as_f64().unwrap()));
    }
    assert!(png(&out, "attention-entropy").width() > 100);
}

#[test]
fn cka_of_a_model_with_itself_is_one_on_the_diagonal() {
    let (c, out) = (checkpoints(), out_dir("cka"));
    let r = analysis::cka(shared_device(), &c.mae, &c.mae, "synthetic", 4, &out).unwrap();
    let m = r["cka"].as_array().unwrap();
    assert_eq!(m.len(), 3);
    for (i, row) in m.iter().enumerate() {
        assert!((row[i].as_f64().unwrap() - 1.0).abs() < 1e-6, "diagonal {i}: {}", row[i]);
    }
    assert!(png(&out, "cka").height() > 100);
}

#[test]
fn attention_maps_draw_every_head_and_the_mean() {
    let (c, out) = (checkpoints(), out_dir("maps"));
    let maps = analysis::attention_maps(shared_device(), &c.two, "synthetic", 3, &out).unwrap();
    assert_eq!(maps["images"].as_array().unwrap().len(), 3);
    // Three rows of image | 2 heads | mean, 96-px cells.
    let img = png(&out, "attention-maps");
    assert_eq!((img.width(), img.height()), (4 * 98 + 2, 3 * 98 + 2));
}

#[test]
fn reversed_attention_shares_sum_to_one_before_the_later_shot() {
    let (c, out) = (checkpoints(), out_dir("reversed"));
    let r = analysis::reversed_attention(shared_device(), &c.two, "synthetic", 2, None, &out).unwrap();
    let shares = ["share_to_cls", "share_to_kept", "share_to_dropped"].map(|k| r[k].as_f64().unwrap());
    assert!((shares.iter().sum::<f64>() - 1.0).abs() < 1e-5, "a softmax row sums to 1: {shares:?}");
    assert_eq!(r["block"], 1, "the block just before the shot at layer 2");
    let err =
        analysis::reversed_attention(shared_device(), &c.mae, "synthetic", 2, None, &out).unwrap_err().to_string();
    assert!(err.contains("later shot"), "{err}");
}

#[test]
fn loss_curves_have_a_series_per_shot() {
    let (c, out) = (checkpoints(), out_dir("loss"));
    let l = analysis::loss_curves(&c.base.join("two").join("metrics.jsonl"), &out).unwrap();
    let labels: Vec<&str> = l["series"].as_array().unwrap().iter().map(|s| s["label"].as_str().unwrap()).collect();
    assert_eq!(labels, ["loss", "shot 0", "shot 1"]);
}

#[test]
fn the_study_runs_small_and_resumes() {
    let out = fresh_temp_dir("study");
    let o = cmae::study::StudyOptions {
        preset: "micro".into(),
        data: "synthetic".into(),
        out: out.clone(),
        seeds: 2,
        pretrain: cmae::study::Budget { epochs: 1.0, steps: Some(2) },
        probe: cmae::study::Budget { epochs: 1.0, steps: Some(2) },
        finetune: cmae::study::Budget { epochs: 1.0, steps: Some(2) },
        set: Vec::new(),
        set_classify: vec!["train.batch=8".into(), "data.synthetic_size=64".into()],
        set_probe: vec!["train.blr=1.0".into()],
        set_finetune: Vec::new(),
        quiet: true,
        analysis_images: 2,
    };
    let report = cmae::study::run(shared_device(), &o, &AtomicBool::new(false)).unwrap();
    let text = std::fs::read_to_string(&report).unwrap();
    for row in [
        "| mae | `0:0.75` |",
        "| two-shot | `0:0.75,1:0.1` |",
        "| three-shot | `0:0.75,1:0.1,2:0.1` |",
        "| from scratch |",
    ] {
        assert!(text.contains(row), "{row} missing from\n{text}");
    }
    assert!(text.contains("probes: `train.blr=1.0`."), "the report names the overrides:\n{text}");
    // Two seeds: every accuracy cell is a mean ± std over both runs.
    let cells_with_std = |row: &str| text.lines().find(|l| l.starts_with(row)).unwrap().matches(" ± ").count();
    assert_eq!(cells_with_std("| mae |"), 5, "{text}");
    assert_eq!(cells_with_std("| from scratch |"), 4, "no probe for the baseline:\n{text}");
    assert!(out.join("pretrain/mae-s1/checkpoint.safetensors").is_file() && out.join("eval/scratch-s1.json").is_file());
    for fig in [
        "figures/attention-distance.png",
        "figures/cka-mae-vs-two-shot/cka.png",
        "figures/two-shot/reversed-attention.png",
    ] {
        assert!(out.join(fig).is_file(), "{fig}");
    }
    // --set-probe reaches the probes only; the fine-tuning runs keep the recipe's rate.
    let blr_of = |dir: &str| {
        let text = std::fs::read_to_string(out.join(dir).join("config.ron")).unwrap();
        cmae::classify::ClassifyConfig::from_ron(&text).unwrap().train.blr
    };
    assert_eq!(blr_of("linprobe/mae-s0"), 1.0);
    assert_eq!(blr_of("finetune/mae-s0"), 5e-4);
    // Rerunning finds every stage done and only rewrites the report.
    let pretrain_ckpt = out.join("pretrain/mae-s0/checkpoint.safetensors");
    let before = std::fs::metadata(&pretrain_ckpt).unwrap().modified().unwrap();
    let seconds = || {
        let text = std::fs::read_to_string(out.join("study-time.json")).unwrap();
        serde_json::from_str::<serde_json::Value>(&text).unwrap()["seconds"].as_f64().unwrap()
    };
    let first = seconds();
    cmae::study::run(shared_device(), &o, &AtomicBool::new(false)).unwrap();
    assert_eq!(std::fs::metadata(&pretrain_ckpt).unwrap().modified().unwrap(), before);
    // The wall time accumulates over invocations.
    assert!(seconds() > first && first > 0.0, "{first} then {}", seconds());
    let _ = std::fs::remove_dir_all(&out);
}
