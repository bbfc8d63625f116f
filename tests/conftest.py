"""Shared test set-up: one torch thread (CI has 2 cores and several test processes may run), no progress bars."""

import os

os.environ.setdefault("TQDM_DISABLE", "1")

import torch

torch.set_num_threads(1)
