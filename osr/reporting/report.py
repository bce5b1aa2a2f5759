"""A run's results on disk and in the loggers: metrics.json, plots/*.png, report.md."""

from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytorch_lightning.loggers import Logger, WandbLogger
from sklearn.manifold import TSNE

from osr.detectors.scores import otsu_binarize
from osr.modules.open_set import OpenSetModule
from osr.reporting import plots
from osr.scoring.p_values import p_values
from osr.scoring.test_sets import Evaluation
from osr.utils.io import atomic_write, write_json, write_text

SEPARATION_KEYS = ("auroc", "oscr", "aupr_in", "aupr_out", "fpr95")


def separation_rows(metrics: dict[str, Any], evaluation: Evaluation) -> list[list[Any]]:
    """[set, detector, auroc, oscr, aupr_in, aupr_out, fpr95] per OOD set and detector, detectors
    ranked by their AUROC averaged over the OOD sets (best first)."""
    sets = [name for name in evaluation.outputs if name != evaluation.known_set]
    detectors = list(evaluation.outputs[evaluation.known_set].scores)
    if sets:
        mean_auroc = {
            d: sum(metrics[f"ood.{s}.scores.{d}.auroc"] for s in sets) / len(sets)
            for d in detectors
        }
        detectors.sort(key=lambda d: -mean_auroc[d])
    return [
        [name, d, *(metrics[f"ood.{name}.scores.{d}.{k}"] for k in SEPARATION_KEYS)]
        for d in detectors
        for name in sets
    ]


def _sample(n: int, k: int, generator: torch.Generator) -> torch.Tensor:
    return torch.randperm(n, generator=generator)[: min(n, k)].sort().values


