"""python -m osr.predict ckpt_path=... inputs=...: a label or UNKNOWN for each image file."""

import csv
import glob
import io
import logging
import re
from dataclasses import dataclass
from pathlib import Path

import hydra
import torch
import torchvision
from omegaconf import DictConfig
from rich.progress import track
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

from osr.data.labels import UNKNOWN_NAME
from osr.data.transforms import BatchTransform
from osr.evaluate import resolve_device
from osr.modules.open_set import OpenSetModule
from osr.scoring.p_values import benjamini_hochberg, check_fdr, p_values
from osr.utils.checkpoints import module_from_checkpoint, read_checkpoint
from osr.utils.config import check_config, exits_on_user_error
from osr.utils.errors import NotCalibratedError, OSRError
from osr.utils.io import write_text

log = logging.getLogger("osr.predict")
# what a file starts with, not its name, says whether it is a PNG or a JPEG
IMAGE_SIGNATURES = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")


@dataclass
class Skipped:
    path: Path
    reason: str


def find_images(inputs: str) -> list[Path]:
    """An image file, every file below a folder, or the files a glob matches; which of them
    are PNG or JPEG images is for ``load_images`` to find out."""
    path = Path(inputs).expanduser()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*") if p.is_file())
    else:
        files = sorted(Path(p) for p in glob.glob(str(path), recursive=True) if Path(p).is_file())
    if not files:
        raise OSRError(
            f"inputs={inputs}: no PNG or JPEG images found there. Pass an image file, a "
            "folder of images, or a quoted glob such as inputs='photos/*.png'."
        )
    return files


class NotAnImage(ValueError):
    """The file is not a PNG or a JPEG (torchvision would also decode GIF and WebP)."""


def load_image(path: Path, shape: tuple[int, int, int]) -> Tensor:
    """One PNG or JPEG file as uint8 of the model's ``shape`` (C,H,W): decoded, converted to
    gray (or RGB), resized."""
    data = path.read_bytes()
    if not data.startswith(IMAGE_SIGNATURES):
        raise NotAnImage("not a PNG or JPEG file")
    mode = torchvision.io.ImageReadMode.GRAY if shape[0] == 1 else torchvision.io.ImageReadMode.RGB
    encoded = torch.frombuffer(bytearray(data), dtype=torch.uint8)
    image = torchvision.io.decode_image(encoded, mode=mode)
    if min(image.shape[-2:]) == 0:
        raise ValueError("the image is empty")
    return TF.resize(image, list(shape[1:]), antialias=True)


def load_images(
    paths: list[Path], shape: tuple[int, int, int]
) -> tuple[list[Path], Tensor, list[Skipped]]:
    """The PNG and JPEG images among ``paths``, and every other file with why it was skipped."""
    kept, images, skipped = [], [], []
    for path in paths:
        try:
            images.append(load_image(path, shape))
            kept.append(path)
        except NotAnImage as e:
            skipped.append(Skipped(path, str(e)))
        except (OSError, RuntimeError, ValueError) as e:
            # torchvision prefixes its C++ source location; keep the sentence
            reason = re.sub(r"^.*?\.cpp:\d+,\s*", "", " ".join(str(e).split())) or type(e).__name__
            skipped.append(Skipped(path, f"not a readable PNG/JPEG image ({reason})"))
    stacked = torch.stack(images) if images else torch.empty(0, *shape)
    return kept, stacked.to(torch.uint8), skipped


