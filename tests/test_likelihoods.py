"""Pixel likelihoods: normalisation, formulas, broadcasting, numerical stability."""

from __future__ import annotations

import pytest
import torch

from flowvae.models.likelihoods import Bernoulli, DiscretizedLogistic, get_likelihood

LEVELS = torch.arange(256, dtype=torch.float64) / 255


@pytest.mark.parametrize("mu", [-0.7, 0.0, 0.31, 0.5, 1.0, 1.8])
@pytest.mark.parametrize("log_scale", [-9.0, -5.0, -2.0, 0.0, 3.0])
def test_discretized_logistic_bins_sum_to_one(mu: float, log_scale: float) -> None:
    x = LEVELS.view(256, 1, 1, 1)
    params = torch.tensor([mu, log_scale], dtype=torch.float64).view(1, 2, 1, 1)
    log_p = DiscretizedLogistic().log_prob(params, x)
    assert log_p.shape == (256,)
    assert torch.isfinite(log_p).all()
    assert abs(log_p.exp().sum().item() - 1.0) < 1e-9


def test_discretized_logistic_bins_sum_to_one_in_float32() -> None:
    x = LEVELS.float().view(256, 1, 1, 1)
    params = torch.tensor([0.4, -4.0]).view(1, 2, 1, 1)
    assert abs(DiscretizedLogistic().log_prob(params, x).exp().sum().item() - 1.0) < 1e-4


def test_discretized_logistic_matches_cdf_differences() -> None:
    mu, s = 0.3, 0.05
    cdf = lambda v: torch.sigmoid((v - mu) / s)  # noqa: E731
    edges = torch.cat([torch.tensor([-torch.inf]), (LEVELS[:-1] + 0.5 / 255), torch.tensor([torch.inf])])
    expected = (cdf(edges[1:]) - cdf(edges[:-1])).log()
    params = torch.tensor([mu, torch.tensor(s).log().item()], dtype=torch.float64).view(1, 2, 1, 1)
    got = DiscretizedLogistic().log_prob(params, LEVELS.view(256, 1, 1, 1))
    keep = expected > -30  # where the naive difference is itself accurate
    torch.testing.assert_close(got[keep], expected[keep], rtol=1e-6, atol=1e-9)


def test_discretized_logistic_is_stable_far_in_the_tails() -> None:
    params = torch.tensor([[5.0, -7.0], [-5.0, -7.0]]).view(2, 2, 1, 1).requires_grad_(True)
    x = torch.full((2, 1, 1, 1), 0.5)
    log_p = DiscretizedLogistic().log_prob(params, x)
    log_p.sum().backward()
    assert torch.isfinite(log_p).all() and torch.isfinite(params.grad).all()
    assert (log_p < -1000).all()


def test_log_prob_sums_pixels_and_broadcasts_samples() -> None:
    lik = DiscretizedLogistic()
    x = torch.randint(0, 256, (4, 3, 5, 6)).double() / 255
    params = torch.randn(7, 4, 6, 5, 6, dtype=torch.float64)
    per_pixel = torch.stack(
        [
            lik.log_prob(params[..., i : i + 1, j : j + 1], x[..., i : i + 1, j : j + 1])
            for i in range(5)
            for j in range(6)
        ]
    )
    log_p = lik.log_prob(params, x)
    assert log_p.shape == (7, 4)
    torch.testing.assert_close(log_p, per_pixel.sum(0))


def test_bernoulli_matches_its_formula() -> None:
    logits = torch.randn(3, 4, 1, 6, 6, dtype=torch.float64) * 3
    x = (torch.rand(4, 1, 6, 6) > 0.5).double()
    p = torch.sigmoid(logits)
    expected = (x * p.log() + (1 - x) * (1 - p).log()).sum((-3, -2, -1))
    torch.testing.assert_close(Bernoulli().log_prob(logits, x), expected)


def test_means_are_images_in_unit_interval() -> None:
    params = 5 * torch.randn(2, 6, 4, 4)
    for lik, channels in ((Bernoulli(), 6), (DiscretizedLogistic(), 3)):
        m = lik.mean(params)
        assert m.shape == (2, channels, 4, 4) and m.min() >= 0 and m.max() <= 1


def test_unknown_likelihood_is_refused() -> None:
    assert isinstance(get_likelihood("bernoulli"), Bernoulli)
    with pytest.raises(ValueError, match="discretized_logistic"):
        get_likelihood("gaussian")


def test_categorical_is_the_log_softmax_at_each_pixels_bin() -> None:
    torch.manual_seed(0)
    lik = get_likelihood("categorical")
    params = torch.randn(3, 2, 2 * 256, 4, 5, dtype=torch.float64)  # (S, B, 256 C, H, W), C = 2
    x = torch.randint(0, 256, (2, 2, 4, 5)) / 255.0
    expected = torch.zeros(3, 2, dtype=torch.float64)
    for s in range(3):
        for b in range(2):
            for c in range(2):
                logits = params[s, b, c * 256 : (c + 1) * 256]
                k = torch.round(x[b, c] * 255).long()
                expected[s, b] += torch.log_softmax(logits, 0).gather(0, k[None])[0].sum()
    torch.testing.assert_close(lik.log_prob(params, x.double()), expected)


def test_categorical_probabilities_sum_to_one_over_the_256_values() -> None:
    lik = get_likelihood("categorical")
    params = torch.randn(1, 256, 1, 1, dtype=torch.float64)
    mass = sum(lik.log_prob(params, torch.full((1, 1, 1, 1), k / 255.0, dtype=torch.float64)).exp() for k in range(256))
    torch.testing.assert_close(mass, torch.ones(1, dtype=torch.float64))


def test_categorical_mean_is_the_expected_intensity() -> None:
    lik = get_likelihood("categorical")
    logits = torch.full((1, 256, 1, 1), -1e4)
    logits[0, 51] = 0.0
    logits[0, 204] = 0.0
    torch.testing.assert_close(lik.mean(logits), torch.full((1, 1, 1, 1), 0.5))
    assert lik.eight_bit and get_likelihood("discretized_logistic").eight_bit and not get_likelihood("bernoulli").eight_bit
