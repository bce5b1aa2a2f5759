"""Wall time of ``experiment=seed_repro`` for one seed, end to end, against the notebook.

Runs, one after the other in fresh processes: the notebook port (``benchmarks.notebook``:
both trainings, calibration, evaluation), then ``python -m osr.train experiment=seed_repro``
for the baseline and for the autoencoder-classifier (training, calibration, test,
evaluation, report with plots and t-SNE, checkpoints), each as a user would type it.

    python -m benchmarks.end_to_end [--seed 1] [--device cpu|cuda] [--no-notebook]

``--device cuda`` runs ``osr.train`` with ``trainer=gpu``; ``--no-notebook`` times osr alone
(to compare two versions of osr on one machine). ``--smoke`` (the test suite's): one epoch of
the notebook, one of three batches for osr with 100 validation images, on whatever
``$OSR_DATA_DIR`` holds.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from benchmarks.common import MIRROR, RESULTS, machine

REPO = Path(__file__).resolve().parents[1]
SMOKE_NOTEBOOK = ["--baseline-epochs", "1", "--mlae-epochs", "1"]
SMOKE_TRAIN = [
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=3",
    "trainer.limit_val_batches=1",
    "data.val_size=100",
    "report.tsne_points=0",
]


def timed_run(cmd: list[str]) -> float:
    env = {**os.environ, "OSR_DATA_DIR": str(MIRROR)}
    start = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--notebook", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--smoke", action="store_true", help="tiny settings (the test suite)")
    args = parser.parse_args()
    trainer = "trainer=gpu" if args.device == "cuda" else "trainer=cpu"
    with tempfile.TemporaryDirectory() as tmp:
        notebook, notebook_s = {}, float("nan")
        if args.notebook:
            figures_file = Path(tmp) / "notebook.json"
            notebook_s = timed_run(
                [
                    sys.executable,
                    "-m",
                    "benchmarks.notebook",
                    "--json",
                    str(figures_file),
                    *(SMOKE_NOTEBOOK if args.smoke else []),
                ]
            )
            notebook = json.loads(figures_file.read_text())
            notebook.pop("machine")
        ours = {}
        for model in ("baseline", "mlae"):
            ours[model] = timed_run(
                [
                    sys.executable,
                    "-m",
                    "osr.train",
                    "experiment=seed_repro",
                    f"model={model}",
                    f"seed={args.seed}",
                    trainer,
                    "callbacks.rich_progress_bar=null",
                    f"hydra.run.dir={tmp}/{model}",
                    *(SMOKE_TRAIN if args.smoke else []),
                ]
            )
            run_dir = Path(tmp) / model
            metrics = json.loads((run_dir / "metrics.json").read_text())
            ours[f"{model}_closed_set_accuracy"] = metrics["closed_set.accuracy"]
    ours_s = ours["baseline"] + ours["mlae"]
    print(f"{'':<34}{'osr (s)':>10}{'notebook (s)':>14}")
    print(f"{'baseline, end to end':<34}{ours['baseline']:>10.1f}")
    print(f"{'autoencoder-classifier, end to end':<34}{ours['mlae']:>10.1f}")
    if notebook:
        print(
            f"{'  notebook: baseline training':<34}{'':>10}{notebook['baseline_training_s']:>14.1f}"
        )
        print(f"{'  notebook: mlae training':<34}{'':>10}{notebook['mlae_training_s']:>14.1f}")
        calibration = notebook["calibration_and_evaluation_s"]
        print(f"{'  notebook: calibration, evaluation':<34}{'':>10}{calibration:>14.1f}")
    print(f"{'total (process wall time)':<34}{ours_s:>10.1f}{notebook_s:>14.1f}")
    print(f"osr / notebook: {ours_s / notebook_s:.2f} (target <= 0.6)")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "end_to_end.json"
    data = {
        "machine": machine(),
        "device": args.device,
        "seed": args.seed,
        "osr_s": {"baseline": ours["baseline"], "mlae": ours["mlae"], "total": ours_s},
        "osr_closed_set_accuracy": {
            m: ours[f"{m}_closed_set_accuracy"] for m in ("baseline", "mlae")
        },
        "notebook_s": {**notebook, "process_wall": notebook_s},
        "ratio": ours_s / notebook_s,
    }
    out.write_text(json.dumps(data, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
