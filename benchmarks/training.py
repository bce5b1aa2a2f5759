"""Training throughput (images/s) of both models, side by side in one run, on one device:

- osr: the Trainer that ``osr.train`` builds (uint8 batches resident on the device, blur on
  the device), at batch 64 and 512;
- hand loop: a minimal PyTorch loop over the same model, data resident on the device, the
  same blur, at the same batch sizes;
- plain LightningModule: the hand loop's work (the model's loss and optimizer) as the
  ``training_step`` of a LightningModule with nothing else, in the same Trainer and
  DataModule: what any LightningModule costs over the hand loop; ``trainer_vs_plain_lightning``
  above 1 means osr's module costs less per step than that plain one, below 1 more
  (``--no-plain-lightning`` skips it);
- compiled: that loop with the networks compiled (``torch.compile``; also
  ``mode="reduce-overhead"``, CUDA graphs, on CUDA), at batch 64 (``--compile``, the default
  on CUDA: on the CPU compiling takes minutes and inductor's CPU code is not faster here);
- notebook: the notebook's feeding, torchvision MNIST with per-sample PIL transforms
  (Resize, ToTensor, Normalize, GaussianBlur) through a DataLoader with 2 workers, batch 64.

Rates exclude the first batches of each measurement (start-up, compilation). Trainer and hand
loop run interleaved in chunks of steps within one training run (``Interleaved``), so that
both meet the same machine. Each run's rates are images over seconds summed across its
chunks; the rates reported are their means over ``--rounds`` runs, and
``trainer_vs_hand_loop`` is the quotient of those means. Also the FLOPs per
training image (``FlopCounterMode``) and the achieved GFLOP/s against a large float32
``torch.mm``.

    python -m benchmarks.training [--device cpu|cuda] [--batches 300] [--rounds 3]

``--smoke`` (the test suite's): ``--batches`` batches, warm-up and chunks of one, of whatever
``$OSR_DATA_DIR`` holds, however small, with a validation split of 100 images.
"""

import argparse
import itertools
import json
import statistics
import time
from collections.abc import Iterator

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import torchvision
from hydra import compose, initialize_config_dir
from hydra.utils import instantiate
from torch.utils.data import DataLoader, Subset
from torch.utils.flop_counter import FlopCounterMode

from benchmarks import notebook
from benchmarks.common import MIRROR, RESULTS, machine
from osr.utils.config import CONFIG_DIR, instantiate_module

SMOKE_VAL_SIZE = 100


def compose_train(model: str, batches: int, device: str, batch_size: int, smoke: bool = False):
    val_size = [f"data.val_size={SMOKE_VAL_SIZE}"] if smoke else []
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"model={model}",
                f"paths.data_dir={MIRROR}",
                "paths.output_dir=/tmp/osr-bench",
                f"data.batch_size={batch_size}",
                "trainer.max_epochs=1",
                f"trainer.accelerator={'gpu' if device == 'cuda' else 'cpu'}",
                f"trainer.limit_train_batches={batches}",
                "trainer.limit_val_batches=0",
                "trainer.enable_checkpointing=false",
                "trainer.enable_model_summary=false",
                "trainer.enable_progress_bar=false",
                "callbacks=none",
                "logger=[]",
                "data.download=false",
                *val_size,
            ],
        )


def build(cfg, datamodule):
    """The model ``osr.train`` builds: its detectors too, which its voting set names."""
    return instantiate_module(
        cfg, class_names=datamodule.class_names, input_shape=datamodule.input_shape
    )


