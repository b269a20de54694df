"""Training cost: the entangled CNN's step against the baseline step, and the SNNL itself by batch size.

Run: ``python -m pytest benchmarks/test_bench_training.py -m benchmark -p no:cacheprovider``.

* Steps of the entangled and the baseline model are interleaved so that load on a shared machine hits
  both alike; the ratio of medians must stay within 1.10 at batch 128. ``extra_info``
  carries both medians, the ratio and the SNNL's share of the entangled step.
* The baseline step's throughput: its matrix-product and convolution FLOPs (counted by torch's
  ``FlopCounterMode`` on one step) per second of its median time, against the float32 matmul peak
  measured in the same interleaved rounds (1,024 x 1,024 products), both on 1 thread; target >= 75%.
* The SNNL alone (pairwise distances and the loss, forward and backward, over the 28x28 ``cnn``'s
  three hidden layers: ``conv1`` 32x14x14 = 6,272 wide, ``conv2`` 64x7x7 = 3,136, ``fc1`` 128) for
  batches of 64, 128, 256 and 512, each timed side by side with the baseline training step at the same
  batch size; no target, the share shows how the (b, b) terms grow with the batch.

Threads: torch's default (2 on the project machine), as a local run trains; the step ratio also at 1 thread,
as each cell of a Ray run trains.
"""

from __future__ import annotations

import pytest
import torch
from _bench import interleaved, median

from advbench.config import RecipeConfig, SNNLConfig
from advbench.training import TrainStep, init_model, pairwise_distances, snnl_from_distances

pytestmark = pytest.mark.benchmark

BATCH = 128
MAX_RATIO = 1.10
MIN_FRACTION_OF_PEAK = 0.75
SNNL_BATCHES = (64, 128, 256, 512)


def _stepper(alpha: float, x: torch.Tensor, y: torch.Tensor):
    recipe = RecipeConfig(batch_size=len(x), snnl=SNNLConfig(alpha=alpha))
    model = init_model("cnn", params={}, num_classes=10, input_shape=(1, 28, 28), seed=0, x_train=x)
    train_step = TrainStep(model, recipe, model.hidden_layers)  # the step train_model runs

    def step() -> None:
        train_step(x, y)

    return step, model


