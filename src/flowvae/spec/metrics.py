"""The metrics a results table can show: how each is read from eval.json, labelled and matched to published numbers."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Metric:
    """How one table metric is read from eval.json, labelled and compared with published numbers."""

    key: str
    md: str
    tex: str
    get: Callable[[Mapping[str, Any]], Any]
    se: Callable[[Mapping[str, Any]], Any] | None = None
    published: str | None = None
    digits: int = 2
    shows_k: bool = False
    some_rows: bool = False  # blank for the rows whose runs lack it, where other metrics' missing values are errors


def _field(*path: str) -> Callable[[Mapping[str, Any]], Any]:
    """A getter for a (nested) eval.json field; None where absent."""

    def get(ev: Mapping[str, Any]) -> Any:
        value: Any = ev
        for part in path:
            if not isinstance(value, Mapping):
                return None
            value = value.get(part)
        return value

    return get


def _importance_sampled(key: str) -> Callable[[Mapping[str, Any]], Any]:
    """A field of an importance-sampled evaluation; None for an exact or AIS likelihood, which has no weights."""

    def get(ev: Mapping[str, Any]) -> Any:
        return ev.get(key) if ev.get("estimator", "importance sampling") == "importance sampling" else None

    return get


def _bpd_se(nats: str, bits: str) -> Callable[[Mapping[str, Any]], Any]:
    """Standard error in bits/dim, scaled from the nats one by the eval's own bits/nats ratio."""

    def get(ev: Mapping[str, Any]) -> Any:
        se, value, bpd = ev.get(f"{nats}_se"), ev.get(nats), _field("bits_per_dim", bits)(ev)
        if se is None or not value or bpd is None:
            return None
        return se * bpd / value

    return get


def _bpd_gap(ev: Mapping[str, Any]) -> Any:
    """The ELBO gap in bits/dim."""
    elbo, nll = _field("bits_per_dim", "neg_elbo")(ev), _field("bits_per_dim", "neg_log_px")(ev)
    return None if elbo is None or nll is None else elbo - nll


def _is_bias_values(ev: Mapping[str, Any]) -> Any:
    """Per AIS image: IS -log p(x) minus AIS -log p(x) (the same test images, from per_image.npz and ais_per_image.npz)."""
    per_image, ais = ev.get("_per_image"), ev.get("_ais_per_image")
    if not isinstance(per_image, Mapping) or not isinstance(ais, Mapping) or "neg_log_px" not in per_image:
        return None
    return per_image["neg_log_px"][ais["index"]] - ais["neg_log_px"]


def _is_bias(ev: Mapping[str, Any]) -> Any:
    values = _is_bias_values(ev)
    return None if values is None or len(values) == 0 else float(values.mean())


def _is_bias_se(ev: Mapping[str, Any]) -> Any:
    values = _is_bias_values(ev)
    return None if values is None or len(values) < 2 else float(values.std(ddof=1) / len(values) ** 0.5)


# Metrics read from ais.json (`flowvae evaluate --estimator ais`): a table that shows one needs the AIS evaluation.
AIS_METRICS = ("ais_neg_log_px", "is_bias", "ais_neg_log_px_nats", "is_bias_nats")
# Metrics read from gaps.json (`flowvae gaps`): a table that shows one needs the inference-gap evaluation.
GAP_METRICS = ("neg_elbo_q", "neg_elbo_q_star", "gaps_ais_neg_log_px", "approximation_gap", "amortization_gap")
# Metrics read from sample_quality.json (`flowvae sample-quality`): a table that shows one needs its samples scored.
SAMPLE_QUALITY_METRICS = ("fcd",)
# eval.json's `estimator` of the GAN's evaluation (runs/gaussian_observation.py), AIS under a Gaussian observation model
GAUSSIAN_OBS_ESTIMATOR = "ais_gaussian_observation"
# Metrics under the Gaussian observation model (runs/gaussian_observation.py): a GAN's eval.json, a VAE's gaussian_obs.json.
GAUSSIAN_OBS_METRICS = ("gaussian_obs_neg_log_px", "gaussian_obs_bits_per_dim")
# The evaluations beside eval.json (report/inputs.py BESIDE_EVAL, by their key in a loaded eval) and the metrics that
# read each; BDMC checks the AIS settings, so an AIS column reads it too.
BESIDE_EVAL_READERS = {"ais": AIS_METRICS, "bdmc": AIS_METRICS, "gaps": GAP_METRICS,
                       "sample_quality": SAMPLE_QUALITY_METRICS, "gaussian_obs": GAUSSIAN_OBS_METRICS}


def beside_evals_read(metric_keys: Iterable[str]) -> frozenset[str]:
    """The keys of the evaluations beside eval.json that a table showing these metrics reads."""
    keys = set(metric_keys)
    return frozenset(beside for beside, readers in BESIDE_EVAL_READERS.items() if keys & set(readers))


def _gaussian_obs_bpd_se(ev: Mapping[str, Any]) -> Any:
    obs = ev.get("gaussian_obs")
    return _bpd_se("neg_log_px", "neg_log_px")(obs) if isinstance(obs, Mapping) else None


def _negated(*path: str) -> Callable[[Mapping[str, Any]], Any]:
    get = _field(*path)
    return lambda ev: None if get(ev) is None else -get(ev)

