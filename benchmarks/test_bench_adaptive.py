"""The adaptive DkNN attack's surrogate: its guide distances against the direct autograd norm, side by side.

Run: ``python -m pytest benchmarks/test_bench_adaptive.py -m benchmark -p no:cacheprovider``.

Per layer and step the attack takes the L2 distance from each example's features (B, D) to its m
guides (B, m, D) and back-propagates through it. Written directly, ``(h[:, None] - guides).norm(dim=2)``
materialises the (B, m, D) differences and their gradient: at the Fashion-MNIST CNN's conv2 width
(3,136) with the transfer suite's batch (250) and guides (k = 75) that is 235 MB per tensor, the
attack's largest cost. :func:`~advbench.attacks.dknn_adaptive.guide_distances` computes the same
floats (asserted here, bit for bit, forward and backward) a chunk at a time in one reused buffer. The
two are timed interleaved (medians of CPU time, 1 thread); the target is a ratio of at most 0.5.
"""

from __future__ import annotations

import os

import pytest
import torch
from _bench import interleaved, median

from advbench.attacks.dknn_adaptive import GuideSet, guide_distances

pytestmark = pytest.mark.benchmark

#: (layer, width) of the transfer suite's CNN as the DkNN sees it; batch and guides of its adaptive cells
LAYERS = {"conv1": 6272, "conv2": 3136, "fc1": 128}
BATCH, GUIDES = 250, 75
MAX_RATIO = 0.5


@pytest.mark.parametrize("layer", list(LAYERS))
def test_guide_distances_vs_direct_norm(benchmark, figure, layer: str):
    threads = torch.get_num_threads()
    torch.set_num_threads(int(os.environ.get("ADVBENCH_BENCH_THREADS", "1")))
    try:
        gen = torch.Generator().manual_seed(0)
        width = LAYERS[layer]
        centre = torch.randn(BATCH, width, generator=gen)
        h0 = centre + 0.1 * torch.randn(BATCH, width, generator=gen)
        guides = centre[:, None, :] + torch.randn(BATCH, GUIDES, width, generator=gen)
        weights = torch.rand(BATCH, GUIDES, generator=gen)
        centred = GuideSet.around(centre, guides)

        def direct() -> tuple[torch.Tensor, torch.Tensor]:
            h = h0.clone().requires_grad_(True)
            d = (h[:, None, :] - guides).norm(dim=2)
            return d.detach(), torch.autograd.grad((weights * d).sum(), h)[0]

        def expanded() -> tuple[torch.Tensor, torch.Tensor]:
            h = h0.clone().requires_grad_(True)
            d = guide_distances(h, centred)
            return d.detach(), torch.autograd.grad((weights * d).sum(), h)[0]

        (d_a, g_a), (d_b, g_b) = direct(), expanded()
        torch.testing.assert_close(d_b, d_a, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(g_b, g_a, rtol=1e-4, atol=1e-5)
        t = interleaved({"direct": direct, "expanded": expanded}, rounds=7, warmup=1)
        benchmark.pedantic(expanded, rounds=1, iterations=1)
        ratio = median(t["expanded"]) / median(t["direct"])
        benchmark.extra_info.update(
            {"layer": layer, "width": width, "batch": BATCH, "guides": GUIDES, "threads": torch.get_num_threads(),
             "direct_median_cpu_s": round(median(t["direct"]), 4),
             "expanded_median_cpu_s": round(median(t["expanded"]), 4), "ratio_cpu": round(ratio, 4)}
        )  # fmt: skip
        figure(f"guide distances fwd+bwd, {layer} ({width} wide)", median(t["expanded"]), unit="s cpu")
        wide = width >= 1000  # the narrow layer is a few ms either way: recorded, not a target
        figure(f"expanded / direct, {layer}", ratio, target=MAX_RATIO if wide else None, op="<=", unit="x")
        if wide:
            assert ratio <= MAX_RATIO, f"{layer}: expanded / direct = {ratio:.2f}, target <= {MAX_RATIO}"
    finally:
        torch.set_num_threads(threads)