def _batch(b: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.rand(b, 1, 28, 28, generator=g), torch.arange(b) % 10


def _snnl_only(model, x: torch.Tensor, y: torch.Tensor):
    """The SNNL's own cost: distances + loss, forward and backward, on this batch's hidden activations."""
    with torch.no_grad():
        acts = model.features(x, model.hidden_layers)
    feats = {k: v.detach().requires_grad_(True) for k, v in acts.items()}

    def run() -> None:
        total = sum(snnl_from_distances(pairwise_distances(h), y, 100.0) for h in feats.values())
        total.backward()  # type: ignore[union-attr]

    return run, {k: int(v[0].numel()) for k, v in feats.items()}


@pytest.mark.parametrize("threads", [None, 1], ids=["default-threads", "1-thread"])
def test_entangled_step_costs_at_most_110x_the_baseline(benchmark, figure, threads: int | None):
    """At torch's default thread count (a local run) and at 1 thread (each cell of a Ray run)."""
    default = torch.get_num_threads()
    torch.set_num_threads(threads or default)
    try:
        _entangled_vs_baseline(benchmark, figure)
    finally:
        torch.set_num_threads(default)


def _entangled_vs_baseline(benchmark, figure) -> None:
    x, y = _batch(BATCH)
    base, _ = _stepper(0.0, x, y)
    ent, model = _stepper(-10.0, x, y)
    snnl_only, _ = _snnl_only(model, x, y)
    t = interleaved({"baseline": base, "entangled": ent, "snnl": snnl_only}, rounds=40, warmup=5)
    base_ms, ent_ms = 1000 * median(t["baseline"], "wall"), 1000 * median(t["entangled"], "wall")
    snnl_ms = 1000 * median(t["snnl"], "wall")
    benchmark.pedantic(ent, rounds=5, iterations=1, warmup_rounds=1)
    ratio = ent_ms / base_ms
    benchmark.extra_info.update(
        batch=BATCH,
        baseline_step_ms=round(base_ms, 2),
        entangled_step_ms=round(ent_ms, 2),
        ratio=round(ratio, 3),
        snnl_ms=round(snnl_ms, 2),
        snnl_share_of_step=round(snnl_ms / ent_ms, 3),
        threads=torch.get_num_threads(),
    )
    figure("baseline step", base_ms, unit="ms")
    figure("entangled step", ent_ms, unit="ms")
    figure("SNNL share of the entangled step", snnl_ms / ent_ms)
    ok = figure("entangled / baseline step (wall)", ratio, unit="x", target=MAX_RATIO)
    assert ok, f"entangled step {ent_ms:.1f} ms is {ratio:.2f}x the baseline {base_ms:.1f} ms"


@pytest.mark.parametrize("batch", SNNL_BATCHES)
def test_snnl_forward_backward(benchmark, figure, batch: int):
    x, y = _batch(batch)
    base, model = _stepper(0.0, x, y)
    snnl_only, widths = _snnl_only(model, x, y)
    t = interleaved({"baseline": base, "snnl": snnl_only}, rounds=15, warmup=2)
    base_ms, snnl_ms = 1000 * median(t["baseline"], "wall"), 1000 * median(t["snnl"], "wall")
    benchmark.pedantic(snnl_only, rounds=5, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update(
        batch=batch,
        widths=widths,
        snnl_ms=round(snnl_ms, 3),
        baseline_step_ms=round(base_ms, 3),
        snnl_over_baseline_step=round(snnl_ms / base_ms, 4),
        threads=torch.get_num_threads(),
        snnl_cpu_ms=round(1000 * median(t["snnl"]), 3),
    )
    figure("SNNL fwd+bwd, 3 layers", snnl_ms, unit="ms")
    figure("SNNL / baseline CNN step", snnl_ms / base_ms, unit="x")


def test_training_step_fraction_of_matmul_peak(benchmark, figure):
    from torch.utils.flop_counter import FlopCounterMode

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = _batch(BATCH)
        step, _ = _stepper(0.0, x, y)
        step()
        with FlopCounterMode(display=False) as counter:
            step()
        flops = counter.get_total_flops()
        n = 1024
        a, b = torch.rand(n, n), torch.rand(n, n)

        def matmul() -> None:
            a @ b

        t = interleaved({"step": step, "matmul": matmul}, rounds=20, warmup=3)
        benchmark.pedantic(step, rounds=3, iterations=1)
        step_gflops = flops / median(t["step"], "wall") / 1e9
        peak_gflops = 2 * n**3 / median(t["matmul"], "wall") / 1e9
        fraction = step_gflops / peak_gflops
        benchmark.extra_info.update(
            batch=BATCH,
            step_gflop=round(flops / 1e9, 3),
            step_ms=round(1000 * median(t["step"], "wall"), 2),
            step_gflops=round(step_gflops, 1),
            matmul_peak_gflops=round(peak_gflops, 1),
            fraction_of_peak=round(fraction, 3),
            threads=torch.get_num_threads(),
        )
        figure("baseline step, 1 thread", 1000 * median(t["step"], "wall"), unit="ms")
        figure("baseline step GFLOP (matmul + conv)", flops / 1e9, unit="GFLOP")
        figure("matmul peak, 1 thread", peak_gflops, unit="GFLOP/s")
        ok = figure("training step / matmul peak", fraction, target=MIN_FRACTION_OF_PEAK, op=">=")
        assert ok, f"the training step ran at {step_gflops:.1f} GFLOP/s, {fraction:.0%} of {peak_gflops:.1f} GFLOP/s"
    finally:
        torch.set_num_threads(threads)
