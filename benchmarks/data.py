"""DataModule setup and one pass over the 50,000 training images with the batched blur.

python -m benchmarks.data
"""

import time

from benchmarks.common import MIRROR, machine
from osr.data import CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule


def main() -> None:
    start = time.perf_counter()
    mnist = MNISTDataModule(str(MIRROR), 0.13, 0.31, download=False)
    oods = [
        FashionMNISTDataModule(str(MIRROR), 0.286, 0.353, unknown_label=10, download=False),
        CIFAR10DataModule(
            str(MIRROR),
            [0.4914, 0.4822, 0.4465],
            [0.2470, 0.2435, 0.2616],
            unknown_label=10,
            download=False,
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
    print(machine())
    print(f"setup of MNIST, FashionMNIST and CIFAR-10: {setup_s:.2f} s (target < 5 s)")
    print(f"one pass over {seen} training images, batch 64, blur: {pass_s:.2f} s (target < 3 s)")


if __name__ == "__main__":
    main()
