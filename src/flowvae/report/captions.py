"""A table's caption: its title line and the text that says what was run and what is compared."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING

from flowvae.report.commands import dirty_rows
from flowvae.report.format import describe, num
from flowvae.spec.metrics import AIS_METRICS, BY_PUBLISHED, GAUSSIAN_OBS_ESTIMATOR, GAUSSIAN_OBS_METRICS
from flowvae.spec.variants import parse_variant

if TYPE_CHECKING:
    from flowvae.report.tables import TableRuns

DAGGER = "†"  # marks a published number whose status is not `primary`


def caption(t: TableRuns, shown: dict[str, str], columns: list[str] = ()) -> tuple[str, str]:
    """The title line and the provenance text of a gathered table; `shown`: published metric -> the source its column shows."""
    spec, context, chosen = t.spec, t.context, t.chosen
    number = re.sub(r"^table", "Table ", t.name)
    title = f"{number}: {spec['title']}" if spec.get("title") else number

    def first(key: str) -> str:
        from_evals = describe(ev.get(key) for ev in chosen)
        return from_evals if from_evals != "unknown" else describe([context.get(key)])

    seeds = describe(ev.get("seed") for ev in chosen)
    if seeds == "unknown":
        seeds = describe(context.get("seeds") or [])
    dataset = spec.get("dataset") or first("dataset")
    sources_used = sorted({str(ev["data_source"]) for ev in chosen if ev.get("data_source", dataset) != dataset})
    if sources_used:
        dataset = f"{dataset} (stand-in: {', '.join(sources_used)}; numbers not comparable to the published ones)"
    parts = [f"Profile {first('profile')}, data set {dataset}, seeds {seeds}, code_version {first('code_version')}; {_units(t)}."]
    dirty = dirty_rows(chosen, t.beside_evals_read)
    if dirty:
        parts.insert(0, f"Warning: {', '.join(dirty)} ran from uncommitted code (its diff is in the run folder).")
    budget = context.get("budget")
    if budget:
        parts.append(f"Trained under {budget}. Epochs run: {first('epochs')}.")
    else:
        parts.append(f"{first('epochs')} epochs.")
    parts += _estimator_text(t)
    parts += _ais_text(t)
    parts += _bdmc_text(t)
    parts += _decoder_gaussian_obs_text(t)
    seed_metric = t.seed_metric
    if seed_metric is not None:
        parts.append(f"Rows with several seeds show the mean over seeds; ± is the standard error over test points "
                     f"(the runs' mean), and 'sd over seeds' the standard deviation of {seed_metric.md} over seeds.")
    else:
        parts.append("± is the standard error over test points (one seed per model).")
    improving = [m for m in t.models if t.still_improving(m)]
    if improving:
        parts.append(f"▲ still improving: the best validation -ELBO of {', '.join(improving)} fell by more than 0.5 nats "
                     "in the last 20% of its epochs (eval.json's late_improvement), so the run had not converged.")
        capped = sorted({b for m in improving for b in (context.get("row_budgets") or {}).get(m, [])})
        if capped:
            parts.append(f"Their epochs are those of budget {', '.join(capped)} (above), set by the table's time limit: "
                         "their absolute numbers are not converged values, and a difference between such rows is one between "
                         "runs stopped early, not between converged models.")
    parts += _paired_text(t, columns)
    parts += _published_text(t, shown)
    parts += _setups_text(t)
    parts += [f'Tested here: "{c["quote"]}" ({c["where"]}).' for c in spec.get("claims") or []]
    return title, " ".join(parts)


NATS_METRICS = {"neg_elbo", "neg_log_px", "recon", "kl", "gap"}


def _units(t: TableRuns) -> str:
    """The units of the table's numbers, from its metrics."""
    keys = {m.key for m in t.metrics}
    nats, bits = keys & NATS_METRICS, {k for k in keys if "bits_per_dim" in k}
    if bits and not nats:
        return "bits/dim"
    if bits:
        return "nats, bits/dim where a column says so"
    return "nats"


