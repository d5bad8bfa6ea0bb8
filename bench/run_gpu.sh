#!/usr/bin/env bash
# Everything issues 9 and 10 need measured on the GPU machine, in one call (../shared/GPU.md: no
# Rust there). Build here first (bench/build_gpu.sh runs exactly these commands), with the CUDA 13
# toolchain, for compute capability 9.0:
#   eval "$(bash ../shared/tools/cuda-toolchain.sh)"; touch framework/build.rs
#   CARGO_TARGET_DIR=/work/target-cuda CUDA_COMPUTE_CAP=90 cargo build --release -p losa-bench \
#     --features cuda --bin kernels --bin train_step --bin device_parity
#   CARGO_TARGET_DIR=/work/target-cuda CUDA_COMPUTE_CAP=90 cargo build --release --features cuda --bin runner
#   then the four binaries stripped and packed: gpu-bin/binaries.tar.xz (about 13 MiB; unpacked,
#   about 120 MiB, over what the device tool carries)
# (`touch framework/build.rs`: a CUDA target folder shared with another checkout can hold that
# checkout's build-script output, and then the fused ops' PTX is not found; gpu-bin/ is ignored by
# git, so name it in the device tool's `carry`), then on the GPU machine:
#   bench/run_gpu.sh [--large]
# Steps, each logged under $OUT (default bench/out/gpu), a summary last:
#   1. device_parity: every method on CUDA (f32 and bf16 backbone) against the CPU in f32;
#   2. kernels: every fused op's CUDA kernels against the CPU fallback, outputs pre-filled with NaN,
#      and fused-against-unfused timings;
#   3. the smoke recipe through `runner` on the CPU and on CUDA (device = "cuda", bf16 backbone):
#      accuracies side by side (skipped when gpu-bin/runner is missing);
#   4. the train-step benchmark against PyTorch + timm + peft on the same card: ViT-B/16, batch 64,
#      224 px, every method (bench/run_train_step.sh --gpu);
#   5. with --large: ViT-L/16 and ViT-H/14 for forward, full, lora, losa and losa_cached (a method
#      that does not fit is shown as out of memory);
#   6. with BASELINE=gpu-bin/baseline-<commit>.tar.xz (an earlier build_gpu.sh pack): that build's
#      train_step on the same card in the same call, against this one's, for BASELINE_METHODS
#      (default: forward losa losa_cached lora), so a change is measured against what it replaced;
#   7. with PROFILE=1: one method's step under Nsight Systems, kernel by kernel (see below).
# Exit status: 1 if a check (1–3) failed.
set -uo pipefail
cd "$(dirname "$0")/.."
bin=${BIN_DIR:-gpu-bin}
out=${OUT:-bench/out/gpu}
py=${PYTHON:-python3}
mkdir -p "$out"
# Short error messages: stripped binaries' backtraces name no function.
export RUST_LIB_BACKTRACE=0
# The binaries come packed (bench/build_gpu.sh); unpack them next to the run's output, with
# Python's tarfile where xz is missing.
unpacked=$(mktemp -d)
trap 'rm -rf "$unpacked"' EXIT
unpack() {  # unpack PACK FOLDER
  mkdir -p "$2"
  tar -C "$2" -xJf "$1" 2>/dev/null ||
    "$py" -c 'import sys, tarfile; tarfile.open(sys.argv[1]).extractall(sys.argv[2])' "$1" "$2"
}
if [ -f "$bin/binaries.tar.xz" ]; then
  unpack "$bin/binaries.tar.xz" "$unpacked/this"
  bin=$unpacked/this
