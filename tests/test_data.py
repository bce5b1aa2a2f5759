import time
from pathlib import Path

import pytest
import torch
import torchvision.transforms.functional as TVF
from hydra import compose, initialize_config_dir
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from omegaconf import DictConfig
from torch.utils.data import DataLoader, TensorDataset

from osr.data import CIFAR10DataModule, FashionMNISTDataModule, MNISTDataModule
from osr.data.sampling import ShardedBatchSampler, TensorBatchLoader
from osr.data.transforms import BatchTransform, gaussian_blur
from osr.scoring.test_sets import ood_datamodules
from osr.utils.config import CONFIG_DIR
from osr.utils.errors import DatasetNotFoundError, OSRError
from tests.conftest import MIRROR, TINY_TEST, TINY_TRAIN, needs_mirror

MNIST_STATS = {"mean": 0.13, "std": 0.31}
CIFAR_STATS = {
    "mean": [0.49139968, 0.48215841, 0.44653091],
    "std": [0.24703223, 0.24348513, 0.26158784],
}


def mnist(root: Path, **kw) -> MNISTDataModule:
    kw = {"val_size": 100, "download": False, **MNIST_STATS, **kw}
    dm = MNISTDataModule(str(root), **kw)
    dm.prepare_data()
    dm.setup("fit")
    return dm


def first_batch(dm, loader):
    batch = next(iter(loader))
    return dm.on_after_batch_transfer(batch, 0)


def test_split_sizes_labels_and_tensors(tiny_data):
    dm = mnist(tiny_data)
    assert len(dm.train_set) == TINY_TRAIN - 100
    assert len(dm.val_set) == 50 and len(dm.calibration_set) == 50  # half calibrates
    assert len(dm.test_set) == TINY_TEST
    x, y = dm.train_set.tensors
    assert x.dtype == torch.uint8 and x.shape[1:] == (1, 28, 28)
    assert y.min() >= 0 and y.max() <= 9
    xb, yb = first_batch(dm, dm.test_dataloader())
    assert xb.dtype == torch.float32 and xb.shape[1:] == (1, 28, 28)
    assert dm.num_classes == 10 and dm.unknown_sets == {}


def test_train_val_split_is_disjoint_and_seeded(tiny_data):
    def val_images(seed):
        return mnist(tiny_data, seed=seed).val_set.tensors[0]

    a, b, c = val_images(1), val_images(1), val_images(2)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    dm = mnist(tiny_data, seed=1)
    train_rows = {bytes(r) for r in dm.train_set.tensors[0].flatten(1).numpy()}
    val_rows = {bytes(r) for r in dm.val_set.tensors[0].flatten(1).numpy()}
    calibration_rows = {bytes(r) for r in dm.calibration_set.tensors[0].flatten(1).numpy()}
    assert len(train_rows) + len(val_rows) + len(calibration_rows) == TINY_TRAIN  # all distinct
    assert not train_rows & val_rows


SEEN_BATCHES: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}


class RecordingMNIST(MNISTDataModule):
    """Records the first raw and transformed batch of each stage."""

    def on_after_batch_transfer(self, batch, dataloader_idx):
        out = super().on_after_batch_transfer(batch, dataloader_idx)
        stage = "train" if self.trainer.training else self.trainer.state.stage.value
        SEEN_BATCHES.setdefault(stage, (batch[0].clone(), out[0].clone()))
        return out


@pytest.mark.slow
def test_val_and_test_batches_are_never_blurred(train_cfg):
    """Through the real Trainer: validation and test batches equal plain normalization."""
    from osr.train import train

    SEEN_BATCHES.clear()
    cfg = train_cfg(
        "model=baseline",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        f"data._target_={__name__}.RecordingMNIST",
    )
    train(cfg)
    plain = BatchTransform(**MNIST_STATS)
    for stage in ("validate", "test"):
        raw, out = SEEN_BATCHES[stage]
        assert torch.allclose(out, plain(raw)), stage
    raw, out = SEEN_BATCHES["train"]
    assert not torch.allclose(out, plain(raw))


