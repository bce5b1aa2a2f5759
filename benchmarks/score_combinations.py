"""Would a score that combines classifier and reconstruction evidence help on osr_split?

For every job of an ``experiment=osr_split`` sweep: evaluate its best checkpoint on the known
test digits and the held-out digits, standardize each score with the validation mean and std
in the job's ``thresholds.json``, sum them, and report AUROC (held-out digits positive).

    python -m benchmarks.score_combinations outputs/multirun/osr_split
"""

import argparse
import json
from pathlib import Path

import numpy as np
from sklearn.metrics import roc_auc_score

from benchmarks.common import MIRROR, RESULTS
from osr.scoring.metrics import SetOutputs
from osr.scoring.test_sets import evaluate
from osr.utils.checkpoints import (
    datamodule_from_checkpoint,
    module_from_checkpoint,
    read_checkpoint,
)

COMBINATIONS = {
    "max_logit": ["max_logit"],
    "recon_l2": ["recon_l2"],
    "max_logit + recon_l2": ["max_logit", "recon_l2"],
    "energy + binary_diff": ["energy", "binary_diff"],
    "max_logit + recon_l2 + binary_diff": ["max_logit", "recon_l2", "binary_diff"],
}


def combined(outputs: SetOutputs, parts: list[str], stats: dict) -> np.ndarray:
    z = [(outputs.scores[p].double().numpy() - stats[p]["mean"]) / stats[p]["std"] for p in parts]
    return np.sum(z, axis=0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("sweep", type=Path)
    args = parser.parse_args()
    aurocs: dict[str, list[float]] = {name: [] for name in COMBINATIONS}
    for job in sorted(args.sweep.glob("[0-9]*")):
        ckpt = read_checkpoint(job / "checkpoints" / "best.ckpt")
        module = module_from_checkpoint(ckpt).eval()
        data = datamodule_from_checkpoint(ckpt, {"data_dir": str(MIRROR), "download": False})
        outputs = evaluate(module, data, {"sets": {}}).outputs
        known, unknown = outputs[data.name], outputs["mnist_unknown"]
        stats = json.loads((job / "thresholds.json").read_text())["scores"]
        truth = np.r_[np.zeros(len(known.labels)), np.ones(len(unknown.labels))]
        for name, parts in COMBINATIONS.items():
            scores = np.r_[combined(known, parts, stats), combined(unknown, parts, stats)]
            aurocs[name].append(float(roc_auc_score(truth, scores)))
    for name, values in aurocs.items():
        print(f"{name:<36} AUROC {100 * np.mean(values):.2f} ± {100 * np.std(values, ddof=1):.2f}%")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "score_combinations.json"
    out.write_text(json.dumps({"sweep": str(args.sweep), "auroc": aurocs}, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
