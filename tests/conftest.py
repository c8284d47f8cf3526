"""Suite-wide settings.

The suite runs on two pytest-xdist workers (``-n 2`` in pyproject.toml) on 2-core machines;
each worker and every subprocess it starts uses one intra-op thread, since two workers with
two threads each oversubscribe the cores and make small linear algebra (e.g. Lanczos' small
eigenproblems) hundreds of times slower.
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch

torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
