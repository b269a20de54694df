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
    examples: pd.DataFrame,
    path: Path,
    *,
    title: str,
    n_bins: int = 10,
    score: str = "credibility",
    correct_col: str = "correct",
    labels: tuple[str, str] = ("DkNN credibility", "DkNN accuracy"),
) -> Path:
    """Accuracy against bins of ``score`` (credibility, or ``msp`` with ``softmax_correct``), one line per model."""
    fig, ax = plt.subplots(figsize=(4.2, 4.0))
    edges = np.linspace(0, 1, n_bins + 1)
    for model, g in examples.groupby("model"):
        cred = g[score].to_numpy(dtype=float)
        correct = g[correct_col].astype(str).str.lower().isin(["true", "1", "1.0"]).to_numpy(dtype=float)
        b = np.clip(np.digitize(cred, edges[1:-1]), 0, n_bins - 1)
        acc = [correct[b == i].mean() if (b == i).any() else np.nan for i in range(n_bins)]
        ax.plot((edges[:-1] + edges[1:]) / 2, acc, marker="o", label=str(model))
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1)
    ax.set_xlabel(labels[0])
    ax.set_ylabel(labels[1])
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def credibility_histograms(examples: pd.DataFrame, path: Path, *, title: str) -> Path:
    """Credibility distributions of clean, adversarial and OOD inputs, one panel per model."""
    models = sorted(examples["model"].unique())
    fig, axes = plt.subplots(1, len(models), figsize=(3.4 * len(models), 3.0), squeeze=False, sharey=True)
    bins = np.linspace(0, 1, 21)
    for ax, model in zip(axes[0], models, strict=True):
        g = examples[examples["model"] == model]
        for kind, h in g.groupby("kind"):
            ax.hist(h["credibility"], bins=bins, alpha=0.5, density=True, label=str(kind))
        ax.set_title(str(model), fontsize=9)
        ax.set_xlabel("credibility")
    axes[0][0].legend(fontsize=7)
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
