#!/usr/bin/env bash
# Builds the CUDA binaries that bench/run_gpu.sh runs on the GPU machine, packed into the
# git-ignored gpu-bin/ (name it in the device tool's `carry`). Run here, not there (../shared/GPU.md: no Rust
# on the GPU machine): about 40 minutes on 2 cores from an empty target folder.
#   bench/build_gpu.sh            # compute capability 9.0 (H100, H200)
#   CUDA_COMPUTE_CAP=80 bench/build_gpu.sh
set -euo pipefail
cd "$(dirname "$0")/.."
eval "$(bash ../shared/tools/cuda-toolchain.sh)"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/work/target-cuda} CUDA_COMPUTE_CAP=${CUDA_COMPUTE_CAP:-90}
# A CUDA target folder shared with another checkout can hold that checkout's build-script output,
# and then the fused ops' PTX is not found: rebuild it from this checkout's kernels.
touch framework/build.rs
cargo build --release -p losa-bench --features cuda --bin kernels --bin train_step --bin device_parity
cargo build --release --features cuda --bin runner
# Stripped, the four binaries are about 120 MiB, mostly the kernels' PTX text; the device tool
# carries at most 64 MiB with the checkout, so they travel xz-compressed (about 13 MiB) as
# gpu-bin/binaries.tar.xz, which bench/run_gpu.sh unpacks on the GPU machine.
stage=$(mktemp -d)
for b in kernels train_step device_parity runner; do
  cp "$CARGO_TARGET_DIR/release/$b" "$stage/"
  strip "$stage/$b" 2>/dev/null || true
done
ls -la "$stage"
# Earlier packs kept as gpu-bin/baseline-<commit>.tar.xz stay: run_gpu.sh's BASELINE measures one.
mkdir -p gpu-bin && rm -f gpu-bin/binaries.tar.xz
tar -C "$stage" -cf - kernels train_step device_parity runner | xz -9 -T0 > gpu-bin/binaries.tar.xz
rm -rf "$stage"
git rev-parse --short HEAD > gpu-bin/commit 2>/dev/null || true
mib=$(( $(du -sk gpu-bin | cut -f1) / 1024 ))
echo "gpu-bin: $mib MiB (carry it: the device tool takes at most 64 MiB with the checkout)"
if [ "$mib" -gt 56 ]; then
  echo "warning: gpu-bin is over 56 MiB; with the checkout it may not fit the device tool's 64 MiB" >&2
fi