@torch.no_grad()  # not inference_mode: input-gradient detectors (ODIN) turn gradients on
def predict(cfg: DictConfig) -> Path:
    if cfg.fdr is not None:
        check_fdr(cfg.fdr)
    ckpt = read_checkpoint(cfg.ckpt_path)
    module = module_from_checkpoint(ckpt).eval().to(resolve_device(cfg.device))
    if not module.is_calibrated:
        raise NotCalibratedError(
            f"checkpoint {cfg.ckpt_path} has no thresholds, so it cannot say UNKNOWN: "
            f"calibrate it first with `python -m osr.calibrate ckpt_path={cfg.ckpt_path}`."
        )
    stats = ckpt["datamodule_hyper_parameters"]
    shape = tuple(module.hparams.input_shape)
    transform = BatchTransform(stats["mean"], stats["std"], channels=shape[0]).to(module.device)
    paths, images, skipped = load_images(find_images(cfg.inputs), shape)
    for s in skipped:
        log.warning("skipped %s: %s", s.path, s.reason)
    if not paths:
        raise OSRError(
            f"inputs={cfg.inputs}: none of its {len(skipped)} files is a readable PNG or JPEG "
            "image (each is named above). Pass PNG or JPEG images."
        )

    names = [*module.hparams.class_names, UNKNOWN_NAME]
    thresholds = module.threshold_dict()
    batches = range(0, len(paths), cfg.batch_size)
    labels, classes, scores = [], [], []
    for start in track(batches, description="predicting", disable=len(batches) < 2):
        x = transform(images[start : start + cfg.batch_size].to(module.device))
        batch_logits, batch_scores = module.logits_and_scores(x)
        labels.append(module.decide(batch_logits, batch_scores).cpu())
        classes.append(batch_logits.argmax(1).cpu())
        scores.append({k: v.cpu() for k, v in batch_scores.items()})
    label = torch.cat(labels)
    score = {s: torch.cat([b[s] for b in scores]) for s in module.score_names}
    columns = {"path": [str(p) for p in paths], "prediction": [names[i] for i in label.tolist()]}
    columns["label"] = label.tolist()
    for s in module.score_names:
        columns[s] = score[s].tolist()
        columns[f"{s}_threshold"] = [thresholds[s]] * len(paths)
    columns |= batch_decisions(cfg, module, torch.cat(classes), score, names)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(columns)
    writer.writerows(zip(*columns.values(), strict=True))
    output = Path(cfg.output)
    if not output.is_absolute():
        output = Path(cfg.paths.output_dir) / output
    write_text(output, buffer.getvalue())
    unknown = int((label == module.unknown_label).sum())
    summary = (
        f"predicted {len(paths)} images: {len(paths) - unknown} known, {unknown} unknown; "
        f"{len(skipped)} files skipped (not readable PNG/JPEG images) -> {output}"
    )
    log.info(summary)
    if cfg.fdr is not None:
        called = columns["fdr_prediction"].count(UNKNOWN_NAME)
        log.info("Benjamini-Hochberg at fdr=%s over the batch: %d unknown", cfg.fdr, called)
    return output


def batch_decisions(
    cfg: DictConfig, module: OpenSetModule, classes: Tensor, score: dict[str, Tensor], names: list
) -> dict[str, list]:
    """The conformal p-value of each image and, with ``fdr``, the batch's Benjamini-Hochberg
    decision: UNKNOWN where BH rejects the image, its most likely class elsewhere."""
    if not module.conformal_reference:
        if cfg.fdr is not None:
            raise NotCalibratedError(
                f"checkpoint {cfg.ckpt_path} holds no conformal reference (calibrated before "
                "p-values were kept), so fdr= cannot be applied: calibrate it again with "
                f"`python -m osr.calibrate ckpt_path={cfg.ckpt_path}`."
            )
        log.warning("no p_value column: calibrate the checkpoint again to get p-values")
        return {}
    p = p_values(module.conformal_reference, score)
    columns: dict[str, list] = {"p_value": p.tolist()}
    if cfg.fdr is not None:
        decided = torch.where(benjamini_hochberg(p, cfg.fdr), module.unknown_label, classes)
        columns["fdr_prediction"] = [names[i] for i in decided.tolist()]
    return columns


@hydra.main(version_base="1.3", config_path="../conf", config_name="predict")
@exits_on_user_error
def main(cfg: DictConfig) -> None:
    check_config(cfg, "predict")
    predict(cfg)


if __name__ == "__main__":
    main()