def fresh(cfg, datamodule, device: torch.device):
    pl.seed_everything(0)
    return build(cfg, datamodule).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class HandLoop:
    """A minimal PyTorch training loop over ``model`` (its ``_loss`` and its configured
    optimizer): the work of osr's training step without Lightning."""

    def __init__(self, model, batches: Iterator, transform=None) -> None:
        self.model, self.batches, self.transform = model, batches, transform
        self.optimizer = model.build_optimizer()
        model.train()

    def run(self, steps: int | None) -> int:
        """``steps`` training steps (None: until the batches run out); the images seen."""
        seen = 0
        for images, labels in itertools.islice(self.batches, steps):
            images, labels = images.to(self.model.device), labels.to(self.model.device)
            x = self.transform(images, augment=True) if self.transform else images
            loss = self.model._loss(x, labels)[0]
            self.optimizer.zero_grad()
            loss.backward()
            self.optimizer.step()
            seen += len(labels)
        return seen


def train_loop(model, batches, warmup: int, transform=None) -> float:
    """Images/s of the hand loop after ``warmup`` steps."""
    loop = HandLoop(model, iter(batches), transform)
    loop.run(warmup)
    sync(model.device)
    start = time.perf_counter()
    seen = loop.run(None)
    sync(model.device)
    return seen / (time.perf_counter() - start)


class PlainLightning(pl.LightningModule):
    """The hand loop's step as a LightningModule and nothing more: ``module``'s loss and
    optimizer, no training figures, no hooks, no NaN check."""

    def __init__(self, module: pl.LightningModule) -> None:
        super().__init__()
        self.module = module

    def training_step(self, batch, batch_idx: int):
        return self.module._loss(*batch)[0]

    def configure_optimizers(self):
        return self.module.build_optimizer()


class Interleaved:
    """Times the Trainer and the hand loop in alternating chunks of ``chunk`` steps within one
    training run: after every ``chunk`` Trainer steps, ``chunk`` hand-loop steps run, timed
    apart. Both then see the same machine: this shared host's speed drifts by tens of percent
    within a minute, far more than the difference measured.

    It rides on the module's ``on_train_batch_end`` hook, which Lightning calls every step
    anyway: a callback would add its dispatch to the Trainer's time. A Trainer chunk runs from
    one hook call to the one ``chunk`` steps later, so it holds whole steps (fetch, transfer,
    hooks, step). The device is synchronized only at chunk boundaries.
    """

    def __init__(self, loop: HandLoop, warmup: int, chunk: int) -> None:
        self.loop, self.warmup, self.chunk = loop, warmup, chunk
        self.trainer_images = self.loop_images = 0
        self.trainer_seconds = self.loop_seconds = 0.0

    def attach(self, module: pl.LightningModule) -> pl.LightningModule:
        self.device = module.device
        module.on_train_batch_end = self.on_train_batch_end
        return module

    def on_train_batch_end(self, outputs, batch, batch_idx: int) -> None:
        done = batch_idx + 1 - self.warmup  # timed Trainer steps so far
        if done < 0:
            return
        if done > 0:
            self.seen += len(batch[1])
        if done % self.chunk:
            return
        sync(self.device)
        if done == 0:
            self.loop.run(self.warmup)  # the hand loop's own warm-up
        else:
            self.trainer_seconds += time.perf_counter() - self.start
            self.trainer_images += self.seen
            start = time.perf_counter()
            self.loop_images += self.loop.run(self.chunk)
            sync(self.device)
            self.loop_seconds += time.perf_counter() - start
        self.start, self.seen = time.perf_counter(), 0


def trainer_and_loop(
    cfg, datamodule, device: torch.device, warmup: int, chunks: int, chunk: int, plain=False
):
    """(Trainer images/s, hand loop images/s) of one interleaved run; with ``plain`` the
    Trainer fits a ``PlainLightning`` module instead of osr's."""
    batches = resident_batches(datamodule, device, cfg.data.batch_size, warmup + chunks * chunk)
    loop = HandLoop(fresh(cfg, datamodule, device), batches, datamodule.transform.to(device))
    timer = Interleaved(loop, warmup, chunk)
    trainer = instantiate(cfg.trainer, logger=False)
    model = build(cfg, datamodule)
    if plain:
        model = PlainLightning(model)
    trainer.fit(timer.attach(model), datamodule=datamodule)
    return timer.trainer_images / timer.trainer_seconds, timer.loop_images / timer.loop_seconds


