"""DataModule setup, one pass over MNIST's 50,000 training images with the batched blur, the
CIFAR-10 image folders decoded once and read back from the cache, and the cost of the
natural-image augmentation per batch.

python -m benchmarks.data [--val-size 100]

``--val-size``: the validation split of each known DataModule (default: their own, 10,000),
small for small data such as the test suite's.
"""

import argparse
import tempfile
import time

import torch

from benchmarks.common import MIRROR, machine, timed
from osr.data import CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule

CIFAR_STATS = ([0.4914, 0.4822, 0.4465], [0.2470, 0.2435, 0.2616])
AUGMENTATIONS = {
    "crop (padding 4) + flip": {"crop_padding": 4, "flip": True},
    "crop + flip + cutout 8": {"crop_padding": 4, "flip": True, "cutout": 8},
    "crop + flip + RandAugment (1 op, magnitude 6)": {
        "crop_padding": 4,
        "flip": True,
        "randaugment_ops": 1,
        "randaugment_magnitude": 6,
    },
    "crop + flip + cutout + RandAugment (2 ops, 9)": {
        "crop_padding": 4,
        "flip": True,
        "cutout": 8,
        "randaugment_ops": 2,
        "randaugment_magnitude": 9,
    },
}


def digits(split: dict[str, int]) -> None:
    start = time.perf_counter()
    mnist = MNISTDataModule(str(MIRROR), 0.13, 0.31, download=False, **split)
    oods = [
        FashionMNISTDataModule(str(MIRROR), 0.286, 0.353, unknown_label=10, download=False),
        CIFAR10DataModule(
            str(MIRROR), *CIFAR_STATS, unknown_label=10, download=False, channels=1, image_size=28
        ),
    ]
    for dm in (mnist, *oods):
        dm.setup()
    setup_s = time.perf_counter() - start

    start = time.perf_counter()
    seen = 0
    for images, _ in mnist.train_dataloader():
        seen += len(mnist.transform(images, augment=True))
    pass_s = time.perf_counter() - start
    print(f"setup of MNIST, FashionMNIST and CIFAR-10: {setup_s:.2f} s (target < 5 s)")
    print(f"one pass over {seen} training images, batch 64, blur: {pass_s:.2f} s (target < 3 s)")


def natural_images(split: dict[str, int], batch_size: int = 256) -> None:
    with tempfile.TemporaryDirectory() as cache:
        times = []
        for _ in range(2):  # decoded into the empty cache, then read back from it
            start = time.perf_counter()
            known = CIFAR10DataModule(
                str(MIRROR), *CIFAR_STATS, cache_dir=cache, download=False, **split
            )
            known.setup()
            times.append(time.perf_counter() - start)
    splits = (known.train_set, known.val_set, known.calibration_set, known.test_set)
    n = sum(len(split) for split in splits if split is not None)
    print(f"CIFAR-10 setup, {n} images: {times[0]:.2f} s decoding, {times[1]:.2f} s from the cache")
    images = known.train_set.tensors[0][:batch_size]
    plain = timed(lambda: known.transform(images), repeats=20)
    print(f"batch of {batch_size} 3x32x32 images, normalize only: {1000 * plain:.2f} ms")
    for name, augment in AUGMENTATIONS.items():
        dm = CIFAR10DataModule(str(MIRROR), *CIFAR_STATS, blur_kernel_size=0, **augment)
        torch.manual_seed(0)
        cost = timed(lambda dm=dm: dm.transform(images, augment=True), repeats=20)
        print(f"  + {name}: {1000 * cost:.2f} ms ({1000 * (cost - plain):.2f} ms augmenting)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--val-size", type=int, help="validation images of each known dataset")
    args = parser.parse_args()
    split = {"val_size": args.val_size} if args.val_size else {}
    print(machine())
    digits(split)
    natural_images(split)


if __name__ == "__main__":
    main()
