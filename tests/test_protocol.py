"""The open-set protocol: the held-out classes of a split are never seen before the test
evaluation (not in training, model selection, detector fitting or threshold calibration),
on MNIST and on CIFAR-10."""

import pytest
import torch
import torchvision

from osr.data import CIFAR10DataModule, MNISTDataModule
from osr.data.image_folder import decode_image_folder

SEEN: list[tuple[str, torch.Tensor]] = []  # (phase, raw uint8 images of a batch), in order


class Watched:
    """Records the raw images of every batch any stage draws, with the phase it was drawn in;
    the phase turns to "evaluation" once the held-out classes' loaders are asked for."""

    phase = "before evaluation"

    def on_after_batch_transfer(self, batch, dataloader_idx):
        SEEN.append((Watched.phase, batch[0].clone()))
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def iterate(self, loader, device):
        for images, labels in loader:
            SEEN.append((Watched.phase, images.clone()))
            yield from super().iterate([(images, labels)], device)

    def unknown_dataloaders(self):
        Watched.phase = "evaluation"
        return super().unknown_dataloaders()


class WatchedMNIST(Watched, MNISTDataModule):
    pass


class WatchedCIFAR10(Watched, CIFAR10DataModule):
    pass


def image_keys(images: torch.Tensor) -> set[bytes]:
    return {image.cpu().numpy().tobytes() for image in images}


def mnist_split(root, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    source = torchvision.datasets.MNIST(str(root), train=train, download=False)
    return source.data.unsqueeze(1), source.targets


def cifar_split(root, train: bool) -> tuple[torch.Tensor, torch.Tensor]:
    folder = root / "CIFAR10" / ("train" if train else "test")
    return decode_image_folder(folder, "CIFAR10")[:2]


PROTOCOLS = {
    # experiment, watched DataModule, split 0's held-out classes, the raw images, extra
    "mnist": ("osr_split", WatchedMNIST, [0, 1, 6, 7], mnist_split, ["ood=default"]),
    "cifar10": (
        "osr_split_cifar10",
        WatchedCIFAR10,
        [2, 3, 5, 8],
        cifar_split,
        ["data.val_size=40", "model.net.widths=[8,16,16]", "detectors.vim.detector.d=8"],
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_held_out_classes_are_first_seen_by_the_test_evaluation(train_cfg, tiny_data, protocol):
    from osr.train import train

    experiment, watched, held_out_classes, read, extra = PROTOCOLS[protocol]
    SEEN.clear()
    Watched.phase = "before evaluation"
    cfg = train_cfg(
        f"experiment={experiment}",
        "split=0",
        "model=baseline",
        "detectors=default",
        f"data._target_={__name__}.{watched.__name__}",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
        *extra,
        ood_sets=("fashion_mnist", "cifar10") if protocol == "mnist" else (),
    )
    assert sorted(set(range(10)) - set(cfg.data.known_classes)) == held_out_classes
    train(cfg)

    held_out, known = set(), set()
    for train_split in (True, False):
        images, labels = read(tiny_data, train_split)
        is_held_out = torch.isin(labels, torch.tensor(held_out_classes))
        held_out |= image_keys(images[is_held_out])
        known |= image_keys(images[~is_held_out])
    before = set().union(*(image_keys(x) for phase, x in SEEN if phase == "before evaluation"))
    after = set().union(*(image_keys(x) for phase, x in SEEN if phase == "evaluation"))
    # training, validation (model selection), detector fitting, calibration, closed-set test
    assert len(before) > 100 and before <= known
    assert not before & held_out
    # the recorder works: the evaluation does score the held-out test images
    assert after & held_out
