"""The open-set protocol: the held-out digits of a split are never seen before the test
evaluation (not in training, model selection, detector fitting or threshold calibration)."""

import pytest
import torch
import torchvision

from osr.data import MNISTDataModule

HELD_OUT = [0, 1, 6, 7]  # split 0's unknown digits
SEEN: list[tuple[str, torch.Tensor]] = []  # (phase, raw uint8 images of a batch), in order


class WatchedMNIST(MNISTDataModule):
    """Records the raw images of every batch any stage draws, with the phase it was drawn in;
    the phase turns to "evaluation" once the held-out digits' loaders are asked for."""

    phase = "before evaluation"

    def on_after_batch_transfer(self, batch, dataloader_idx):
        SEEN.append((WatchedMNIST.phase, batch[0].clone()))
        return super().on_after_batch_transfer(batch, dataloader_idx)

    def iterate(self, loader, device):
        for images, labels in loader:
            SEEN.append((WatchedMNIST.phase, images.clone()))
            yield from super().iterate([(images, labels)], device)

    def unknown_dataloaders(self):
        WatchedMNIST.phase = "evaluation"
        return super().unknown_dataloaders()


def image_keys(images: torch.Tensor) -> set[bytes]:
    return {image.cpu().numpy().tobytes() for image in images}


@pytest.mark.slow
def test_held_out_digits_are_first_seen_by_the_test_evaluation(train_cfg, tiny_data):
    from osr.train import train

    SEEN.clear()
    WatchedMNIST.phase = "before evaluation"
    cfg = train_cfg(
        "experiment=osr_split",
        "ood=default",  # the tiny-data overrides name its sets
        "split=0",
        "model=baseline",
        "detectors=default",
        f"data._target_={__name__}.WatchedMNIST",
        "trainer.max_epochs=2",
        "trainer.limit_train_batches=3",
        "trainer.limit_val_batches=2",
    )
    assert sorted(set(range(10)) - set(cfg.data.known_classes)) == HELD_OUT
    train(cfg)

    held_out, known = set(), set()
    for train_split in (True, False):
        source = torchvision.datasets.MNIST(str(tiny_data), train=train_split, download=False)
        is_held_out = torch.isin(source.targets, torch.tensor(HELD_OUT))
        held_out |= image_keys(source.data[is_held_out])
        known |= image_keys(source.data[~is_held_out])
    before = set().union(*(image_keys(x) for phase, x in SEEN if phase == "before evaluation"))
    after = set().union(*(image_keys(x) for phase, x in SEEN if phase == "evaluation"))
    # training, validation (model selection), detector fitting, calibration, closed-set test
    assert len(before) > 200 and before <= known
    assert not before & held_out
    # the recorder works: the evaluation does score the held-out test digits
    assert after & held_out
