"""advbench's PGD-40 against calling torchattacks.PGD directly, side by side in one run.

Run: ``python -m pytest benchmarks/test_bench_attacks.py -m benchmark -p no:cacheprovider``.

The same model (cnn-digits, 1x8x8) and the same 1,000 digits images, batch 1,000. Rounds of the two
are interleaved (alternating which goes first) so that load on a shared machine hits both alike; the
ratio of medians must stay within 1.05 (issue 4). ``extra_info`` carries both medians, the ratio,
the median of one forward+backward pass (gradient with respect to the input, as an attack step takes)
and the time per attack step relative to it. A small model is the demanding case for the ratio: the
fixed costs of advbench's contract (eval mode, frozen weights, input and output validation, one
forward pass for the success mask) weigh most where a step is cheapest.

The ratio is asserted on process CPU time (the cost advbench adds); wall-clock medians are recorded
too. Threads: 1 by default (``ADVBENCH_BENCH_THREADS`` overrides). On a shared 2-core machine, two
OpenMP threads per process make each run's time depend on whether both threads get scheduled at a
barrier; that noise (ratios from 0.9 to 1.7 between identical runs, measured) swamps the overhead
being measured, which does not depend on the thread count.
"""

from __future__ import annotations

import os
import statistics
import time

import pytest
import torch

from advbench.attacks import ThreatModel, create_attack
from advbench.data import load_dataset
from advbench.models import create_model

pytestmark = pytest.mark.benchmark

N, STEPS, EPS, ROUNDS = 1000, 40, 0.1, 5
MAX_RATIO = 1.05


@pytest.fixture(scope="module")
def setup():
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("ADVBENCH_BENCH_THREADS", "1")))
    raw = load_dataset("digits")
    x = torch.from_numpy(raw.x_train[:N]).float() / raw.max_value
    y = torch.from_numpy(raw.y_train[:N]).long()
    torch.manual_seed(0)
    model = create_model("cnn-digits", num_classes=10, input_shape=raw.input_shape).eval()
    yield model, x, y
    torch.set_num_threads(threads)


def test_pgd40_advbench_vs_torchattacks(benchmark, setup):
    import torchattacks

    model, x, y = setup
    threat = ThreatModel(eps=EPS)
    step = 2.5 * EPS / STEPS
    ours = create_attack("pgd", steps=STEPS, step_size=step)
    theirs = torchattacks.PGD(model, eps=EPS, alpha=step, steps=STEPS, random_start=True)

    def run_ours() -> None:
        ours(model, x, y, threat, generator=torch.Generator().manual_seed(0))

    def run_theirs() -> None:
        theirs(x, y)

    def fwd_bwd() -> None:
        xr = x.clone().requires_grad_(True)
        loss = torch.nn.functional.cross_entropy(model(xr), y)
        torch.autograd.grad(loss, xr)

    def timed(fn) -> tuple[float, float]:
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        return time.perf_counter() - wall, time.process_time() - cpu

    run_ours(), run_theirs()  # warm-up
    t_ours, t_theirs, t_step = [], [], []
    for r in range(ROUNDS):
        pair = (run_ours, run_theirs) if r % 2 == 0 else (run_theirs, run_ours)
        for fn in pair:
            (t_ours if fn is run_ours else t_theirs).append(timed(fn))
        t_step += [timed(fwd_bwd) for _ in range(5)]

    def med(ts: list[tuple[float, float]], i: int) -> float:
        return statistics.median(t[i] for t in ts)

    ratio = med(t_ours, 1) / med(t_theirs, 1)
    benchmark.extra_info.update({
        "images": N, "steps": STEPS, "rounds": ROUNDS, "threads": torch.get_num_threads(),
        "advbench_median_wall_s": round(med(t_ours, 0), 4), "torchattacks_median_wall_s": round(med(t_theirs, 0), 4),
        "advbench_median_cpu_s": round(med(t_ours, 1), 4), "torchattacks_median_cpu_s": round(med(t_theirs, 1), 4),
        "ratio_cpu": round(ratio, 4), "ratio_wall": round(med(t_ours, 0) / med(t_theirs, 0), 4),
        "forward_backward_median_cpu_s": round(med(t_step, 1), 5),
        "advbench_step_over_forward_backward": round(med(t_ours, 1) / STEPS / med(t_step, 1), 3),
        "torchattacks_step_over_forward_backward": round(med(t_theirs, 1) / STEPS / med(t_step, 1), 3),
    })
    benchmark.pedantic(run_ours, rounds=3, iterations=1)
    assert ratio <= MAX_RATIO, benchmark.extra_info
