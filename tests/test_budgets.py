"""Budgets: training settings for some runs of some profiles, and rows with their own seeds."""

from __future__ import annotations

import copy

import pytest

from flowvae.pipeline import dvcgen
from flowvae.pipeline import plan
from flowvae.spec.params import matching_budgets
from flowvae.spec.run import RunSpec
from flowvae.spec.schema import ParamsError, validate_params
from conftest import tiny_params


@pytest.fixture
def params(tmp_path):
    p = tiny_params(tmp_path, epochs=20)
    p["profiles"]["other"] = copy.deepcopy(p["profiles"]["test"])
    p["tables"] = {
        "t1": {"title": "t1", "dataset": "stripes", "metrics": ["neg_elbo"],
               "rows": [{"model": "vae", "seeds": [0, 1, 2]}, {"model": "nf4"}, {"model": "vae_iwae5"}]},
    }
    p["budgets"] = {
        "short": {"profiles": ["test"], "datasets": ["stripes"], "train": {"epochs": 5, "warmup_epochs": 1}},
        "iwae": {"profiles": ["test"], "datasets": ["stripes"], "models": ["*_iwae*"], "train": {"epochs": 2}},
    }
    validate_params(p)
    return p


def test_a_budget_applies_to_its_profiles_data_sets_and_models_later_ones_winning(params):
    assert RunSpec.resolve(params, "test", "stripes", "vae", 0).train.epochs == 5
    assert RunSpec.resolve(params, "test", "stripes", "vae", 0).train.warmup_epochs == 1
    assert RunSpec.resolve(params, "test", "stripes", "vae_iwae5", 0).train.epochs == 2
    assert RunSpec.resolve(params, "test", "stripes", "vae_iwae5", 0).train.warmup_epochs == 1
    assert RunSpec.resolve(params, "other", "stripes", "vae", 0).train.epochs == 20
    assert matching_budgets(params, "stripes", "nf4", "test") == ["short"]
    assert matching_budgets(params, "stripes", "vae_iwae5", "other") == []


def test_the_run_record_carries_the_budgeted_settings(params):
    assert RunSpec.resolve(params, "test", "stripes", "vae_iwae5", 0).record()["train"]["epochs"] == 2
    assert RunSpec.resolve(params, "other", "stripes", "vae_iwae5", 0).record()["train"]["epochs"] == 20


def test_a_training_depends_on_exactly_the_budgets_that_can_match_it(params):
    keys = plan.train_param_keys(params, plan.Run("stripes", "vae_iwae5", 0), "test")
    assert [k for k in keys if k.startswith("budgets.")] == [
        "budgets.short.profiles", "budgets.short.datasets", "budgets.short.train",
        "budgets.iwae.profiles", "budgets.iwae.datasets", "budgets.iwae.models", "budgets.iwae.train"]
    keys = plan.train_param_keys(params, plan.Run("stripes", "nf4", 0), "test")
    assert [k for k in keys if k.startswith("budgets.")] == ["budgets.short.profiles", "budgets.short.datasets", "budgets.short.train"]
    params["budgets"]["short"]["train"]["epochs"] = 6  # what Snakemake's params trigger compares changes
    assert plan.param_values(params, keys) != plan.param_values(copy.deepcopy({**params, "budgets": {
        **params["budgets"], "short": {**params["budgets"]["short"], "train": {"epochs": 5, "warmup_epochs": 1}}}}), keys)


def test_a_budget_note_changes_its_tables_params_and_no_training(params):
    params["figures"] = {"notebook": "figures.ipynb"}
    params["budgets"]["iwae"]["note"] = "two epochs"
    train_keys = plan.train_param_keys(params, plan.Run("stripes", "vae_iwae5", 0), "test")
    assert plan.table_param_keys(params, "t1") == ["tables.t1", "budgets.iwae.note"]
    figures_keys = plan.figures_param_keys(params, "summary")
    before = {"train": plan.param_values(params, train_keys), "table": plan.param_values(params, plan.table_param_keys(params, "t1")),
              "figures": plan.param_values(params, figures_keys)}
    params["budgets"]["iwae"]["note"] = "two epochs, reworded"
    assert plan.param_values(params, train_keys) == before["train"]
    assert plan.param_values(params, figures_keys) == before["figures"]  # no figure shows a note
    assert plan.param_values(params, plan.table_param_keys(params, "t1")) != before["table"]


def test_rows_have_their_own_seeds(params):
    runs = plan.table_runs(params, "t1")
    assert [(r.model, r.seed) for r in runs] == [("vae", 0), ("vae", 1), ("vae", 2), ("nf4", 0), ("vae_iwae5", 0)]


def test_dvc_trains_runs_with_different_budgets_in_different_stages(params):
    params["figures"] = {"notebook": "figures.ipynb"}
    stages = dvcgen.dvc_stages(params)["stages"]
    train = {name: stage for name, stage in stages.items() if name.startswith("train_")}
    assert set(train) == {"train_stripes_short", "train_stripes_short_iwae"}
    iwae = train["train_stripes_short_iwae"]
    assert "budgets.iwae.train" in iwae["do"]["params"]
    assert [item["model"] for item in iwae["foreach"].values()] == ["vae_iwae5"]
    assert "budgets.iwae.train" not in train["train_stripes_short"]["do"]["params"]


@pytest.mark.parametrize(
    "mutate, where",
    [
        (lambda b: b["short"].update(profiles=["nope"]), "budgets.short.profiles.0: unknown profile 'nope'"),
        (lambda b: b["short"].update(datasets=["nope"]), "budgets.short.datasets.0: unknown data set 'nope'"),
        (lambda b: b["iwae"].update(models=["*_iwea*"]), "budgets.iwae.models.0: '*_iwea*' matches no model"),
        (lambda b: b["short"]["train"].update(epoch=3), "budgets.short.train.epoch: unknown key"),
        (lambda b: b["short"].update(train={}), "budgets.short.train"),
        (lambda b: b["short"].pop("profiles"), "budgets.short: 'profiles' is a required property"),
    ],
)
def test_a_wrong_budget_is_named(params, mutate, where):
    mutate(params["budgets"])
    with pytest.raises(ParamsError, match=where.replace("*", r"\*").replace(".", r"\.")):
        validate_params(params)
