"""Tables and the summary page from synthetic eval.json files."""

from __future__ import annotations

import json
import re
import statistics
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from flowvae import cli
from flowvae.report import inputs, summary as summary_page, tables as report
from flowvae.spec import metrics

SPEC = {
    "title": "Binarized MNIST: diagonal Gaussian vs IAF posteriors",
    "dataset": "binarized_mnist",
    "rows": [{"model": "vae"}, {"model": "iaf_d2_w320"}, {"model": "vae_elbo5", "published_as": "vae_k5"}],
    "metrics": ["neg_elbo", "neg_log_px", "gap", "active_units", "n_params", "train_minutes"],
    "published": {"tables": [1], "sources": ["paper_a", "replication_b"]},
}
CONTEXT = {"profile": "quick", "dataset": "binarized_mnist", "epochs": 30, "K": 128, "seeds": [0], "commit": None}


def _eval(model: str, seed: int = 0, dataset: str = "binarized_mnist", **overrides) -> dict:
    """A synthetic eval.json dict following the contract."""
    ev = {
        "profile": "quick", "dataset": dataset, "model": model, "seed": seed, "commit": "abc1234", "train_commit": "def5678", "code_version": 3,
        "device": "cpu", "n_test": 10000, "K": 128, "epochs": 30, "train_minutes": 12.34,
        "n_params": 1234567, "latent_dim": 32, "neg_elbo": 84.10, "neg_elbo_se": 0.21, "recon": 60.0,
        "kl": 24.1, "neg_log_px": 81.00, "neg_log_px_se": 0.05, "gap": 3.10, "active_units": 20,
        "ess_fraction": 0.3, "bits_per_dim": None, "is_curve": [{"K": 1, "neg_log_px": 84.0}],
        "eval_seconds": 30.0, "is_samples_per_s": 5e4,
    }
    ev.update(overrides)
    return ev

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def published(tmp_path: Path) -> pd.DataFrame:
    rows = [
        ("paper_a", 1, "binarized_mnist", "vae", "neg_elbo", 84.08, "x", "primary", "Table 1"),
        ("paper_a", 1, "binarized_mnist", "vae", "neg_log_px", 81.08, "", "primary", "Table 1"),
        ("paper_a", 1, "binarized_mnist", "iaf_d2_w320", "neg_log_px", 79.77, "", "primary", "Table 1"),
        ("replication_b", 1, "binarized_mnist", "vae", "neg_log_px", 83.22, "", "primary", "Table 1"),
        ("replication_b", 1, "binarized_mnist", "vae_k5", "neg_log_px", 82.50, "", "primary", "Table 1"),
        ("paper_a", 1, "binarized_mnist", "iaf_d8_w1920", "neg_log_px", 79.10, "not reproduced here", "primary", "Table 1"),
        ("other_c", 1, "binarized_mnist", "vae", "neg_log_px", 1.0, "source not in the spec", "primary", "Table 1"),
        ("paper_a", 2, "binarized_mnist", "vae", "neg_log_px", 2.0, "another table", "primary", "Table 1"),
        ("paper_d", None, "cifar10", "realnvp_density", "bits_per_dim", 3.49, "no table", "primary", "Table 1"),
    ]
    path = tmp_path / "paper_results.csv"
    pd.DataFrame(rows, columns=list(inputs.PUBLISHED_COLUMNS)).to_csv(path, index=False)
    return inputs.load_published(path)


def _md_rows(markdown: str) -> list[list[str]]:
    """The cells of a markdown table's body rows."""
    lines = [ln for ln in markdown.splitlines() if ln.startswith("|")][2:]
    return [[c.strip() for c in re.split(r"(?<!\\)\|", ln.strip("|"))] for ln in lines]


def _md_header(markdown: str) -> list[str]:
    """The header cells of a markdown table."""
    line = next(ln for ln in markdown.splitlines() if ln.startswith("|"))
    return [c.strip() for c in re.split(r"(?<!\\)\|", line.strip("|"))]


def _column(markdown: str, name: str) -> list[str]:
    """One column of a markdown table by its header."""
    index = _md_header(markdown).index(name)
    return [row[index] for row in _md_rows(markdown)]


def _published_of(markdown: str, name: str) -> list[str]:
    """The 'published' column that follows a metric's column."""
    header = _md_header(markdown)
    index = header.index("published", header.index(name))
    return [row[index] for row in _md_rows(markdown)]


def test_load_published_types(published: pd.DataFrame) -> None:
    assert published["value"].dtype == float
    assert published["table"].isna().sum() == 1


