"""A faithful offline port of the course notebook, the reference the benchmarks time us against.

Same data path (torchvision datasets, per-sample PIL transforms, DataLoader with 2 workers,
batch 64, a random 5/6 : 1/6 train/val split), same networks (NCHW, ConvTranspose2d, the
ConvNet's dropouts called and their outputs discarded, as written), same training loop
(train and val phase every epoch, best weights by val accuracy), same calibration and
evaluation (skimage Otsu per image for the thresholds, per batch in ``eval_model``).
Only the plots are left out, and the data comes from the local mirror: CIFAR-10 from its
JPEG image folder instead of torchvision's pickles.

    python -m benchmarks.notebook      # the whole notebook, timed phase by phase
"""

import argparse
import copy
import json
import random
import time

import numpy as np
import torch
import torch.nn.functional as F
from skimage.filters import threshold_otsu
from sklearn.metrics import confusion_matrix
from torch import nn, optim
from torch.utils.data import DataLoader
from torchvision import datasets, transforms

from benchmarks.common import MIRROR, RESULTS, machine

MNIST_MEAN, MNIST_STD = 0.13, 0.31
CIFAR_MEAN, CIFAR_STD = [0.49139968, 0.48215841, 0.44653091], [0.24703223, 0.24348513, 0.26158784]
FASHION_MEAN, FASHION_STD = 0.286, 0.353
BATCH_SIZE = 64
UNKNOWN = 10


def set_seeds(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed * 2)
    random.seed(seed * 3)


def mnist_train_transform() -> transforms.Compose:
    return transforms.Compose(
        [
            transforms.Resize((28, 28)),
            transforms.ToTensor(),
            transforms.Normalize(MNIST_MEAN, MNIST_STD),
            transforms.GaussianBlur(kernel_size=(3, 3), sigma=(0.1, 1)),
        ]
    )


def test_transform(mean: float, std: float) -> transforms.Compose:
    return transforms.Compose(
        [transforms.Resize((28, 28)), transforms.ToTensor(), transforms.Normalize(mean, std)]
    )


def loader(dataset) -> DataLoader:
    return DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True, num_workers=2)


def make_loaders() -> dict[str, DataLoader]:
    root = str(MIRROR)
    train = datasets.MNIST(root, train=True, download=False, transform=mnist_train_transform())
    test = datasets.MNIST(
        root, train=False, download=False, transform=test_transform(MNIST_MEAN, MNIST_STD)
    )
    fashion = datasets.FashionMNIST(
        root, train=False, download=False, transform=test_transform(FASHION_MEAN, FASHION_STD)
    )
    fashion.targets[:] = UNKNOWN
    cifar_transform = transforms.Compose(
        [
            transforms.Resize((28, 28)),
            transforms.ToTensor(),
            transforms.Normalize(CIFAR_MEAN, CIFAR_STD),
            transforms.Grayscale(),
        ]
    )
    cifar = datasets.ImageFolder(
        str(MIRROR / "CIFAR10" / "test"),
        transform=cifar_transform,
        target_transform=lambda _: UNKNOWN,
    )
    train, val = torch.utils.data.random_split(dataset=train, lengths=[5 / 6, 1 / 6])
    return {
        "train": loader(train),
        "val": loader(val),
        "test": loader(test),
        "fashion": loader(fashion),
        "cifar": loader(cifar),
    }