def _estimator_text(t: TableRuns) -> list[str]:
    """How -log p(x) was estimated: importance sampling with its K, exactly for a density model, or by AIS for the GAN."""
    if not any(m.shows_k for m in t.metrics):
        return []
    parts = []
    exact = [ev for ev in t.chosen if ev.get("estimator") == "exact"]
    flows = sorted({str(ev["model"]) for ev in exact if parse_variant(str(ev["model"])).family == "realnvp"})
    autoregressive = sorted({str(ev["model"]) for ev in exact if parse_variant(str(ev["model"])).family == "pixelcnn"})
    gans = [ev for ev in t.chosen if ev.get("estimator") == GAUSSIAN_OBS_ESTIMATOR]
    sampled = [ev for ev in t.chosen if ev.get("estimator") not in ("exact", GAUSSIAN_OBS_ESTIMATOR)]
    if sampled:
        parts.append(f"-log p(x) is the importance-sampling estimate with K = {describe(ev.get('K') for ev in sampled)} "
                     "samples per test image (Burda et al. 2016)" + (" for the VAEs." if len(sampled) < len(t.chosen) else "."))
    if flows:
        parts.append(f"{', '.join(flows)}: a flow used as a density model, its -log p(x) exact (no importance "
                     "sampling: the density of one uniform dequantization per test image, dequantization and "
                     "logit Jacobians included), so its -ELBO column repeats it.")
    if autoregressive:
        parts.append(f"{', '.join(autoregressive)}: an autoregressive model, its -log p(x) the exact discrete likelihood, "
                     "the sum of each pixel's -log p given the pixels before it; its -ELBO column repeats it.")
    for ev in gans:
        ais = ev.get("ais") or {}
        parts.append(f"{ev['model']}: no likelihood of its own; -log p(x) by AIS (T = {ais.get('T')}, {ais.get('S')} chains, "
                     f"from the prior) under a Gaussian observation model N(G(z), σ²I), σ = {ev.get('sigma')} picked on "
                     f"validation images (Wu et al. 2017), on {ev.get('n_images')} seeded test images dequantized as "
                     "(k + u)/256, as a density of k + u: a continuous density, a lower bound on no discrete likelihood.")
    return parts


# ais.json's settings.initial (runs/ais.py resolve_initial), as a caption says it
AIS_STARTS = {"encoder": "the encoder's Gaussian q(z|x)", "moments": "a Gaussian with the mean and sd of the posterior's draws",
              "prior": "the prior"}


def _ais_text(t: TableRuns) -> list[str]:
    """What the AIS columns (ais.json beside a VAE row's eval.json) measure, at the settings the runs recorded."""
    if not any(m.key in AIS_METRICS for m in t.metrics):
        return []
    runs = [ev for ev in t.chosen if (ev.get("ais") or {}).get("estimator") == "annealed importance sampling"]
    if not runs:
        return []

    def setting(key: str) -> str:
        return describe((ev["ais"].get("settings") or {}).get(key) for ev in runs)

    images = describe(ev["ais"].get("n_images") for ev in runs)
    starts = {str(ev["model"]): AIS_STARTS.get(str((ev["ais"].get("settings") or {}).get("initial")), "an unrecorded distribution")
              for ev in runs}
    start = ("from " + next(iter(starts.values())) if len(set(starts.values())) == 1 else
             "from " + "; ".join(f"{model} {initial}" for model, initial in starts.items()))
    return [f"AIS columns (the VAE rows): annealed importance sampling (Neal 2001) of -log p(x) on {images} seeded test "
            f"images (T = {setting('T')} temperatures on a {setting('schedule')} schedule, {setting('S')} chains of HMC with "
            f"{setting('L')} leapfrog steps, {start}), ± the standard error over those "
            "images; 'IS - AIS' is each of those images' importance-sampled -log p(x) minus its AIS one, averaged: both "
            "overestimate -log p(x) on average, so the IS column's bias is at least this large."]


def _decoder_gaussian_obs_text(t: TableRuns) -> list[str]:
    """The VAE rows of a Gaussian-observation column: the GAN's evaluation applied to their decoder's mean image."""
    if not any(m.key in GAUSSIAN_OBS_METRICS for m in t.metrics):
        return []
    decoders = [ev for ev in t.chosen if ev.get("estimator") != GAUSSIAN_OBS_ESTIMATOR and isinstance(ev.get("gaussian_obs"), dict)]
    if not decoders:
        return []
    sigmas = ", ".join(f"{ev['model']} σ = {ev['gaussian_obs'].get('sigma')}" for ev in decoders)
    return [f"Gaussian-observation column: the GAN's AIS evaluation applied to each VAE's decoder mean image in place of "
            f"G(z) (flowvae gaussian-obs; {sigmas}, each picked on validation images), so that the GAN and the VAEs "
            "compare on one scale and one observation model; blank for the models with a likelihood of their own only."]