def test_single_seed_rows_published_and_differences(published: pd.DataFrame) -> None:
    evals = [_eval("iaf_d2_w320", neg_log_px=80.00), _eval("vae_elbo5", neg_log_px=81.70), _eval("vae"),
             _eval("nf4"), _eval("vae", dataset="cifar10")]
    md, tex = report.build_table("table1", SPEC, evals, published, CONTEXT)
    assert [row[0] for row in _md_rows(md)] == ["vae", "iaf_d2_w320", "vae_elbo5"]
    assert _md_header(md) == ["model", "-ELBO", "published", "Δ -ELBO", "-log p(x)", "published", "Δ -log p(x)",
                              "gap", "active units", "parameters", "train min"]
    assert _column(md, "-log p(x)") == ["81.00 ± 0.05", "80.00 ± 0.05", "81.70 ± 0.05"]
    assert _column(md, "-ELBO")[0] == "84.10 ± 0.21"
    assert _column(md, "active units")[0] == "20/32"
    assert _column(md, "parameters")[0] == "1,234,567"
    # one published column per metric, from the primary (first) source; the other source in the caption
    assert _published_of(md, "-log p(x)") == ["81.08", "79.77", "—"]
    assert _published_of(md, "-ELBO") == ["84.08", "—", "—"]
    assert _column(md, "Δ -log p(x)") == [f"{81.00 - 81.08:+.2f}", f"{80.00 - 79.77:+.2f}", "—"]
    assert _column(md, "Δ -ELBO")[0] == f"{84.10 - 84.08:+.2f}"
    assert "Also published (replication_b, -log p(x)): vae 83.22, vae_k5 82.50." in md
    assert "'published' columns: -ELBO: paper_a; -log p(x): paper_a" in md
    assert "other_c" not in md
    assert "seeds" not in _md_header(md)
    for fact in ("quick", "binarized_mnist", "30 epochs", "K = 128", "seeds 0", "code_version 3", "standard error", "nats"):
        assert fact in md, fact
    assert md.count("K = ") == 1 and "K=" not in md  # K named once, in the caption
    assert "iaf_d8_w1920" in md  # published but without a row: named in the notes
    assert "vae_elbo5 as vae_k5" in md


def test_several_seeds_mean_standard_error_and_sd_over_seeds(published: pd.DataFrame) -> None:
    spec = {**SPEC, "rows": [{"model": "vae", "seeds": [0, 1]}, {"model": "iaf_d2_w320"}],
            "metrics": ["neg_log_px", "active_units"]}
    evals = [_eval("vae", 0, neg_log_px=81.0, neg_log_px_se=0.04, active_units=20),
             _eval("vae", 1, neg_log_px=81.5, neg_log_px_se=0.06, active_units=21), _eval("iaf_d2_w320")]
    md, _ = report.build_table("table1", spec, evals, published, CONTEXT)
    mean, sd = statistics.fmean([81.0, 81.5]), statistics.stdev([81.0, 81.5])
    assert _column(md, "-log p(x)") == [f"{mean:.2f} ± 0.05", "81.00 ± 0.05"]
    assert _column(md, "sd over seeds") == [f"{sd:.2f}", "—"]
    assert _column(md, "active units") == ["20.5/32", "20/32"]
    assert _column(md, "seeds") == ["2", "1"]
    assert _column(md, "Δ -log p(x)") == [f"{mean - 81.08:+.2f}", f"{81.00 - 79.77:+.2f}"]
    assert "mean over seeds; ± is the standard error over test points" in md
    assert "seeds 0, 1" in md


def test_an_exact_flow_row_is_named_as_exact(published: pd.DataFrame) -> None:
    spec = {**SPEC, "rows": [{"model": "vae"}, {"model": "realnvp_s2_b2"}]}
    evals = [_eval("vae", estimator="importance sampling"), _eval("realnvp_s2_b2", K=1, estimator="exact")]
    md, _ = report.build_table("table7", spec, evals, published, CONTEXT)
    assert "K = 128 samples per test image (Burda et al. 2016) for the VAEs." in md
    assert "realnvp_s2_b2: a flow used as a density model, its -log p(x) exact" in md
    assert "K = 1," not in md and "K = 1 " not in md


def test_ess_is_blank_for_a_likelihood_without_importance_weights(published: pd.DataFrame) -> None:
    spec = {**SPEC, "rows": [{"model": "vae"}, {"model": "realnvp_s2_b2"}], "metrics": ["neg_log_px", "ess_fraction"]}
    evals = [_eval("vae", estimator="importance sampling", ess_fraction=0.003),
             _eval("realnvp_s2_b2", K=1, estimator="exact", ess_fraction=1.0)]
    md, _ = report.build_table("table7", spec, evals, published, CONTEXT)
    assert _column(md, "ESS/K") == ["0.003", "—"]


