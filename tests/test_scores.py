import numpy as np
import pytest
import skimage.data
import skimage.exposure
import skimage.util
import torch
from skimage.filters import threshold_otsu

from osr.data import MNISTDataModule
from osr.detectors.scores import (
    OTSU_BINS,
    _float_histogram,
    binary_diff,
    energy,
    max_logit,
    msp,
    otsu_binarize,
    otsu_threshold,
    recon_l2,
)
from osr.models import Autoencoder
from tests.conftest import MIRROR, needs_mirror


def check_against_skimage(images: torch.Tensor) -> None:
    """skimage's threshold, image by image, to the bin (within a millionth of the image's range:
    a bin is 1/256 of it), and the same pixels above it."""
    arrays = images.numpy()
    ours = otsu_threshold(images).numpy()
    assert ours.dtype == arrays.dtype
    ref = np.array([threshold_otsu(a) for a in arrays], dtype=arrays.dtype)
    flat = arrays.reshape(len(arrays), -1).astype(np.float64)
    span = flat.max(1) - flat.min(1)
    assert np.all(np.abs(ours.astype(np.float64) - ref.astype(np.float64)) <= 1e-6 * span)
    above = ref.reshape(-1, *[1] * (arrays.ndim - 1))
    assert np.array_equal(otsu_binarize(images).numpy(), arrays > above)


def mnist_images(root, n=500) -> torch.Tensor:
    dm = MNISTDataModule(str(root), 0.13, 0.31, val_size=100, download=False)
    dm.setup()
    return dm.transform(dm.test_set.tensors[0][:n])


def test_otsu_matches_skimage_on_digit_images(tiny_data):
    check_against_skimage(mnist_images(tiny_data))


@needs_mirror
def test_otsu_matches_skimage_on_real_mnist():
    check_against_skimage(mnist_images(MIRROR, n=2000))


def test_otsu_matches_skimage_on_reconstructions(tiny_data):
    torch.manual_seed(0)
    with torch.no_grad():
        recon = Autoencoder()(mnist_images(tiny_data, n=200))
    check_against_skimage(recon)


SKIMAGE_IMAGES = ("camera", "coins", "moon", "page", "text", "clock", "brick", "grass", "cell")


def skimage_images() -> list[np.ndarray]:
    """skimage's own grey test images that ship with it (no download)."""
    return [getattr(skimage.data, name)() for name in SKIMAGE_IMAGES]


@pytest.mark.parametrize(
    "convert",
    [
        lambda a: a,  # uint8: skimage gives every integer value its own bin
        skimage.util.img_as_float,  # float64 in [0, 1]
        lambda a: ((a / 255 - 0.13) / 0.31).astype(np.float32),  # as the models see images
    ],
    ids=["uint8", "float64", "normalized-float32"],
)
def test_otsu_matches_skimage_on_its_own_test_images(convert):
    images = [convert(a) for a in skimage_images()]
    for image in images:
        check_against_skimage(torch.from_numpy(image)[None])
    crops = np.stack([a[:100, :100] for a in images])  # one batch of different images
    check_against_skimage(torch.from_numpy(crops))


