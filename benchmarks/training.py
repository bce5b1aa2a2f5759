"""Training throughput (images/s) of both models, side by side in one run:

- osr: the Trainer that ``osr.train`` builds (in-memory uint8 batches, blur on device);
- hand loop: a minimal PyTorch loop over the same model and the same in-memory batches;
- notebook: the notebook's feeding, torchvision MNIST with per-sample PIL transforms
  (Resize, ToTensor, Normalize, GaussianBlur) through a DataLoader with 2 workers, batch 64.

Rates exclude the first 20 batches of each measurement (start-up); Trainer and hand loop
run alternately, best of three each. Also the FLOPs per training image
(``FlopCounterMode``) and the achieved GFLOP/s against a large float32 ``torch.mm``.

    python -m benchmarks.training [--batches 300] [--rounds 3]
"""

import argparse
import json
import time

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
from osr.config import CONFIG_DIR


def compose_train(model: str, batches: int):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(
            "train",
            overrides=[
                f"model={model}",
                f"paths.data_dir={MIRROR}",
                "paths.output_dir=/tmp/osr-bench",
                "trainer.max_epochs=1",
                f"trainer.limit_train_batches={batches}",
                "trainer.limit_val_batches=0",
                "trainer.enable_checkpointing=false",
                "trainer.enable_model_summary=false",
                "trainer.enable_progress_bar=false",
                "callbacks=none",
                "logger=[]",
                "data.download=false",
            ],
        )


def fresh(cfg, datamodule):
    pl.seed_everything(0)
    return instantiate(cfg.model, class_names=datamodule.class_names)


WARMUP = 20  # batches excluded from every measurement (start-up, allocator warm-up)


class SteadyStateTimer(pl.Callback):
    """Images/s of the training batches after the first WARMUP, as the Trainer runs them."""

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx) -> None:
        if batch_idx == WARMUP:
            self.start, self.seen = time.perf_counter(), 0

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if batch_idx >= WARMUP:
            self.seen += len(batch[1])
            self.rate = self.seen / (time.perf_counter() - self.start)


def osr_trainer(cfg, datamodule) -> float:
    timer = SteadyStateTimer()
    trainer = instantiate(cfg.trainer, callbacks=[timer], logger=False)
    trainer.fit(fresh(cfg, datamodule), datamodule=datamodule)
    return timer.rate


def train_loop(model, batches, transform=None) -> float:
    optimizer = model.configure_optimizers()
    model.train()
    seen = 0
    for i, (images, labels) in enumerate(batches):
        if i == WARMUP:
            start, seen = time.perf_counter(), 0
        x = transform(images, augment=True) if transform else images
        loss = model._loss(x, labels)[0]
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        seen += len(labels)
    return seen / (time.perf_counter() - start)


def limited(loader, n):
    for i, batch in enumerate(loader):
        if i == n:
            return
        yield batch


def notebook_loader() -> DataLoader:
    dataset = torchvision.datasets.MNIST(
        str(MIRROR), train=True, download=False, transform=notebook.mnist_train_transform()
    )
    return notebook.loader(Subset(dataset, range(50_000)))


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


def matmul_gflops(n: int = 2048, repeats: int = 5) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    a @ b
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    return 2 * n**3 * repeats / (time.perf_counter() - start) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batches", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    rows = {}
    peak = matmul_gflops()
    for name in ("baseline", "mlae"):
        cfg = compose_train(name, args.batches)
        datamodule = instantiate(cfg.data)
        datamodule.setup("fit")
        # alternate the two, best of --rounds each: this shared machine's speed drifts
        trainer_rates, loop_rates = [], []
        for _ in range(args.rounds):
            trainer_rates.append(osr_trainer(cfg, datamodule))
            batches = limited(datamodule.train_dataloader(), args.batches)
            loop_rates.append(train_loop(fresh(cfg, datamodule), batches, datamodule.transform))
        trainer_rate, loop_rate = max(trainer_rates), max(loop_rates)
        notebook_rate = train_loop(fresh(cfg, datamodule), limited(notebook_loader(), args.batches))
        x = datamodule.transform(datamodule.train_set.tensors[0][:64])
        flops = flops_per_image(name, x, datamodule.train_set.tensors[1][:64])
        rows[name] = {
            "osr_trainer_img_s": trainer_rate,
            "hand_loop_img_s": loop_rate,
            "notebook_feeding_img_s": notebook_rate,
            "speedup_vs_notebook": trainer_rate / notebook_rate,
            "trainer_vs_hand_loop": trainer_rate / loop_rate,
            "train_flops_per_image": flops,
            "achieved_gflop_s": flops * trainer_rate / 1e9,
        }
    print(f"float32 matmul (2048^2): {peak:.1f} GFLOP/s")
    header = f"{'model':<9}{'osr img/s':>11}{'hand loop':>11}{'notebook':>10}{'vs nb':>7}"
    print(header + f"{'vs loop':>9}{'MFLOP/img':>11}{'GFLOP/s':>9}")
    for name, r in rows.items():
        print(
            f"{name:<9}{r['osr_trainer_img_s']:>11.0f}{r['hand_loop_img_s']:>11.0f}"
            f"{r['notebook_feeding_img_s']:>10.0f}{r['speedup_vs_notebook']:>6.2f}x"
            f"{r['trainer_vs_hand_loop']:>8.2f}x{r['train_flops_per_image'] / 1e6:>11.2f}"
            f"{r['achieved_gflop_s']:>9.2f}"
        )
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "training.json"
    out.write_text(
        json.dumps({"machine": machine(), "matmul_gflop_s": peak, "models": rows}, indent=2)
    )
    print(f"written to {out}")


if __name__ == "__main__":
    main()
