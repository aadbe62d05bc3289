"""Fréchet classifier distance: the Gaussian Fréchet distance, the feature classifier and the FCD over sample sets."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from flowvae.runs.frechet import (
    FeatureClassifier,
    accuracy,
    feature_statistics,
    frechet_distance,
    frechet_with_error,
    train_classifier,
)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny networks: one thread beats two contending ones


def _random_covariance(rng: np.random.Generator, d: int) -> np.ndarray:
    a = rng.normal(size=(d, d))
    return a @ a.T / d + 0.1 * np.eye(d)


def test_identical_gaussians_are_at_distance_zero():
    rng = np.random.default_rng(0)
    mu, cov = rng.normal(size=20), _random_covariance(rng, 20)
    assert frechet_distance(mu, cov, mu, cov) == pytest.approx(0.0, abs=1e-8)
    # a singular covariance (rank 5 in 20-d) has rounding-negative eigenvalues: still finite and ~0
    x = rng.normal(size=(6, 20))
    singular = np.cov(x, rowvar=False)
    assert frechet_distance(mu, singular, mu, singular) == pytest.approx(0.0, abs=1e-6)


def test_diagonal_covariances_match_the_closed_form():
    rng = np.random.default_rng(1)
    a, b = rng.uniform(0.1, 3.0, 16), rng.uniform(0.1, 3.0, 16)
    mu1, mu2 = rng.normal(size=16), rng.normal(size=16)
    expected = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


def test_full_covariances_match_scipy_sqrtm():
    rng = np.random.default_rng(2)
    c1, c2 = _random_covariance(rng, 12), _random_covariance(rng, 12)
    mu1, mu2 = rng.normal(size=12), rng.normal(size=12)
    expected = np.sum((mu1 - mu2) ** 2) + np.trace(c1) + np.trace(c2) - 2.0 * np.trace(scipy.linalg.sqrtm(c1 @ c2)).real
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(expected, rel=1e-8)
    assert frechet_distance(mu1, c1, mu2, c2) == pytest.approx(frechet_distance(mu2, c2, mu1, c1), rel=1e-10)


def test_mean_shift_adds_its_squared_norm():
    rng = np.random.default_rng(3)
    c1, c2 = _random_covariance(rng, 8), _random_covariance(rng, 8)
    mu = rng.normal(size=8)
    base = frechet_distance(mu, c1, mu, c2)
    direction = rng.normal(size=8)
    shifted = [frechet_distance(mu, c1, mu + s * direction, c2) for s in (0.5, 1.0, 2.0)]
    assert base < shifted[0] < shifted[1] < shifted[2]
    assert shifted[1] - base == pytest.approx(direction @ direction, rel=1e-8)


def _patterns(n: int, seed: int, classes: tuple[int, ...] = tuple(range(10))) -> tuple[np.ndarray, np.ndarray]:
    """28x28 images in [0, 1]: class k is a bright 8x7 block in the k-th cell of a 3x4 grid, jittered down, plus noise."""
    rng = np.random.default_rng(seed)
    labels = rng.choice(np.array(classes), size=n)
    images = np.zeros((n, 1, 28, 28), np.float32)
    for i, k in enumerate(labels):
        row, col = 9 * (k // 4) + rng.integers(0, 3), 7 * (k % 4)
        images[i, 0, row : row + 8, col : col + 7] = 1.0
    images += rng.normal(0.0, 0.1, images.shape).astype(np.float32)
    return np.clip(images, 0.0, 1.0), labels


@pytest.fixture(scope="module")
def trained():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    x, y = _patterns(400, seed=0)
    vx, vy = _patterns(200, seed=1)
    model, history = train_classifier(x, y, vx, vy, epochs=2, batch_size=32, seed=0, device="cpu")
    torch.set_num_threads(threads)
    return model, history, (x, y, vx, vy)


def test_classifier_learns_the_patterns(trained):
    model, history, (_, _, vx, vy) = trained
    assert [h["epoch"] for h in history] == [1, 2]
    assert set(history[0]) == {"epoch", "train_loss", "valid_accuracy"}
    assert history[1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["valid_accuracy"] >= 0.9
    tensor_accuracy = accuracy(model, torch.as_tensor(vx), torch.as_tensor(vy), batch_size=64)
    assert tensor_accuracy == pytest.approx(history[-1]["valid_accuracy"])
    assert model.features(torch.as_tensor(vx[:5])).shape == (5, FeatureClassifier.feature_dim)


def test_classifier_training_is_deterministic_given_the_seed(trained):
    _, _, (x, y, vx, vy) = trained
    again, _ = train_classifier(x[:64], y[:64], vx[:32], vy[:32], epochs=1, batch_size=32, seed=5, device="cpu")
    other, _ = train_classifier(x[:64], y[:64], vx[:32], vy[:32], epochs=1, batch_size=32, seed=5, device="cpu")
    assert all(torch.equal(p, q) for p, q in zip(again.parameters(), other.parameters(), strict=True))
    different, _ = train_classifier(x[:64], y[:64], vx[:32], vy[:32], epochs=1, batch_size=32, seed=6, device="cpu")
    assert not torch.equal(next(again.parameters()), next(different.parameters()))


def test_feature_statistics_accept_arrays_and_tensors(trained):
    model, _, (x, *_) = trained
    mu, cov = feature_statistics(model, x[:100], batch_size=32)
    mu_t, cov_t = feature_statistics(model, torch.as_tensor(x[:100]), batch_size=100)
    assert mu.dtype == np.float64 and mu.shape == (128,) and cov.shape == (128, 128)
    np.testing.assert_allclose(mu, mu_t, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(cov, cov_t, rtol=1e-4, atol=1e-6)


def test_fcd_is_smaller_for_samples_of_the_reference_distribution(trained):
    model, *_ = trained
    reference, _ = _patterns(300, seed=10)
    same = [_patterns(200, seed=20 + i)[0] for i in range(3)]
    # half the classes missing: a "mode-dropping" generator
    shifted = [_patterns(200, seed=30 + i, classes=(0, 1, 2, 3, 4))[0] for i in range(3)]
    result = frechet_with_error(model, same, reference, batch_size=100)
    worse = frechet_with_error(model, shifted, reference, batch_size=100)
    for r in (result, worse):
        assert len(r["per_set"]) == 3 and r["n_samples_per_set"] == [200, 200, 200]
        assert r["fcd"] == pytest.approx(np.mean(r["per_set"]))
        assert r["fcd_se"] > 0 and r["fcd_se"] == pytest.approx(np.std(r["per_set"], ddof=1) / np.sqrt(3))
    assert result["fcd"] > 0
    assert max(result["per_set"]) < min(worse["per_set"])
    assert np.isnan(frechet_with_error(model, same[:1], reference, batch_size=100)["fcd_se"])