def random_images(kind: str, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    n = int(np.prod(shape))
    if kind == "uniform":
        return rng.uniform(rng.uniform(-5, 0), rng.uniform(0.1, 5), n).reshape(shape)
    if kind == "gaussian":
        return (rng.normal(size=n) * rng.uniform(0.01, 100) + rng.uniform(-50, 50)).reshape(shape)
    if kind == "bimodal":
        modes = rng.integers(0, 2, n) * rng.uniform(1, 8)
        return (modes + rng.normal(size=n)).reshape(shape)
    return rng.exponential(size=n).reshape(shape)  # skewed


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8, np.int16, np.int32])
@pytest.mark.parametrize("kind", ["uniform", "gaussian", "bimodal", "skewed"])
def test_otsu_matches_skimage_on_random_images(kind, dtype):
    rng = np.random.default_rng(list(f"{kind}/{np.dtype(dtype).name}".encode()))
    for shape in [(64, 1, 28, 28), (20, 2, 2), (16, 3, 5), (8, 1, 64, 48)]:
        images = random_images(kind, shape, rng)
        if np.issubdtype(dtype, np.integer):
            info = np.iinfo(dtype)
            low, high = max(info.min, -3000), min(info.max, 3000)
            span = images.max() - images.min()
            images = (images - images.min()) / span * rng.uniform(1, high - low) + low
        check_against_skimage(torch.from_numpy(images.astype(dtype)))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_histogram_bins_values_on_and_beside_the_edges_as_numpy_does(dtype):
    """The floor((x - lo) * scale) guess is one bin off either way near edges; the fix-up
    must land every pixel where numpy.histogram (skimage's histogram) puts it."""
    rng = np.random.default_rng(0)
    lo = rng.normal(0, 10, size=(32, 1)).astype(dtype)
    hi = (lo + rng.uniform(1e-3, 100, size=(32, 1))).astype(dtype)
    edges = np.stack(
        [
            np.linspace(a, b, OTSU_BINS + 1, dtype=dtype)
            for a, b in zip(lo[:, 0], hi[:, 0], strict=True)
        ]
    )
    beside = [np.nextafter(edges, -np.inf), np.nextafter(edges, np.inf)]
    rows = np.clip(np.concatenate([edges, *beside], axis=1), lo, hi)
    hist, centers = _float_histogram(
        torch.from_numpy(rows), torch.from_numpy(lo[:, 0]), torch.from_numpy(hi[:, 0]), OTSU_BINS
    )
    for row, counts, middles in zip(rows, hist.numpy(), centers.numpy(), strict=True):
        expected, expected_centers = skimage.exposure.histogram(
            row, OTSU_BINS, source_range="image"
        )
        assert np.array_equal(counts, expected)
        assert np.array_equal(middles, expected_centers)


def test_constant_image_threshold_is_its_value_and_binarizes_to_zero():
    images = torch.stack([torch.full((1, 28, 28), v) for v in (-0.4, 0.0, 2.5)])
    assert torch.equal(otsu_threshold(images), torch.tensor([-0.4, 0.0, 2.5]))
    assert not otsu_binarize(images).any()
    for image in images:
        assert threshold_otsu(image.numpy()) == pytest.approx(image[0, 0, 0].item())


def test_otsu_is_per_image_in_a_batch():
    torch.manual_seed(0)
    a, b = torch.rand(1, 1, 28, 28), torch.rand(1, 1, 28, 28) * 10
    batch = otsu_threshold(torch.cat([a, b]))
    assert torch.equal(batch, torch.cat([otsu_threshold(a), otsu_threshold(b)]))


def test_reconstruction_scores():
    torch.manual_seed(0)
    x, recon = torch.randn(6, 1, 28, 28), torch.randn(6, 1, 28, 28)
    expected = np.linalg.norm((x - recon).numpy().reshape(6, -1), axis=1)
    assert np.allclose(recon_l2(x, recon).numpy(), expected, rtol=1e-5)
    assert torch.equal(recon_l2(x, x), torch.zeros(6))
    diff = binary_diff(x, recon).numpy()
    for i in range(6):
        bx = x[i, 0].numpy() > threshold_otsu(x[i, 0].numpy())
        br = recon[i, 0].numpy() > threshold_otsu(recon[i, 0].numpy())
        assert diff[i] == 784 - np.sum(bx == br)  # the notebook's formula
    assert torch.equal(binary_diff(x, x), torch.zeros(6))


def test_classifier_scores_rank_confidence():
    logits = torch.tensor([[10.0, 0.0, 0.0], [1.0, 0.9, 0.8], [-1.0, -1.0, -1.0]])
    probs = torch.softmax(logits, 1)
    assert torch.allclose(msp(logits), 1 - probs.max(1).values)
    assert torch.equal(max_logit(logits), torch.tensor([-10.0, -1.0, 1.0]))
    free_energy = -np.log(np.exp(logits.double().numpy()).sum(1))  # E(x) = -log sum_k e^f_k
    assert np.allclose(energy(logits).numpy(), free_energy, rtol=1e-6)
    # the confident image is the least unknown by every score
    for score in (msp, max_logit, energy):
        assert score(logits).argmin() == 0
