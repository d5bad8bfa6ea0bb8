#!/usr/bin/env bash
# Runs the train-step benchmark of losa and of PyTorch on the same machine, one process per method
# (so each peak-memory figure is that method's alone), and prints both side by side with ratios.
#   bench/run_train_step.sh [--cpu-small | --gpu] [extra flags for both]
# --cpu-small (default): ViT-Ti (width 192, depth 12) at 32 px with 4 px patches, batch 64, f32.
# --gpu: ViT-B/16 at 224 px, batch 64 (losa needs a `--features cuda` build, see ../shared/GPU.md).
# Environment: RUNNER_BENCH (the train_step binary, default target/release/train_step), PYTHON.
set -euo pipefail
cd "$(dirname "$0")/.."
mode=${1:---cpu-small}; [ $# -gt 0 ] && shift
case "$mode" in
  --cpu-small) common=(--variant Ti/16 --patch-size 4 --image-size 32 --batch 64 --device cpu --steps 5 --warmup 2) ;;
  --gpu) common=(--variant B/16 --image-size 224 --batch 64 --device cuda --steps 20 --warmup 5) ;;
  *) echo "usage: $0 [--cpu-small|--gpu] [flags]" >&2; exit 2 ;;
esac
bin=${RUNNER_BENCH:-target/release/train_step}
py=${PYTHON:-python3}
out=${OUT:-bench/out}; mkdir -p "$out"
methods=(forward linear_probe full lora vpt losa losa_cached)
for m in "${methods[@]}"; do
  "$bin" "${common[@]}" "$@" --methods "$m" --json "$out/losa_$m.json" >/dev/null
  "$py" bench/torch_reference.py "${common[@]}" "$@" --methods "$m" --json "$out/torch_$m.json" >/dev/null 2>&1
done
"$py" - "$out" "${methods[@]}" <<'PY'
import json, sys, platform, subprocess
out, methods = sys.argv[1], sys.argv[2:]
load = lambda tool, m: json.load(open(f"{out}/{tool}_{m}.json"))
first = load("losa", methods[0])
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
print(f"ViT width {first['width']} depth {first['depth']} patch {first['patch']} at {first['image_size']} px, batch {first['batch']}; "
      f"{first['device']} ({cpu}); commit {commit}; {load('torch', methods[0])['tool']}")
print(f"| method | losa step ms | torch step ms | ratio | losa images/s | torch images/s | losa peak MiB | torch peak MiB |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for m in methods:
    a, b = load("losa", m)["rows"][0], load("torch", m)["rows"][0]
    print(f"| {m} | {a['step_ms']:.1f} | {b['step_ms']:.1f} | {a['step_ms'] / b['step_ms']:.2f} | {a['images_per_s']:.0f} | "
          f"{b['images_per_s']:.0f} | {a['peak_bytes'] / 2**20:.0f} | {b['peak_bytes'] / 2**20:.0f} |")
PY
