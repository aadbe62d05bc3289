"""Fréchet classifier distance (FCD): a sample-quality metric for images of a labelled data set.

A small convnet is trained to classify the test domain's images (10 classes); its 128-d penultimate activations
are the features. Each image set is summarised by the mean and covariance of its features, and two sets are
compared by the Fréchet (2-Wasserstein) distance between the Gaussians with those moments,

    FCD = ||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1^{1/2} C2 C1^{1/2})^{1/2}).

This is the construction of the FID (Heusel et al. 2017) with our classifier in place of Inception-v3, so its
values are not comparable to published FIDs, only to each other under the same classifier and set sizes (the
estimate is biased upwards for small sets).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

ImageArray = np.ndarray | Tensor


class FeatureClassifier(nn.Module):
    """conv 32 3x3 - ReLU - maxpool - conv 64 3x3 - ReLU - maxpool - linear 128 (features) - ReLU - linear 10."""

    feature_dim = 128

    def __init__(self, num_classes: int = 10, image_shape: tuple[int, int, int] = (1, 28, 28)):
        super().__init__()
        c, h, w = image_shape
        self.conv = nn.Sequential(
            nn.Conv2d(c, 32, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1),
            nn.ReLU(),
            nn.MaxPool2d(2),
        )
        self.feature = nn.Linear(64 * (h // 4) * (w // 4), self.feature_dim)
        self.head = nn.Linear(self.feature_dim, num_classes)

    def features(self, x: Tensor) -> Tensor:
        """The 128-d penultimate activations (before the ReLU) of images in [0, 1]."""
        return self.feature(self.conv(x).flatten(1))

    def forward(self, x: Tensor) -> Tensor:
        return self.head(F.relu(self.features(x)))


def _as_tensor(images: ImageArray) -> Tensor:
    return torch.as_tensor(images).to(torch.float32)


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


@torch.no_grad()
def _apply(model: FeatureClassifier, images: ImageArray, batch_size: int, features: bool) -> Tensor:
    """Logits (or features) of all images, batch by batch, in eval mode, on the CPU."""
    model.eval()
    x = _as_tensor(images)
    device = _device(model)
    fn = model.features if features else model
    return torch.cat([fn(x[i : i + batch_size].to(device)).cpu() for i in range(0, len(x), batch_size)])


def accuracy(model: FeatureClassifier, images: ImageArray, labels: ImageArray, batch_size: int = 256) -> float:
    """Fraction of images whose arg-max class is their label."""
    predicted = _apply(model, images, batch_size, features=False).argmax(1)
    return (predicted == torch.as_tensor(labels).long()).float().mean().item()


def train_classifier(
    images: ImageArray,
    labels: ImageArray,
    valid_images: ImageArray,
    valid_labels: ImageArray,
    epochs: int,
    batch_size: int,
    seed: int,
    device: str | torch.device = "cpu",
) -> tuple[FeatureClassifier, list[dict]]:
    """Train the feature classifier with Adam (lr 1e-3) and cross entropy; deterministic given the seed.

    The seed fixes the initial weights (torch.manual_seed) and the shuffling (a torch.Generator). Returns the model
    in eval mode and one record per epoch: epoch (from 1), train_loss (mean over images), valid_accuracy.
    """
    torch.manual_seed(seed)
    x, y = _as_tensor(images), torch.as_tensor(labels).long()
    model = FeatureClassifier(int(y.max()) + 1, tuple(x.shape[1:])).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    shuffle = torch.Generator().manual_seed(seed)
    history = []
    for epoch in range(1, epochs + 1):
        model.train()
        total = 0.0
        for idx in torch.randperm(len(x), generator=shuffle).split(batch_size):
            loss = F.cross_entropy(model(x[idx].to(device)), y[idx].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        history.append(
            {
                "epoch": epoch,
                "train_loss": total / len(x),
                "valid_accuracy": accuracy(model, valid_images, valid_labels, batch_size),
            }
        )
    model.eval()
    return model, history


def feature_statistics(model: FeatureClassifier, images: ImageArray, batch_size: int = 256) -> tuple[np.ndarray, np.ndarray]:
    """Mean (d,) and covariance (d, d), with ddof 1, of the images' features, in float64."""
    feats = _apply(model, images, batch_size, features=True).double().numpy()
    return feats.mean(axis=0), np.cov(feats, rowvar=False)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a symmetric positive semi-definite matrix; rounding-negative eigenvalues count as 0."""
    w, v = np.linalg.eigh((matrix + matrix.T) / 2.0)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2), by symmetric eigendecompositions in float64.

    tr((C1 C2)^{1/2}) is computed as the sum of the square roots of the eigenvalues of the symmetric matrix
    C1^{1/2} C2 C1^{1/2}, which has the same eigenvalues as C1 C2. A result below 0 by rounding is returned as 0.
    """
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    root1 = _sqrt_psd(cov1)
    middle = root1 @ cov2 @ root1
    eigenvalues = np.linalg.eigvalsh((middle + middle.T) / 2.0)
    trace_root = np.sqrt(np.clip(eigenvalues, 0.0, None)).sum()
    diff = mu1 - mu2
    return max(float(diff @ diff + np.trace(cov1) + np.trace(cov2) - 2.0 * trace_root), 0.0)


def frechet_with_error(
    model: FeatureClassifier, sample_sets: list[ImageArray], reference_images: ImageArray, batch_size: int = 256
) -> dict:
    """FCD of each sample set to the reference images, their mean and its standard error over the sets.

    fcd_se = std(per_set, ddof=1) / sqrt(number of sets): the spread from drawing the samples, with the reference
    statistics fixed; it is nan for a single set. Compare FCDs only between sets of the same size.
    """
    mu_ref, cov_ref = feature_statistics(model, reference_images, batch_size)
    per_set = [frechet_distance(*feature_statistics(model, s, batch_size), mu_ref, cov_ref) for s in sample_sets]
    n = len(per_set)
    return {
        "fcd": float(np.mean(per_set)),
        "fcd_se": float(np.std(per_set, ddof=1) / math.sqrt(n)) if n > 1 else math.nan,
        "per_set": per_set,
        "n_samples_per_set": [len(s) for s in sample_sets],
    }
