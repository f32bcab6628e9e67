"""Test-wide settings: one intra-op thread (tiny models run faster without thread hand-offs) and offline Hub."""

import os

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
torch.set_num_threads(1)
