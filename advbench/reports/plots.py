"""PNG figures for the report (matplotlib, non-interactive). Each function writes one file and returns its path."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from advbench.io import atomic_path

__all__ = ["credibility_histograms", "entanglement_curves", "reliability_diagram", "transfer_heatmap"]


def _save(fig: plt.Figure, path: Path) -> Path:
    fig.tight_layout()
    try:
        with atomic_path(path, what="a report figure") as tmp:
            fig.savefig(tmp, dpi=110, format=path.suffix.lstrip(".") or "png")
    finally:
        plt.close(fig)
    return path


def transfer_heatmap(matrix: pd.DataFrame, path: Path, *, title: str, fmt: str = "{:.0%}") -> Path:
    """A source x target heatmap of a rate in [0, 1]."""
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * matrix.shape[1], 1.0 + 0.8 * matrix.shape[0]))
    im = ax.imshow(matrix.to_numpy(dtype=float), vmin=0.0, vmax=1.0, cmap="magma_r")
    ax.set_xticks(range(matrix.shape[1]), matrix.columns, rotation=30, ha="right")
    ax.set_yticks(range(matrix.shape[0]), matrix.index)
    ax.set_xlabel("target")
    ax.set_ylabel("source")
    values = matrix.to_numpy(dtype=float)
    for i in range(values.shape[0]):
        for j in range(values.shape[1]):
            v = float(values[i, j])
            if np.isfinite(v):
                ax.text(
                    j, i, fmt.format(v), ha="center", va="center", color="white" if v > 0.55 else "black", fontsize=8
                )
    ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046)
    return _save(fig, path)


def reliability_diagram(
    bins: pd.DataFrame,
    path: Path,
    *,
    title: str,
    labels: tuple[str, str] = ("DkNN credibility", "DkNN accuracy"),
) -> Path:
    """Accuracy per score bin, one line per model, from one figure's rows of
    :func:`~advbench.analysis.example_summary.dknn_bins` (kinds pooled; empty bins left out)."""
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    for model, g in bins.groupby("model"):
        per_bin = g.groupby("bin").agg(
            low=("low", "first"), high=("high", "first"), n=("n", "sum"), k=("n_correct", "sum")
        )
        acc = np.where(per_bin["n"] > 0, per_bin["k"] / per_bin["n"].where(per_bin["n"] > 0, 1), np.nan)
        ax.plot((per_bin["low"] + per_bin["high"]) / 2, acc, marker="o", label=str(model))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def credibility_histograms(bins: pd.DataFrame, path: Path, *, title: str) -> Path:
    """Credibility distributions (densities) per input group, from the ``credibility_histogram`` rows of
    :func:`~advbench.analysis.example_summary.dknn_bins`: a column per model, a row per family of groups
    (adversarial, OOD), each panel beside the clean inputs; groups of older runs (``adversarial``, ``ood``)
    take their family's row the same way."""
    models = sorted(bins["model"].unique())
    kinds = sorted(set(bins["kind"].astype(str)) - {"clean"})
    families = [f for f in ("adversarial", "ood") if any(k.startswith(f) for k in kinds)]
    families += sorted({k.split(",")[0] for k in kinds} - set(families))
    fig, axes = plt.subplots(
        max(len(families), 1), len(models), figsize=(3.4 * len(models), 2.8 * max(len(families), 1)),
        squeeze=False, sharey="row", sharex=True,
    )  # fmt: skip
    for row, family in enumerate(families or ["clean"]):
        shown = ["clean", *(k for k in kinds if k.split(",")[0] == family)]
        for col, model in enumerate(models):
            ax = axes[row][col]
            for i, kind in enumerate(shown):
                h = bins[(bins["model"] == model) & (bins["kind"].astype(str) == kind)].sort_values("bin")
                if h.empty:
                    continue
                edges = np.append(h["low"].to_numpy(float), h["high"].to_numpy(float)[-1])
                n = h["n"].to_numpy(float)
                density = n / max(n.sum(), 1.0) / np.diff(edges)
                label = f"{kind} (n={int(n.sum()):,})"
                if i == 0:
                    ax.stairs(density, edges, fill=True, alpha=0.3, color="grey", label=label)
                else:
                    ax.stairs(density, edges, linewidth=1.2, label=label)
            ax.set_title(f"{model}: {family}", fontsize=9)
            if row == len(axes) - 1:
                ax.set_xlabel("credibility")
            ax.legend(fontsize=6)  # every panel: each states its own counts
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)


def entanglement_curves(training: pd.DataFrame, layers: list[str], path: Path, *, title: str) -> Path:
    """Probe SNNL (entanglement) of each hidden layer over epochs, mean over seeds, one line per model."""
    fig, axes = plt.subplots(1, len(layers), figsize=(3.2 * len(layers), 2.9), squeeze=False)
    for ax, layer in zip(axes[0], layers, strict=True):
        col = f"entanglement/{layer}"
        if col not in training:
            continue
        for model, g in training.groupby("model"):
            m = g.groupby("epoch")[col].mean()
            ax.plot(m.index, m.values, marker="o", label=str(model))
        ax.set_title(layer, fontsize=9)
        ax.set_xlabel("epoch")
    axes[0][0].set_ylabel("SNNL at the minimising T")
    axes[0][0].legend(fontsize=7)
    fig.suptitle(title, fontsize=9)
    return _save(fig, path)
