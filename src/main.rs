//! `runner`: the command line of losa. It owns the terminal; the libraries never print.
#![allow(clippy::print_stdout, clippy::print_stderr)]

mod check_data;
mod cli;
mod commands;
mod progress;
mod slurm;
mod status;

use std::process::ExitCode;

use clap::{CommandFactory, Parser};

use cli::{Cli, Command, Layers};

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// How a command ended badly.
#[derive(Debug)]
pub enum Failure {
    /// The input was wrong and nothing ran (exit code 2).
    BadInput(anyhow::Error),
    /// Some runs failed; the others finished (exit code 1).
    RunsFailed(usize),
}

impl<E: Into<anyhow::Error>> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure::BadInput(e.into())
    }
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let result = match cli.command {
        Some(Command::Run { recipe, flags }) => commands::run(&recipe, &flags),
        Some(Command::Check { recipes, layers, data }) => commands::check(&recipes, &layers, data),
        Some(Command::Plan { recipe, json, layers }) => commands::plan(&recipe, json, &layers),
        Some(Command::Schema) => commands::schema(),
        Some(Command::Report { runs, out, published, recipe, sets }) => {
            commands::report(&runs, out, published, recipe.as_deref(), &Layers { sets })
        }
        Some(Command::Embed(args)) => commands::embed(&args),
        Some(Command::Submit(args)) => slurm::submit(&args),
        Some(Command::Status { target, layers, out }) => commands::status(&target, &layers, out),
        None => match &cli.recipe {
            Some(recipe) => commands::run(recipe, &cli.run),
            None => {
                let _ = Cli::command().print_help();
                return ExitCode::SUCCESS;
            }
        },
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure::BadInput(e)) => {
            eprintln!("error: {e:#}");
            ExitCode::from(2)
        }
        Err(Failure::RunsFailed(n)) => {
            eprintln!("error: {n} run(s) failed; see their record.json");
            ExitCode::from(1)
        }
    }
}

/// Logs go to stderr; `LOSA_LOG` (e.g. `LOSA_LOG=debug`) sets the level.
fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("LOSA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();
}
