"""Otsu binarization, the calibration pass and the full evaluation: osr's batched torch code
against the notebook's per-image skimage loops (``benchmarks.notebook``), side by side:
10,000 MNIST validation images for calibration, then 30,000 test images (MNIST, FashionMNIST,
CIFAR-10) for the evaluation.

    python -m benchmarks.calibration [--ckpt outputs/.../checkpoints/best.ckpt] [--val-size N]

``--val-size``: the validation images calibrated on (10,000), fewer for small data such as the
test suite's.
"""

import argparse

import numpy as np
import torch
import torchvision
from hydra.utils import instantiate
from torch.utils.data import DataLoader

from benchmarks import notebook
from benchmarks.common import MIRROR, offline_config, report, timed
from osr.detectors.scores import otsu_binarize
from osr.modules import AutoencoderClassifier
from osr.scoring.calibration import calibrate
from osr.scoring.test_sets import evaluate
from osr.scoring.thresholds import MeanStd
from osr.utils.checkpoints import module_from_checkpoint, read_checkpoint


def notebook_loader(images: torch.Tensor, labels: torch.Tensor) -> DataLoader:
    """The notebook's data path over the same images: torchvision's MNIST dataset (PIL image
    per sample, Resize, ToTensor, Normalize), batch 64, shuffled, 2 worker processes."""
    dataset = torchvision.datasets.MNIST(str(MIRROR), train=False, download=False)
    dataset.data, dataset.targets = images[:, 0], labels
    dataset.transform = notebook.test_transform(notebook.MNIST_MEAN, notebook.MNIST_STD)
    return notebook.loader(dataset)


def notebook_network(model: AutoencoderClassifier) -> notebook.MLAutoencoder:
    """The notebook's own network (NCHW, ConvTranspose2d) holding ``model``'s weights."""
    net = notebook.MLAutoencoder()
    networks = ("autoencoder.", "classifier.")
    ours = [v for k, v in model.state_dict().items() if k.startswith(networks)]
    theirs = net.state_dict()
    net.load_state_dict(dict(zip(theirs, (v.contiguous() for v in ours), strict=True)))
    return net.eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", help="a trained mlae checkpoint (random weights otherwise)")
    parser.add_argument("--val-size", type=int, default=10_000)
    args = parser.parse_args()

    cfg = offline_config("experiment=seed_repro", f"data.val_size={args.val_size}")
    datamodule = instantiate(cfg.data)
    datamodule.setup()
    if args.ckpt:
        model = module_from_checkpoint(read_checkpoint(args.ckpt))
    else:
        torch.manual_seed(0)
        model = AutoencoderClassifier(
            {"_target_": "osr.models.Autoencoder"},
            {"_target_": "osr.models.ConvNet"},
            {"_target_": "torch.optim.Adam", "_partial_": True},
            [str(i) for i in range(10)],
        )
    model.eval()
    # the images calibration reads: the calibration split (the notebook's validation split)
    held = datamodule.calibration_set if datamodule.calibration_count else datamodule.val_set
    val = datamodule.transform(held.tensors[0])
    arrays = val.numpy()[:, 0]

    otsu_ours = timed(lambda: otsu_binarize(val))
    otsu_loop = timed(lambda: [notebook.make_binary(a) for a in arrays], repeats=1)

    net = notebook_network(model)

    def notebook_calibration(batches):
        with torch.no_grad():
            norms, diffs = notebook.norms_and_diffs(net, batches)
        return np.mean(norms) + 3 * np.std(norms), np.mean(diffs) + 3 * np.std(diffs)

    loader = notebook_loader(*held.tensors)
    calib_ours = timed(lambda: calibrate(model, datamodule, MeanStd(k=3)))
    calib_tensors = timed(lambda: notebook_calibration(val.split(notebook.BATCH_SIZE)), repeats=1)
    calib_loader = timed(lambda: notebook_calibration(x for x, _ in loader), repeats=1)

    def ours_end_to_end() -> None:
        calibrate(model, datamodule, MeanStd(k=3))
        evaluate(model, datamodule, cfg.ood)

    loaders = notebook.make_loaders()

    def notebook_end_to_end() -> None:
        thresholds = notebook_calibration(x for x, _ in loader)
        with torch.no_grad():
            for name in ("test", "fashion", "cifar"):
                notebook.eval_model(net, loaders[name], thresholds)
                if name != "test":
                    notebook.norms_and_diffs(net, (x for x, _ in loaders[name]))

    full_ours = timed(ours_end_to_end, repeats=1)
    full_notebook = timed(notebook_end_to_end, repeats=1)

    calibrate(model, datamodule, MeanStd(k=3))
    ours = model.threshold_dict()
    ref = notebook_calibration(val.split(notebook.BATCH_SIZE))
    report(
        "calibration",
        [
            (f"Otsu binarization, {len(val):,} images", otsu_ours, otsu_loop),
            ("calibration, same in-memory batches", calib_ours, calib_tensors),
            ("calibration, each with its data path", calib_ours, calib_loader),
            (f"calibration + evaluation, {len(val):,} val + test sets", full_ours, full_notebook),
        ],
        {
            "thresholds_osr": {k: ours[k] for k in ("recon_l2", "binary_diff")},
            "thresholds_notebook": {"recon_l2": float(ref[0]), "binary_diff": float(ref[1])},
            "note": "osr computes five scores and every metrics.json figure; the notebook two "
            "scores and accuracies",
        },
    )


if __name__ == "__main__":
    main()