@torch.inference_mode()
def make_plots(
    evaluation: Evaluation,
    module: OpenSetModule,
    history: list[dict[str, float]],
    out_dir: Path,
    seed: int,
    tsne_points: int,
    recon_examples: int,
) -> dict[str, Path]:
    """Draw the run's figures into ``out_dir`` and save the arrays they plot (confusion
    counts, the reconstruction grid, t-SNE's input and output) in ``out_dir/plotted.npz``, to
    redraw or compare them: a figure's PNG bytes depend on library versions and thread counts,
    its arrays do not."""
    module.eval()
    names = list(module.hparams.class_names)
    outputs = evaluation.outputs
    plotted: dict[str, np.ndarray] = {
        "confusion_matrix": np.asarray(evaluation.metrics["open_set.confusion_matrix"])
    }
    made = {
        "confusion_matrix": plots.confusion_matrix(
            evaluation.metrics["open_set.confusion_matrix"], names, out_dir / "confusion_matrix.png"
        )
    }
    thresholds = module.threshold_dict()
    for score in module.hparams.voting_scores:
        made[f"scores_{score}"] = plots.score_histograms(
            {name: out.scores[score] for name, out in outputs.items()},
            thresholds[score],
            score,
            out_dir / f"scores_{score}.png",
        )
    if evaluation.operating_curve["rows"]:
        made["operating_curve"] = plots.operating_curve(
            evaluation.operating_curve, evaluation.known_set, out_dir / "operating_curve.png"
        )
    if history:
        keys = sorted({key for epoch in history for key in epoch})
        plotted.update(
            {f"training_curves.{k}": np.array([e.get(k, np.nan) for e in history]) for k in keys}
        )
        made["training_curves"] = plots.training_curves(history, out_dir / "training_curves.png")

    g = torch.Generator().manual_seed(seed)
    per_set = max(1, recon_examples // len(outputs))
    picks = {name: _sample(len(out.labels), per_set, g) for name, out in outputs.items()}
    if hasattr(module, "reconstruct"):
        images = torch.cat(
            [_images(evaluation, name, idx, module.device) for name, idx in picks.items()]
        )
        recon = module.reconstruct(images)
        titles = [
            f"{name}\n{_label(names, t)}→{_label(names, p)}"
            for name, idx in picks.items()
            for t, p in zip(outputs[name].labels[idx], outputs[name].predictions[idx], strict=True)
        ]
        grid = {
            "images": images.cpu(),
            "recon": recon.cpu(),
            "binary_images": otsu_binarize(images).cpu(),
            "binary_recon": otsu_binarize(recon).cpu(),
        }
        plotted.update({f"reconstructions.{k}": v.float().numpy() for k, v in grid.items()})
        made["reconstructions"] = plots.reconstructions(
            **grid, titles=titles, path=out_dir / "reconstructions.png"
        )
    if hasattr(module, "encode") and tsne_points > 0:
        per_set = max(1, tsne_points // len(outputs))
        picks = {name: _sample(len(out.labels), per_set, g) for name, out in outputs.items()}
        latents = torch.cat(
            [
                module.encode(_images(evaluation, name, idx, module.device))
                for name, idx in picks.items()
            ]
        )
        predicted = torch.cat([outputs[name].predictions[idx] for name, idx in picks.items()])
        embedded = TSNE(
            n_components=2, init="pca", random_state=seed, perplexity=min(30, len(latents) - 1)
        ).fit_transform(latents.cpu().double().numpy())
        plotted["tsne.latents"] = latents.cpu().float().numpy()
        plotted["tsne.predictions"] = predicted.numpy()
        plotted["tsne.embedding"] = embedded
        made["tsne"] = plots.tsne(embedded, predicted.numpy(), names, out_dir / "tsne.png")
    atomic_write(out_dir / "plotted.npz", lambda f: np.savez_compressed(f, **plotted))
    return made


def _images(evaluation: Evaluation, name: str, idx: torch.Tensor, device: torch.device):
    dm, loader = evaluation.sets[name]
    return dm.transform.to(device)(loader.dataset.tensors[0][idx].to(device))


def _label(names: list[str], label: torch.Tensor) -> str:
    i = int(label)
    return names[i] if i < len(names) else "unknown"


def render_report(
    metrics: dict[str, Any],
    evaluation: Evaluation,
    info: dict[str, Any],
    plot_paths: dict[str, Path],
    run_dir: Path,
) -> str:
    pct = lambda v: f"{100 * v:.2f}%"  # noqa: E731
    lines = ["# osr run report", "", "## What was run", ""]
    lines += [f"- **{k}**: {v}" for k, v in info.items()]
    lines += ["", "## Headline numbers", "", "| metric | value |", "|---|---|"]
    for key in (
        "closed_set.accuracy",
        "open_set.accuracy",
        "open_set.binary_accuracy",
        "open_set.macro_f1",
        "known_rejection_rate",
    ):
        lines.append(f"| {key} | {pct(metrics[key])} |")
    for name in evaluation.outputs:
        if name != evaluation.known_set:
            lines.append(
                f"| ood.{name}.rejection_rate | {pct(metrics[f'ood.{name}.rejection_rate'])} |"
            )
    lines += [
        "",
        "Thresholds: "
        + ", ".join(
            f"`{k.split('.', 1)[1]}` = {v:.4g}"
            for k, v in metrics.items()
            if k.startswith("thresholds.")
        ),
    ]
    lines += ["", "## Separation of known test images from each OOD set", ""]
    lines += [
        "Detectors ranked by their AUROC averaged over the OOD sets, best first. OSCR: the "
        "area under the rate of known images accepted and correctly classified against the "
        "rate of OOD images accepted.",
        "",
    ]
    lines += [
        "| detector | OOD set | AUROC | OSCR | AUPR-In | AUPR-Out | FPR@95%TPR |",
        "|---|---|---|---|---|---|---|",
    ]
    for row in separation_rows(metrics, evaluation):
        lines.append("| " + " | ".join([f"`{row[1]}`", row[0], *(pct(v) for v in row[2:])]) + " |")
    lines += operating_curve_section(evaluation)
    lines += ["", "## Plots", ""]
    for name, path in plot_paths.items():
        lines += [
            f"### {name.replace('_', ' ')}",
            "",
            f"![{name}]({path.relative_to(run_dir)})",
            "",
        ]
    return "\n".join(lines) + "\n"


def operating_curve_section(evaluation: Evaluation) -> list[str]:
    curve = evaluation.operating_curve
    if not curve["rows"]:
        return []
    names = list(curve["rows"][0]["rejected"])
    voting = ", ".join(f"`{name}`" for name in curve["voting_scores"])
    lines = [
        "",
        "## Operating curve of the conformal rule",
        "",
        f"Images rejected as UNKNOWN by the union of {voting} with thresholds set by "
        f"`calibration=conformal` at each alpha on the {curve['validation_count']} images of "
        "the calibration split (`operating_curve.json`); a known test image is rejected with "
        "probability at most alpha when the calibration images, used for nothing else, and the "
        "test images come from one distribution (`thresholds.json` names the split).",
        "",
        "| alpha | " + " | ".join(names) + " |",
        "|---" * (len(names) + 1) + "|",
    ]
    for row in curve["rows"]:
        cells = [f"{100 * row['rejected'][name]:.2f}%" for name in names]
        lines.append(f"| {100 * row['alpha']:.1f}% | " + " | ".join(cells) + " |")
    return lines


def publish(
    loggers: list[Logger],
    metrics: dict[str, Any],
    rows: list[list[Any]],
    plot_paths: dict[str, Path],
) -> None:
    """Scalar metrics to every logger; plots and the separation table to W&B as well."""
    scalars = {f"eval/{k}": float(v) for k, v in metrics.items() if isinstance(v, int | float)}
    for logger in loggers:
        logger.log_metrics(scalars)
        if isinstance(logger, WandbLogger):
            logger.log_table(
                "eval/separation", columns=["set", "score", *SEPARATION_KEYS], data=rows
            )
            for name, path in plot_paths.items():
                logger.log_image(f"plots/{name}", images=[str(path)])
        logger.save()


def write_scores(
    path: str | Path, evaluation: Evaluation, reference: dict[str, Any] | None = None
) -> Path:
    """Every evaluated image's scores, logits, label and decision, by set, in one ``.npz``
    (keys ``<set>.labels``, ``<set>.predictions``, ``<set>.logits``, ``<set>.scores.<score>``,
    and ``<set>.p_value``, the conformal p-value against ``reference``, when there is one),
    so that metrics.json can be recomputed or extended without running the model again."""
    arrays: dict[str, np.ndarray] = {}
    for name, out in evaluation.outputs.items():
        if reference:
            arrays[f"{name}.p_value"] = p_values(reference, out.scores).numpy()
        arrays[f"{name}.labels"] = out.labels.numpy()
        arrays[f"{name}.predictions"] = out.predictions.numpy()
        arrays[f"{name}.logits"] = out.logits.numpy()
        arrays.update({f"{name}.scores.{s}": v.numpy() for s, v in out.scores.items()})
    return atomic_write(path, lambda f: np.savez_compressed(f, **arrays))


def write_results(
    run_dir: str | Path,
    evaluation: Evaluation,
    module: OpenSetModule,
    info: dict[str, Any],
    history: list[dict[str, float]],
    loggers: list[Logger],
    seed: int,
    tsne_points: int = 3000,
    recon_examples: int = 8,
) -> dict[str, Path]:
    """Write metrics.json, scores.npz, plots/*.png and report.md to ``run_dir`` and publish
    to loggers."""
    run_dir = Path(run_dir)
    plot_paths = make_plots(
        evaluation, module, history, run_dir / "plots", seed, tsne_points, recon_examples
    )
    metrics = evaluation.metrics
    write_json(run_dir / "metrics.json", metrics)
    write_json(run_dir / "operating_curve.json", evaluation.operating_curve)
    write_scores(run_dir / "scores.npz", evaluation, module.conformal_reference)
    write_text(run_dir / "report.md", render_report(metrics, evaluation, info, plot_paths, run_dir))
    publish(loggers, metrics, separation_rows(metrics, evaluation), plot_paths)
    return plot_paths
