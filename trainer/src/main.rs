//! The `cmae` command line.

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};
use cmae::{bench, info};
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
        Command::Bench { what: BenchCommand::Kernels { filter, runs, warmup } } => {
            let dev = Device::from_env()?;
            let opts = bench::kernels::Options { filter, warmup, runs };
            bench::kernels::run(&dev, &opts, |line| println!("{line}"))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).format_timestamp(None).init();
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
