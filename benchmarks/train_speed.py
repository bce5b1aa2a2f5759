"""Speed of ``make train`` (``python -m osr.train model=mlae``), the guard of issue 37: that
run became much slower and no test or benchmark noticed.

- throughput: images/s of the training step in the Trainer ``osr.train`` builds
  (``osr.train.build``: the config composed as ``osr.train`` composes it, its callbacks and
  loggers) over ``--steps`` batches after ``--warmup``, no validation, against a hand-written
  loop over the same networks (the module config instantiated alike; MSE(recon, x) +
  cross-entropy(logits, y) for model=mlae, cross-entropy for model=baseline; Adam with the
  config's lr) fed contiguous float batches of the same size and count, made beforehand in
  memory. The two sides alternate (A B A B, ``--rounds`` of each), best of each, so that the
  host's drift meets both. ``trainer_vs_hand``: target at least 0.9. The threshold
  calibration callback is left out: it works after the last step (its seconds are phases).
- phases (``--no-phases`` skips): ``python -m osr.train model=<model> [overrides]`` end to
  end in a temporary run directory, the seconds of each phase from its run.json
  (``osr.utils.phases``) and their share of the run's.

The overrides go to both, e.g. ``trainer.max_epochs=1`` for a quick look at the phases.
Writes ``benchmarks/results/train_speed_<UTC time>.json`` ($OSR_BENCHMARK_RESULTS moves it:
machine, commit, arguments, every figure), so that two commits can be compared.

    python -m benchmarks.train_speed [--model mlae|baseline] [--steps 200] [--warmup 20]
        [--rounds 2] [--no-phases] [override ...]
"""

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from pytorch_lightning.callbacks import Callback

from benchmarks.common import RESULTS, machine
from osr.callbacks import ThresholdCalibration
from osr.data.datamodules import ImageDataModule
from osr.modules import AutoencoderClassifier, Classifier
from osr.modules.open_set import OpenSetModule
from osr.train import build
from osr.utils.config import CONFIG_DIR, ROOT_DIR, instantiate_module

TARGET = 0.9
# osr.train's phases in the order they start (run.json keeps them sorted by name)
PHASES = (
    "fit",
    "data_setup",
    "checkpoint_reload",
    "calibration",
    "detector_fitting",
    "closed_set_test",
    "ood_evaluation",
    "report",
)
CROSS_ENTROPY = "osr.objectives.CrossEntropy"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compose_run(model: str, overrides: list[str], steps: int, output_dir: str) -> DictConfig:
    """The ``train`` config of ``osr.train model=<model> <overrides>``, made to stop after
    ``steps`` training steps without validation."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"model={model}",
                *overrides,
                f"paths.output_dir={output_dir}",
                "trainer.max_epochs=-1",
                f"++trainer.max_steps={steps}",
                "trainer.limit_train_batches=1.0",
                "trainer.limit_val_batches=0",
            ],
        )


class StepTimer(Callback):
    """Images and seconds of the training steps after the first ``warmup``, up to the
    Trainer's ``max_steps`` (the device synchronized at both ends only)."""

    def __init__(self, warmup: int) -> None:
        self.warmup, self.images, self.start, self.seconds = warmup, 0, 0.0, 0.0

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module, outputs, batch, batch_idx):
        step = trainer.global_step
        if step > self.warmup:
            self.images += len(batch[1])
        if step in (self.warmup, trainer.max_steps):
            sync(pl_module.device)
            if step == self.warmup:
                self.start = time.perf_counter()
            else:
                self.seconds = time.perf_counter() - self.start


def trainer_rate(cfg: DictConfig, warmup: int) -> tuple[float, ImageDataModule, torch.device]:
    """Images/s of osr's Trainer, and its DataModule and device. Threshold calibration is
    left out: it works after the last step (a phase of its own), and takes long."""
    datamodule, model, trainer = build(cfg)
    timer = StepTimer(warmup)
    kept = [c for c in trainer.callbacks if not isinstance(c, ThresholdCalibration)]
    trainer.callbacks[:] = [*kept, timer]
    trainer.fit(model, datamodule=datamodule)
    return timer.images / timer.seconds, datamodule, trainer.strategy.root_device


