#!/usr/bin/env bash
# The GPU session of issue 10, in one go on the GPU machine (../shared/GPU.md: no Rust there).
# Build here first (CUDA 13 toolchain, compute capability 9.0):
#   eval "$(bash ../shared/tools/cuda-toolchain.sh)"
#   CARGO_TARGET_DIR=/work/target-cuda cargo build --release -p losa-bench --features cuda --bin kernels --bin train_step
# (if that target folder is shared with another checkout, `touch framework/build.rs` first: cargo can
# take the other checkout's build-script output for fresh, and then no PTX is found)
# then copy the two binaries and this repository's bench/ folder to the GPU machine and run
#   BIN_DIR=<folder with kernels and train_step> bench/run_kernels_gpu.sh
# It runs (1) the kernel check: every fused op's CUDA kernels (forward and backward, f32, bf16, f16,
# f64) against the CPU fallback on random inputs, outputs pre-filled with NaN, plus fused-against-
# unfused timings; (2) the train-step comparison with PyTorch (bench/run_train_step.sh --gpu:
# ViT-B/16, batch 64, 224 px). Logs and tables go to $OUT (default bench/out/gpu); the kernel
# table and the train-step table are printed last. Exit status: 1 if a kernel check failed.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${BIN_DIR:-target/release}
out=${OUT:-bench/out/gpu}
mkdir -p "$out"
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
"$bin/kernels" --device cuda --runs 20 > "$out/kernels.md" 2> "$out/kernels.log"
kernels=$?
RUNNER_BENCH="$bin/train_step" OUT="$out" PYTHON="${PYTHON:-python3}" bench/run_train_step.sh --gpu \
  > "$out/train_step.md" 2> "$out/train_step.log"
steps=$?
cat "$out/kernels.md"
echo
cat "$out/train_step.md"
echo
echo "kernel check exit $kernels, train-step benchmark exit $steps (logs in $out)"
[ "$kernels" -eq 0 ] && [ "$steps" -eq 0 ]