def test_the_ais_columns_of_a_bits_per_dim_table_are_blank_for_its_exact_rows(published: pd.DataFrame) -> None:
    spec = {**SPEC, "rows": [{"model": "vae"}, {"model": "realnvp_s2_b2"}], "units": "bits_per_dim",
            "metrics": ["neg_log_px_nats", "ais_neg_log_px_nats", "is_bias_nats"]}
    ais = {"estimator": "annealed importance sampling", "neg_log_px": 801.5, "neg_log_px_se": 15.0, "n_images": 3,
           "settings": {"T": 500, "S": 8, "L": 5, "schedule": "sigmoid", "initial": "encoder"}}
    evals = [_eval("vae", ais=ais, _per_image={"neg_log_px": np.array([812.0, 805.0, 790.0, 700.0])},
                   _ais_per_image={"index": np.array([0, 1, 2]), "neg_log_px": np.array([802.0, 800.5, 781.0])}),
             _eval("realnvp_s2_b2", K=1, estimator="exact")]
    md, _ = report.build_table("table7", spec, evals, published, CONTEXT)
    assert _column(md, "-log p(x) (AIS, nats)") == ["801.50 ± 15.00", "—"]
    assert _column(md, "IS - AIS (nats)") == ["7.833 ± 1.691", "—"]  # 10, 4.5 and 9 nats
    assert "8 chains of HMC with 5 leapfrog steps, from the encoder's Gaussian q(z|x))" in md
    evals.insert(1, _eval("iaf_d2_w320", ais={**ais, "settings": {**ais["settings"], "initial": "moments"}}))
    spec["rows"].insert(1, {"model": "iaf_d2_w320"})
    md, _ = report.build_table("table7", spec, evals, published, CONTEXT)
    assert ("5 leapfrog steps, from vae the encoder's Gaussian q(z|x); iaf_d2_w320 a Gaussian with the mean and sd of "
            "the posterior's draws)") in md
    nats = {**spec, "units": None, "metrics": ["neg_log_px", "ais_neg_log_px", "is_bias"]}
    md, _ = report.build_table("table1", nats, evals, published, CONTEXT)
    assert _column(md, "-log p(x) (AIS)")[::2] == ["801.50 ± 15.00", "—"] and _column(md, "IS - AIS")[2] == "—"


def test_a_pixelcnn_and_a_gan_row_say_how_their_likelihood_was_had(published: pd.DataFrame) -> None:
    spec = {**SPEC, "rows": [{"model": "vae"}, {"model": "pixelcnn_l5_c32"}, {"model": "gan"}], "metrics": ["neg_log_px", "fcd"]}
    evals = [_eval("vae", estimator="importance sampling", sample_quality={"fcd": 12.5, "fcd_se": 0.3}),
             _eval("pixelcnn_l5_c32", K=1, estimator="exact", sample_quality={"fcd": 4.25, "fcd_se": 0.2}),
             _eval("gan", estimator="ais_gaussian_observation", sigma=0.07, n_images=200, ais={"T": 200, "S": 8},
                   sample_quality={"fcd": 2.5, "fcd_se": 0.1})]
    md, _ = report.build_table("table13", spec, evals, published, CONTEXT)
    assert "K = 128 samples per test image (Burda et al. 2016) for the VAEs." in md
    assert "pixelcnn_l5_c32: an autoregressive model, its -log p(x) the exact discrete likelihood" in md
    assert "gan: no likelihood of its own; -log p(x) by AIS (T = 200, 8 chains" in md and "σ = 0.07" in md
    assert "a flow used as a density model" not in md
    assert _column(md, "FCD") == ["12.50 ± 0.30", "4.25 ± 0.20", "2.50 ± 0.10"]


def test_the_gaussian_observation_column_reads_the_gan_eval_and_the_vae_decoder_file(published: pd.DataFrame, tmp_path) -> None:
    def written(model: str, **fields) -> Path:
        path = tmp_path / model / "eval.json"
        path.parent.mkdir()
        path.write_text(json.dumps(_eval(model, dataset="mnist_8bit", **fields)))
        return path

    obs = {"estimator": "ais_gaussian_observation", "neg_log_px": 700.0, "neg_log_px_se": 2.0, "sigma": 0.05,
           "bits_per_dim": {"neg_log_px": 700.0 / (784 * np.log(2))}}
    vae = written("vae", bits_per_dim={"neg_log_px": 1.5, "neg_elbo": 1.6})
    (vae.parent / "gaussian_obs.json").write_text(json.dumps({"model": "vae", **obs}))
    realnvp = written("realnvp_s2_b2", estimator="exact", K=1, bits_per_dim={"neg_log_px": 1.2, "neg_elbo": 1.2})
    gan = written("gan", **{**obs, "neg_log_px": 600.0, "neg_log_px_se": 3.0, "sigma": 0.1,
                            "bits_per_dim": {"neg_log_px": 600.0 / (784 * np.log(2))}, "n_images": 200, "ais": {"T": 500, "S": 8}})
    evals = [inputs.load_eval(p) for p in (vae, realnvp, gan)]
    spec = {**SPEC, "dataset": "mnist_8bit", "rows": [{"model": "vae"}, {"model": "realnvp_s2_b2"}, {"model": "gan"}],
            "metrics": ["neg_log_px", "gaussian_obs_neg_log_px"], "claims": [{"quote": "GAN is best", "where": "seed 9 line 3"}]}
    md, tex = report.build_table("table13", spec, evals, published, {**CONTEXT, "dataset": "mnist_8bit"})
    assert _column(md, "-log p(x) (Gaussian obs., AIS)") == ["700.00 ± 2.00", "—", "600.00 ± 3.00"]
    assert "vae σ = 0.05" in md and "the GAN's AIS evaluation applied to each VAE's decoder mean image" in md
    assert 'Tested here: "GAN is best" (seed 9 line 3).' in md
    md, _ = report.build_table("table13", {**spec, "units": "bits_per_dim"}, evals, published, {**CONTEXT, "dataset": "mnist_8bit"})
    assert _column(md, "-log p(x) (Gaussian obs., AIS, bits/dim)")[0].startswith(f"{700.0 / (784 * np.log(2)):.4f} ± ")


