"""Natural images: CIFAR-10 as the known set at 3x32x32 RGB, OOD sets brought to its shape,
the decoded-folder cache, per-image augmentation on the device, and digits never flipped."""

import csv
import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from hydra.utils import instantiate

from osr.data import BatchTransform, CIFAR10DataModule, MNISTDataModule
from osr.data.augment import NaturalImageAugment
from osr.data.image_folder import cached_image_folder
from osr.modules import Classifier
from osr.scoring.test_sets import ood_datamodules
from osr.train import train
from osr.utils.errors import OSRError
from tests.conftest import TINY_CIFAR, TINY_TRAINING, run_module, write_image_folder

CIFAR_STATS = {
    "mean": [0.49139968, 0.48215841, 0.44653091],
    "std": [0.24703223, 0.24348513, 0.26158784],
}
GRAY_SETS = ("mnist", "fashion_mnist")


def listing(folder: Path) -> dict[str, tuple[int, int]]:
    return {
        str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns)
        for p in folder.rglob("*")
    }


def test_cifar10_trains_at_its_own_shape_and_brings_digits_to_it(tiny_data, tmp_path):
    known = CIFAR10DataModule(str(tiny_data), **CIFAR_STATS, val_size=40, cache_dir=tmp_path)
    known.setup("fit")
    assert known.input_shape == (3, 32, 32)
    assert known.train_set.tensors[0].shape == (10 * TINY_CIFAR - 40, 3, 32, 32)
    images, labels = known.train_set.tensors
    x, _ = known.on_after_batch_transfer([images[:8], labels[:8]], 0)
    mean, std = (torch.tensor(CIFAR_STATS[k]).view(1, 3, 1, 1) for k in ("mean", "std"))
    assert torch.allclose(x, (images[:8] / 255 - mean) / std, atol=1e-6)  # per channel

    mnist_cfg = {"_target_": "osr.data.MNISTDataModule", "data_dir": str(tiny_data)}
    ood_cfg = {"sets": {"mnist": {**mnist_cfg, "mean": 0.13, "std": 0.31, "download": False}}}
    mnist = ood_datamodules(ood_cfg, known)["mnist"]
    mnist.setup("test")
    raw = mnist.test_set.tensors[0]
    assert raw.shape[1:] == (1, 32, 32)  # resized once, at setup
    x = mnist.transform(raw[:5])
    assert x.shape == (5, 3, 32, 32)
    gray = torchvision.transforms.v2.functional.resize(
        torchvision.datasets.MNIST(str(tiny_data), train=False).data[:5, None], [32, 32]
    )
    assert torch.allclose(x, (gray.float().expand(-1, 3, -1, -1) / 255 - mean) / std, atol=1e-5)


def test_decoded_folder_is_cached_and_decoded_again_when_the_folder_changes(tmp_path):
    folder, cache = tmp_path / "data" / "CIFAR10" / "train", tmp_path / "cache"
    write_image_folder(folder, ["a", "b"], per_class=3, seed=0)
    images, labels, classes = cached_image_folder(folder, "CIFAR10", cache)
    assert images.shape == (6, 3, 32, 32) and labels.tolist() == [0, 0, 0, 1, 1, 1]
    assert classes == ["a", "b"]
    (cached,) = cache.glob("*.pt")
    # mark the cache: a second call must read it rather than decode the folder
    marked = {"images": torch.zeros_like(images), "labels": labels, "classes": classes}
    torch.save(marked, cached)
    assert torch.equal(cached_image_folder(folder, "CIFAR10", cache)[0], marked["images"])

    changed = torch.full((3, 32, 32), 200, dtype=torch.uint8)
    torchvision.io.write_jpeg(changed, str(folder / "b" / "0001.jpg"))
    again, _, _ = cached_image_folder(folder, "CIFAR10", cache)
    assert not torch.equal(again, marked["images"])  # decoded again, the new image in it
    assert (again[4].float() - 200).abs().max() < 8
    assert [p.name for p in cache.glob("*.pt")] != [cached.name]  # the stale file is gone
    assert len(list(cache.glob("*.pt"))) == 1

    (folder / "a" / "0000.jpg").unlink()  # a removed file changes the listing too
    assert len(cached_image_folder(folder, "CIFAR10", cache)[0]) == 5


