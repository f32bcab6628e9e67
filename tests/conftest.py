"""Test-wide settings: one intra-op thread (tiny models run faster without thread hand-offs), offline Hub, and
Triton's CPU interpreter where there is no GPU (set before anything imports triton, which reads it once)."""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
torch.set_num_threads(1)
