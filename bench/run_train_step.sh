#!/usr/bin/env bash
# Runs the train-step benchmark of losa and of PyTorch on the same machine, one process per method
# (so each peak-memory figure is that method's alone), and prints both side by side with ratios.
#   bench/run_train_step.sh [--cpu-small | --gpu] [extra flags for both]
# --cpu-small (default): ViT-Ti (width 192, depth 12) at 32 px with 4 px patches, batch 64, f32.
# --gpu: ViT-B/16 at 224 px, batch 64 (losa needs a `--features cuda` build, see ../shared/GPU.md).
# Environment: RUNNER_BENCH (the train_step binary, default target/release/train_step), PYTHON,
# METHODS (space-separated, default all), OUT (the folder of the JSON files, default bench/out),
# STEP_TIMEOUT (seconds per process, default 600; a process past it shows as "no result").
# With --gpu the default adds losa_compiled: PyTorch's LoSA through torch.compile, set against
# losa's own (uncompiled) LoSA step, the bar issue 10 sets.
# A method that runs out of memory (or fails) in one tool is shown as such; the others go on.
# The last two columns: losa's step split into its phases, each ended by a synchronisation (they
# add up to more than the step, whose host and device work overlap); and the time until a step's
# work was all queued (close to the step's time: the host's launching is what the step waits for).
set -uo pipefail
cd "$(dirname "$0")/.."
mode=${1:---cpu-small}; [ $# -gt 0 ] && shift
case "$mode" in
  --cpu-small) common=(--variant Ti/16 --patch-size 4 --image-size 32 --batch 64 --device cpu --steps 5 --warmup 2)
    all="forward linear_probe full lora vpt losa losa_cached" ;;
  --gpu) common=(--variant B/16 --image-size 224 --batch 64 --device cuda --steps 20 --warmup 5)
    all="forward linear_probe full lora vpt losa losa_cached losa_compiled" ;;
  *) echo "usage: $0 [--cpu-small|--gpu] [flags]" >&2; exit 2 ;;
esac
bin=${RUNNER_BENCH:-target/release/train_step}
py=${PYTHON:-python3}
out=${OUT:-bench/out}; mkdir -p "$out"
read -r -a methods <<< "${METHODS:-$all}"
for m in "${methods[@]}"; do
  rm -f "$out/losa_$m.json" "$out/torch_$m.json"
  # losa has no compiled variant: its row sets losa's plain LoSA step against torch.compile's.
  [ "$m" = losa_compiled ] ||
    timeout "${STEP_TIMEOUT:-600}" "$bin" "${common[@]}" "$@" --methods "$m" --json "$out/losa_$m.json" >/dev/null 2>>"$out/losa.log"
  timeout "${STEP_TIMEOUT:-600}" "$py" bench/torch_reference.py "${common[@]}" "$@" --methods "$m" --json "$out/torch_$m.json" >/dev/null 2>>"$out/torch.log"
done
"$py" - "$out" "${methods[@]}" <<'PY'
import json, os, sys, platform, subprocess
out, methods = sys.argv[1], sys.argv[2:]
def load(tool, m):
    if tool == "losa" and m == "losa_compiled":
        m = "losa"
    try:
        return json.load(open(f"{out}/{tool}_{m}.json"))
    except (OSError, ValueError):  # the process died (e.g. killed for host memory)
        return {"rows": [{"method": m, "error": "no result"}]}
docs = [d for m in methods for d in (load("losa", m), load("torch", m)) if "width" in d]
first = next((d for d in docs if d.get("tool") == "losa"), docs[0] if docs else {})
tool = next((d["tool"] for d in docs if d.get("tool", "").startswith("torch")), "torch: no result")
cpu = next((l.split(":", 1)[1].strip() for l in open("/proc/cpuinfo") if l.startswith("model name")), platform.machine())
# COMMIT: where the checkout travels without its history (the GPU machine)
commit = os.environ.get("COMMIT") or subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                                                    text=True).stdout.strip()
print(f"ViT width {first.get('width')} depth {first.get('depth')} patch {first.get('patch')} at {first.get('image_size')} px, "
      f"batch {first.get('batch')}; {first.get('device')} ({cpu}); commit {commit}; {tool}")
print("| method | losa step ms | torch step ms | ratio | losa images/s | torch images/s | losa peak MiB | torch peak MiB "
      "| torch allocated MiB | losa infer ms | torch infer ms | losa forward / backward / update ms | losa queued ms |")
print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
cell = lambda row, key, f: row.get("error", "–") if key not in row or row[key] is None else f(row[key])
ms, n, mib = (lambda v: f"{v:.1f}"), (lambda v: f"{v:.0f}"), (lambda v: f"{v / 2**20:.0f}")
for m in methods:
    a, b = load("losa", m)["rows"][0], load("torch", m)["rows"][0]
    ratio = f"{a['step_ms'] / b['step_ms']:.2f}" if "step_ms" in a and "step_ms" in b else "–"
    label = "losa vs torch.compile" if m == "losa_compiled" else m
    print(f"| {label} | {cell(a, 'step_ms', ms)} | {cell(b, 'step_ms', ms)} | {ratio} | {cell(a, 'images_per_s', n)} | "
          f"{cell(b, 'images_per_s', n)} | {cell(a, 'peak_bytes', mib)} | {cell(b, 'peak_bytes', mib)} | "
          f"{cell(b, 'peak_allocated_bytes', mib)} | {cell(a, 'infer_ms', ms)} | {cell(b, 'infer_ms', ms)} | "
          f"{' / '.join(f'{t:.1f}' for t in a.get('forward_backward_update_ms') or []) or '–'} | "
          f"{cell(a, 'queued_ms', ms)} |")
PY
