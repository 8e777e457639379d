"""Evaluation figures (PNG, matplotlib's Agg backend): DET curves and score histograms."""

from __future__ import annotations

from statistics import NormalDist

import numpy as np

_TICKS = (0.1, 0.2, 0.5, 1, 2, 5, 10, 20, 40)  # percent
_LIMITS = (0.05, 60.0)


def _probit(percent):
    """Standard normal deviate of a rate given in percent (the DET plot's axis scale)."""
    nd = NormalDist()
    p = np.clip(np.asarray(percent, np.float64) / 100.0, 1e-6, 1 - 1e-6)
    return np.vectorize(nd.inv_cdf)(p)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def det_plot(curves: dict, path: str) -> None:
    """One DET plot (miss vs false-alarm rate on normal-deviate axes) of ``curves``
    {name: (fpr, fnr, eer_percent)} (rates in [0, 1], as ``metrics.det_curve`` returns them);
    each curve's EER point is marked."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.5, 5.5))
    for name, (fpr, fnr, eer) in curves.items():
        (line,) = ax.plot(
            _probit(100 * np.asarray(fpr)),
            _probit(100 * np.asarray(fnr)),
            label=f"{name} (EER {eer:.2f}%)",
        )
        ax.plot(_probit(eer), _probit(eer), "o", color=line.get_color())
    lo, hi = _probit(_LIMITS)
    ax.plot([lo, hi], [lo, hi], ":", color="grey", lw=0.8)
    ticks = _probit(_TICKS)
    labels = [f"{t:g}" for t in _TICKS]
    ax.set_xticks(ticks, labels)
    ax.set_yticks(ticks, labels)
    ax.set_xlim(lo, hi)
    ax.set_ylim(lo, hi)
    ax.set_xlabel("false alarm rate (%)")
    ax.set_ylabel("miss rate (%)")
    ax.set_title("DET curve")
    ax.grid(True, lw=0.4)
    ax.legend(loc="upper right", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def score_histogram(scores, labels, threshold: float, path: str, title: str = "") -> None:
    """Target and non-target cosine-score histograms (densities) with the EER threshold."""
    plt = _pyplot()
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels)
    bins = np.linspace(min(scores.min(), threshold), max(scores.max(), threshold), 60)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.hist(
        scores[labels == 0],
        bins=bins,
        density=True,
        alpha=0.6,
        label=f"non-target ({int((labels == 0).sum())})",
    )
    ax.hist(
        scores[labels == 1],
        bins=bins,
        density=True,
        alpha=0.6,
        label=f"target ({int((labels == 1).sum())})",
    )
    ax.axvline(threshold, color="k", ls="--", lw=1, label=f"EER threshold {threshold:.3f}")
    ax.set_xlabel("cosine score")
    ax.set_ylabel("density")
    ax.set_title(f"scores: {title}" if title else "scores")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
