//! Data-parallel training over MPI ranks, end to end through `mpirun` and
//! the `cmae` binary (built with `--features mpi`; CI installs Open MPI).
//! The ranks share lavapipe (`CMAE_SHARE_ADAPTER=1`) and the machine's cores.
//!
//! Tolerances: N ranks compute exactly the samples, augmentations and masks
//! of one rank; what differs is summation order (a rank sums its shard's
//! gradient contributions, MPI then sums the ranks' partial sums), which
//! moves an f32 sum by a few ulps (~1e-7 relative) per step. Twenty AdamW
//! steps on the micro model amplify that to ~1e-6 at most (measured), so
//! 1e-4 relative leaves two orders of magnitude while still catching any
//! real difference in data, masks or weighting (those change the loss in
//! the second or third digit).
#![cfg(feature = "mpi")]

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use cmae::safetensors_io;
use cmae::train::checkpoint;
use cmae::train::metrics::{MetricsLine, MetricsLog};

const TOLERANCE: f64 = 1e-4;

fn temp(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("cmae-mpi-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `mpirun` with `ranks` processes of `cmae args…` in `dir`, lavapipe shared.
fn mpirun(ranks: usize, dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Command {
    let mut c = Command::new("mpirun");
    c.args(["-n", &ranks.to_string(), "--oversubscribe", env!("CARGO_BIN_EXE_cmae")]).args(args).current_dir(dir);
    ranked_env(&mut c, env);
    c
}

fn ranked_env(c: &mut Command, env: &[(&str, &str)]) {
    c.env("OMPI_ALLOW_RUN_AS_ROOT", "1")
        .env("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
        .env("CMAE_SHARE_ADAPTER", "1")
        // Small buckets: even the micro model's gradients go out in several.
        .env("CMAE_BUCKET_MB", "0.04")
        .env("CMAE_AUTOTUNE", "off");
    for (k, v) in env {
        c.env(k, v);
    }
}

fn output(mut c: Command) -> Output {
    match c.output() {
        Ok(o) => o,
        Err(e) => panic!("cannot run {c:?}: {e}; install Open MPI (apt-get install openmpi-bin libopenmpi-dev)"),
    }
}

fn cmae(dir: &Path, args: &[&str]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_cmae"));
    c.args(args).current_dir(dir).env("CMAE_AUTOTUNE", "off");
    output(c)
}

fn text(o: &Output) -> String {
    format!("{}{}", String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr))
}

fn assert_ok(o: &Output, what: &str) {
    assert!(o.status.success(), "{what} failed:\n{}", text(o));
}

fn metrics(run: &Path) -> Vec<MetricsLine> {
    MetricsLog::read(&run.join("metrics.jsonl")).unwrap()
}

/// A checkpoint's tensors, sorted by name.
fn weights(path: &Path) -> Vec<(String, Vec<f32>)> {
    let tensors = checkpoint::f32_tensors(safetensors_io::read(path).unwrap(), path).unwrap();
    let mut v: Vec<(String, Vec<f32>)> = tensors.into_iter().map(|(n, (_, d))| (n, d)).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

fn relative(a: f64, b: f64) -> f64 {
    (a - b).abs() / b.abs().max(1e-12)
}

/// Same logged steps, each loss within the tolerance.
fn assert_losses_agree(many: &[MetricsLine], one: &[MetricsLine]) {
    assert_eq!(many.len(), one.len());
    for (m, o) in many.iter().zip(one) {
        assert_eq!(m.step, o.step);
        let r = relative(m.loss, o.loss);
        assert!(r <= TOLERANCE, "step {}: loss {} on 2 ranks, {} on 1 (relative {r:.1e})", m.step, m.loss, o.loss);
    }
}

fn largest(v: &[f32]) -> f32 {
    v.iter().fold(0f32, |m, x| m.max(x.abs())).max(1e-12)
}

fn assert_close(name: &str, x: &[f32], y: &[f32]) {
    let worst = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0f32, f32::max);
    let scale = largest(y);
    assert!(f64::from(worst / scale) <= TOLERANCE, "{name}: {worst:e} apart, largest value {scale:e}");
}

/// Every tensor within the tolerance, relative to its largest value, but for
/// the attention key biases: softmax ignores a constant added to every key,
/// so their gradient is zero up to rounding, and what AdamW makes of that
/// rounding noise differs between any two summation orders (measured in f32:
/// 2e-3 relative, with every other value within 7e-7; in f16, where the noise
/// is scaled up with the loss, AdamW moves them as far as the trained biases).
/// No run can reproduce another's noise, so they are not compared.
fn assert_weights_agree(many: &Path, one: &Path) {
    let (a, b) = (weights(many), weights(one));
    assert_eq!(a.len(), b.len());
    for ((name, x), (name_b, y)) in a.iter().zip(&b) {
        assert_eq!(name, name_b);
        if !name.ends_with("attn.qkv.bias") {
            assert_close(name, x, y);
            continue;
        }
        let d = x.len() / 3;
        let (q, v) = ((0..d), (2 * d..3 * d));
        assert_close(&format!("{name} (query part)"), &x[q.clone()], &y[q]);
        assert_close(&format!("{name} (value part)"), &x[v.clone()], &y[v]);
    }
}

const PRETRAIN: [&str; 9] =
    ["pretrain", "--preset", "micro", "--data", "synthetic", "--batch", "16", "--quiet", "--set=output.log_every=1"];

#[test]
fn two_ranks_train_as_one_and_only_rank_0_writes() {
    let dir = temp("match");
    let mut two = Command::new("mpirun");
    // One working directory per rank: a relative --out shows who writes.
    let (d0, d1) = (dir.join("rank0"), dir.join("rank1"));
    std::fs::create_dir_all(&d0).unwrap();
    std::fs::create_dir_all(&d1).unwrap();
    let cmae_bin = env!("CARGO_BIN_EXE_cmae");
    let args = [&PRETRAIN[..], &["--steps", "20", "--out", "run"]].concat();
    two.args(["--oversubscribe", "-n", "1", "-wdir", d0.to_str().unwrap(), cmae_bin])
        .args(&args)
        .args([":", "-n", "1", "-wdir", d1.to_str().unwrap(), cmae_bin])
        .args(&args);
    ranked_env(&mut two, &[]);
    let o = output(two);
    assert_ok(&o, "2 ranks");
    assert_eq!(std::fs::read_dir(&d1).unwrap().count(), 0, "rank 1 wrote files");
    assert_eq!(text(&o).matches("finished at step 20/20").count(), 1, "only rank 0 prints: {}", text(&o));

    let one = cmae(&dir, &[&PRETRAIN[..], &["--steps", "20", "--out", "one"]].concat());
    assert_ok(&one, "1 rank");
    let (many, single) = (metrics(&d0.join("run")), metrics(&dir.join("one")));
    assert_eq!(many.len(), 20);
    assert_losses_agree(&many, &single);
    assert_weights_agree(&d0.join("run/checkpoint.safetensors"), &dir.join("one/checkpoint.safetensors"));
    for m in &many {
        assert_eq!(m.ranks, 2);
        assert_eq!(m.allreduce_bytes, Some(177_792), "the micro model's gradients, padding included");
        let overlap = m.allreduce_overlap.unwrap();
        assert!((0.0..=1.0).contains(&overlap) && m.allreduce_ms.unwrap() >= 0.0);
        // The same images per second as one rank would report: the whole batch's.
        assert!(m.images_per_s > 0.0);
    }
    assert!(single.iter().all(|m| m.ranks == 1 && m.allreduce_ms.is_none()));
    // Some bucket was summed while backward still ran.
    assert!(many.iter().any(|m| m.allreduce_overlap.unwrap() > 0.0), "no overlap at all");
}

#[test]
fn a_run_started_on_two_ranks_resumes_on_one() {
    let dir = temp("resume");
    let first = output(mpirun(
        2,
        &dir,
        &[&PRETRAIN[..], &["--steps", "20", "--stop-at", "10", "--out", "split"]].concat(),
        &[],
    ));
    assert_ok(&first, "10 steps on 2 ranks");
    assert!(text(&first).contains("stopped at step 10/20"), "{}", text(&first));
    let rest = cmae(&dir, &[&PRETRAIN[..], &["--steps", "20", "--out", "split", "--resume"]].concat());
    assert_ok(&rest, "10 more on 1 rank");
    let straight = cmae(&dir, &[&PRETRAIN[..], &["--steps", "20", "--out", "straight"]].concat());
    assert_ok(&straight, "20 steps on 1 rank");
    let (split, one) = (metrics(&dir.join("split")), metrics(&dir.join("straight")));
    assert_eq!(split.iter().map(|m| m.ranks).collect::<Vec<_>>(), [[2; 10], [1; 10]].concat());
    assert_losses_agree(&split, &one);
    assert_weights_agree(&dir.join("split/checkpoint.safetensors"), &dir.join("straight/checkpoint.safetensors"));
}

/// Mixed precision: the ranks scale, check and skip on identical summed
/// gradients, so the loss scale follows one rank's exactly; f16 rounds each
/// shard's activations as one rank rounds them (measured: losses within 1e-5).
#[test]
fn mixed_precision_on_two_ranks_agrees_with_one() {
    let dir = temp("f16");
    let args =
        |out: &'static str| [&PRETRAIN[..], &["--steps", "20", "--set=train.precision=f16", "--out", out]].concat();
    assert_ok(&output(mpirun(2, &dir, &args("two"), &[])), "2 ranks in f16");
    assert_ok(&cmae(&dir, &args("one")), "1 rank in f16");
    let (many, single) = (metrics(&dir.join("two")), metrics(&dir.join("one")));
    assert_losses_agree(&many, &single);
    let scales = |m: &[MetricsLine]| m.iter().map(|l| (l.loss_scale, l.skipped_steps)).collect::<Vec<_>>();
    assert_eq!(scales(&many), scales(&single));
    assert!(many.iter().all(|m| m.loss_scale.is_some()));
    assert_weights_agree(&dir.join("two/checkpoint.safetensors"), &dir.join("one/checkpoint.safetensors"));
}

#[test]
fn linear_probe_and_fine_tuning_on_two_ranks_agree_with_one() {
    let dir = temp("classify");
    assert_ok(&cmae(&dir, &[&PRETRAIN[..], &["--steps", "5", "--out", "pre"]].concat()), "pretraining");
    let ckpt = dir.join("pre/checkpoint.safetensors");
    for mode in ["linprobe", "finetune"] {
        let args = |out: &str| -> Vec<String> {
            [mode, "--checkpoint", ckpt.to_str().unwrap(), "--data", "synthetic", "--steps", "8", "--batch", "12"]
                .iter()
                .map(|s| s.to_string())
                .chain(["--quiet", "--set=output.log_every=1", "--out", out].iter().map(|s| s.to_string()))
                .collect()
        };
        let two_args = args(&format!("{mode}-2"));
        let two_args: Vec<&str> = two_args.iter().map(String::as_str).collect();
        let two = output(mpirun(2, &dir, &two_args, &[]));
        assert_ok(&two, mode);
        assert_eq!(text(&two).matches("\"top1\"").count(), 1, "rank 0 alone evaluates and prints");
        let one_args = args(&format!("{mode}-1"));
        let one_args: Vec<&str> = one_args.iter().map(String::as_str).collect();
        assert_ok(&cmae(&dir, &one_args), mode);
        let (many, single) = (metrics(&dir.join(format!("{mode}-2"))), metrics(&dir.join(format!("{mode}-1"))));
        assert_losses_agree(&many, &single);
        assert_weights_agree(
            &dir.join(format!("{mode}-2/checkpoint.safetensors")),
            &dir.join(format!("{mode}-1/checkpoint.safetensors")),
        );
        // The probe's head runs on every rank over the gathered batch: nothing to sum.
        let summed = many.iter().all(|m| m.allreduce_bytes.is_some());
        assert_eq!(summed, mode == "finetune", "{mode}");
    }
}

#[test]
fn nan_on_one_rank_stops_every_rank_at_that_step() {
    let dir = temp("nan");
    let args = [&PRETRAIN[..], &["--steps", "20", "--out", "run", "--set=output.checkpoint_every=2"]].concat();
    let o = output(mpirun(2, &dir, &args, &[("CMAE_INJECT_NAN", "1:5")]));
    assert!(!o.status.success());
    let t = text(&o);
    assert_eq!(t.matches("the loss became NaN at step 5").count(), 1, "{t}");
    assert!(t.contains("checkpoints/step-00000004"), "names the last good checkpoint: {t}");
    assert!(!t.contains("MPI_ABORT"), "an agreed stop, not an abort: {t}");
    let logged: Vec<u64> = metrics(&dir.join("run")).iter().map(|m| m.step).collect();
    assert_eq!(logged.last(), Some(&4), "{logged:?}");
    let kept: Vec<String> = std::fs::read_dir(dir.join("run/checkpoints"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(kept.iter().all(|k| k.as_str() <= "step-00000004"), "{kept:?}");

    // The linear probe computes its loss on every rank (not summed shares):
    // a NaN on one rank still stops both at once, not at the collective timeout.
    let ckpt = dir.join("run/checkpoint.safetensors");
    let args = ["linprobe", "--checkpoint", ckpt.to_str().unwrap(), "--data", "synthetic", "--steps", "8"];
    let started = Instant::now();
    let o = output(mpirun(
        2,
        &dir,
        &[&args[..], &["--batch", "8", "--quiet", "--out", "probe"]].concat(),
        &[("CMAE_INJECT_NAN", "1:3")],
    ));
    let t = text(&o);
    assert!(!o.status.success());
    assert_eq!(t.matches("the loss became NaN at step 3").count(), 1, "{t}");
    assert!(!t.contains("MPI_ABORT") && started.elapsed() < Duration::from_secs(60), "{t}");
}

/// PIDs of the `cmae` processes whose command line mentions `marker`, by rank.
fn ranks_of(marker: &str) -> Vec<(usize, u32)> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmdline = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        let environ = std::fs::read(entry.path().join("environ")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline);
        if !cmdline.starts_with(env!("CARGO_BIN_EXE_cmae")) || !cmdline.contains(marker) {
            continue;
        }
        let rank = String::from_utf8_lossy(&environ)
            .split('\0')
            .find_map(|kv| kv.strip_prefix("OMPI_COMM_WORLD_RANK=")?.parse().ok());
        if let Some(rank) = rank {
            found.push((rank, pid));
        }
    }
    found.sort();
    found
}

/// Starts a long 2-rank run in `dir` and waits until it has logged a step.
fn start_long_run(dir: &Path, out: &str) -> std::process::Child {
    let args = [&PRETRAIN[..], &["--steps", "100000", "--out", out, "--set=output.checkpoint_every=1000000"]].concat();
    let mut c = mpirun(2, dir, &args, &[]);
    let child = c.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let started = Instant::now();
    while !dir.join(out).join("metrics.jsonl").exists() {
        assert!(started.elapsed() < Duration::from_secs(120), "the run never logged a step");
        std::thread::sleep(Duration::from_millis(100));
    }
    child
}

fn signal(pid: u32, sig: &str) {
    assert!(Command::new("kill").args([sig, &pid.to_string()]).status().unwrap().success());
}

#[test]
fn a_killed_rank_ends_the_job_naming_it() {
    let dir = temp("kill");
    let child = start_long_run(&dir, "killed-run");
    let ranks = ranks_of("killed-run");
    assert_eq!(ranks.iter().map(|r| r.0).collect::<Vec<_>>(), [0, 1]);
    let killed = Instant::now();
    signal(ranks[1].1, "-KILL");
    let o = child.wait_with_output().unwrap();
    let waited = killed.elapsed();
    assert!(waited < Duration::from_secs(60), "the job took {waited:?} to end");
    assert!(!o.status.success());
    let t = text(&o);
    assert!(t.contains("rank 1"), "the message names the rank: {t}");
}

#[test]
fn sigint_to_every_rank_writes_one_checkpoint_and_all_exit() {
    let dir = temp("sigint");
    let child = start_long_run(&dir, "interrupted-run");
    let ranks = ranks_of("interrupted-run");
    assert_eq!(ranks.len(), 2);
    for (_, pid) in &ranks {
        signal(*pid, "-INT");
    }
    let o = child.wait_with_output().unwrap();
    assert_ok(&o, "the interrupted run");
    let t = text(&o);
    assert_eq!(t.matches("stopped at step").count(), 1, "{t}");
    let kept: Vec<_> = std::fs::read_dir(dir.join("interrupted-run/checkpoints")).unwrap().collect();
    assert_eq!(kept.len(), 1, "one checkpoint, at the agreed step");
    let last = metrics(&dir.join("interrupted-run")).last().unwrap().step;
    assert!(t.contains(&format!("stopped at step {last}/100000")), "{t}");
}

#[test]
fn launch_mistakes_are_named() {
    let dir = temp("mistakes");
    // Two ranks, one adapter, no sharing allowed.
    let mut c = mpirun(2, &dir, &[&PRETRAIN[..], &["--steps", "2", "--out", "a"]].concat(), &[]);
    c.env_remove("CMAE_SHARE_ADAPTER");
    let t = text(&output(c));
    assert!(t.contains("2 ranks run on this machine but only 1 adapter(s) match"), "{t}");
    assert!(t.contains("CMAE_SHARE_ADAPTER=1"), "{t}");
    // A global batch smaller than the ranks.
    let args = ["pretrain", "--preset", "micro", "--data", "synthetic", "--batch", "1", "--steps", "2", "--out", "b"];
    let t = text(&output(mpirun(2, &dir, &args, &[])));
    assert!(t.contains("train.batch=1 is smaller than the 2 ranks"), "{t}");
    // Commands that run as one process refuse a multi-rank launch.
    let t = text(&output(mpirun(2, &dir, &["info"], &[])));
    assert!(t.contains("this command runs as one process, but 2 ranks were started"), "{t}");
    // MPI support is reported.
    let info = cmae(&dir, &["info", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(v["distributed"]["mpi"], true);
}