class ConvNet(nn.Module):
    def __init__(self, kernel_size: int) -> None:
        super().__init__()
        self.type = "ConvNet"
        self.conv1 = nn.Conv2d(1, 10, kernel_size=kernel_size, stride=1, padding=1)
        self.conv2 = nn.Conv2d(10, 20, kernel_size=kernel_size, stride=1, padding=1)
        side = 28
        side += -2 * (kernel_size // 2) + 2
        side //= 2
        side += -2 * (kernel_size // 2) + 2
        side //= 2
        self.fc1 = nn.Linear(20 * side**2, 64)
        self.fc2 = nn.Linear(64, 10)
        self.dropout2d = nn.Dropout2d(p=0.5)
        self.dropout05 = nn.Dropout(p=0.5)
        self.dropout02 = nn.Dropout(p=0.2)

    def forward(self, x):
        # as in the notebook: the dropouts run, their outputs are discarded
        x = F.max_pool2d(F.relu(self.conv1(x)), (2, 2))
        if self.training:
            self.dropout2d(x)
        x = F.max_pool2d(F.relu(self.conv2(x)), (2, 2))
        if self.training:
            self.dropout2d(x)
        x = torch.flatten(x, 1)
        if self.training:
            self.dropout05(x)
        x = F.relu(self.fc1(x))
        if self.training:
            self.dropout02(x)
        return self.fc2(x)


class Encoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 10, 5, stride=1, padding=1)
        self.fc1 = nn.Linear(1690, 128)
        self.fc2 = nn.Linear(128, 64)
        self.fc3 = nn.Linear(64, 32)

    def forward(self, x):
        x, max_indices = F.max_pool2d(F.relu(self.conv(x)), (2, 2), return_indices=True)
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x), max_indices


class Decoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(32, 64)
        self.fc2 = nn.Linear(64, 128)
        self.fc3 = nn.Linear(128, 1690)
        self.deconv = nn.ConvTranspose2d(10, 1, 5, stride=1, padding=1)

    def forward(self, x, max_indices):
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        x = torch.unflatten(self.fc3(x), 1, (10, 13, 13))
        return self.deconv(F.relu(F.max_unpool2d(x, kernel_size=(2, 2), indices=max_indices)))


class MLAutoencoder(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.type = "MLAE"
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.clf = ConvNet(5)

    def forward(self, x):
        encoded, indices = self.encoder(x)
        recon = self.decoder(encoded, indices)
        return recon, self.clf(x.reshape((-1, 1, 28, 28)))


def train_model(model, loaders, optimizer, criterion, autoencoder_criterion=None, num_epochs=30):
    sizes = {phase: len(loaders[phase].dataset) for phase in ("train", "val")}
    best_wts, best_acc = copy.deepcopy(model.state_dict()), 0.0
    for _ in range(num_epochs):
        for phase in ("train", "val"):
            model.train(phase == "train")
            running_loss, running_corrects = 0.0, 0
            for inputs, labels in loaders[phase]:
                optimizer.zero_grad()
                with torch.set_grad_enabled(phase == "train"):
                    if model.type == "MLAE":
                        recon, logits = model(inputs)
                        loss = autoencoder_criterion(recon, inputs) + criterion(logits, labels)
                    else:
                        logits = model(inputs)
                        loss = criterion(logits, labels)
                    _, preds = torch.max(logits, 1)
                    if phase == "train":
                        loss.backward()
                        optimizer.step()
                running_loss += loss.item() * inputs.size(0)
                running_corrects += torch.sum(preds == labels.data)
            if phase == "val":
                epoch_acc = running_corrects.double() / sizes[phase]
                if epoch_acc > best_acc:
                    best_acc, best_wts = epoch_acc, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_wts)
    return model


def make_binary(img: np.ndarray) -> np.ndarray:
    return img > threshold_otsu(img)


def norms_and_diffs(model, batches) -> tuple[list, list]:
    """The notebook's loop: forward a batch, then skimage Otsu and a norm per image."""
    norms, diffs = [], []
    model.eval()
    for inputs in batches:
        recons, _ = model(inputs)
        recons = recons.view(-1, 28, 28).detach().cpu().numpy()
        inputs = inputs.view(-1, 28, 28).detach().cpu().numpy()
        for i in range(len(inputs)):
            b = make_binary(recons[i])
            b0 = make_binary(inputs[i])
            norms += [np.linalg.norm(inputs[i] - recons[i])]
            diffs += [784 - np.sum(b0 == b)]
    return norms, diffs


