"""Which detectors should vote under the conformal rule? Chosen without the test OOD sets.

For a run trained with ``detectors=all``: every set of at most ``--max-size`` detectors is
calibrated as one union by ``calibration=conformal`` at ``--alpha`` on the validation split,
and ranked by the share it rejects of outliers made from the known training images alone
(pixels shuffled, patches shuffled, two images of different classes averaged, the image
inverted, heavily blurred, its strokes thickened, noise of the images' mean and spread). The
best sets are then shown on the test split and the run's OOD sets, beside the model's
configured voting set.

    python -m benchmarks.voting_sets outputs/<run> --alpha 0.005 [--detectors msp energy ...]
"""

import argparse
import itertools
from pathlib import Path

import torch
import torch.nn.functional as F
from kornia.filters import gaussian_blur2d
from torch import Tensor

from benchmarks.common import MIRROR
from osr.scoring.conformal import Conformal
from osr.scoring.outputs import collect_scores
from osr.scoring.test_sets import evaluate
from osr.utils.checkpoints import (
    datamodule_from_checkpoint,
    module_from_checkpoint,
    read_checkpoint,
)
from osr.utils.errors import OSRError


def outliers(x: Tensor, y: Tensor, mean: Tensor, std: Tensor, g: torch.Generator) -> dict:
    """Unknown-looking images made from a batch of known ones (normalized), per image."""
    b, c, h, w = x.shape
    pixels = torch.rand(b, c * h * w, generator=g).argsort(1).to(x.device)
    grid = 4  # 4x4 patches of 7x7 (digits) or 8x8 (CIFAR-10) pixels
    patches = x.unfold(2, h // grid, h // grid).unfold(3, w // grid, w // grid)
    patches = patches.reshape(b, c, grid * grid, h // grid, w // grid)
    order = torch.rand(b, grid * grid, generator=g).argsort(1).to(x.device)
    shuffled = patches.gather(2, order[:, None, :, None, None].expand_as(patches))
    jigsaw = shuffled.reshape(b, c, grid, grid, h // grid, w // grid)
    jigsaw = jigsaw.permute(0, 1, 2, 4, 3, 5).reshape(b, c, h, w)
    partner = torch.randperm(b, generator=g).to(x.device)
    other_class = y != y[partner]
    raw = x * std + mean  # pixel intensities in [0, 1]
    return {
        "pixels shuffled": x.flatten(1).gather(1, pixels).view_as(x),
        "patches shuffled": jigsaw,
        "two classes averaged": ((x + x[partner]) / 2)[other_class],
        "inverted": ((1 - raw) - mean) / std,
        "blurred": gaussian_blur2d(x, (9, 9), (3.0, 3.0), border_type="reflect"),
        "thickened": (F.max_pool2d(raw, 3, stride=1, padding=1) - mean) / std,
        "noise": torch.randn(x.shape, generator=g).to(x.device) * x.std() + x.mean(),
    }


@torch.no_grad()
def outlier_scores(module, datamodule, count: int, seed: int) -> dict[str, dict[str, Tensor]]:
    g = torch.Generator().manual_seed(seed)
    mean = torch.tensor(datamodule.hparams.mean).view(1, -1, 1, 1)
    std = torch.tensor(datamodule.hparams.std).view(1, -1, 1, 1)
    made: dict[str, dict[str, list[Tensor]]] = {}
    seen = 0
    for x, y in datamodule.iterate(datamodule.train_eval_dataloader(), module.device):
        for kind, images in outliers(x, y, mean.to(x.device), std.to(x.device), g).items():
            _, scores = module.logits_and_scores(images)
            for name, values in scores.items():
                made.setdefault(kind, {}).setdefault(name, []).append(values.cpu())
        seen += len(x)
        if seen >= count:
            break
    return {k: {n: torch.cat(v) for n, v in s.items()} for k, s in made.items()}


def rejected(thresholds: dict[str, float], scores: dict[str, Tensor]) -> float:
    votes = torch.stack([scores[name] > t for name, t in thresholds.items()])
    return votes.any(0).double().mean().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("run", type=Path)
    parser.add_argument("--alpha", type=float, default=0.005)
    parser.add_argument("--max-size", type=int, default=3)
    parser.add_argument("--outliers", type=int, default=4000, help="training images to alter")
    parser.add_argument("--show", type=int, default=8, help="best sets shown on the test sets")
    parser.add_argument(
        "--detectors",
        nargs="+",
        help="the candidates (default: every detector of the run), e.g. those every objective "
        "provides: msp max_logit energy gen mahalanobis rmd knn",
    )
    args = parser.parse_args()

    ckpt = read_checkpoint(args.run / "checkpoints" / "best.ckpt")
    module = module_from_checkpoint(ckpt).eval()
    here = {"data_dir": str(MIRROR), "download": False}  # not where the run was trained
    data = datamodule_from_checkpoint(ckpt, here)
    ood = ckpt["osr_config"]["ood"]
    ood = {**ood, "sets": {name: {**s, **here} for name, s in (ood.get("sets") or {}).items()}}
    evaluation = evaluate(module, data, ood)  # also sets the data up
    validation, _, _ = collect_scores(module, data, data.calibration_dataloader())
    made = outlier_scores(module, data, args.outliers, seed=0)
    rule = Conformal(alpha=args.alpha)

    ranked = []
    names = sorted(args.detectors or validation)
    if unknown := set(names) - set(validation):
        raise SystemExit(
            f"error: --detectors {sorted(unknown)}: not among the run's {sorted(validation)}"
        )
    for size in range(1, args.max_size + 1):
        for voting in itertools.combinations(names, size):
            try:
                thresholds, _ = rule.fit_union_record({n: validation[n].cpu() for n in voting})
            except OSRError:
                continue
            caught = [rejected(thresholds, scores) for scores in made.values()]
            ranked.append((sum(caught) / len(caught), min(caught), voting, thresholds))
    ranked.sort(key=lambda r: r[0], reverse=True)

    configured = tuple(sorted(module.hparams.voting_scores))
    shown = ranked[: args.show]
    if configured not in [r[2] for r in shown]:
        shown += [r for r in ranked if r[2] == configured]
    sets = list(evaluation.outputs)
    print(f"{args.run}: union of each voting set at alpha {args.alpha} (calibration=conformal)")
    print(f"outliers made from {args.outliers} known training images: {', '.join(made)}\n")
    print("| voting set | outliers (mean) | outliers (worst kind) | " + " | ".join(sets) + " |")
    print("|---" * (3 + len(sets)) + "|")
    for mean_caught, worst, voting, thresholds in shown:
        on_sets = [rejected(thresholds, evaluation.outputs[s].scores) for s in sets]
        mark = " (configured)" if voting == configured else ""
        cells = [f"{100 * v:.2f}%" for v in (mean_caught, worst, *on_sets)]
        print(f"| {', '.join(voting)}{mark} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