def hand_loss(module: OpenSetModule, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if isinstance(module, AutoencoderClassifier):
        recon, logits = module.autoencoder(x), module.classifier(x)
        w = module.hparams
        return w.rec_weight * F.mse_loss(recon, x) + w.cls_weight * F.cross_entropy(logits, y)
    if isinstance(module, Classifier):
        return F.cross_entropy(module.net(x), y)
    raise SystemExit(f"no hand-written loss for {type(module).__name__}")


def uint8_batches(
    datamodule: ImageDataModule, device: torch.device, n: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``n`` batches of the training split as stored (uint8 images, labels), on ``device``."""
    images, labels = datamodule.train_set.tensors
    size = datamodule.hparams.batch_size
    indices = (torch.arange(i * size, (i + 1) * size) % len(labels) for i in range(n))
    return [(images[idx].to(device), labels[idx].to(device)) for idx in indices]


def hand_rate(
    cfg: DictConfig, datamodule: ImageDataModule, device: torch.device, warmup: int
) -> tuple[float, float]:
    """Images/s of the hand-written loop over the same networks, fed the batches as the
    networks take them (normalized floats, contiguous, not augmented); and apart, the
    seconds per batch of the Trainer's data path (``BatchTransform`` with augmentation),
    which the hand loop does not pay."""
    pl.seed_everything(cfg.seed)
    module = instantiate_module(  # with the detectors the voting scores name
        cfg, class_names=datamodule.class_names, input_shape=datamodule.input_shape
    ).to(device)
    module.train()
    opt = cfg.model.optimizer
    optimizer = torch.optim.Adam(module.parameters(), lr=opt.lr, fused=opt.get("fused"))
    stored = uint8_batches(datamodule, device, cfg.trainer.max_steps)
    transform = datamodule.transform.to(device)
    batches = [(transform(x).contiguous(), y) for x, y in stored]
    for i, (x, y) in enumerate(batches):
        if i == warmup:
            sync(device)
            start = time.perf_counter()
        loss = hand_loss(module, x, y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    sync(device)
    rate = sum(len(y) for _, y in batches[warmup:]) / (time.perf_counter() - start)
    start = time.perf_counter()
    for x, _ in stored[warmup:]:
        transform(x, augment=True)
    sync(device)
    return rate, (time.perf_counter() - start) / len(stored[warmup:])


def throughput(args: argparse.Namespace) -> dict[str, Any]:
    """Trainer and hand loop in alternating rounds; the best rate of each."""
    rounds = []
    with tempfile.TemporaryDirectory() as out:
        cfg = compose_run(args.model, args.overrides, args.warmup + args.steps, out)
        if cfg.get("objective", {}).get("_target_", CROSS_ENTROPY) != CROSS_ENTROPY:
            raise SystemExit("the hand-written loop knows cross-entropy only: drop objective=")
        for _ in range(args.rounds):
            trainer, datamodule, device = trainer_rate(cfg, args.warmup)
            hand, augment = hand_rate(cfg, datamodule, device, args.warmup)
            rounds.append(
                {
                    "trainer_img_s": trainer,
                    "hand_img_s": hand,
                    "trainer_vs_hand": trainer / hand,
                    "augment_s": augment,
                }
            )
    best_trainer = max(r["trainer_img_s"] for r in rounds)
    best_hand = max(r["hand_img_s"] for r in rounds)
    size = cfg.data.batch_size
    augment = min(r["augment_s"] for r in rounds)
    return {
        "model": args.model,
        "device": str(device),
        "batch_size": size,
        "trainer_img_s": best_trainer,
        "hand_img_s": best_hand,
        "trainer_vs_hand": best_trainer / best_hand,
        "target": TARGET,
        # the Trainer's augmentation of a batch, and the ratio had the hand loop paid it too
        "augment_ms_per_batch": 1000 * augment,
        "trainer_vs_hand_with_augment": best_trainer * (1 / best_hand + augment / size),
        "rounds": rounds,
    }


def phases(args: argparse.Namespace) -> dict[str, Any]:
    """``osr.train`` end to end in a temporary directory: its run.json's phases."""
    with tempfile.TemporaryDirectory() as run_dir:
        command = [
            sys.executable,
            "-m",
            "osr.train",
            f"model={args.model}",
            f"hydra.run.dir={run_dir}",
            *args.overrides,
        ]
        start = time.perf_counter()
        done = subprocess.run(command, cwd=ROOT_DIR)
        wall = time.perf_counter() - start
        if done.returncode:
            raise SystemExit(f"{' '.join(command)} failed ({done.returncode})")
        record = json.loads((Path(run_dir) / "run.json").read_text())
    seconds = record["phases"]
    return {
        "command": record["command"],
        "wall_s": wall,
        "run_s": record["seconds"],
        "seconds": seconds,
        "share": {name: s / record["seconds"] for name, s in seconds.items()},
        "outside_phases_s": record["seconds"] - sum(seconds.values()),
    }


def print_throughput(t: dict[str, Any]) -> None:
    print(
        f"{t['model']}, batch {t['batch_size']} on {t['device']}: Trainer "
        f"{t['trainer_img_s']:.0f} img/s, hand loop {t['hand_img_s']:.0f} img/s, "
        f"trainer/hand {t['trainer_vs_hand']:.3f} (target >= {TARGET}); the Trainer's "
        f"augmentation {t['augment_ms_per_batch']:.1f} ms a batch, trainer/hand had the hand "
        f"loop paid it {t['trainer_vs_hand_with_augment']:.3f}"
    )


def print_phases(p: dict[str, Any]) -> None:
    print(f"{p['command']}: {p['run_s']:.1f} s (run.json)")
    names = [
        *(n for n in PHASES if n in p["seconds"]),
        *(n for n in p["seconds"] if n not in PHASES),
    ]
    for name in names:
        print(f"  {name:<18}{p['seconds'][name]:>9.2f} s {100 * p['share'][name]:>6.1f}%")
    print(f"  {'outside phases':<18}{p['outside_phases_s']:>9.2f} s")


def commit() -> dict[str, Any]:
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT_DIR, capture_output=True, text=True).stdout

    return {
        "sha": git("rev-parse", "HEAD").strip() or "unknown",
        "dirty": bool(git("status", "--porcelain", "--untracked-files=no").strip()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--model", choices=["mlae", "baseline"], default="mlae")
    parser.add_argument("--steps", "--batches", type=int, default=200, help="timed training steps")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps before them")
    parser.add_argument("--rounds", type=int, default=2, help="rounds of each side, alternating")
    parser.add_argument(
        "--phases",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run osr.train end to end and time its phases",
    )
    parser.add_argument("overrides", nargs="*", help="Hydra overrides for both parts")
    args = parser.parse_args()
    result: dict[str, Any] = {
        "machine": {**machine(), "bf16": torch.cpu._is_avx512_bf16_supported()},
        "commit": commit(),
        "arguments": vars(args),
        "throughput": throughput(args),
    }
    print_throughput(result["throughput"])
    if args.phases:
        result["phases"] = phases(args)
        print_phases(result["phases"])
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / f"train_speed_{datetime.now(UTC):%Y%m%dT%H%M%SZ}.json"
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"written to {out}")


if __name__ == "__main__":
    main()
