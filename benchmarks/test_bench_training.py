"""The entangled CNN's training step against the baseline step, measured side by side in one run.

Run: ``python -m pytest benchmarks/test_bench_training.py -m benchmark -p no:cacheprovider``.
Steps of the two models are interleaved so that load on a shared machine hits both alike; the
ratio of medians must stay within 1.15 (issue 3). ``extra_info`` carries both medians, the ratio
and the SNNL's share of the entangled step.
"""

from __future__ import annotations

import statistics
import time

import pytest
import torch

from advbench.suite.schema import RecipeConfig, SNNLConfig
from advbench.training import TrainStep, init_model, pairwise_distances, snnl_from_distances

pytestmark = pytest.mark.benchmark

BATCH = 128
MAX_RATIO = 1.15


def _stepper(alpha: float, x: torch.Tensor, y: torch.Tensor):
    recipe = RecipeConfig(batch_size=BATCH, snnl=SNNLConfig(alpha=alpha))
    model = init_model("cnn", params={}, num_classes=10, input_shape=(1, 28, 28), seed=0, x_train=x)
    train_step = TrainStep(model, recipe, model.hidden_layers)  # the step train_model runs

    def step() -> None:
        train_step(x, y)

    return step, model


def _median_ms(fn, n: int) -> float:
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return 1000 * statistics.median(times)


def test_entangled_step_costs_at_most_115x_the_baseline(benchmark):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(BATCH, 1, 28, 28, generator=g)
    y = torch.arange(BATCH) % 10
    base, _ = _stepper(0.0, x, y)
    ent, model = _stepper(-10.0, x, y)
    for _ in range(5):  # warm-up
        base()
        ent()
    base_t, ent_t = [], []
    for _ in range(40):
        for fn, acc in ((base, base_t), (ent, ent_t)):
            t0 = time.perf_counter()
            fn()
            acc.append(time.perf_counter() - t0)
    base_ms, ent_ms = 1000 * statistics.median(base_t), 1000 * statistics.median(ent_t)

    # the SNNL's own cost: distances + loss, forward and backward, on this batch's activations
    feats = {k: v.detach().requires_grad_(True) for k, v in model.features(x, model.hidden_layers).items()}

    def snnl_only() -> None:
        total = sum(snnl_from_distances(pairwise_distances(h), y, 100.0) for h in feats.values())
        total.backward()  # type: ignore[union-attr]

    snnl_ms = _median_ms(snnl_only, 20)
    benchmark.pedantic(ent, rounds=10, iterations=1, warmup_rounds=1)
    ratio = ent_ms / base_ms
    benchmark.extra_info.update(
        baseline_step_ms=round(base_ms, 2), entangled_step_ms=round(ent_ms, 2), ratio=round(ratio, 3),
        snnl_ms=round(snnl_ms, 2), snnl_share_of_step=round(snnl_ms / ent_ms, 3), threads=torch.get_num_threads(),
    )
    assert ratio <= MAX_RATIO, f"entangled step {ent_ms:.1f} ms is {ratio:.2f}x the baseline {base_ms:.1f} ms"
