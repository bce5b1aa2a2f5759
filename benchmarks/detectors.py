"""What detectors cost: fitting the default detectors on the 50,000 training images, and the
evaluation of the 30,000 test images (MNIST, FashionMNIST, CIFAR-10) with every default
detector against the five scores osr had before detectors, on one trained checkpoint and its
own data (known classes, validation split) read from the mirror.

    python -m benchmarks.detectors --ckpt outputs/.../checkpoints/best.ckpt [--rounds 3]

Fitting includes the forward pass over the training split that collects what the detectors
fit on. Each figure is the best of ``--rounds``; the two evaluations alternate.
"""

import argparse
import json
import time

from benchmarks.common import MIRROR, RESULTS, machine, offline_config
from osr.detectors.builtin import BUILTIN
from osr.scoring.calibration import calibrate
from osr.scoring.outputs import fit_detectors
from osr.scoring.test_sets import evaluate
from osr.scoring.thresholds import MeanStd
from osr.utils.checkpoints import (
    datamodule_from_checkpoint,
    module_from_checkpoint,
    read_checkpoint,
)
from osr.utils.config import plain


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    ckpt = read_checkpoint(args.ckpt)
    cfg = offline_config()
    module = module_from_checkpoint(ckpt)
    datamodule = datamodule_from_checkpoint(ckpt, {"data_dir": str(MIRROR), "download": False})
    datamodule.setup("fit")
    default = plain(cfg.detectors)
    five = {name: {"_target_": BUILTIN[name]} for name in module.builtin_detectors}

    fit_s = []
    for _ in range(args.rounds):
        module.replace_detectors(default)
        start = time.perf_counter()
        fitted = fit_detectors(module, datamodule)
        fit_s.append(time.perf_counter() - start)
    eval_s: dict[str, list[float]] = {"default": [], "five": []}
    for _ in range(args.rounds):
        for name, detectors in (("default", default), ("five", five)):
            module.replace_detectors(detectors)
            calibrate(module, datamodule, MeanStd())  # fits the detectors first
            start = time.perf_counter()
            evaluate(module, datamodule, cfg.ood)
            eval_s[name].append(time.perf_counter() - start)
    result = {
        "machine": machine(),
        "checkpoint": args.ckpt,
        "default_detectors": list(default),
        "fitted": fitted,
        "fit_s": min(fit_s),
        "evaluation_default_s": min(eval_s["default"]),
        "evaluation_five_scores_s": min(eval_s["five"]),
    }
    result["evaluation_ratio"] = result["evaluation_default_s"] / result["evaluation_five_scores_s"]
    print(f"fit {len(fitted)} detectors on 50,000 training images: {result['fit_s']:.2f} s")
    print(
        f"evaluate 30,000 test images: {len(default)} default detectors "
        f"{result['evaluation_default_s']:.2f} s, five scores "
        f"{result['evaluation_five_scores_s']:.2f} s, ratio {result['evaluation_ratio']:.2f}"
    )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "detectors.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