def resident_batches(datamodule, device: torch.device, batch_size: int, n: int):
    """``n`` shuffled batches of the training split, data and indices on ``device``."""
    images, labels = (t.to(device) for t in datamodule.train_set.tensors)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(0)).to(device)
    for i in range(n):
        start = (i * batch_size) % (len(labels) - batch_size)
        idx = order[start : start + batch_size]
        yield images[idx], labels[idx]


def compiled(model, mode: str | None):
    """The module with its networks compiled in place (state_dict names unchanged)."""
    for name in ("net", "autoencoder", "classifier"):
        if hasattr(model, name):
            getattr(model, name).compile(mode=mode)
    return model


def limited(loader, n):
    for i, batch in enumerate(loader):
        if i == n:
            return
        yield batch


def notebook_loader() -> DataLoader:
    dataset = torchvision.datasets.MNIST(
        str(MIRROR), train=True, download=False, transform=notebook.mnist_train_transform()
    )
    return notebook.loader(Subset(dataset, range(min(50_000, len(dataset)))))


def flops_per_image(name: str, x: torch.Tensor, y: torch.Tensor) -> float:
    """Forward + backward FLOPs of one training image, counted on the architecture in its
    plain form (the notebook port's networks): ``FlopCounterMode`` counts a grouped conv's
    backward at four times its cost, which would inflate osr's depthwise decoder."""
    net = notebook.ConvNet(5) if name == "baseline" else notebook.MLAutoencoder()
    with FlopCounterMode(display=False) as counter:
        if name == "baseline":
            loss = F.cross_entropy(net(x), y)
        else:
            recon, logits = net(x)
            loss = F.mse_loss(recon, x) + F.cross_entropy(logits, y)
        loss.backward()
    return counter.get_total_flops() / len(x)


