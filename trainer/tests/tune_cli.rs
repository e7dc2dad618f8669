//! `cmae tune` and the autotune environment, through the binary: the cache
//! is filled once and reused, `--retune` times again, `cmae info` reports
//! it, a training run fills it lazily, and `CMAE_AUTOTUNE=off` times and
//! writes nothing. Each test has a cache directory of its own.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn cmae(cache: &Path, autotune: &str, args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_cmae"))
        .args(args)
        .env("CMAE_CACHE_DIR", cache)
        .env("CMAE_AUTOTUNE", autotune)
        .output()
        .unwrap();
    assert!(!String::from_utf8_lossy(&out.stderr).contains("panicked"));
    out
}

fn ok(out: &Output) -> String {
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("cmae-tune-cli-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    d
}

fn cache_files(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).map(|r| r.map(|e| e.unwrap().path()).collect()).unwrap_or_default()
}

/// The files in `dir` whose names start with `prefix`.
fn files_named(dir: &Path, prefix: &str) -> Vec<PathBuf> {
    let named = |p: &PathBuf| p.file_name().is_some_and(|n| n.to_string_lossy().starts_with(prefix));
    cache_files(dir).into_iter().filter(named).collect()
}

/// Every `loss` of a run's metrics.jsonl.
fn losses(run: &Path) -> Vec<f64> {
    let text = std::fs::read_to_string(run.join("metrics.jsonl")).unwrap();
    let line = |l: &str| serde_json::from_str::<serde_json::Value>(l).unwrap()["loss"].as_f64();
    text.lines().filter_map(line).collect()
}

/// The table's rows: lines naming a decision.
fn rows(table: &str) -> Vec<&str> {
    table.lines().filter(|l| l.starts_with("matmul ") || l.starts_with("attention ")).collect()
}

#[test]
fn tune_fills_the_cache_once_and_info_reports_it() {
    let dir = temp("fill");
    let tune = ["tune", "--preset", "micro", "--batch", "2"];
    let first = ok(&cmae(&dir, "on", &tune));
    let files = cache_files(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    assert!(first.contains(&format!("cache: {}", files[0].display())), "{first}");
    let timed = rows(&first);
    assert!(timed.iter().any(|r| r.starts_with("matmul ")), "{first}");
    assert!(timed.iter().all(|r| r.ends_with("timed")), "{first}");

    let second = ok(&cmae(&dir, "on", &tune));
    assert_eq!(rows(&second).len(), timed.len(), "{second}");
    assert!(rows(&second).iter().all(|r| r.ends_with("cache")), "nothing timed twice: {first}\n{second}");

    let again = ok(&cmae(&dir, "on", &[&tune[..], &["--retune"]].concat()));
    assert!(rows(&again).iter().all(|r| r.ends_with("timed")), "{again}");

    // The retuned step may meet classes the first did not (when a close
    // attention race flips to the composed path, its products are classes
    // too), so the file holds at least the first table's rows.
    let cached: serde_json::Value = serde_json::from_slice(&std::fs::read(&files[0]).unwrap()).unwrap();
    let entries = cached["entries"].as_array().map_or(0, Vec::len);
    assert!(entries >= timed.len(), "{entries} cached entries for {} timed classes", timed.len());
    let info = ok(&cmae(&dir, "on", &["info"]));
    let want = format!("autotune: on, cache {} ({entries} entries for this adapter)", files[0].display());
    assert!(info.contains(&want), "{info}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_training_run_tunes_lazily_and_off_times_nothing() {
    let dir = temp("lazy");
    let run = |autotune: &str, name: &str| {
        let out = dir.join(name);
        let args = ["pretrain", "--preset", "micro", "--steps", "1", "--batch", "2", "--quiet", "--out"];
        ok(&cmae(&dir.join(format!("cache-{autotune}")), autotune, &[&args[..], &[out.to_str().unwrap()]].concat()));
    };
    run("off", "off");
    assert!(files_named(&dir.join("cache-off"), "tune-").is_empty(), "CMAE_AUTOTUNE=off writes no tune cache");
    // The pipelines the run built are listed for the next start, tuning or not,
    // and the next run, built ahead from the list, computes the same.
    assert_eq!(files_named(&dir.join("cache-off"), "pipelines-pretrain-").len(), 1);
    run("off", "off-again");
    assert_eq!(losses(&dir.join("off-again")), losses(&dir.join("off")));
    assert!(!losses(&dir.join("off")).is_empty());
    run("on", "on");
    assert_eq!(files_named(&dir.join("cache-on"), "tune-").len(), 1, "the first step's classes were timed and cached");

    let off = cmae(&dir.join("cache-off"), "off", &["tune", "--preset", "micro"]);
    assert!(!off.status.success());
    assert!(String::from_utf8_lossy(&off.stderr).contains("error: autotuning is off"));
    assert!(ok(&cmae(&dir, "off", &["info"])).contains("autotune: off"));
    let _ = std::fs::remove_dir_all(&dir);
}
