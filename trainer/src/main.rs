//! The `cmae` command line.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use cmae::{bench, fixture, info};
use cmae_engine::Device;

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
    /// Replay a cmae-fixture-v1 reference file on the GPU and compare
    /// (exit 0: all pass, 1: a check failed, 2: unusable file).
    CheckFixture {
        /// The fixture (.safetensors).
        file: PathBuf,
    },
    /// Speed benchmarks, one JSON line per case.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
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
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Info { json } => {
            let dev = Device::from_env()?;
            if json {
                println!("{}", info::describe(&dev));
            } else {
                info::print(&dev);
            }
        }
        Command::CheckFixture { file } => {
            let dev = Device::from_env()?;
            return Ok(check_fixture(&dev, &file));
        }
        Command::Bench {
            what:
                BenchCommand::Kernels {
                    filter,
                    runs,
                    warmup,
                },
        } => {
            let dev = Device::from_env()?;
            let opts = bench::kernels::Options {
                filter,
                warmup,
                runs,
            };
            bench::kernels::run(&dev, &opts, |line| println!("{line}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check_fixture(dev: &Device, file: &Path) -> ExitCode {
    match fixture::check(dev, file) {
        Err(fixture::Unusable(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Ok(checks) => {
            let failed = checks.iter().filter(|c| !c.passed()).count();
            for c in &checks {
                let verdict = if c.passed() { "ok" } else { "FAIL" };
                println!(
                    "{:<44} error {:<12.3e} bound {:<12.3e} {verdict}",
                    c.name, c.error, c.bound
                );
            }
            println!("{} passed, {failed} failed", checks.len() - failed);
            ExitCode::from(u8::from(failed > 0))
        }
    }
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"))
        .format_timestamp(None)
        .init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
