"""Sample-quality metrics in the features of a small MNIST classifier.

A learner cannot download Inception weights offline, so the course trains its own small
convolutional classifier once (about a minute on a CPU, seconds on a GPU), caches it under
data/cache/checkpoints, and measures generated digits in its 128-dimensional feature space:

- ``frechet_distance_from_features(classifier_features(a), classifier_features(b))``: the Frechet
  distance between Gaussians fitted to the features of two image sets (the recipe of FID, Heusel et al.
  2017, with this classifier instead of Inception); lower is better, 0 for identical statistics. Only
  comparable between runs using the same classifier.
- ``classifier_confidence(images)``: the classifier's top softmax probability per image; sharp,
  digit-like samples score near 1, blurry or ambiguous ones lower.
"""
from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from .data import map_batches, mnist_tensors
from .runtime import get_device, scaled
from .train import fit

FEATURE_DIM = 128


class MNISTClassifier(nn.Module):
    """Two conv blocks and a 128-unit feature layer: [B, 1, 28, 28] in [0, 1] -> logits [B, 10]."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),   # 28x28 -> 14x14
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 14x14 -> 7x7
            nn.Flatten(), nn.Linear(64 * 7 * 7, FEATURE_DIM), nn.ReLU(),
        )
        self.head = nn.Linear(FEATURE_DIM, 10)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        if x.dim() != 4 or tuple(x.shape[1:]) != (1, 28, 28):
            raise ValueError(f"the MNIST classifier expects images [B, 1, 28, 28] in [0, 1], got {tuple(x.shape)}.")
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x))


def _classification_loss(model: MNISTClassifier, x: torch.Tensor, y: torch.Tensor) -> dict:
    logits = model(x)
    return {"loss": F.cross_entropy(logits, y), "accuracy": (logits.argmax(1) == y).float().mean()}


_CLASSIFIERS: dict[str, MNISTClassifier] = {}


def mnist_classifier(device: torch.device | str | None = None, progress: bool = False) -> MNISTClassifier:
    """The course's MNIST classifier, trained once (cached on disk and in memory), in eval mode.

    Full mode: 3 epochs on all 60,000 training images (about 99% test accuracy);
    quick mode: 2 epochs on 10,000 images. ``classifier.test_accuracy`` holds the measured accuracy.
    """
    device = torch.device(device) if device is not None else get_device()
    n_train, epochs = scaled(full=60000, quick=10000), scaled(full=3, quick=2)
    key = f"{device.type}-{n_train}-{epochs}"
    if key in _CLASSIFIERS:
        return _CLASSIFIERS[key]
    x_train, y_train = mnist_tensors("train", device=device, limit=n_train)
    x_test, y_test = mnist_tensors("test", device=device)
    torch.manual_seed(0)
    model = MNISTClassifier().to(device)
    history = fit(
        model, _classification_loss, (x_train, y_train), test_data=(x_test, y_test), epochs=epochs,
        batch_size=128, lr=2e-3, cache="mnist-classifier", config={"n_train": n_train}, progress=progress, seed=0)
    model.eval()
    model.test_accuracy = history["test_accuracy"][-1]
    for p in model.parameters():
        p.requires_grad_(False)
    _CLASSIFIERS[key] = model
    return model


def classifier_features(images: torch.Tensor, classifier: MNISTClassifier | None = None,
                        batch_size: int = 1000) -> torch.Tensor:
    """Features ``[N, 128]`` of images ``[N, 1, 28, 28]`` in [0, 1]."""
    classifier = classifier or mnist_classifier(images.device)
    return map_batches(classifier.features, images, batch_size)


def classifier_confidence(images: torch.Tensor, classifier: MNISTClassifier | None = None) -> torch.Tensor:
    """Top softmax probability per image, shape ``[N]``."""
    classifier = classifier or mnist_classifier(images.device)
    return map_batches(lambda batch: F.softmax(classifier(batch), dim=1).amax(1), images)


def frechet_distance_from_features(feat_a: torch.Tensor, feat_b: torch.Tensor) -> float:
    """||mu_a - mu_b||^2 + Tr(C_a + C_b - 2 (C_a C_b)^(1/2)) for features ``[N, F]`` and ``[M, F]``.

    Tr (C_a C_b)^(1/2) is computed as the sum of square roots of the eigenvalues of
    C_a^(1/2) C_b C_a^(1/2), which is symmetric positive semi-definite (float64 throughout).
    """
    if feat_a.dim() != 2 or feat_b.dim() != 2 or feat_a.shape[1] != feat_b.shape[1]:
        raise ValueError(f"expected features [N, F] and [M, F], got {tuple(feat_a.shape)} and {tuple(feat_b.shape)}.")
    if min(len(feat_a), len(feat_b)) < 2:
        raise ValueError("the Frechet distance needs at least 2 samples on each side (use a few thousand).")
    a, b = feat_a.cpu().double(), feat_b.cpu().double()  # on the CPU: the eigendecompositions below
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = torch.cov(a.T), torch.cov(b.T)
    evals_a, evecs_a = torch.linalg.eigh(cov_a)
    sqrt_a = evecs_a @ torch.diag(evals_a.clamp_min(0).sqrt()) @ evecs_a.T
    middle = torch.linalg.eigvalsh(sqrt_a @ cov_b @ sqrt_a).clamp_min(0)
    value = (mu_a - mu_b).pow(2).sum() + torch.trace(cov_a) + torch.trace(cov_b) - 2 * middle.sqrt().sum()
    return float(value.clamp_min(0))