def test_blur_matches_torchvision_per_image():
    x = torch.rand(5, 1, 28, 28)
    sigma = torch.tensor([0.1, 0.3, 0.5, 0.8, 1.0])
    ours = gaussian_blur(x, 3, sigma)
    for i in range(5):
        ref = TVF.gaussian_blur(x[i], [3, 3], [sigma[i].item()] * 2)
        assert torch.allclose(ours[i], ref, atol=1e-6)


def test_augmentation_draws_a_sigma_per_image():
    t = BatchTransform(0.0, 1.0)
    x = torch.randint(0, 256, (64, 1, 28, 28), dtype=torch.uint8)
    x[:] = x[0]  # the same image 64 times
    out = t(x, augment=True)
    assert len({round(v, 5) for v in out[:, 0, 14, 14].tolist()}) > 10


def test_known_classes_relabels_and_exposes_held_out_digits(tiny_data):
    known = [3, 7, 1]
    full = mnist(tiny_data)
    dm = mnist(tiny_data, known_classes=known)
    assert dm.num_classes == 3 and dm.class_names == [full.class_names[c] for c in known]
    _, y = dm.train_set.tensors
    assert set(y.tolist()) == {0, 1, 2}
    # label i of the relabelled test set is digit known[i]
    full_x, full_y = full.test_set.tensors
    x, y = dm.test_set.tensors
    assert len(y) == sum((full_y == k).sum().item() for k in known)
    for i, k in enumerate(known):
        assert torch.equal(x[y == i], full_x[full_y == k])
    ((name, unknown),) = dm.unknown_sets.items()
    assert name == "mnist_unknown"
    assert set(unknown.tensors[1].tolist()) == {3}
    assert len(unknown) + len(y) == TINY_TEST


def test_ood_role_relabels_everything_unknown(tiny_data):
    dm = FashionMNISTDataModule(
        str(tiny_data), mean=0.286, std=0.353, unknown_label=10, download=False
    )
    dm.setup("test")
    assert dm.train_set is None and dm.val_set is None
    assert set(dm.test_set.tensors[1].tolist()) == {10}
    with pytest.raises(RuntimeError, match="no train split in its OOD role"):
        dm.train_dataloader()


def test_cifar_image_folder_becomes_grayscale_28x28(tiny_data):
    """For a digits model (1x28x28, what ``ood_datamodules`` passes)."""
    own = CIFAR10DataModule(
        str(tiny_data), **CIFAR_STATS, unknown_label=10, download=False, channels=1, image_size=28
    )
    own.setup("test")
    images = own.test_set.tensors[0]
    assert images.shape == (60, 3, 28, 28) and images.dtype == torch.uint8
    x, y = first_batch(own, own.test_dataloader())
    assert x.shape == (60, 1, 28, 28) and set(y.tolist()) == {10}
    # the notebook's order: per-channel normalization, then grayscale
    ref = TVF.rgb_to_grayscale(TVF.normalize(images.float() / 255, **CIFAR_STATS))
    assert torch.allclose(x, ref, atol=1e-5)
    in_dist = BatchTransform(**MNIST_STATS)(images)
    expected = (TVF.rgb_to_grayscale(images.float() / 255) - 0.13) / 0.31
    assert torch.allclose(in_dist, expected, atol=1e-5)


def test_ood_limit_takes_a_subset_drawn_with_the_runs_seed(train_cfg):
    def subset(seed: int, evaluate_seed: int | None = None) -> torch.Tensor:
        known = instantiate(train_cfg(f"seed={seed}").data)
        # osr.evaluate composes the OOD sets under its own seed: the run's seed must win
        cfg = train_cfg("ood.limit=50", f"seed={evaluate_seed or seed}")
        oods = ood_datamodules(cfg.ood, known)
        oods["fashion_mnist"].setup("test")
        return oods["fashion_mnist"].test_set.tensors[0]

    first, again, other = subset(1), subset(1), subset(2)
    assert len(first) == 50 and torch.equal(first, again)
    assert not torch.equal(first, other)
    assert torch.equal(subset(1, evaluate_seed=12345), first)
    whole = FashionMNISTDataModule(train_cfg().data.data_dir, 0.286, 0.353, unknown_label=10)
    whole.setup("test")
    rows = {bytes(r) for r in whole.test_set.tensors[0].flatten(1).numpy()}
    assert all(bytes(r) in rows for r in other.flatten(1).numpy())


