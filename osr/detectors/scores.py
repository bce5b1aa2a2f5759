"""Per-sample unknown-ness scores: plain functions of a batch, higher = more unknown.

Every function is batched torch on the input's device; fitting thresholds is elsewhere
(``osr.scoring.thresholds``).
"""

from collections.abc import Callable

import torch
from torch import Tensor

OTSU_BINS = 256
# Images per histogram pass: keeps the per-pixel temporaries in cache (3x faster on CPU).
OTSU_CHUNK = 1024


def otsu_threshold(images: Tensor, nbins: int = OTSU_BINS) -> Tensor:
    """Otsu's threshold of each image, as ``skimage.filters.threshold_otsu`` computes it.

    images: (B, ...) float32, float64 or integer; returns (B,) of the same dtype. The threshold
    is the histogram bin centre that maximises the between-class variance. Float images get
    ``nbins`` bins over their own [min, max] range, integer images one bin per value, as in
    skimage. A constant image's threshold is its value, so it binarizes to all False.
    """
    if len(images) > OTSU_CHUNK:
        return torch.cat([otsu_threshold(chunk, nbins) for chunk in images.split(OTSU_CHUNK)])
    flat = images.flatten(1)
    if flat.is_floating_point():
        flat = flat.to(torch.promote_types(flat.dtype, torch.float32))
        lo, hi = flat.aminmax(dim=1)
        hist, centers = _float_histogram(flat, lo, hi, nbins)
    else:
        flat = flat.long()
        lo, hi = flat.aminmax(dim=1)
        hist, centers = _integer_histogram(flat, lo, hi)
    hist, centers = hist.double(), centers.double()
    weight1 = hist.cumsum(1)
    weight2 = hist.flip(1).cumsum(1).flip(1)
    mean1 = (hist * centers).cumsum(1) / weight1.clamp_min(1)
    mean2 = (hist * centers).flip(1).cumsum(1).flip(1) / weight2.clamp_min(1)
    between = weight1[:, :-1] * weight2[:, 1:] * (mean1[:, :-1] - mean2[:, 1:]) ** 2
    threshold = centers.gather(1, between.argmax(1, keepdim=True)).squeeze(1)
    return torch.where(hi == lo, lo, threshold.to(lo.dtype)).to(images.dtype)


def _float_histogram(flat: Tensor, lo: Tensor, hi: Tensor, nbins: int) -> tuple[Tensor, Tensor]:
    """Counts and centres of ``nbins`` equal bins over each row's [lo, hi], as numpy makes them.

    The edges are computed as ``numpy.linspace`` does, in the rows' dtype; a value on an edge
    goes to the bin above it and the last bin is closed, as in ``numpy.histogram``. Images
    quantized from uint8 put many pixels exactly on edges.
    """
    steps = torch.arange(nbins + 1, dtype=flat.dtype, device=flat.device)
    edges = steps * ((hi - lo) / nbins)[:, None] + lo[:, None]
    edges[:, -1] = hi
    # floor((x - lo) * scale) is the bin up to rounding: at most one off, which the edges fix
    scale = torch.where(hi > lo, nbins / (hi - lo), 0.0)
    guess = torch.addcmul((-lo * scale)[:, None], flat, scale[:, None]).to(torch.int32)
    guess = guess.clamp_(0, nbins - 1).long()
    below = (flat < edges.gather(1, guess)).long()
    above = (flat >= edges.gather(1, guess + 1)).long()
    bins = guess.sub_(below).add_(above).clamp_(max=nbins - 1)
    hist = torch.zeros(flat.shape[0], nbins, device=flat.device)
    hist.scatter_add_(1, bins, torch.ones(1, device=flat.device).expand_as(flat))
    return hist, (edges[:, :-1] + edges[:, 1:]) / 2


def _integer_histogram(flat: Tensor, lo: Tensor, hi: Tensor) -> tuple[Tensor, Tensor]:
    """Counts and centres of one bin per integer, from each row's minimum."""
    nbins = int((hi - lo).max()) + 1
    hist = torch.zeros(flat.shape[0], nbins, device=flat.device)
    hist.scatter_add_(1, flat - lo[:, None], torch.ones(1, device=flat.device).expand_as(flat))
    return hist, lo[:, None] + torch.arange(nbins, device=flat.device)


def otsu_binarize(images: Tensor) -> Tensor:
    """Pixels above their own image's Otsu threshold (bool, same shape)."""
    threshold = otsu_threshold(images).view(-1, *([1] * (images.ndim - 1)))
    return images > threshold


def recon_l2(images: Tensor, recon: Tensor) -> Tensor:
    """L2 norm of the reconstruction error of each image."""
    return (images - recon).flatten(1).norm(dim=1)


def binary_diff(images: Tensor, recon: Tensor) -> Tensor:
    """Number of pixels whose Otsu binarization differs between an image and its reconstruction,
    each binarized with its own per-image threshold."""
    return (otsu_binarize(images) != otsu_binarize(recon)).flatten(1).sum(1).to(images.dtype)


def msp(logits: Tensor) -> Tensor:
    """1 - maximum softmax probability."""
    return 1.0 - logits.softmax(dim=1).amax(dim=1)


def max_logit(logits: Tensor) -> Tensor:
    """Negative maximum logit."""
    return -logits.amax(dim=1)


def energy(logits: Tensor) -> Tensor:
    """Free energy at temperature 1, -logsumexp of the logits (Liu et al., 2020): it falls as
    the classifier's logits grow, so it is already higher for more unknown inputs."""
    return -logits.logsumexp(dim=1)


RECONSTRUCTION_SCORES: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
    "recon_l2": recon_l2,
    "binary_diff": binary_diff,
}
CLASSIFIER_SCORES: dict[str, Callable[[Tensor], Tensor]] = {
    "msp": msp,
    "max_logit": max_logit,
    "energy": energy,
}
