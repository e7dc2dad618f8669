//! The `cmae` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use cmae::classify;
use cmae::cli::{ClassifyArgs, ConfigArgs};
use cmae::config::PretrainConfig;
use cmae::data::DataSpec;
use cmae::train::runner::RunFlags;
use cmae::train::{pretrain, recon};
use cmae::{bench, distributed, fixture, info, tune};
use cmae_engine::{Device, Precision};

#[derive(Parser)]
#[command(name = "cmae", version, about = "Conditional MAE on any GPU (wgpu)")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the GPU adapter, backend, driver, features and limits.
    Info {
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
    },
    /// Pretrain a Conditional MAE (plain MAE with one shot).
    Pretrain {
        #[command(flatten)]
        config: ConfigArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Linear probe of a pretrained encoder (LARS, BatchNorm + Linear on the cls token).
    Linprobe {
        #[command(flatten)]
        args: ClassifyArgs,
        #[command(flatten)]
        run: RunArgs,
    },
    /// Fine-tune a pretrained encoder (AdamW, layer decay, mixup/cutmix, …).
    Finetune {
        #[command(flatten)]
        args: ClassifyArgs,
        #[command(flatten)]
        run: RunArgs,
        /// Train the same ViT from random weights (the no-pretraining baseline).
        #[arg(long, conflicts_with = "checkpoint")]
        from_scratch: bool,
        /// Model shape for --from-scratch: a preset (tiny, fmnist, vit-s16, …).
        #[arg(long, requires = "from_scratch", default_value = "tiny")]
        preset: String,
    },
    /// Top-1/top-5 of a linprobe/finetune checkpoint, plus top-1 with half the
    /// patches removed and with the patches shuffled; prints one JSON object.
    Eval {
        #[arg(long)]
        checkpoint: PathBuf,
        #[arg(long)]
        data: String,
        #[arg(long, default_value_t = 128)]
        batch: usize,
        /// Seed of the robustness tests' random patches.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// Override a field of the checkpoint's run config, as for linprobe/finetune:
        /// --set data.test_images=2000 evaluates the first 2000 test images.
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
    },
    /// One of the study's analyses: writes DIR/KIND.json and DIR/KIND.png.
    Analyze {
        #[arg(value_enum)]
        kind: AnalysisKind,
        /// A checkpoint (give two for cka, one or more for attention-distance/entropy).
        #[arg(long = "checkpoint", required_unless_present = "run")]
        checkpoints: Vec<PathBuf>,
        /// For loss-curves: the run directory (default: the checkpoint's directory).
        #[arg(long)]
        run: Option<PathBuf>,
        /// Images to analyse (their test split).
        #[arg(long, default_value = "synthetic")]
        data: String,
        /// How many test images.
        #[arg(long, default_value_t = 16)]
        images: usize,
        /// reversed-attention: the shots to mask with (default: the checkpoint's).
        #[arg(long)]
        shots: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
    /// The study's comparison end to end: MAE, two-shot and three-shot
    /// pretraining, linear probe, fine-tuning, a from-scratch baseline,
    /// robustness and analyses; writes OUT/report.md. Resumes when rerun.
    Study {
        #[arg(long, default_value = "fmnist")]
        data: String,
        #[arg(long, default_value = "fmnist")]
        preset: String,
        #[arg(long, default_value = "runs/study")]
        out: PathBuf,
        /// Repeat every arm with this many seeds (mean ± std in the report).
        #[arg(long, default_value_t = 1)]
        seeds: usize,
        #[arg(long, default_value_t = 100.0)]
        pretrain_epochs: f64,
        #[arg(long)]
        pretrain_steps: Option<usize>,
        #[arg(long, default_value_t = 90.0)]
        probe_epochs: f64,
        #[arg(long)]
        probe_steps: Option<usize>,
        #[arg(long, default_value_t = 100.0)]
        finetune_epochs: f64,
        #[arg(long)]
        finetune_steps: Option<usize>,
        /// Override a pretraining config field in every arm (e.g. model.depth=6).
        #[arg(long = "set", value_name = "KEY=VALUE")]
        set: Vec<String>,
        /// Override a probe / fine-tuning config field (e.g. train.batch=128).
        #[arg(long = "set-classify", value_name = "KEY=VALUE")]
        set_classify: Vec<String>,
        /// Override a linear-probe config field only, after --set-classify (e.g. train.blr=10).
        #[arg(long = "set-probe", value_name = "KEY=VALUE")]
        set_probe: Vec<String>,
        /// Override a fine-tuning config field only, after --set-classify (also the from-scratch run).
        #[arg(long = "set-finetune", value_name = "KEY=VALUE")]
        set_finetune: Vec<String>,
        /// Test images for the analyses.
        #[arg(long, default_value_t = 16)]
        analysis_images: usize,
        #[arg(long)]
        quiet: bool,
    },
    /// Render original | per-shot visible patches | reconstruction | error for any images.
    Reconstruct {
        #[arg(long)]
        checkpoint: PathBuf,
        /// PNG or JPEG files.
        #[arg(long, num_args = 1.., required = true)]
        images: Vec<PathBuf>,
        /// Shots to apply (default: the checkpoint's own).
        #[arg(long)]
        shots: Option<String>,
        /// Seed of the random masks.
        #[arg(long, default_value_t = 0)]
        seed: u64,
        /// The grid PNG to write.
        #[arg(long, required_unless_present = "json")]
        out: Option<PathBuf>,
        /// Print one JSON line: the model's reconstruction loss over the
        /// dropped patches (`loss`), each image's (`per_image`), the shots,
        /// the seed and the adapter.
        #[arg(long)]
        json: bool,
    },
    /// Replay a cmae-fixture-v1 reference file on the GPU and compare
    /// (exit 0: all pass, 1: a check failed, 2: unusable file).
    CheckFixture {
        /// The fixture (.safetensors).
        file: PathBuf,
        /// f32, or f16 mixed precision against the fixture's PyTorch autocast
        /// reference (tools/make_fixtures.py --autocast).
        #[arg(long, default_value = "f32")]
        precision: Precision,
    },
    /// Time the kernel variants one training step of a preset meets and fill
    /// the autotune cache (what a run would otherwise time on its first step).
    Tune {
        #[arg(long, default_value = "tiny")]
        preset: String,
        /// Batch size (default: the preset's).
        #[arg(long)]
        batch: Option<usize>,
        /// Time every class again, even those already in the cache.
        #[arg(long)]
        retune: bool,
        /// Tune the classes of a step in this precision: f32 or f16.
        #[arg(long, default_value = "f32")]
        precision: Precision,
    },
    /// Speed benchmarks, one JSON line per case.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum AnalysisKind {
    AttentionDistance,
    AttentionEntropy,
    Cka,
    AttentionMaps,
    ReversedAttention,
    LossCurves,
}

fn run_analysis(
    kind: AnalysisKind,
    checkpoints: &[PathBuf],
    run: Option<PathBuf>,
    data: &str,
    images: usize,
    shots: Option<&str>,
    out: &Path,
) -> Result<()> {
    use cmae::analysis;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let one = || checkpoints.first().context("give --checkpoint");
    let (name, value) = match kind {
        AnalysisKind::LossCurves => {
            let dir = match run {
                Some(r) => r,
                None => one()?.parent().map(Path::to_path_buf).unwrap_or_default(),
            };
            ("loss-curves", analysis::loss_curves(&dir.join("metrics.jsonl"), out)?)
        }
        AnalysisKind::AttentionDistance | AnalysisKind::AttentionEntropy => {
            let dev = Device::from_env()?;
            let entropy = matches!(kind, AnalysisKind::AttentionEntropy);
            let name = if entropy { "attention-entropy" } else { "attention-distance" };
            (name, analysis::attention_layers(&dev, checkpoints, data, images, out, entropy)?)
        }
        AnalysisKind::Cka => {
            let [a, b] = checkpoints else { bail!("cka compares two models: give --checkpoint A --checkpoint B") };
            let dev = Device::from_env()?;
            ("cka", analysis::cka(&dev, a, b, data, images, out)?)
        }
        AnalysisKind::AttentionMaps => {
            ("attention-maps", analysis::attention_maps(&Device::from_env()?, one()?, data, images, out)?)
        }
        AnalysisKind::ReversedAttention => (
            "reversed-attention",
            analysis::reversed_attention(&Device::from_env()?, one()?, data, images, shots, out)?,
        ),
    };
    let json = analysis::write_json(out, name, &value)?;
    println!("wrote {} and {}", json.display(), out.join(format!("{name}.png")).display());
    Ok(())
}

/// Run-directory flags shared by the training commands.
#[derive(clap::Args)]
struct RunArgs {
    /// Run directory (default: a new one under runs/, named after the command
    /// or, for pretraining, the preset and shots, plus the time).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Continue the run in --out from its newest checkpoint, exactly.
    #[arg(long, requires = "out")]
    resume: bool,
    /// No progress bar (CI logs).
    #[arg(long)]
    quiet: bool,
    /// Stop after this optimizer step as if interrupted (checkpoint, then exit).
    #[arg(long)]
    stop_at: Option<u64>,
}

impl RunArgs {
    /// The flags, with `default_out()` as the run directory when --out is absent.
    fn flags(self, default_out: impl FnOnce() -> Result<PathBuf>) -> Result<RunFlags> {
        let out = match self.out {
            Some(o) => o,
            None => default_out()?,
        };
        Ok(RunFlags { out, resume: self.resume, quiet: self.quiet, stop_at: self.stop_at })
    }
}

fn run_classify(mode: classify::Mode, args: ClassifyArgs, run: RunArgs, scratch: Option<&str>) -> Result<()> {
    let scratch_model = scratch.map(|p| PretrainConfig::preset(p).map(|c| c.model)).transpose()?;
    let cfg = args.build(mode, scratch_model)?;
    let name = match mode {
        classify::Mode::Linprobe => "linprobe",
        classify::Mode::Finetune => "finetune",
    };
    let flags = run.flags(|| cmae::cli::fresh_run_dir(name))?;
    let dev = distributed::world().open_device(name)?;
    let flag = interrupt_flag()?;
    let (s, results) = classify::train(&dev, &cfg, &flags, &flag)?;
    if !distributed::world().is_root() {
        return Ok(());
    }
    match results {
        None => println!(
            "stopped at step {}/{}; resume with: cmae {name} ... --out {} --resume",
            s.step,
            s.total_steps,
            s.out.display()
        ),
        Some(results) => {
            println!("{}", serde_json::to_string(&results)?);
            println!("results:    {}", s.out.join("results.json").display());
        }
    }
    println!("checkpoint: {}", s.checkpoint.display());
    Ok(())
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Matmul, attention, gather/scatter and dispatch overhead.
    Kernels {
        /// Only cases whose kernel name contains this text.
        #[arg(long)]
        filter: Option<String>,
        /// Timed runs per case (the median is reported).
        #[arg(long, default_value_t = 5)]
        runs: usize,
        /// Untimed runs per case first.
        #[arg(long, default_value_t = 2)]
        warmup: usize,
    },
    /// ms per training step and images/s for several masking settings.
    Pretrain {
        #[arg(long, default_value = "tiny")]
        preset: String,
        #[arg(long)]
        batch: Option<usize>,
        /// A masking setting to time (repeatable), e.g. --shots 0:0.75,10:0.1.
        /// Default: L(0;0.75), L(0,d-2;0.75,0.1), L(0,d-2,d-1;0.75,0.1,0.1).
        #[arg(long = "shots")]
        settings: Vec<String>,
        /// Timed steps per setting, interleaved across settings (the median is reported).
        #[arg(long, default_value_t = 5)]
        steps: usize,
        /// Untimed steps per setting first.
        #[arg(long, default_value_t = 1)]
        warmup: usize,
        /// Also print where the GPU time goes, per kernel (timestamp queries).
        #[arg(long)]
        profile: bool,
        /// f32, f16 (mixed precision), or both (f32,f16: interleaved, each
        /// line then carries its ratios to the same setting in f32).
        #[arg(long, value_delimiter = ',', default_value = "f32")]
        precision: Vec<Precision>,
    },
}

/// Ctrl-C once: finish the step, checkpoint, exit. Twice: exit now.
fn interrupt_flag() -> Result<Arc<AtomicBool>> {
    let flag = Arc::new(AtomicBool::new(false));
    let f = flag.clone();
    ctrlc::set_handler(move || {
        if f.swap(true, Ordering::SeqCst) {
            std::process::exit(130);
        }
        if distributed::world().is_root() {
            eprintln!("\ninterrupted: finishing this step and writing a checkpoint (Ctrl-C again to quit now)");
        }
    })
    .context("cannot install the Ctrl-C handler")?;
    Ok(flag)
}

fn run_pretrain(config: ConfigArgs, run: RunArgs) -> Result<()> {
    let cfg = config.build()?;
    let opts = run.flags(|| config.default_out(&cfg))?;
    let dev = distributed::world().open_device("pretrain")?;
    let flag = interrupt_flag()?;
    let s = pretrain::pretrain(&dev, &cfg, &opts, &flag)?;
    if !distributed::world().is_root() {
        return Ok(());
    }
    let verb = if s.interrupted { "stopped" } else { "finished" };
    let loss = s.last_loss.map_or("-".into(), |l| format!("{l:.4}"));
    println!("{verb} at step {}/{} (loss {loss})", s.step, s.total_steps);
    println!("checkpoint:      {}", s.checkpoint.display());
    if let Some(r) = &s.artifact {
        println!("reconstructions: {}", r.display());
    }
    println!("metrics:         {}", s.out.join("metrics.jsonl").display());
    if s.interrupted {
        println!("resume with:     cmae pretrain --out {} --resume (plus the same config flags)", s.out.display());
    }
    Ok(())
}

fn run_reconstruct(
    checkpoint_path: &Path,
    images: &[PathBuf],
    shots: Option<String>,
    seed: u64,
    (out, json): (Option<&Path>, bool),
) -> Result<()> {
    let dev = Device::from_env()?;
    let f = recon::reconstruct_files(&dev, checkpoint_path, images, shots.as_deref(), seed)?;
    if let Some(out) = out {
        recon::save_png(&recon::render(&f.result, &f.loaded.mae, &f.transform), out)?;
        if !json {
            println!("wrote {}", out.display());
        }
    }
    if json {
        println!("{}", f.result.report(&f.shots, seed, &dev.info().name));
    }
    Ok(())
}

fn check_fixture(dev: &Device, file: &Path, precision: Precision) -> ExitCode {
    match fixture::check_in(dev, file, precision) {
        Err(fixture::Unusable(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Ok(checks) => {
            let failed = checks.iter().filter(|c| !c.passed()).count();
            for c in &checks {
                let verdict = if c.passed() { "ok" } else { "FAIL" };
                println!("{:<44} error {:<12.3e} bound {:<12.3e} {verdict}", c.name, c.error, c.bound);
            }
            println!("{} passed, {failed} failed", checks.len() - failed);
            ExitCode::from(u8::from(failed > 0))
        }
    }
}

fn run(cli: Cli, started: Instant) -> Result<ExitCode> {
    let ranked = matches!(
        cli.command,
        Command::Pretrain { .. }
            | Command::Linprobe { .. }
            | Command::Finetune { .. }
            | Command::Bench { what: BenchCommand::Pretrain { .. } }
    );
    let world = distributed::world();
    if !ranked && world.size() > 1 {
        bail!(
            "this command runs as one process, but {} ranks were started; run it without mpirun/srun (pretrain, linprobe, finetune and bench pretrain run on several ranks)",
            world.size()
        );
    }
    match cli.command {
        Command::Info { json } => {
            let dev = Device::from_env()?;
            if json {
                println!("{}", info::describe(&dev));
            } else {
                info::print(&dev);
            }
        }
        Command::Pretrain { config, run } => run_pretrain(config, run)?,
        Command::Linprobe { args, run } => run_classify(classify::Mode::Linprobe, args, run, None)?,
        Command::Finetune { args, run, from_scratch, preset } => {
            run_classify(classify::Mode::Finetune, args, run, from_scratch.then_some(preset.as_str()))?
        }
        Command::Eval { checkpoint, data, batch, seed, set } => {
            let dev = Device::from_env()?;
            let file = cmae::train::checkpoint::CheckpointFile::read(&checkpoint)?;
            // The whole test split unless --set says otherwise, whatever the
            // training run itself evaluated on.
            let overrides: Vec<String> = std::iter::once("data.test_images=0".to_string()).chain(set).collect();
            let (model, cfg) = classify::Classifier::from_file(&dev, file, &overrides)?;
            let spec = DataSpec::parse(&data)?;
            let test =
                cmae::data::test_subset(&spec, cfg.data.synthetic_size, cfg.model.img_size, cfg.data.test_images)?;
            if test.num_classes() != model.classes {
                bail!("{data} has {} classes but the checkpoint's head has {}", test.num_classes(), model.classes);
            }
            let acc = classify::evaluate(&dev, &model, test, cfg.data.bad_images, batch, seed, true)?;
            println!("{}", serde_json::to_string(&acc)?);
        }
        Command::Study {
            data,
            preset,
            out,
            seeds,
            pretrain_epochs,
            pretrain_steps,
            probe_epochs,
            probe_steps,
            finetune_epochs,
            finetune_steps,
            set,
            set_classify,
            set_probe,
            set_finetune,
            analysis_images,
            quiet,
        } => {
            use cmae::study::{Budget, StudyOptions};
            let o = StudyOptions {
                preset,
                data,
                out,
                seeds: seeds.max(1),
                pretrain: Budget { epochs: pretrain_epochs, steps: pretrain_steps },
                probe: Budget { epochs: probe_epochs, steps: probe_steps },
                finetune: Budget { epochs: finetune_epochs, steps: finetune_steps },
                set,
                set_classify,
                set_probe,
                set_finetune,
                quiet,
                analysis_images,
            };
            let dev = Device::from_env()?;
            let flag = interrupt_flag()?;
            let report = cmae::study::run(&dev, &o, &flag)?;
            println!("report: {}", report.display());
        }
        Command::Analyze { kind, checkpoints, run, data, images, shots, out } => {
            run_analysis(kind, &checkpoints, run, &data, images, shots.as_deref(), &out)?
        }
        Command::Reconstruct { checkpoint, images, shots, seed, out, json } => {
            if images.is_empty() {
                bail!("--images needs at least one file");
            }
            run_reconstruct(&checkpoint, &images, shots, seed, (out.as_deref(), json))?
        }
        Command::CheckFixture { file, precision } => {
            let dev = match Device::from_env() {
                Ok(d) => d,
                Err(e) => {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::from(2));
                }
            };
            return Ok(check_fixture(&dev, &file, precision));
        }
        Command::Tune { preset, batch, retune, precision } => {
            // No time budget: filling the whole cache is the point.
            let tune = cmae_engine::TuneConfig { budget: None, ..cmae_engine::TuneConfig::from_env()? };
            let dev = Device::open(&cmae_engine::device::AdapterRequest::from_env()?, tune)?;
            let entries = tune::run(&dev, &tune::Options { preset, batch, retune, precision })?;
            println!("{}", tune::table(&dev, &entries));
        }
        Command::Bench { what: BenchCommand::Kernels { filter, runs, warmup } } => {
            let dev = Device::from_env()?;
            let opts = bench::kernels::Options { filter, warmup, runs };
            bench::kernels::run(&dev, &opts, |line| println!("{line}"))?;
        }
        Command::Bench {
            what: BenchCommand::Pretrain { preset, batch, settings, steps, warmup, profile, precision },
        } => {
            let dev = distributed::world().open_device("bench-pretrain")?;
            let opts =
                bench::pretrain::Options { preset, batch, settings, warmup, steps, profile, precisions: precision };
            let root = distributed::world().is_root();
            bench::pretrain::run(&dev, &opts, started, |line| {
                if root {
                    println!("{line}");
                }
            })?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    // Arguments first: `--help` or a typo ends the process before MPI starts.
    let cli = Cli::parse();
    let world = match distributed::init() {
        Ok(w) => w,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    // Ranks other than 0 are quiet: they print warnings and errors only.
    let level = if world.is_root() { "info" } else { "warn" };
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or(level)).format_timestamp(None).init();
    let started = Instant::now();
    match run(cli, started) {
        Ok(code) => {
            world.finish();
            code
        }
        Err(e) if world.size() == 1 => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
        // Every rank stopped at the same step for the same reason: rank 0 says why.
        Err(e) if e.downcast_ref::<distributed::Agreed>().is_some() => {
            if world.is_root() {
                eprintln!("error: {e:#}");
            }
            world.finish();
            ExitCode::FAILURE
        }
        // This rank failed alone: the others would wait for it forever.
        Err(e) => {
            eprintln!("error: rank {} of {}: {e:#}", world.rank(), world.size());
            world.abort(1)
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    /// clap checks its argument graph only in debug builds, at parse time: a
    /// flag naming another subcommand's argument made `cmae linprobe` panic.
    #[test]
    fn every_subcommand_is_well_formed() {
        super::Cli::command().debug_assert();
    }
}