def test_the_bdmc_gap_of_a_run_is_stated_in_the_caption(published: pd.DataFrame) -> None:
    spec = {**SPEC, "rows": [{"model": "vae"}, {"model": "iaf_d2_w320"}], "metrics": ["neg_log_px", "ais_neg_log_px"]}
    bdmc = {"n_images": 100, "gap": 0.4321, "gap_se": 0.0512, "settings": {"T": 200, "L": 5, "S": 8}}
    ais = {"neg_log_px": 80.9, "neg_log_px_se": 0.1}
    evals = [_eval("vae", bdmc=bdmc, ais=ais), _eval("iaf_d2_w320", ais=ais)]
    md, _ = report.build_table("table1", spec, evals, published, CONTEXT)
    assert "BDMC (Grosse et al. 2015) on 100 images simulated from vae seed 0" in md
    assert "(T = 200, L = 5, S = 8), is 0.43 ± 0.05 nats" in md
    md, _ = report.build_table("table1", spec, [_eval("vae", ais=ais), _eval("iaf_d2_w320", ais=ais)], published, CONTEXT)
    assert "BDMC" not in md
    md, _ = report.build_table("table1", {**spec, "metrics": ["neg_log_px"]}, evals, published, CONTEXT)
    assert "BDMC" not in md, "a table without an AIS column quoted the BDMC check of its AIS"


def test_a_budget_is_named_in_the_caption(published: pd.DataFrame) -> None:
    context = {**CONTEXT, "budget": "budget short: epochs 15 instead of 80"}
    md, tex = report.build_table("table1", {**SPEC, "rows": [{"model": "vae"}]}, [_eval("vae", epochs=15)], published, context)
    assert "Trained under budget short: epochs 15 instead of 80. Epochs run: 15." in md and "reduced" not in md
    assert "epochs 15 instead of 80" in tex


def test_a_budget_names_only_what_it_changes() -> None:
    from types import SimpleNamespace

    params = {"profiles": {"quick": {"train": {"epochs": 80, "warmup_epochs": 5}}},
              "budgets": {"long": {"profiles": ["quick"], "datasets": ["stripes", "other"],
                                   "train": {"epochs": 60, "warmup_epochs": 5}},
                          "same": {"profiles": ["quick"], "datasets": ["other"], "train": {"warmup_epochs": 5}}}}
    run = SimpleNamespace(dataset="stripes", model="vae")
    assert report.budget_text(params, "quick", [run]) == "budget long: epochs 60 instead of 80"
    run = SimpleNamespace(dataset="other", model="vae")
    assert report.budget_text(params, "quick", [run]) == ("budget long: epochs 60 instead of 80; "
                                                          "budget same: the profile's training settings")


def test_missing_eval_names_the_model(published: pd.DataFrame) -> None:
    evals = [_eval("vae"), _eval("vae_elbo5"), _eval("iaf_d2_w320", dataset="cifar10")]
    with pytest.raises(report.MissingEvalError, match="iaf_d2_w320") as err:
        report.build_table("table1", SPEC, evals, published, CONTEXT)
    assert "binarized_mnist" in str(err.value)


def test_errors_for_duplicates_profiles_and_metrics(published: pd.DataFrame) -> None:
    spec = {**SPEC, "rows": [{"model": "vae"}]}
    with pytest.raises(ValueError, match="two eval.json"):
        report.build_table("t", spec, [_eval("vae"), _eval("vae")], published, CONTEXT)
    with pytest.raises(ValueError, match="smoke"):
        report.build_table("t", spec, [_eval("vae", profile="smoke")], published, CONTEXT)
    with pytest.raises(ValueError, match="unknown table metric"):
        report.build_table("t", {**spec, "metrics": ["bogus"]}, [_eval("vae")], published, CONTEXT)
    with pytest.raises(ValueError, match="bits_per_dim"):
        report.build_table("t", {**spec, "metrics": ["bits_per_dim"]}, [_eval("vae")], published, CONTEXT)