fi
export LD_LIBRARY_PATH=/usr/local/cuda/lib64:/usr/local/nvidia/lib64${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
nvidia-smi > "$out/nvidia-smi.txt" 2>&1 || true
declare -a summary
check() {  # check NAME COMMAND...: runs it, keeps its output in $OUT/NAME.txt
  local name=$1; shift
  local start=$SECONDS
  # A hang must not take the call's whole lease: each step has its own limit (exit 124).
  timeout "${STEP_TIMEOUT:-240}" "$@" > "$out/$name.txt" 2>&1
  local rc=$?
  summary+=("$name: exit $rc ($((SECONDS - start)) s)")
  return $rc
}
failed=0
check device_parity "$bin/device_parity" --device cuda || failed=1
check kernels "$bin/kernels" --device cuda --runs 20 || failed=1
if [ -x "$bin/runner" ]; then
  for d in cpu cuda; do
    check "smoke_$d" "$bin/runner" run recipes/smoke.toml --set "device=\"$d\"" --out "$out/smoke-$d" --quiet --no-report || failed=1
  done
  "$py" - "$out" > "$out/smoke.md" <<'PY' || failed=1
import json, pathlib, sys
out = pathlib.Path(sys.argv[1])
acc = {}
for d in ("cpu", "cuda"):
    for rec in (out / f"smoke-{d}").glob("*/record.json"):
        r = json.load(open(rec))
        key = (r["labels"]["adapter"], r["labels"]["task"], r["labels"]["seed"])
        top1 = next((a["top1"] for a in r.get("accuracy", []) if a["split"] == "test"), None)
        acc.setdefault(key, {})[d] = (top1, r.get("environment", {}).get("device"))
if not acc:
    print("no records: the smoke runs did not finish")
    sys.exit(1)
print("| method | task | seed | cpu test % | cuda test % | difference (points) |")
print("|---|---|---:|---:|---:|---:|")
worst = 0.0
for (m, t, s), v in sorted(acc.items()):
    c, g = v.get("cpu", (None,))[0], v.get("cuda", (None,))[0]
    diff = abs(c - g) * 100 if c is not None and g is not None else float("inf")
    worst = max(worst, diff)
    f = lambda x: "–" if x is None else f"{x * 100:.1f}"
    print(f"| {m} | {t} | {s} | {f(c)} | {f(g)} | {diff:.1f} |")
# bf16 rounding changes a few predictions of a tiny test set; a gap this large is a bug.
print(f"\nlargest difference {worst:.1f} points (at most 10 expected)")
sys.exit(0 if worst <= 10 else 1)
PY
else
  summary+=("smoke: skipped ($bin/runner not there)")
fi
RUNNER_BENCH="$bin/train_step" OUT="$out/b16" PYTHON="$py" bench/run_train_step.sh --gpu > "$out/train_step_b16.md" 2>&1
summary+=("train_step B/16: exit $?")
if [ "${1:-}" = "--large" ]; then
  for v in L/16 H/14; do
    name=${v%/*}
    METHODS="forward full lora losa losa_cached" RUNNER_BENCH="$bin/train_step" OUT="$out/$name" PYTHON="$py" \
      bench/run_train_step.sh --gpu --variant "$v" > "$out/train_step_$name.md" 2>&1
    summary+=("train_step $v: exit $?")
  done
fi
if [ -n "${BASELINE:-}" ]; then
  unpack "$BASELINE" "$unpacked/baseline"
  mkdir -p "$out/baseline"
  read -r -a methods <<< "${BASELINE_METHODS:-forward losa losa_cached lora}"
  for m in "${methods[@]}"; do
    timeout "${STEP_TIMEOUT:-240}" "$unpacked/baseline/train_step" --variant B/16 --image-size 224 --batch 64 \
      --device cuda --steps 20 --warmup 5 --methods "$m" --json "$out/baseline/$m.json" >/dev/null 2>>"$out/baseline/log.txt"
  done
  "$py" - "$out" "$(basename "$BASELINE" .tar.xz)" "${methods[@]}" > "$out/baseline.md" <<'PY'
import json, sys
out, label, methods = sys.argv[1], sys.argv[2], sys.argv[3:]
def row(path):
    try:
        return json.load(open(path))["rows"][0]
    except (OSError, ValueError, KeyError, IndexError):
        return {"error": "no result"}
print(f"ViT-B/16, batch 64, 224 px: {label} against this build, same card, same call")
print("| method | before step ms | after step ms | after / before | before peak MiB | after peak MiB | before infer ms | after infer ms |")
print("|---|---:|---:|---:|---:|---:|---:|---:|")
for m in methods:
    a, b = row(f"{out}/baseline/{m}.json"), row(f"{out}/b16/losa_{m}.json")
    f = lambda r, k, s=1.0: f"{r[k] * s:.1f}" if isinstance(r.get(k), (int, float)) else r.get("error", "–")
    ratio = f"{b['step_ms'] / a['step_ms']:.2f}" if "step_ms" in a and "step_ms" in b else "–"
    print(f"| {m} | {f(a, 'step_ms')} | {f(b, 'step_ms')} | {ratio} | {f(a, 'peak_bytes', 2**-20)} | "
          f"{f(b, 'peak_bytes', 2**-20)} | {f(a, 'infer_ms')} | {f(b, 'infer_ms')} |")
PY
  summary+=("baseline $(basename "$BASELINE"): exit $?")
fi
# With PROFILE=1, where the machine has Nsight Systems: PROFILE_METHOD's step (default the cached
# LoSA step) under `nsys`, its kernels and CUDA calls summed by name (profile*.csv; the largest in
# profile.md): where the step's time goes, kernel by kernel, and how much of it the host's calls
# take. The report itself is deleted (too large to carry back).
if [ "${PROFILE:-0}" = 1 ]; then
  nsys=$(command -v nsys || ls /opt/nvidia/nsight-systems/*/bin/nsys /usr/local/cuda/bin/nsys 2>/dev/null | sort -V | tail -n 1)
  if [ -n "$nsys" ]; then
    # A previous run's report, export or tables must not pass for this one's.
    rm -f "$out"/profile*
    timeout "${PROFILE_TIMEOUT:-120}" "$nsys" profile --trace cuda --sample none --cpuctxsw none \
      --force-overwrite true -o "$out/profile" "$bin/train_step" --variant B/16 --image-size 224 --batch 64 \
      --device cuda --steps 10 --warmup 3 --methods "${PROFILE_METHOD:-losa_cached}" > "$out/profile.txt" 2>&1 &&
      timeout "${PROFILE_TIMEOUT:-120}" "$nsys" stats --report cuda_gpu_kern_sum --report cuda_api_sum \
        --format csv --output "$out/profile" "$out/profile.nsys-rep" >> "$out/profile.txt" 2>&1
    summary+=("profile ${PROFILE_METHOD:-losa_cached}: exit $?")
    rm -f "$out/profile.nsys-rep" "$out/profile.sqlite" "$out/profile.qdstrm"
    # The tables, largest first; none (profile.txt then says why) leaves no profile.md.
    for f in "$out"/profile*.csv; do
      [ -f "$f" ] && { echo "$(basename "$f") (the whole train_step run: warm-up, timed and phase-split steps), largest first:"; head -n 26 "$f"; echo; }
    done > "$out/profile.tables"
    if [ -s "$out/profile.tables" ]; then mv "$out/profile.tables" "$out/profile.md"; else rm -f "$out/profile.tables"; fi
  else
    summary+=("profile: skipped (no nsys on this machine)")
  fi
fi
for f in device_parity kernels smoke train_step_b16 train_step_L train_step_H baseline profile; do
  [ -f "$out/$f.md" ] && { echo "== $f"; cat "$out/$f.md"; echo; }
  [ -f "$out/$f.txt" ] && [ ! -f "$out/$f.md" ] && { echo "== $f"; tail -n 40 "$out/$f.txt"; echo; }
done
printf '%s\n' "${summary[@]}"
exit $failed
