#!/usr/bin/env bash
# The GPU checks that have never run on a GPU, as one script for a session that is lent one (the `device` tool runs
# it there: `bash scripts/gpu_checks.sh`, with a timeout that leaves room for a rerun). Each check runs even when an
# earlier one fails; its output goes to $OUT (the device tool's folder that comes back) or runs/gpu_checks, and
# summary.txt lists every check's exit status and seconds. Nothing here is needed by CI.
#
# The GPU machine has no network and cannot carry the packaged GGUF teacher, so every benchmark here uses
# random-weight models of the packaged teacher's shape (bench_divergence and bench_trainer always do; bench_scoring
# with --random-weights). TRL is not installed there: bench_trainer runs with --no-trl unless `import trl` works
# (carry it, e.g. `pip install --no-deps --target vendor/trl trl==1.16.0` and PYTHONPATH=vendor/trl).
# Settings: each script's CUDA preset (its docstring).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-runs/gpu_checks}"
mkdir -p "$out"
summary="$out/summary.txt"
: >"$summary"

check() {  # check NAME COMMAND...: run it, its output to $out/NAME.log, its status and seconds to the summary
    local name="$1"
    shift
    local start=$SECONDS
    "$@" >"$out/$name.log" 2>&1
    local rc=$?
    echo "$name rc=$rc seconds=$((SECONDS - start)) :: $*" | tee -a "$summary"
}

check environment bash -c 'nvidia-smi; python -c "import torch, transformers, triton; print(torch.__version__, transformers.__version__, triton.__version__, torch.cuda.get_device_name())"'
check test_kernels_gpu python -m pytest -m gpu tests/core/test_kernels.py -q -rs  # -rs: why any was skipped
check bench_divergence python scripts/bench_divergence.py --out "$out/bench_divergence_cuda.md"
trl=()
python -c "import trl" 2>/dev/null || trl=(--no-trl)
check bench_trainer python scripts/bench_trainer.py "${trl[@]}" --out "$out/bench_trainer_cuda.md"
check bench_scoring python scripts/bench_scoring.py --random-weights --repeats 5 --out "$out/bench_scoring_cuda.md"
check bench_scoring_fused python scripts/bench_scoring.py --random-weights --fused --repeats 5 \
    --out "$out/bench_scoring_fused_cuda.md"
cat "$summary"
