"""Otsu binarization and the calibration pass: osr's batched torch code against the
notebook's per-image skimage loop, on the 10,000 MNIST validation images, side by side.

    python benchmarks/calibration.py [--ckpt outputs/.../checkpoints/best.ckpt]
"""

import argparse

import numpy as np
import torch
import torchvision
from skimage.filters import threshold_otsu
from torch.utils.data import DataLoader
from torchvision import transforms

from benchmarks.common import MIRROR, report, timed
from osr.calibration import MeanStd, calibrate
from osr.checkpoints import module_from_checkpoint, read_checkpoint
from osr.data import MNISTDataModule
from osr.modules import AutoencoderClassifier
from osr.scores import otsu_binarize

NOTEBOOK_BATCH = 64


def notebook_make_binary(img: np.ndarray) -> np.ndarray:
    return img > threshold_otsu(img)


def notebook_loader(images: torch.Tensor, labels: torch.Tensor) -> DataLoader:
    """The notebook's data path over the same images: torchvision's MNIST dataset (PIL image
    per sample, Resize, ToTensor, Normalize), batch 64, shuffled, 2 worker processes."""
    dataset = torchvision.datasets.MNIST(str(MIRROR), train=False, download=False)
    dataset.data, dataset.targets = images[:, 0], labels
    dataset.transform = transforms.Compose(
        [transforms.Resize((28, 28)), transforms.ToTensor(), transforms.Normalize(0.13, 0.31)]
    )
    return DataLoader(dataset, batch_size=NOTEBOOK_BATCH, shuffle=True, num_workers=2)


def notebook_norms_and_diffs(model, batches) -> tuple[list, list]:
    """The notebook's loop: forward a batch, then skimage Otsu and a norm per image."""
    norms, diffs = [], []
    model.eval()
    for inputs in batches:
        recons, _ = model(inputs)
        recons = recons.view(-1, 28, 28).detach().cpu().numpy()
        inputs = inputs.view(-1, 28, 28).detach().cpu().numpy()
        for i in range(len(inputs)):
            b = notebook_make_binary(recons[i])
            b0 = notebook_make_binary(inputs[i])
            norms += [np.linalg.norm(inputs[i] - recons[i])]
            diffs += [784 - np.sum(b0 == b)]
    return norms, diffs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--ckpt", help="a trained mlae checkpoint (random weights otherwise)")
    args = parser.parse_args()

    datamodule = MNISTDataModule(str(MIRROR), 0.13, 0.31, download=False)
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
    val = datamodule.transform(datamodule.val_set.tensors[0])
    arrays = val.numpy()[:, 0]
    assert len(val) == 10_000

    otsu_ours = timed(lambda: otsu_binarize(val))
    otsu_loop = timed(lambda: [notebook_make_binary(a) for a in arrays], repeats=1)

    def notebook_calibration(batches):
        with torch.no_grad():
            norms, diffs = notebook_norms_and_diffs(model, batches)
        return np.mean(norms) + 3 * np.std(norms), np.mean(diffs) + 3 * np.std(diffs)

    loader = notebook_loader(*datamodule.val_set.tensors)
    calib_ours = timed(lambda: calibrate(model, datamodule, MeanStd(k=3)))
    calib_tensors = timed(lambda: notebook_calibration(val.split(NOTEBOOK_BATCH)), repeats=1)
    calib_loader = timed(lambda: notebook_calibration(x for x, _ in loader), repeats=1)

    ours = model.threshold_dict()
    ref = notebook_calibration(val.split(NOTEBOOK_BATCH))
    report(
        "calibration",
        [
            ("Otsu binarization, 10,000 images", otsu_ours, otsu_loop),
            ("calibration, same in-memory batches", calib_ours, calib_tensors),
            ("calibration, each with its data path", calib_ours, calib_loader),
        ],
        {
            "thresholds_osr": {k: ours[k] for k in ("recon_l2", "binary_diff")},
            "thresholds_notebook": {"recon_l2": float(ref[0]), "binary_diff": float(ref[1])},
            "note": "osr computes all five scores; the notebook loop computes two",
        },
    )


if __name__ == "__main__":
    main()
