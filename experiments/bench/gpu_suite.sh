#!/usr/bin/env bash
# The GPU suite: the first thing to run whenever a GPU is at hand (one H100 or H200: under 8 min).
#
#   bash experiments/bench/gpu_suite.sh            # from the repository root, in the project's venv
#   SUITE_BUDGET_S=420 bash experiments/bench/gpu_suite.sh
#
# Each step has its own time limit and the suite goes on when one fails or runs out of time;
# every table lands in $OUT (default experiments/bench/gpu_suite_<date>) and is appended, with the
# date and the device, to experiments/RESULTS.md under "GPU suite", beside the cost model's
# prediction (experiments/bench/results_cost_model.md, counted on CPU).
#
# Steps:
#  1. the device, and the compiled rasterizer backward built for it;
#  2. the rasterizer against gsplat's CUDA rasterizer: 720p, 100k and 1M Gaussians, forward and
#     forward+backward, with our CUDA backward and our pure-JAX backward (bench_gsplat.py);
#  3. the CUDA backward against the pure-JAX backward on the same residuals (bench_kernel_backward.py);
#  4. the avatar at the official size, float32 and bfloat16 (bench_avatar.py);
#  5. the pipeline's paper schedule, timed on a few frames and projected: the levers off and on
#     (bench_levers.py --gpu), and 1 and 8 seeds (bench_pipeline.py);
#  6. seeds per second on one device and on all of them, when there are several (bench_devices.py).
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-experiments/bench/gpu_suite_$(date +%Y%m%d_%H%M)}
mkdir -p "$OUT"
export PYTHONPATH="$PWD:${PYTHONPATH:-}"
bench=experiments/bench
began=$(date +%s)
log="$OUT/suite.log"

step() {  # step NAME SECONDS COMMAND...
    local name=$1 limit=$2
    shift 2
    local t0=$(date +%s)
    echo "== $name (limit ${limit} s)" | tee -a "$log"
    (cd "$bench" && timeout "$limit" "$@") >>"$log" 2>&1
    local rc=$?
    echo "   $name: rc=$rc, $(( $(date +%s) - t0 )) s" | tee -a "$log"
}

nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/device.txt" \
    || echo "no nvidia-smi: not a GPU machine" | tee "$OUT/device.txt"
python -c "import jax; print(jax.devices())" | tee -a "$OUT/device.txt"
python -m zerohsi_jax.splat.kernel_build build >>"$log" 2>&1 || echo "kernel build failed (see $log)"

step "rasterizer vs gsplat" 120 python bench_gsplat.py --counts 100000 1000000 --out "$PWD/$OUT/gsplat.md"
step "CUDA vs pure-JAX backward" 60 python bench_kernel_backward.py --quick --out "$PWD/$OUT/kernel_backward.md"
step "official avatar f32/bf16" 90 python bench_avatar.py --which official --dtypes float32 bfloat16 \
    --out "$PWD/$OUT/avatar.md"
step "pipeline levers off and on" 120 python bench_levers.py --gpu --out "$PWD/$OUT/levers.md"
step "pipeline, 1 and 8 seeds" 90 python bench_pipeline.py --size 512 --measure-frames 2 --seeds 1 8 \
    --out "$PWD/$OUT/pipeline.md"
if [ "$(python -c 'import jax; print(jax.local_device_count())')" -gt 1 ]; then
    step "seeds over devices" 60 python bench_devices.py --seeds 8 --frames 4 --out "$PWD/$OUT/devices.md"
fi

{
    echo
    echo "## GPU suite, $(date +%Y-%m-%d), $(head -1 "$OUT/device.txt")"
    echo
    echo "\`bash experiments/bench/gpu_suite.sh\` ($(( $(date +%s) - began )) s). Prediction (CPU-counted roofline"
    echo "floor): experiments/bench/results_cost_model.md."
    for f in gsplat kernel_backward avatar levers pipeline devices; do
        [ -f "$OUT/$f.md" ] && { echo; sed 's/^# /### /' "$OUT/$f.md"; }
    done
} >> experiments/RESULTS.md
echo "suite took $(( $(date +%s) - began )) s; tables in $OUT and experiments/RESULTS.md"