def test_the_cache_is_never_written_inside_the_data_directory(tiny_data, tmp_path):
    with pytest.raises(OSRError, match="paths.cache_dir=.* lies inside the data directory"):
        CIFAR10DataModule(str(tiny_data), **CIFAR_STATS, cache_dir=str(tiny_data / "cache"))
    before = listing(tiny_data)
    dm = CIFAR10DataModule(str(tiny_data), **CIFAR_STATS, val_size=40, cache_dir=tmp_path / "c")
    dm.setup("fit")
    assert listing(tiny_data) == before
    assert len(list((tmp_path / "c").glob("CIFAR10-*.pt"))) == 2  # train and test


def natural_transform(**augment) -> BatchTransform:
    return BatchTransform(
        **CIFAR_STATS, blur_kernel_size=0, channels=3, natural=NaturalImageAugment(**augment)
    )


@pytest.mark.parametrize(
    "augment",
    [
        {"crop_padding": 4},
        {"flip": True},
        {"cutout": 8},
        {"randaugment_ops": 2, "randaugment_magnitude": 9},
        {"crop_padding": 4, "flip": True, "cutout": 8, "randaugment_ops": 1},
    ],
    ids=["crop", "flip", "cutout", "randaugment", "all"],
)
def test_augmentation_is_drawn_per_image_and_repeats_under_a_seed(augment):
    g = torch.Generator().manual_seed(0)
    one = torch.randint(0, 256, (1, 3, 32, 32), dtype=torch.uint8, generator=g)
    batch = one.expand(64, -1, -1, -1)  # 64 copies of one image
    transform = natural_transform(**augment)
    plain = transform(batch)
    torch.manual_seed(1)
    out = transform(batch, augment=True)
    torch.manual_seed(1)
    assert torch.equal(transform(batch, augment=True), out)  # same seed, same draws
    changed = (out != plain).flatten(1).any(1)
    distinct = {out[i].numpy().tobytes() for i in range(64)}
    assert changed.float().mean() > 0.2 and len(distinct) > 1  # per image, not per batch
    if augment == {"flip": True}:
        mirrored = (out == plain.flip(-1)).flatten(1).all(1)
        assert torch.equal(mirrored, changed) and 16 < int(mirrored.sum()) < 48


def test_randaugment_draws_its_operations_per_image():
    policy = natural_transform(randaugment_ops=1, randaugment_magnitude=15).natural.randaugment
    names = list(policy.ops)
    torch.manual_seed(0)
    picked = policy.choose(300, torch.device("cpu"))
    assert picked.sum(1).tolist() == [1] * 300  # one operation per image
    assert picked.any(0).all()  # every operation drawn by some images of the batch
    x = torch.rand(300, 3, 32, 32)
    out = policy(x, picked)
    identity, rotate = picked[:, names.index("identity")], picked[:, names.index("rotate")]
    assert torch.equal(out[identity], x[identity])  # each image got its own operation
    assert (out[rotate] != x[rotate]).flatten(1).any(1).all()
    two = natural_transform(randaugment_ops=2).natural.randaugment.choose(50, torch.device("cpu"))
    assert two.sum(1).tolist() == [2] * 50 and len({tuple(r.tolist()) for r in two}) > 10


def test_flips_never_reach_digits(train_cfg, tiny_data):
    with pytest.raises(OSRError, match="data.flip=true for mnist"):
        MNISTDataModule(str(tiny_data), 0.13, 0.31, flip=True)
    cfg = train_cfg()
    assert cfg.data.flip is False and instantiate(cfg.data).transform.natural.flip is False
    with pytest.raises(OSRError, match="model.test_flip=true for mnist"):
        train(train_cfg("model.test_flip=true"))
    assert train_cfg("data=cifar10", ood_sets=GRAY_SETS).data.flip is True