def eval_model(model, test_loader, thresholds=None) -> float:
    """The notebook's eval_model without its plot: accuracy (and confusion matrix)."""
    correct, count = 0, 0
    final_labels, final_preds = torch.tensor([]), torch.tensor([])
    model.eval()
    with torch.no_grad():
        for inputs, labels in test_loader:
            if model.type == "MLAE":
                norms_thresh, diffs_thresh = thresholds
                recon, outputs = model(inputs)
                model.encoder(inputs)[0].detach()  # the notebook kept these for its t-SNE
                norms = torch.linalg.norm(recon - inputs, dim=(2, 3)).view(-1)
                recon_binary = make_binary(recon.numpy().reshape((-1, 28, 28)))
                original_binary = make_binary(inputs.numpy().reshape((-1, 28, 28)))
                diffs = torch.from_numpy(np.sum(recon_binary != original_binary, axis=(1, 2)))
                _, preds = torch.max(outputs, 1)
                preds[diffs > diffs_thresh] = UNKNOWN
                preds[norms > norms_thresh] = UNKNOWN
            else:
                _, preds = torch.max(model(inputs), 1)
            final_labels = torch.cat((final_labels, labels), 0)
            final_preds = torch.cat((final_preds, preds), 0)
            correct += torch.eq(labels, preds).numpy().sum()
            count += len(labels)
    confusion_matrix(final_labels, final_preds)
    return correct / count


def run(seed: int = 123, baseline_epochs: int = 10, mlae_epochs: int = 15) -> dict[str, float]:
    """The notebook from top to bottom; returns seconds per phase and its accuracies."""
    times, results = {}, {}
    start = time.perf_counter()
    set_seeds(seed)
    loaders = make_loaders()
    conv_net = ConvNet(5)
    optimizer = optim.Adam(conv_net.parameters(), lr=0.001)
    train_model(conv_net, loaders, optimizer, nn.CrossEntropyLoss(), num_epochs=baseline_epochs)
    times["baseline_training_s"] = time.perf_counter() - start

    mark = time.perf_counter()
    model = MLAutoencoder()
    optimizer = optim.Adam(model.parameters(), lr=0.001)
    train_model(
        model, loaders, optimizer, nn.CrossEntropyLoss(), nn.MSELoss(), num_epochs=mlae_epochs
    )
    times["mlae_training_s"] = time.perf_counter() - mark

    mark = time.perf_counter()
    with torch.no_grad():
        norms, diffs = norms_and_diffs(model, (x for x, _ in loaders["val"]))
        thresholds = (np.mean(norms) + 3 * np.std(norms), np.mean(diffs) + 3 * np.std(diffs))
        results["baseline_test_acc"] = eval_model(conv_net, loaders["test"])
        for name in ("test", "fashion", "cifar"):
            results[f"mlae_{name}_acc"] = eval_model(model, loaders[name], thresholds)
            if name != "test":  # the notebook's per-set score distributions
                norms_and_diffs(model, (x for x, _ in loaders[name]))
    times["calibration_and_evaluation_s"] = time.perf_counter() - mark
    times["total_s"] = time.perf_counter() - start
    return {**times, **{k: float(v) for k, v in results.items()}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seed", type=int, default=123)
    parser.add_argument("--baseline-epochs", type=int, default=10)
    parser.add_argument("--mlae-epochs", type=int, default=15)
    parser.add_argument("--json", help="also write the figures to this file")
    args = parser.parse_args()
    figures = run(args.seed, args.baseline_epochs, args.mlae_epochs)
    for key, value in figures.items():
        print(f"{key:<32} {value:10.3f}")
    out = args.json or RESULTS / "notebook.json"
    RESULTS.mkdir(exist_ok=True)
    with open(out, "w") as f:
        json.dump({"machine": machine(), **figures}, f, indent=2)


if __name__ == "__main__":
    main()