def matmul_gflops(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def mean_rates(runs: list[tuple[float, float]]) -> tuple[float, float, list[float]]:
    """(Trainer, hand loop) images/s of interleaved runs: their means, and each run's ratio."""
    trainer = statistics.fmean(r[0] for r in runs)
    loop = statistics.fmean(r[1] for r in runs)
    return trainer, loop, [r[0] / r[1] for r in runs]


def measure(name: str, args, device: torch.device, batch_size: int) -> dict[str, float]:
    """Trainer and hand loop at one batch size, interleaved (``Interleaved``): the mean of
    ``args.rounds`` runs' rates, each images over seconds summed across that run's chunks.
    With ``args.plain_lightning`` each round also runs ``PlainLightning`` the same way."""
    if args.smoke:
        batches, warmup, chunk = args.batches, 1, 1
    else:
        batches = max(60, args.batches * 64 // batch_size)  # about the same images at any size
        warmup, chunk = max(5, batches // 15), max(5, batches // 12)
    chunks = batches // chunk
    cfg = compose_train(name, warmup + chunks * chunk, args.device, batch_size, args.smoke)
    datamodule = instantiate(cfg.data)
    datamodule.setup("fit")
    transform = datamodule.transform.to(device)
    rounds, plain = [], []
    for _ in range(args.rounds):  # alternating, so that both meet the same drift
        rounds.append(trainer_and_loop(cfg, datamodule, device, warmup, chunks, chunk))
        if args.plain_lightning:
            plain.append(trainer_and_loop(cfg, datamodule, device, warmup, chunks, chunk, True))
    trainer_rate, loop_rate, by_round = mean_rates(rounds)
    row = {
        "osr_trainer_img_s": trainer_rate,
        "hand_loop_img_s": loop_rate,
        "trainer_vs_hand_loop": trainer_rate / loop_rate,
        "trainer_vs_hand_loop_by_round": by_round,
    }
    if plain:
        plain_rate, plain_loop_rate, plain_by_round = mean_rates(plain)
        row["plain_lightning_img_s"] = plain_rate
        row["plain_lightning_vs_hand_loop"] = plain_rate / plain_loop_rate
        row["plain_lightning_vs_hand_loop_by_round"] = plain_by_round
        row["trainer_vs_plain_lightning"] = (
            row["trainer_vs_hand_loop"] / row["plain_lightning_vs_hand_loop"]
        )
    if args.compile and batch_size == 64:
        modes = {"compiled": None}
        if device.type == "cuda":
            modes["compiled_reduce_overhead"] = "reduce-overhead"
        for key, mode in modes.items():
            data = resident_batches(datamodule, device, batch_size, batches)
            model = compiled(fresh(cfg, datamodule, device), mode)
            row[f"{key}_loop_img_s"] = train_loop(model, data, warmup * 2, transform)
    if batch_size == 64:
        nb = limited(notebook_loader(), batches)
        row["notebook_feeding_img_s"] = train_loop(fresh(cfg, datamodule, device), nb, warmup)
        row["speedup_vs_notebook"] = row["osr_trainer_img_s"] / row["notebook_feeding_img_s"]
        x = datamodule.transform(datamodule.train_set.tensors[0][:64])
        row["train_flops_per_image"] = flops_per_image(
            name, x, datamodule.train_set.tensors[1][:64]
        )
        row["achieved_gflop_s"] = row["train_flops_per_image"] * row["osr_trainer_img_s"] / 1e9
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--batches", type=int, default=300, help="batches of 64 per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[64, 512])
    parser.add_argument(
        "--plain-lightning",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also time a plain LightningModule doing the hand loop's step",
    )
    parser.add_argument(
        "--compile",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="also time the compiled loop (default: on CUDA only)",
    )
    parser.add_argument("--smoke", action="store_true", help="tiny settings (the test suite)")
    args = parser.parse_args()
    if args.compile is None:
        args.compile = args.device == "cuda"
    device = torch.device(args.device)
    side = 256 if args.smoke else 2048
    peak = matmul_gflops(device, side)
    rows: dict[str, dict] = {}
    for name in ("baseline", "mlae"):
        by_size = {bs: measure(name, args, device, bs) for bs in args.batch_sizes}
        rows[name] = {**by_size[args.batch_sizes[0]]}
        rows[name]["by_batch_size"] = {str(bs): r for bs, r in by_size.items()}
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    print(f"device: {where}; float32 matmul ({side}^2): {peak:.1f} GFLOP/s")
    print(
        f"{'model':<9}{'batch':>6}{'osr img/s':>11}{'hand loop':>11}{'vs loop':>9}{'plain PL':>10}"
        f"{'vs loop':>9}{'compiled':>10}{'CUDA graphs':>12}{'notebook':>10}{'vs nb':>7}"
    )
    for name, r in rows.items():
        for bs, b in r["by_batch_size"].items():
            rates = [
                f"{b[k]:.0f}" if k in b else ""
                for k in (
                    "plain_lightning_img_s",
                    "compiled_loop_img_s",
                    "compiled_reduce_overhead_loop_img_s",
                    "notebook_feeding_img_s",
                )
            ]
            ratios = [
                f"{b[k]:.2f}x" if k in b else ""
                for k in ("plain_lightning_vs_hand_loop", "speedup_vs_notebook")
            ]
            print(
                f"{name:<9}{bs:>6}{b['osr_trainer_img_s']:>11.0f}{b['hand_loop_img_s']:>11.0f}"
                f"{b['trainer_vs_hand_loop']:>8.2f}x{rates[0]:>10}{ratios[0]:>9}{rates[1]:>10}"
                f"{rates[2]:>12}{rates[3]:>10}{ratios[1]:>7}"
            )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "training.json"
    facts = {**machine(), "device": where}
    out.write_text(json.dumps({"machine": facts, "matmul_gflop_s": peak, "models": rows}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
