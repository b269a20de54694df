"""A quick-sized training loop in its own process, for ``test_bench_threads.py``.

``python benchmarks/_train_loop.py THREADS STEPS``: the ``quick.yaml`` entangled model (``cnn-digits``,
batch 64, Adam, SNNL alpha -0.1 with learned temperatures), 3 warm-up steps, then STEPS timed steps;
prints ``{"wall": seconds}``. THREADS 0 keeps torch's default count. The OpenMP environment is the
caller's: it must be set before torch loads, hence a process per measurement.
"""

from __future__ import annotations

import json
import sys
import time

import torch

from advbench.config import RecipeConfig, SNNLConfig
from advbench.training import TrainStep, init_model


def main(threads: int, steps: int) -> None:
    if threads:
        torch.set_num_threads(threads)
    g = torch.Generator().manual_seed(0)
    x, y = torch.rand(64, 1, 8, 8, generator=g), torch.arange(64) % 10
    model = init_model("cnn-digits", params={}, num_classes=10, input_shape=(1, 8, 8), seed=0, x_train=x)
    recipe = RecipeConfig(batch_size=64, optimizer="adam", lr=0.003, snnl=SNNLConfig(alpha=-0.1, temperature="learned"))
    step = TrainStep(model, recipe, model.hidden_layers)
    for _ in range(3):
        step(x, y)
    t0 = time.perf_counter()
    for _ in range(steps):
        step(x, y)
    print(json.dumps({"wall": time.perf_counter() - t0, "threads": torch.get_num_threads()}))


if __name__ == "__main__":
    main(int(sys.argv[1]), int(sys.argv[2]))