def test_bits_per_dim_table_uses_bits_fields(tmp_path: Path) -> None:
    csv = tmp_path / "p.csv"
    csv.write_text("source,table,dataset,model,metric,value,note,status,where\n"
                   "rep,3,cifar10,vae,bits_per_dim_elbo,6.460,,primary,Table 3\nrep,3,cifar10,vae,bits_per_dim,6.431,,primary,Table 3\n")
    spec = {"title": "CIFAR-10", "dataset": "cifar10", "rows": ["vae"], "metrics": ["neg_elbo", "neg_log_px"],
            "units": "bits_per_dim", "published": {"tables": [3], "sources": ["rep"]}}
    ev = _eval("vae", dataset="cifar10", neg_log_px=4500.0, neg_log_px_se=3.0,
               bits_per_dim={"neg_elbo": 6.500, "neg_log_px": 6.450})
    md, _ = report.build_table("table3", spec, [ev], inputs.load_published(csv), {"profile": "quick"})
    assert _column(md, "-log p(x) (bits/dim)") == [f"6.4500 ± {3.0 * 6.45 / 4500:.4f}"]  # 4 decimals: 0.001 bits/dim is half a nat
    assert _published_of(md, "-ELBO (bits/dim)") == ["6.4600"]
    assert _column(md, "Δ -log p(x) (bits/dim)") == [f"{6.450 - 6.431:+.4f}"]
    assert "bits/dim." in md


def test_reconstruction_metric_maps_to_published_neg_log_px_given_z(tmp_path: Path) -> None:
    csv = tmp_path / "p.csv"
    csv.write_text("source,table,dataset,model,metric,value,note,status,where\n"
                   "rnvp,5,binarized_mnist,nf4,neg_log_px_given_z,65.5,,primary,Table 3\n")
    spec = {"dataset": "binarized_mnist", "rows": ["nf4"], "metrics": ["recon"], "published": {"tables": [5]}}
    md, tex = report.build_table("table5", spec, [_eval("nf4", recon=60.25)], inputs.load_published(csv), {})
    assert _md_header(md)[1:] == [r"-log p(x\|z)", "published", r"Δ -log p(x\|z)"]
    assert _md_rows(md) == [["nf4", "60.25", "65.50", f"{60.25 - 65.5:+.2f}"]]
    assert r"$\Delta$ $-\log p(x|z)$" in tex and "rnvp" in tex


def test_second_hand_published_numbers_carry_a_dagger_and_a_legend(tmp_path: Path) -> None:
    csv = tmp_path / "p.csv"
    csv.write_text("source,table,dataset,model,metric,value,note,status,where\n"
                   "recalled,9,binarized_mnist,vae,neg_log_px,82.1,,unverified,searched the paper's copies\n"
                   "checked,9,binarized_mnist,vae,neg_elbo,86.5,,primary,Table 1\n"
                   "quoted,9,binarized_mnist,vae,neg_elbo,86.6,,secondary,FFJORD Table 3\n"
                   "other,9,mnist_dynamic,vae,neg_elbo,80.0,,primary,Table 1\n")
    spec = {"dataset": "binarized_mnist", "rows": ["vae"], "metrics": ["neg_elbo", "neg_log_px"],
            "published": {"tables": [9], "sources": ["checked", "recalled", "quoted", "other"]}}
    sources = {"checked": {"source": "checked", "citation": "Checked et al. 2020", "data": "fixed MNIST", "network": "MLP",
                           "training": "100 epochs"}}
    md, tex = report.build_table("table9", spec, [_eval("vae")], inputs.load_published(csv),
                                 {"sources": sources, "setup": "binarized_mnist, MLP, 15 epochs"})
    header = _md_header(md)
    rows = _md_rows(md)[0]
    assert rows[header.index("published")] == "86.50"  # primary: no mark
    assert rows[len(header) - 2] == "82.10†" and r"82.10$^\dagger$" in tex
    assert "Also published (quoted, -ELBO): vae 86.60†." in md
    assert "† read second-hand or not verified in the source" in md
    assert "'published' columns: -ELBO: Checked et al. 2020;" in md
    assert "Set-ups: Checked et al. 2020: fixed MNIST, MLP, training 100 epochs; ours: binarized_mnist, MLP, 15 epochs." in md
    assert "80.00" not in md and "other" not in md  # another data set's number is not comparable


@pytest.mark.parametrize("status, where, message", [("primry", "Table 1", "status 'primry' is not one of"),
                                                     ("primary", "", "`where` is empty")])