@pytest.mark.parametrize(
    ("module", "stats", "folder"),
    [
        (MNISTDataModule, MNIST_STATS, "MNIST"),
        (FashionMNISTDataModule, {"mean": 0.286, "std": 0.353}, "FashionMNIST"),
        (CIFAR10DataModule, CIFAR_STATS, "CIFAR10"),
    ],
)
def test_missing_dataset_names_dataset_directory_and_fix(tmp_path, module, stats, folder):
    dm = module(str(tmp_path), **stats, download=False)
    with pytest.raises(DatasetNotFoundError) as info:
        dm.prepare_data()
        dm.setup("fit")
    message = str(info.value)
    assert f"{folder} not found in {tmp_path}" in message
    assert "data.data_dir=" in message  # before issue 32, only paths.data_dir
    assert "paths.data_dir=" in message and "OSR_DATA_DIR" in message
    assert "download" not in message  # download=False: it offered a download it would not do
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_failed_download_leaves_nothing_behind(tmp_path, monkeypatch):
    """With no network (or an unreachable mirror) the download fails with the clear error."""
    import torchvision

    monkeypatch.setattr(torchvision.datasets.MNIST, "mirrors", ["http://127.0.0.1:9/"])
    dm = MNISTDataModule(str(tmp_path), **MNIST_STATS, download=True)
    with pytest.raises(DatasetNotFoundError, match="download failed") as info:
        dm.prepare_data()
    assert "data.data_dir=" in str(info.value) and "run once with internet" in str(info.value)
    assert not (tmp_path / "MNIST").exists()


def test_sharded_batches_cover_the_data_once():
    n, bs = 103, 10
    single = torch.cat(list(ShardedBatchSampler(n, bs, shuffle=True, seed=3)))
    assert sorted(single.tolist()) == list(range(n))
    shards = [
        list(ShardedBatchSampler(n, bs, shuffle=False, num_replicas=2, rank=r)) for r in (0, 1)
    ]
    merged = torch.cat([torch.cat(s) for s in shards])
    assert sorted(merged.tolist()) == list(range(n))
    padded = [
        ShardedBatchSampler(n, bs, shuffle=True, num_replicas=2, rank=r, pad=True) for r in (0, 1)
    ]
    assert len(padded[0]) == len(padded[1]) == len(list(padded[0]))
    sampler = ShardedBatchSampler(n, bs, shuffle=True, seed=3)
    first = torch.cat(list(sampler))
    sampler.set_epoch(1)
    assert not torch.equal(first, torch.cat(list(sampler)))


def test_tensor_batch_loader_gives_the_dataloaders_own_batches():
    g = torch.Generator().manual_seed(0)
    dataset = TensorDataset(torch.randint(0, 256, (53, 1, 4, 4), generator=g), torch.arange(53))
    sampler = ShardedBatchSampler(53, 8, shuffle=True, seed=5)
    own = list(DataLoader(dataset, sampler=sampler, batch_size=None))
    fast = list(TensorBatchLoader(dataset, sampler=sampler, batch_size=None))
    assert len(fast) == len(own) == 7
    for batch, fast_batch in zip(own, fast, strict=True):
        assert type(fast_batch) is type(batch)  # a list, as the DataLoader's collation makes
        assert all(torch.equal(a, b) for a, b in zip(batch, fast_batch, strict=True))
    with_workers = TensorBatchLoader(dataset, sampler=sampler, batch_size=None, num_workers=1)
    assert [torch.equal(a[0], b[0]) for a, b in zip(own, with_workers, strict=True)] == [True] * 7


