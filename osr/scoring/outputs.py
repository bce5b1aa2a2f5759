"""What a model says about a whole split: every detector's scores, logits and labels, and the
outputs detectors are fitted on, gathered from every DDP rank in dataset order."""

from dataclasses import replace

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from osr.data.datamodules import ImageDataModule
from osr.detectors import ModelOutputs, fit_needs
from osr.modules.open_set import OpenSetModule
from osr.utils.distributed import gather_cat
from osr.utils.phases import phase


def _in_dataset_order(loader: DataLoader, device: torch.device) -> Tensor:
    """The permutation that puts outputs gathered from every rank back in dataset order (each
    rank ran its own shard of ``loader``, ``ShardedBatchSampler``)."""
    return gather_cat(torch.cat(list(loader.sampler)).to(device)).argsort()


@torch.no_grad()  # not inference_mode: input-gradient detectors (ODIN) turn gradients on
def collect_scores(
    module: OpenSetModule, datamodule: ImageDataModule, loader: DataLoader
) -> tuple[dict[str, Tensor], Tensor, Tensor]:
    """Scores of every detector, logits and labels of every image of ``loader``, gathered from
    all ranks, in dataset order."""
    was_training = module.training
    module.eval()
    scores: dict[str, list[Tensor]] = {name: [] for name in module.score_names}
    logits, labels = [], []
    for x, y in datamodule.iterate(loader, module.device):
        batch_logits, batch_scores = module.logits_and_scores(x)
        for name in module.score_names:
            scores[name].append(batch_scores[name])
        logits.append(batch_logits)
        labels.append(y)
    module.train(was_training)
    order = _in_dataset_order(loader, module.device)
    return (
        {name: gather_cat(torch.cat(values))[order] for name, values in scores.items()},
        gather_cat(torch.cat(logits))[order],
        gather_cat(torch.cat(labels))[order],
    )


def _training_outputs(
    module: OpenSetModule, datamodule: ImageDataModule, needs: frozenset[str]
) -> ModelOutputs:
    """The outputs of every image of the known training split (eval mode; only ``needs`` of
    each batch kept, ``ModelOutputs.keep``) with their labels, gathered from all ranks, in
    dataset order."""
    loader = datamodule.train_eval_dataloader()
    was_training = module.training
    module.eval()
    parts = [
        replace(module.model_outputs(x, needs).keep(needs), labels=y)
        for x, y in datamodule.iterate(loader, module.device)
    ]
    module.train(was_training)
    order = _in_dataset_order(loader, module.device)
    outputs = ModelOutputs.cat(parts)
    gathered = {
        name: gather_cat(getattr(outputs, name))[order]
        for name in ("logits", "features", "images", "recon", "labels")
        if getattr(outputs, name) is not None
    }
    return replace(outputs, **gathered)


@phase("detector_fitting")
@torch.no_grad()
def fit_detectors(module: OpenSetModule, datamodule: ImageDataModule) -> list[str]:
    """Fit the module's detectors that need it and are not fitted yet on the known TRAINING
    split (never validation, test or OOD data), gathered from all ranks; returns their names.
    Only what fitting needs of each batch is kept (``fit_needs``).

    An objective that estimates what its logits read after training (II loss's class means)
    is fitted first, on the same pass; the detectors that read the logits are then fitted on
    a pass of their own, with the logits it changed."""
    to_fit = {n: d for n, d in module.detectors.items() if d.requires_fit and not d.is_fitted}
    objective = module.objective
    fit_objective = not objective.is_fitted
    if not to_fit and not fit_objective:
        return []
    needs = fit_needs(to_fit)
    kept = needs | {"features"} if fit_objective else needs
    outputs = _training_outputs(module, datamodule, kept)
    if fit_objective:
        objective.fit_after_training(outputs.features, outputs.labels, module.classifier_net.head)
        if "logits" in needs:
            outputs = _training_outputs(module, datamodule, needs)
    for detector in to_fit.values():
        detector.fit(outputs)
    return list(to_fit)