def test_every_published_number_has_a_known_status_and_a_location(tmp_path: Path, status, where, message) -> None:
    csv = tmp_path / "p.csv"
    csv.write_text("source,table,dataset,model,metric,value,note,status,where\n"
                   f"a,1,binarized_mnist,vae,neg_elbo,86.5,,{status},{where}\n")
    with pytest.raises(ValueError, match=f"{csv}, line 2 \\(a vae neg_elbo\\): {re.escape(message)}"):
        inputs.load_published(csv)


def test_the_reference_numbers_all_say_where_they_come_from() -> None:
    published = inputs.load_published(REPO / "reference/paper_results.csv")
    sources = inputs.load_sources(REPO / "reference/sources.csv")
    assert set(published["source"]) <= set(sources)
    assert set(published["status"]) <= set(inputs.STATUSES)
    dynamic = published[(published["source"] == "kingma2016_iaf") & (published["table"] == 1)]
    assert (dynamic["dataset"] == "mnist_dynamic").sum() == 10


def test_latex_booktabs_escaping_caption(published: pd.DataFrame) -> None:
    evals = [_eval("vae"), _eval("iaf_d2_w320"), _eval("vae_elbo5")]
    _, tex = report.build_table("table1", SPEC, evals, published, CONTEXT)
    assert tex.index(r"\toprule") < tex.index(r"\midrule") < tex.index(r"\bottomrule")
    assert r"iaf\_d2\_w320" in tex and "iaf_d2_w320" not in tex.replace(r"\_", "")
    assert r"$\Delta$ $-\log p(x)$" in tex and r"paper\_a" in tex
    assert r"81.00 $\pm$ 0.05" in tex
    assert r"\caption[" in tex and r"binarized\_mnist" in tex and "code\\_version 3" in tex and "abc1234" not in tex
    assert r"\label{tab:table1}" in tex


def test_write_table_and_cli(tmp_path: Path, published: pd.DataFrame, monkeypatch, capsys) -> None:
    from conftest import tiny_params

    params = tiny_params(tmp_path, epochs=30)
    params["datasets"] = {"binarized_mnist": params["datasets"]["stripes"]}
    params["profile"], params["profiles"] = "quick", {"quick": params["profiles"]["test"]}
    params["tables"] = {"table1": SPEC}
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    csv = tmp_path / "pub.csv"
    published.to_csv(csv, index=False)
    files = []
    for model in ("vae", "iaf_d2_w320", "vae_elbo5"):
        path = tmp_path / "results" / "quick" / "binarized_mnist" / model / "seed0" / "eval.json"
        path.parent.mkdir(parents=True)
        path.write_text(json.dumps(_eval(model)))
        files.append(str(path))
    out_md, out_tex = tmp_path / "reports" / "table1.md", tmp_path / "reports" / "table1.tex"
    argv = ["report", "table", "--params", str(tmp_path / "params.yaml"), "--table", "table1", "--published", str(csv),
            "--out-md", str(out_md), "--out-tex", str(out_tex), *files]
    assert cli.main(argv) == 0
    assert "| vae " in out_md.read_text() and r"\bottomrule" in out_tex.read_text()
    assert sorted(p.name for p in out_md.parent.iterdir()) == ["table1.md", "table1.tex"]  # no temporaries left
    assert cli.main(argv[:-1]) == 1
    assert "vae_elbo5" in capsys.readouterr().err
    figures = tmp_path / "reports" / "figures"
    figures.mkdir()
    for name in ("flow_steps_binarized_mnist.png", "flow_steps_binarized_mnist.pdf"):
        (figures / name).write_bytes(b"\x89PNG")
    summary = tmp_path / "reports" / "summary.md"
    assert cli.main(["report", "summary", "--out", str(summary), str(out_md), str(out_tex), str(figures)]) == 0
    text = summary.read_text()
    assert "(table1.md)" in text and "(table1.tex)" in text
    assert "![flow_steps_binarized_mnist](figures/flow_steps_binarized_mnist.png)" in text
    assert ".pdf" not in text  # git ignores the PDFs: the page links what is committed
    assert "| iaf_d2_w320 " in text  # table inlined


def test_build_summary_orders_tables_naturally(tmp_path: Path) -> None:
    for n in (10, 2):
        (tmp_path / f"table{n}.md").write_text(f"**Table {n}**\n")
    text = summary_page.build_summary([tmp_path / "table10.md", tmp_path / "table2.md"], [], base_dir=tmp_path)
    assert text.index("**Table 2**") < text.index("**Table 10**")
    assert "[table2.md](table2.md)" in text


def test_report_does_not_import_torch() -> None:
    import subprocess

    code = "import sys, flowvae.report.tables, flowvae.report.summary; sys.exit('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code]).returncode == 0