# the groups a user adds options to; an option of data/ needs its ood/for/<name>.yaml
GROUPS = ("data", "model", "model/net", "model/optimizer", "model/scheduler", "objective")
GROUPS += ("detectors", "calibration", "trainer", "logger", "debug")


def options(group: str) -> list[str]:
    folder = Path(CONFIG_DIR) / group
    return sorted(p.stem for p in folder.glob("*.yaml") if (group, p.stem) != ("data", "base"))


def test_every_config_option_composes(tiny_data):
    """Every option of every group, a user's additions included (this test named the shipped
    ones): composed, its known dataset and OOD sets instantiated."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for group in GROUPS:
            assert options(group), group
            for option in options(group):
                cfg = compose("train", [f"paths.data_dir={tiny_data}", f"{group}={option}"])
                assert cfg.trainer._target_ == "pytorch_lightning.Trainer"
                for node in (cfg.data, *(cfg.ood.get("sets") or {}).values()):
                    built_or_absent(node, tiny_data)


def built_or_absent(node: DictConfig, data_dir: Path) -> None:
    """Instantiate a dataset config. A dataset of the user's own that reads a folder other
    than the data directory (``conf/data/mnist_rot90.yaml`` of the README) may be absent from
    this machine: then it is refused with the message naming that folder and the setting."""
    try:
        instantiate(node)
    except InstantiationException as e:
        missing = e.__cause__
        elsewhere = str(node.get("data_dir")) != str(data_dir)
        if not (isinstance(missing, DatasetNotFoundError) and elsewhere):
            raise
        assert str(node.data_dir) in str(missing) and "data.data_dir=" in str(missing)


def test_debug_fast_shortens_calibration_and_evaluation(tiny_data):
    """debug=fast calibrates and evaluates on at most 1,000 images a split: before issue 32,
    on the whole validation split (10,000), known test split and OOD sets (none limited)."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        for known in ("mnist", "cifar10"):
            cfg = compose("train", [f"data={known}", "debug=fast"])
            assert cfg.data.val_size == cfg.data.test_limit == cfg.ood.limit == 1000
            assert cfg.data.fit_limit == 5000
            assert cfg.trainer.max_epochs == 1 and cfg.trainer.limit_train_batches == 20


def test_detectors_are_fitted_on_fit_limit_training_images(tiny_data):
    """data.fit_limit: the first images of the training split (before: always all of it)."""
    whole, dm = mnist(tiny_data), mnist(tiny_data, fit_limit=50)
    assert torch.equal(dm.train_set.tensors[0], whole.train_set.tensors[0])  # training as before
    fitted = torch.cat([x for x, _ in dm.train_eval_dataloader()])
    assert torch.equal(fitted, whole.train_set.tensors[0][:50])
    assert len(torch.cat([x for x, _ in whole.train_eval_dataloader()])) == len(whole.train_set)
    with pytest.raises(OSRError, match=r"data.fit_limit=3: .* no image of class"):
        mnist(tiny_data, fit_limit=3)  # pytorch-ood's Mahalanobis failed on an assert


@needs_mirror
def test_mirror_split_sizes():
    start = time.perf_counter()
    dm = mnist(MIRROR, val_size=10_000, download=False)
    ood = [
        FashionMNISTDataModule(str(MIRROR), 0.286, 0.353, unknown_label=10, download=False),
        CIFAR10DataModule(str(MIRROR), **CIFAR_STATS, unknown_label=10, download=False),
    ]
    for d in ood:
        d.setup("test")
    elapsed = time.perf_counter() - start
    sizes = (len(dm.train_set), len(dm.val_set), len(dm.calibration_set), len(dm.test_set))
    assert sizes == (50_000, 5_000, 5_000, 10_000)
    assert [len(d.test_set) for d in ood] == [10_000, 10_000]
    assert all(set(d.test_set.tensors[1].unique().tolist()) == {10} for d in ood)
    assert dm.test_set.tensors[1].bincount().tolist()[:2] == [980, 1135]  # official test split
    print(f"setup of the three mirror datasets: {elapsed:.2f}s")