def _bdmc_text(t: TableRuns) -> list[str]:
    """The BDMC check of the AIS numbers (bdmc.json beside a run's eval.json), where the table shows an AIS column and a
    run of it has one."""
    if not any(m.key in (*AIS_METRICS, *GAUSSIAN_OBS_METRICS, "gaps_ais_neg_log_px") for m in t.metrics):
        return []
    parts = []
    for ev in t.chosen:
        b = ev.get("bdmc")
        if isinstance(b, dict) and b.get("gap") is not None:
            s = b.get("settings") or {}
            parts.append(f"BDMC (Grosse et al. 2015) on {b.get('n_images')} images simulated from {ev['model']} seed "
                         f"{ev.get('seed')}: reverse AIS minus forward AIS, at the AIS settings of this table (T = {s.get('T')}, "
                         f"L = {s.get('L')}, S = {s.get('S')}), is {b['gap']:.2f} ± {b.get('gap_se', float('nan')):.2f} nats: "
                         "the error of the AIS column is of this order on data like the model's own.")
    return parts


def _paired_text(t: TableRuns, columns: list[str]) -> list[str]:
    """What the paired columns mean, once each."""
    if not any(c.startswith("Δ vs ") for c in columns):
        return []
    return [f"'Δ vs {t.baseline} (paired)': the mean over the test images of each image's -log p(x) minus the {t.baseline} "
            "row's on the same image, averaged over the seeds both rows share; ± its paired standard error (the "
            "seeds' mean); ≈ marks a row whose |Δ| is under two paired standard errors: not distinguishable from the "
            "baseline. 'sd of Δ over seeds': the standard deviation of that Δ over the shared seeds."]


def cite(t: TableRuns, source: str) -> str:
    """A source as a reader knows it (reference/sources.csv), e.g. 'Kingma et al. 2016'; the key where none is given."""
    return (t.context.get("sources") or {}).get(source, {}).get("citation") or source


def _setups_text(t: TableRuns) -> list[str]:
    """Per published source, its data, network and training beside ours: what a difference compares."""
    sources = (t.context.get("sources") or {})
    shown = [s for s in dict.fromkeys(t.published_here["source"]) if s in sources]
    if not shown:
        return []
    setups = "; ".join(f"{cite(t, s)}: {sources[s]['data']}, {sources[s]['network']}, training {sources[s]['training']}" for s in shown)
    ours = t.context.get("setup")
    return [f"Set-ups: {setups}" + (f"; ours: {ours}." if ours else ".")]


def _published_text(t: TableRuns, shown: dict[str, str]) -> list[str]:
    """Which published numbers the columns show, the others, the second-hand ones and the unmatched models."""
    parts = []
    pub_here, pub_key = t.published_here, t.pub_key
    mark = {(s, m, me): DAGGER if st != "primary" else "" for s, m, me, st in
            pub_here[["source", "model", "metric", "status"]].itertuples(index=False)} if len(pub_here) else {}
    if shown:
        named = "; ".join(f"{BY_PUBLISHED[pm].md if pm in BY_PUBLISHED else pm}: {cite(t, src)}" for pm, src in shown.items())
        parts.append(f"'published' columns: {named}; Δ = ours − published.")
    others = pub_here[~pub_here.apply(lambda r: shown.get(r["metric"]) == r["source"], axis=1)] if len(pub_here) else pub_here
    for (source, pm), group in others.groupby(["source", "metric"], sort=False):
        label = BY_PUBLISHED[pm].md if pm in BY_PUBLISHED else pm
        values = ", ".join(f"{model} {num(v, BY_PUBLISHED[pm].digits if pm in BY_PUBLISHED else 2)}{mark.get((source, model, pm), '')}"
                           for model, v in zip(group["model"], group["value"]))
        parts.append(f"Also published ({cite(t, source)}, {label}): {values}.")
    if not shown and t.sources and not len(others):
        parts.append(f"Published numbers from {', '.join(cite(t, s) for s in t.sources)}.")
    if any(mark.values()):
        parts.append(f"{DAGGER} read second-hand or not verified in the source: reference/paper_results.csv gives each "
                     "published number's status and where it was read.")
    mapped = [f"{m} as {p}" for m, p in pub_key.items() if m != p]
    if mapped:
        parts.append(f"Published rows matched: {', '.join(mapped)}.")
    unmatched = t.published[~t.published["model"].isin(set(pub_key.values()))]
    if len(unmatched):
        extra = "; ".join(f"{cite(t, source)}: {', '.join(dict.fromkeys(group['model']))}"
                          for source, group in unmatched.groupby("source", sort=False))
        parts.append(f"Published models without a row here: {extra}.")
    return parts