def test_every_row_carries_its_commands_and_code(published: pd.DataFrame) -> None:
    dirty = _eval("iaf_d2_w320", source_diff_sha256="f" * 64)
    md, tex = report.build_table("table1", SPEC, [_eval("vae"), dirty, _eval("vae_elbo5")], published,
                                 {**CONTEXT, "row_budgets": {"vae": ["short"]}})
    block = md[md.index("<details>"):]
    assert "`snakemake --cores 2 reports/quick/table1.md`" in block
    assert "# vae seed 0, under budget short; trained at def5678; evaluated at abc1234" in block
    for model in ("vae", "iaf_d2_w320", "vae_elbo5"):
        args = f"--profile quick --dataset binarized_mnist --model {model} --seed 0"
        assert f"flowvae train {args}\nflowvae evaluate {args}" in block
    assert "evaluated at abc1234 + uncommitted diff sha256 ffffffffffffffff (eval_source.diff)" in block
    assert md.startswith("**Table 1") and "Warning: iaf_d2_w320 seed 0 ran from uncommitted code" in md
    assert "<details>" not in tex


def test_the_commands_name_the_evaluations_beside_eval_json_and_their_code(published: pd.DataFrame) -> None:
    """The evaluations whose columns the table shows, each with its code; one it does not read is neither listed
    nor counted as uncommitted."""
    annealed = _eval("vae", ais={"commit": "aaa1111", "source_diff_sha256": None, "neg_log_px": 85.0},
                     bdmc={"commit": "bbb2222", "source_diff_sha256": "e" * 64},
                     sample_quality={"commit": "ccc3333", "source_diff_sha256": "f" * 64, "fcd": 3.0})
    evals = [annealed, _eval("iaf_d2_w320"), _eval("vae_elbo5")]
    md, _ = report.build_table("table1", {**SPEC, "metrics": [*SPEC["metrics"], "ais_neg_log_px"]}, evals, published, CONTEXT)
    block = md[md.index("<details>"):]
    args = "--profile quick --dataset binarized_mnist --model vae --seed 0"
    assert f"flowvae evaluate --estimator ais {args}  # ais.json at aaa1111\n" in block
    assert ("flowvae bdmc results/quick/binarized_mnist/vae/seed0  # bdmc.json at bbb2222 + uncommitted diff sha256 "
            "eeeeeeeeeeeeeeee\n") in block
    assert block.count("--estimator ais") == 1 and "flowvae gaps" not in block and "sample-quality" not in block
    assert "Warning: vae seed 0 ran from uncommitted code" in md

    without_ais, _ = report.build_table("table1", SPEC, evals, published, CONTEXT)
    assert "--estimator ais" not in without_ais and "flowvae bdmc" not in without_ais and "Warning" not in without_ais
    scored = [ev if ev is annealed else {**ev, "sample_quality": {"fcd": 4.0}} for ev in evals]
    with_fcd, _ = report.build_table("table1", {**SPEC, "metrics": [*SPEC["metrics"], "fcd"]}, scored, published, CONTEXT)
    assert "flowvae sample-quality results/quick/binarized_mnist/vae/seed0  # sample_quality.json at ccc3333" in with_fcd
    assert "Warning: vae seed 0 ran from uncommitted code" in with_fcd and "flowvae bdmc" not in with_fcd


def test_every_evaluation_beside_eval_json_names_the_metrics_that_read_it() -> None:
    """A file the report loads beside eval.json but no metric claims would never be listed in the commands block."""
    assert {key for _, key, _ in inputs.BESIDE_EVAL} == set(metrics.BESIDE_EVAL_READERS)
    assert all(set(readers) <= set(metrics.METRICS) for readers in metrics.BESIDE_EVAL_READERS.values())


def test_units_come_from_the_metrics(published: pd.DataFrame) -> None:
    spec = {**SPEC, "metrics": ["bits_per_dim_elbo", "bits_per_dim"]}
    evals = [_eval(m, bits_per_dim={"neg_elbo": 1.5, "neg_log_px": 1.4}) for m in ("vae", "iaf_d2_w320", "vae_elbo5")]
    md, _ = report.build_table("table1", spec, evals, published, CONTEXT)
    assert "; bits/dim." in md and "nats" not in md.split("\n\n")[2]


def test_the_summary_warns_first_of_tables_from_uncommitted_code(tmp_path: Path, published: pd.DataFrame) -> None:
    clean, _ = report.build_table("table1", SPEC, [_eval(m) for m in ("vae", "iaf_d2_w320", "vae_elbo5")], published, CONTEXT)
    dirty, _ = report.build_table("table1", SPEC, [_eval("vae", train_source_diff_sha256="a" * 64), _eval("iaf_d2_w320"),
                                                   _eval("vae_elbo5")], published, CONTEXT)
    (tmp_path / "table1.md").write_text(clean)
    (tmp_path / "table2.md").write_text(dirty)
    text = summary_page.build_summary([tmp_path / "table1.md", tmp_path / "table2.md"], [], base_dir=tmp_path)
    assert text.splitlines()[0] == "**Warning: table2 show runs trained or evaluated from uncommitted code (see their captions).**"
    (tmp_path / "table2.md").write_text(clean)
    assert summary_page.build_summary([tmp_path / "table2.md"], [], base_dir=tmp_path).startswith("# flowvae results")