METRICS: dict[str, Metric] = {
    m.key: m
    for m in (
        Metric("neg_elbo", "-ELBO", r"$-$ELBO", _field("neg_elbo"), _field("neg_elbo_se"), "neg_elbo"),
        Metric("neg_log_px", "-log p(x)", r"$-\log p(x)$", _field("neg_log_px"), _field("neg_log_px_se"),
               "neg_log_px", shows_k=True),
        Metric("recon", "-log p(x|z)", r"$-\log p(x|z)$", _field("recon"), None, "neg_log_px_given_z"),
        Metric("kl", "KL", "KL", _field("kl")),
        Metric("gap", "gap", "gap", _field("gap")),
        Metric("active_units", "active units", "active units", _field("active_units"), None, "active_units", 0),
        Metric("n_params", "parameters", "parameters", _field("n_params"), None, None, 0),
        Metric("train_minutes", "train min", "train min", _field("train_minutes"), None, None, 1),
        Metric("ess_fraction", "ESS/K", "ESS/$K$", _importance_sampled("ess_fraction"), None, None, 3, some_rows=True),
        # 4 decimals: 0.001 bits/dim is 0.54 nats on a 784-pixel image, more than the differences between models
        Metric("bits_per_dim_elbo", "-ELBO (bits/dim)", r"$-$ELBO (bits/dim)", _field("bits_per_dim", "neg_elbo"),
               _bpd_se("neg_elbo", "neg_elbo"), "bits_per_dim_elbo", 4),
        Metric("bits_per_dim", "-log p(x) (bits/dim)", r"$-\log p(x)$ (bits/dim)",
               _field("bits_per_dim", "neg_log_px"), _bpd_se("neg_log_px", "neg_log_px"), "bits_per_dim", 4,
               shows_k=True),
        Metric("neg_log_px_nats", "-log p(x) (nats)", r"$-\log p(x)$ (nats)", _field("neg_log_px"), _field("neg_log_px_se")),
        Metric("gap_bits_per_dim", "gap (bits/dim)", "gap (bits/dim)", _bpd_gap, None, None, 3),
        # AIS: blank for a table's exact-likelihood rows (plan.table_ais_runs gives only the VAE rows an AIS job)
        Metric("ais_neg_log_px", "-log p(x) (AIS)", r"$-\log p(x)$ (AIS)", _field("ais", "neg_log_px"),
               _field("ais", "neg_log_px_se"), some_rows=True),
        Metric("is_bias", "IS - AIS", r"IS $-$ AIS", _is_bias, _is_bias_se, None, 3, some_rows=True),
        # the same two in a bits/dim table, whose -log p(x) (nats) column they stand beside
        Metric("ais_neg_log_px_nats", "-log p(x) (AIS, nats)", r"$-\log p(x)$ (AIS, nats)", _field("ais", "neg_log_px"),
               _field("ais", "neg_log_px_se"), some_rows=True),
        Metric("is_bias_nats", "IS - AIS (nats)", r"IS $-$ AIS (nats)", _is_bias, _is_bias_se, None, 3, some_rows=True),
        Metric("neg_elbo_q", "-L[q]", r"$-\mathcal{L}[q]$", _negated("gaps", "elbo_amortized"), None, "neg_elbo_q"),
        Metric("neg_elbo_q_star", "-L[q*]", r"$-\mathcal{L}[q^*]$", _negated("gaps", "elbo_optimised"), None, "neg_elbo_q_star"),
        Metric("gaps_ais_neg_log_px", "-log p(x) (AIS)", r"$-\log p(x)$ (AIS)", _negated("gaps", "ais_log_px"), None,
               "neg_log_px_ais"),
        Metric("approximation_gap", "approximation gap", "approximation gap", _field("gaps", "approximation_gap"),
               _field("gaps", "approximation_gap_se"), "approximation_gap"),
        Metric("amortization_gap", "amortization gap", "amortization gap", _field("gaps", "amortization_gap"),
               _field("gaps", "amortization_gap_se"), "amortization_gap"),
        Metric("gaussian_obs_neg_log_px", "-log p(x) (Gaussian obs., AIS)", r"$-\log p(x)$ (Gaussian obs., AIS)",
               _field("gaussian_obs", "neg_log_px"), _field("gaussian_obs", "neg_log_px_se"), some_rows=True),
        Metric("gaussian_obs_bits_per_dim", "-log p(x) (Gaussian obs., AIS, bits/dim)",
               r"$-\log p(x)$ (Gaussian obs., AIS, bits/dim)", _field("gaussian_obs", "bits_per_dim", "neg_log_px"),
               _gaussian_obs_bpd_se, None, 4, some_rows=True),
        Metric("fcd", "FCD", "FCD", _field("sample_quality", "fcd"), _field("sample_quality", "fcd_se"), "fcd"),
    )
}
ALIASES = {
    "neg_log_px_given_z": "recon",
    "bits_per_dim.neg_elbo": "bits_per_dim_elbo",
    "bits_per_dim.neg_log_px": "bits_per_dim",
}
# `units: bits_per_dim` in a table spec turns the nats metrics into their bits/dim versions.
BPD_UNITS = {"neg_elbo": "bits_per_dim_elbo", "neg_log_px": "bits_per_dim", "gap": "gap_bits_per_dim",
             "gaussian_obs_neg_log_px": "gaussian_obs_bits_per_dim"}
BY_PUBLISHED = {m.published: m for m in METRICS.values() if m.published}


def metric(name: str, units: str | None = None) -> Metric:
    """The Metric for a spec name (or alias); ValueError listing the known ones otherwise."""
    key = ALIASES.get(name, name)
    if units == "bits_per_dim":
        key = BPD_UNITS.get(key, key)
    if key not in METRICS:
        raise ValueError(f"unknown table metric {name!r}; known: {', '.join([*METRICS, *ALIASES])}")
    return METRICS[key]
