"""Figures of a run, drawn with matplotlib's Agg backend into PNG files."""

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from torch import Tensor  # noqa: E402

from osr.data.labels import UNKNOWN_NAME  # noqa: E402


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def confusion_matrix(cm: Sequence[Sequence[int]], class_names: list[str], path: Path) -> Path:
    """Row-normalized (K+1)x(K+1) confusion matrix; rows are true classes."""
    counts = np.asarray(cm, dtype=float)
    rows = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
    names = [*class_names, UNKNOWN_NAME]
    fig, ax = plt.subplots(figsize=(1.0 + 0.6 * len(names), 0.8 + 0.6 * len(names)))
    image = ax.imshow(rows, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, fraction=0.046)
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right")
    ax.set_yticks(range(len(names)), names)
    for i, j in np.ndindex(rows.shape):
        if counts[i].sum():
            color = "white" if rows[i, j] > 0.5 else "black"
            ax.text(j, i, f"{rows[i, j]:.2f}", ha="center", va="center", fontsize=7, color=color)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("confusion matrix (row-normalized)")
    return _save(fig, path)


def score_histograms(
    scores: dict[str, Tensor], threshold: float, score_name: str, path: Path
) -> Path:
    """Distribution of one score per dataset, with the calibrated threshold."""
    fig, ax = plt.subplots(figsize=(7, 4))
    values = {name: s.double().numpy() for name, s in scores.items()}
    everything = np.concatenate(list(values.values()))
    lo, hi = np.percentile(everything, [0.5, 99.5])
    lo, hi = min(lo, threshold), max(hi, threshold)
    bins = np.linspace(lo, hi if hi > lo else lo + 1, 80)
    for name, v in values.items():
        ax.hist(np.clip(v, bins[0], bins[-1]), bins=bins, density=True, alpha=0.45, label=name)
    ax.axvline(threshold, ls="--", color="red", label=f"threshold {threshold:.3g}")
    ax.set_xlabel(f"{score_name} (higher = more unknown; tails beyond the axis in the end bins)")
    ax.set_ylabel("density")
    ax.set_title(f"{score_name} per dataset")
    ax.legend()
    return _save(fig, path)


def reconstructions(
    images: Tensor,
    recon: Tensor,
    binary_images: Tensor,
    binary_recon: Tensor,
    titles: list[str],
    path: Path,
) -> Path:
    """Columns of images: input, reconstruction, and both Otsu binarizations."""
    rows = [("input", images), ("reconstruction", recon)]
    rows += [("input, Otsu", binary_images), ("reconstruction, Otsu", binary_recon)]
    n = len(titles)
    fig, axes = plt.subplots(len(rows), n, figsize=(1.3 * n, 1.45 * len(rows)), squeeze=False)
    for r, (label, batch) in enumerate(rows):
        for c in range(n):
            ax = axes[r, c]
            ax.imshow(batch[c, 0].float().numpy(), cmap="gray")
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(titles[c], fontsize=7)
            if c == 0:
                ax.set_ylabel(label, fontsize=7)
    return _save(fig, path)


def training_curves(epochs: list[dict[str, float]], path: Path) -> Path:
    """Train and val accuracy and loss per epoch."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.6))
    x = [e["epoch"] for e in epochs]
    for ax, metric in zip(axes, ("acc", "loss"), strict=True):
        for split in ("train", "val"):
            key = f"{split}/{metric}"
            ys = [e.get(key, np.nan) for e in epochs]
            ax.plot(x, ys, marker="o", label=split)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.set_title(f"{metric} per epoch")
        ax.legend()
    return _save(fig, path)


def tsne(points: np.ndarray, predictions: np.ndarray, class_names: list[str], path: Path) -> Path:
    """2-D embedding coloured by predicted class, UNKNOWN in black with its own legend entry."""
    fig, ax = plt.subplots(figsize=(7, 6))
    cmap = plt.get_cmap("tab10" if len(class_names) <= 10 else "tab20")
    unknown = len(class_names)
    for label in range(unknown + 1):
        mask = predictions == label
        if not mask.any():
            continue
        is_unknown = label == unknown
        ax.scatter(
            points[mask, 0],
            points[mask, 1],
            s=4,
            color="black" if is_unknown else cmap(label % cmap.N),
            marker="x" if is_unknown else "o",
            label=UNKNOWN_NAME if is_unknown else class_names[label],
            alpha=0.7,
        )
    ax.legend(markerscale=3, fontsize=7, loc="best")
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title("t-SNE of latent vectors, coloured by predicted class")
    return _save(fig, path)


def operating_curve(curve: dict, known_set: str, path: Path) -> Path:
    """OOD rejection of each set against the known test split's rejection, one point per
    alpha of the conformal rule; the dotted diagonal marks a known rejection equal to alpha."""
    rows = curve["rows"]
    known = np.array([100 * r["rejected"][known_set] for r in rows])
    alphas = np.array([100 * r["alpha"] for r in rows])
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    for name in rows[0]["rejected"] if rows else []:
        if name != known_set:
            left.plot(known, [100 * r["rejected"][name] for r in rows], "o-", label=name)
    left.set_xscale("log")
    left.set_xlabel(f"{known_set} test images rejected (%)")
    left.set_ylabel("OOD images rejected (%)")
    left.set_title(f"union of {', '.join(curve['voting_scores'])}")
    left.legend()
    right.plot(alphas, known, "o-", label=f"{known_set} test")
    right.plot(alphas, alphas, ":", color="gray", label="alpha")
    right.set_xscale("log")
    right.set_yscale("log")
    right.set_xlabel("alpha, the budget (%)")
    right.set_ylabel("known images rejected (%)")
    right.set_title("the budget kept")
    right.legend()
    return _save(fig, path)