def _with_images(ev: dict, values) -> dict:
    values = np.asarray(values, dtype=np.float64)
    return {**ev, "neg_log_px": float(values.mean()), "_per_image": {"neg_log_px": values, "neg_elbo": values + 3}}


def test_paired_differences_against_the_baseline_row(published: pd.DataFrame) -> None:
    """Fabricated per-image values: Δ, its paired SE, the sd over seeds and the 'not distinguishable' mark."""
    rng = np.random.default_rng(0)
    base = {s: rng.normal(90, 5, 400) for s in (0, 1)}
    gain = {0: 1.0, 1: 1.4}
    evals = [_with_images(_eval("vae", seed=s), base[s]) for s in (0, 1)]
    evals += [_with_images(_eval("iaf_d2_w320", seed=s), base[s] - gain[s] + rng.normal(0, 0.1, 400)) for s in (0, 1)]
    noise = rng.normal(0, 2.0, 400)
    evals += [_with_images(_eval("vae_elbo5", seed=0), base[0] + noise - noise.mean())]  # noise, no gain
    md, tex = report.build_table("table1", SPEC, evals, published, CONTEXT)
    header, rows = _md_header(md), {r[0]: r for r in _md_rows(md)}
    col = header.index("Δ vs vae (paired)")
    assert rows["vae"][col] == "baseline"
    deltas = [float(((base[s] - gain[s]) - base[s]).mean()) for s in (0, 1)]  # the noise is in the fabricated values
    iaf = rows["iaf_d2_w320"][col]
    expected = np.mean([np.mean(e["_per_image"]["neg_log_px"] - b["_per_image"]["neg_log_px"])
                        for e, b in zip(evals[2:4], evals[0:2])])
    assert iaf.startswith(f"{expected:+.3f} ± ") and "≈" not in iaf
    diffs = [e["_per_image"]["neg_log_px"] - b["_per_image"]["neg_log_px"] for e, b in zip(evals[2:4], evals[0:2])]
    se = np.mean([d.std(ddof=1) / np.sqrt(d.size) for d in diffs])
    assert iaf.endswith(f"± {se:.3f}")
    assert rows["iaf_d2_w320"][col + 1] == f"{np.std([d.mean() for d in diffs], ddof=1):.3f}"
    assert abs(np.mean(deltas) + 1.2) < 0.05
    assert rows["vae_elbo5"][col].endswith("≈") and rows["vae_elbo5"][col + 1] == "—"  # one shared seed: no sd
    assert "≈ marks a row whose |Δ| is under two paired standard errors" in md
    assert r"$\Delta$ vs vae (paired)" in tex


def test_paired_differences_need_the_same_test_images(published: pd.DataFrame) -> None:
    evals = [_with_images(_eval("vae"), np.ones(10)), _with_images(_eval("iaf_d2_w320"), np.ones(12)), _eval("vae_elbo5")]
    with pytest.raises(ValueError, match="12 per-image values against the baseline's 10"):
        report.build_table("table1", SPEC, evals, published, CONTEXT)


def test_a_table_without_per_image_values_has_no_paired_columns(published: pd.DataFrame) -> None:
    md, _ = report.build_table("table1", SPEC, [_eval(m) for m in ("vae", "iaf_d2_w320", "vae_elbo5")], published, CONTEXT)
    assert "paired" not in md


def test_rows_still_improving_are_marked(published: pd.DataFrame) -> None:
    evals = [_eval("vae", late_improvement=0.2), _eval("iaf_d2_w320", late_improvement=1.7), _eval("vae_elbo5", late_improvement=None)]
    md, tex = report.build_table("table1", SPEC, evals, published, CONTEXT)
    assert [r[0] for r in _md_rows(md)] == ["vae", "iaf_d2_w320 ▲", "vae_elbo5"]
    assert "▲ still improving: the best validation -ELBO of iaf_d2_w320 fell by more than 0.5 nats" in md
    assert r"$^\blacktriangle$" in tex
    assert "not converged values" not in md


def test_the_caption_says_why_rows_trained_under_a_budget_are_still_improving(published: pd.DataFrame) -> None:
    evals = [_eval("vae", late_improvement=0.2), _eval("iaf_d2_w320", late_improvement=1.7), _eval("vae_elbo5")]
    context = {**CONTEXT, "row_budgets": {"vae": ["short"], "iaf_d2_w320": ["short"], "vae_elbo5": ["long"]}}
    md, _ = report.build_table("table1", SPEC, evals, published, context)
    assert "Their epochs are those of budget short (above), set by the table's time limit" in md
    assert "budget long (above)" not in md and "budget long, short" not in md
