//! End-to-end tests of the `runner` binary (one integration-test binary for the workspace).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod cli;
mod data;
mod embed;
mod engine;
mod quickstart;
mod recipes;
mod report;
mod slurm;
mod support;
mod sweeps;
