import numpy as np
import pytest
import torch
from skimage.filters import threshold_otsu

from osr.data import MNISTDataModule
from osr.models import Autoencoder
from osr.scores import (
    binary_diff,
    energy,
    max_logit,
    msp,
    otsu_binarize,
    otsu_threshold,
    recon_l2,
)
from tests.conftest import MIRROR, needs_mirror


def check_against_skimage(images: torch.Tensor) -> None:
    """Threshold within one bin width of skimage's; binarizations agree on >= 99.9% of pixels."""
    ours = otsu_threshold(images).double().numpy()
    arrays = images.double().numpy().reshape(len(images), -1)
    ref = np.array([threshold_otsu(a.reshape(28, 28)) for a in arrays])
    width = (arrays.max(1) - arrays.min(1)) / 256
    assert np.all(np.abs(ours - ref) <= width + 1e-9)
    agree = otsu_binarize(images).numpy().reshape(len(images), -1) == (arrays > ref[:, None])
    assert agree.mean() >= 0.999


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


def test_otsu_matches_skimage_on_noise():
    torch.manual_seed(0)
    check_against_skimage(torch.rand(300, 1, 28, 28))
    check_against_skimage(torch.randn(300, 1, 28, 28) * 5 - 2)


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
    assert torch.allclose(energy(logits), -torch.logsumexp(logits, 1))
    # the confident image is the least unknown by every score
    for score in (msp, max_logit, energy):
        assert score(logits).argmin() == 0