@pytest.mark.slow
@pytest.mark.parametrize(
    ("model", "expected"), [("baseline", 16), ("mlae", 18)], ids=["baseline", "mlae"]
)
def test_cifar10_model_runs_every_detector_at_3x32x32(
    train_cfg, tiny_data, tmp_path, model, expected
):
    cfg = train_cfg(
        "experiment=cifar10",
        f"model={model}",
        "model/net=fastnet",
        "model.net.widths=[8,16,16]",
        "detectors=all",
        "detectors.vim.detector.d=8",
        "data.val_size=40",
        "data.batch_size=32",
        "model.test_flip=true",
        *TINY_TRAINING,
        ood_sets=GRAY_SETS,
    )
    _, objects = train(cfg)
    module = objects["model"]
    assert tuple(module.hparams.input_shape) == (3, 32, 32)
    assert module.classifier_net.stem[0].in_channels == 3
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    for name in GRAY_SETS:
        scores = {k.split(".")[3] for k in metrics if k.startswith(f"ood.{name}.scores.")}
        assert len(scores) == expected
        assert all(0 <= metrics[f"ood.{name}.scores.{s}.oscr"] <= 1 for s in scores)
    if model == "mlae":
        x = torch.randn(2, 3, 32, 32)
        assert module.reconstruct(x).shape == x.shape
    assert os.environ["OSR_CACHE_DIR"] in str(cfg.data.cache_dir)

    # osr.predict reads image files at the checkpoint's shape and decides as the module does
    folder = tiny_data / "CIFAR10" / "test" / "cat"
    best = tmp_path / "run" / "checkpoints" / "best.ckpt"
    out = tmp_path / "predicted"
    done = run_module(
        "osr.predict", f"ckpt_path={best}", f"inputs={folder}", f"hydra.run.dir={out}", "device=cpu"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = list(csv.DictReader((out / "predictions.csv").open()))
    files = sorted(folder.glob("*.jpg"))
    assert [Path(r["path"]).name for r in rows] == [f.name for f in files]
    images = torch.stack([torchvision.io.decode_image(str(f)) for f in files])
    transform = objects["datamodule"].transform
    with torch.no_grad():
        expected = module.eval().predict_open(transform(images))
    assert [int(r["label"]) for r in rows] == expected.tolist()


def test_test_time_flips_and_shifts_average_the_features_of_the_views():
    """The features detectors read: the mean over the image, its copies moved two pixels
    down-right and up-left (borders reflected, numpy's pad), and the mirror images of the
    three; the logits follow them."""
    torch.manual_seed(0)
    make = lambda **views: Classifier(  # noqa: E731
        {"_target_": "osr.models.FastNet", "widths": [8, 16, 16]},
        {"_target_": "torch.optim.SGD", "_partial_": True, "lr": 0.1},
        ["a", "b", "c"],
        input_shape=(3, 32, 32),
        **views,
    ).eval()
    plain, viewing = make(), make(test_flip=True, test_shift=2)
    viewing.load_state_dict(plain.state_dict())
    x = torch.rand(4, 3, 32, 32)
    padded = np.pad(x.numpy(), ((0, 0), (0, 0), (2, 2), (2, 2)), mode="reflect")
    moved = [x, torch.from_numpy(padded[..., :32, :32]), torch.from_numpy(padded[..., 4:, 4:])]
    net = plain.classifier_net
    with torch.no_grad():
        views = [net.features(v) for v in moved] + [net.features(v.flip(-1)) for v in moved]
        expected = torch.stack(views).mean(dim=0)
        outputs = viewing.model_outputs(x)
        assert torch.allclose(outputs.features, expected, atol=1e-5)
        assert torch.allclose(outputs.logits, net.head(expected), atol=1e-5)
        assert not torch.allclose(views[1], views[0], rtol=0.05, atol=0)  # the views differ
        assert torch.equal(plain.model_outputs(x).features, views[0])  # off by default
    assert torch.equal(moved[1][..., 2:, 2:], x[..., :30, :30])  # down-right by two pixels
