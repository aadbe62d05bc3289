"""The DAG: params validation, dvc.yaml in step with params.yaml and with Snakemake's jobs, wildcard targets."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
import yaml
from flowvae.spec.params import read_params

from flowvae.pipeline import plan
from flowvae.pipeline.dvcgen import dvc_yaml_text
from flowvae.spec.schema import ParamsError, validate_params

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.fixture(scope="module")
def params():
    return read_params(REPO / "params.yaml")


def test_params_yaml_is_valid(params):
    validate_params(params)


@pytest.mark.parametrize(
    "mutate, message",
    [
        (lambda p: p["profiles"]["quick"].update(epochz=3), "profiles.quick.epochz: unknown key"),
        (lambda p: p["profiles"]["smoke"]["train"].update(batch_size="64"), "profiles.smoke.train.batch_size: '64' is not of type 'integer'"),
        (lambda p: p["profiles"]["smoke"]["eval"].update(K=0), "profiles.smoke.eval.K: 0 is less than the minimum of 1"),
        (lambda p: p["tables"]["table5"]["rows"].append({"model": "nf0"}), "tables.table5.rows.8.model: unknown model variant 'nf0'"),
        (lambda p: p.update(profile="fast"), "profile: 'fast' is not one of ['paper', 'quick', 'smoke', 'sylvester']"),
        (lambda p: p["datasets"]["cifar10"]["files"]["archive"].update(md5="xyz"), "datasets.cifar10.files.archive.md5"),
        (lambda p: p["tables"]["table1"]["metrics"].append("nll_typo"), "tables.table1.metrics.8: unknown table metric 'nll_typo'"),
        (lambda p: p["figures"]["latent2d"]["variants"].append("iaf_d2"), "figures.latent2d.variants.4: unknown model variant 'iaf_d2'"),
        (lambda p: p["tables"]["table1"]["published"].update(primary="kingma"), "tables.table1.published.primary: 'kingma' is not among"),
        (lambda p: p["profiles"]["smoke"]["eval"].update(K_by_dataset={"mnistt": 4}), "profiles.smoke.eval.K_by_dataset.mnistt: unknown data set"),
        (lambda p: p["profiles"]["smoke"]["substitute"].update(cifar10="cifar_fake"), "profiles.smoke.substitute.cifar10: unknown data set 'cifar_fake'"),
        (lambda p: p.pop("code_version"), "'code_version' is a required property"),
        (lambda p: p["profiles"]["smoke"]["train"].update(lr="2e-3"),
         "profiles.smoke.train.lr: '2e-3' is not of type 'number': YAML reads 2e-3 as a string (its floats need a dot, as in 2.0e-3)"),
    ],
)
def test_schema_errors_name_the_key(params, mutate, message):
    bad = copy.deepcopy(params)
    mutate(bad)
    with pytest.raises(ParamsError) as err:
        validate_params(bad)
    assert message in str(err.value)
    assert str(err.value).count("\n") == 0  # one error, one line


def test_committed_dvc_yaml_matches_params(params):
    assert (REPO / "dvc.yaml").read_text() == dvc_yaml_text(params), "run `flowvae dvc-yaml` to regenerate dvc.yaml"


def run(cmd: list[str], cwd: Path = REPO, env: dict | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", **(env or {})}
    return subprocess.run(cmd, cwd=cwd, env=full_env, capture_output=True, text=True, timeout=timeout)


def snakemake_outputs(profile: str, target: str | list[str] | None = None, cwd: Path = REPO,
                      rows: str | None = None) -> set[tuple[str, str]]:
    """(rule, output) of every job Snakemake plans for targets, prepared splits folded to their folder; `rows`: the
    profile's rows selection replaced (in a copy of the params file)."""
    targets = [target] if isinstance(target, str) else target or [f"reports/{profile}/summary.md"]
    config = ["--config", f"profile={profile}"]
    with tempfile.TemporaryDirectory() as folder:
        if rows:
            text = (cwd / "params.yaml").read_text()
            assert "    rows: one_per_family" in text
            copy = Path(folder) / "params.yaml"
            copy.write_text(text.replace("    rows: one_per_family", f"    rows: {rows}"))
            config.append(f"params_file={copy}")
        result = run([str(BIN / "snakemake"), "--forceall", "--summary", *config, "--", *targets], cwd=cwd)
    assert result.returncode == 0, result.stderr
    outputs = set()
    for line in result.stdout.splitlines()[1:]:
        path, _, rule = line.split("\t")[:3]
        if rule == "prepare":
            path = str(Path(path).parent)
        outputs.add((rule, path))
    return outputs


def dvc_outputs(profile: str, cwd: Path = REPO) -> set[tuple[str, str]]:
    """(stage group, output) of every stage dvc.yaml resolves to, with profile.yaml's profile set to `profile`."""
    script = (
        "import sys\n"
        "from dvc.repo import Repo\n"
        "for s in Repo('.').index.stages:\n"
        "    group = s.addressing.split('@')[0]\n"
        "    group = 'table' if group.startswith('table') else group if group in ('sample_quality', 'gaussian_obs') else group.split('_')[0]\n"
        "    for o in s.outs:\n"
        "        print(group, o.def_path)\n"
    )
    original = (cwd / "profile.yaml").read_text()
    try:
        (cwd / "profile.yaml").write_text(original.replace("profile: quick\n", f"profile: {profile}\n", 1))
        result = run([sys.executable, "-c", script], cwd=cwd)
    finally:
        (cwd / "profile.yaml").write_text(original)
    assert result.returncode == 0, result.stderr
    return {tuple(line.split(" ", 1)) for line in result.stdout.splitlines()}


@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_dvc_stages_and_snakemake_jobs_are_the_same(profile, params):
    targets = [f"reports/{profile}/{s}.md" for s in plan.summary_names(params)]
    smk = snakemake_outputs(profile, targets + [f"reports/{profile}/verify_{t}.txt" for t in plan.table_names(params)])
    dvc = dvc_outputs(profile)
    if params["profiles"][profile].get("rows") == "one_per_family":  # Snakemake builds the profile's rows, DVC all
        assert smk < dvc, f"only Snakemake: {sorted(smk - dvc)[:5]}"
        smk = snakemake_outputs(profile, [f"reports/{profile}/{s}.md" for s in plan.summary_names(params)]
                                + [f"reports/{profile}/verify_{t}.txt" for t in plan.table_names(params)], rows="all")
    assert smk == dvc, f"only Snakemake: {sorted(smk - dvc)[:5]}; only DVC: {sorted(dvc - smk)[:5]}"
    assert ("train", f"results/{profile}/binarized_mnist/iaf_d8_w1920/seed0/model.safetensors") in smk


def test_the_smoke_profile_builds_one_row_per_kind_of_model_with_its_first_seed(params):
    assert plan.for_profile(params, "quick") is params
    cut = plan.for_profile(params, "smoke")
    models = lambda t: [row["model"] for row in cut["tables"][t]["rows"]]
    assert models("table6") == ["vae", "vae_elbo5", "vae_iwae5"]  # one and several samples of each objective
    assert models("table2") == ["iaf_d2_w320", "iaf_d2_w320_fixed"]  # sigma learnt and fixed
    assert models("table4") == ["resvae_r4_gauss", "resvae_r4_iaf"]
    assert models("table12") == ["vae", "iaf_d2_w320", "pixelcnn_l5_c32", "pixelcnn_l5_c16_gated"]
    assert all(row["seeds"] == [0] for t in cut["tables"].values() for row in t["rows"])
    kinds = {(r.variant.family, r.variant.fixed_sigma, r.variant.gated, r.variant.ladder_posterior, r.variant.objective,
              r.variant.objective_k > 1) for r in plan.all_runs(params)}
    assert {(r.variant.family, r.variant.fixed_sigma, r.variant.gated, r.variant.ladder_posterior, r.variant.objective,
             r.variant.objective_k > 1) for r in plan.all_runs(cut)} == kinds  # every kind of model still trains
    assert len(plan.all_runs(cut)) < len(plan.all_runs(params)) / 2
    with_baseline = {**params, "tables": {"t": {**params["tables"]["table2"], "baseline": "iaf_d4_w1920"}}}
    assert [row["model"] for row in plan.for_profile(with_baseline, "smoke")["tables"]["t"]["rows"]] == [
        "iaf_d2_w320", "iaf_d2_w320_fixed", "iaf_d4_w1920"]


def test_the_mnist_summary_builds_its_tables_and_figures_without_cifar(params):
    smk = snakemake_outputs("quick", "reports/quick/summary_mnist.md")
    assert {p for rule, p in smk if rule in ("table", "summary", "figures")} == {
        *(f"reports/quick/{t}.{ext}" for t in ("table1", "table2", "table5", "table6", "table7", "table9", "table10", "table11", "table12",
                                    "table13")
              for ext in ("md", "tex", "html")),
        "reports/quick/summary_mnist.md", "reports/quick/figures_mnist", "reports/quick/figures_mnist.ipynb",
    }
    trained = {p.split("/")[2] for rule, p in smk if rule == "train"}
    assert trained == {"binarized_mnist", "mnist_dynamic", "mnist_digits4", "mnist_8bit"}
    assert not any("cifar" in p for _, p in smk)


def test_any_grammatical_variant_is_a_target():
    result = run(
        [str(BIN / "snakemake"), "-n", "--forceall", "--quiet", "rules", "--", "results/quick/binarized_mnist/nf7/seed0/eval.json"]
    )
    assert result.returncode == 0, result.stderr
    assert "train" in result.stdout and "evaluate" in result.stdout


def test_ungrammatical_variant_is_not_a_target():
    result = run([str(BIN / "snakemake"), "-n", "results/quick/binarized_mnist/nf0/seed0/eval.json"])
    assert result.returncode != 0
    assert "results/quick/binarized_mnist/nf0/seed0/eval.json: model 'nf0' is not a variant name" in result.stdout + result.stderr


def test_table1_pulls_exactly_its_runs(params):
    smk = snakemake_outputs("quick", "reports/quick/table1.md")
    trained = {p for rule, p in smk if rule == "train" and p.endswith(".safetensors")}
    expected = {r.path("quick", "model.safetensors") for r in plan.table_runs(params, "table1")}
    assert trained == expected


def test_only_the_vae_rows_of_a_table_get_an_ais_evaluation(params):
    table7 = [r.model for r in plan.table_runs(params, "table7")]
    assert {"realnvp_s2_b2", "pixelcnn_l5_c32"} <= set(table7) and plan.table_needs_ais(params, "table7")
    assert [r.model for r in plan.table_ais_runs(params, "table7")] == ["vae", "iaf_d2_w320"]
    assert [r.model for r in plan.bdmc_runs(params, "table7")] == ["vae"]
    assert not {r.model for r in plan.ais_runs(params)} & {"realnvp_s2_b2", "pixelcnn_l5_c32", "gan"}
    smk = snakemake_outputs("quick", "reports/quick/table7.md")
    assert {p.split("/")[3] for rule, p in smk if rule == "ais"} == {"vae", "iaf_d2_w320"}


def test_invalid_params_stop_snakemake_before_any_job(tmp_path):
    text = (REPO / "params.yaml").read_text()
    assert "train: {epochs: 2," in text
    (tmp_path / "bad.yaml").write_text(text.replace("train: {epochs: 2,", "train: {epochs: -1,", 1))
    (tmp_path / "profile.yaml").write_text("profile: smoke\n")
    result = run([str(BIN / "snakemake"), "-n", "--config", f"params_file={tmp_path / 'bad.yaml'}", "--", "reports/smoke/table1.md"])
    assert result.returncode != 0
    assert "profiles.smoke.train.epochs: -1 is less than the minimum of 1" in result.stderr + result.stdout


def test_a_published_source_typo_is_caught_before_any_job(params):
    bad = copy.deepcopy(params)
    bad["tables"]["table1"]["published"]["sources"].append("kingma2061_iaf")
    with pytest.raises(ParamsError, match="tables.table1.published.sources.1: no published numbers from 'kingma2061_iaf'"):
        validate_params(bad, published=REPO / "reference/paper_results.csv")


def test_each_profile_builds_its_own_reports():
    """The committed quick tables never stand in for another profile's: a smoke target plans the smoke runs."""
    assert (REPO / "reports/quick/table1.md").is_file()
    result = run([str(BIN / "snakemake"), "-n", "--config", "profile=smoke", "--", "reports/smoke/table1.md"])
    assert result.returncode == 0, result.stderr
    assert "Nothing to be done" not in result.stdout + result.stderr
    assert "results/smoke/mnist_dynamic/vae/seed0/model.safetensors" in result.stdout
    assert "reports/quick/" not in result.stdout


def test_small_runs_share_a_gpu_by_hundredths(tmp_path, params):
    shared = copy.deepcopy(params)
    shared["profiles"]["paper"]["resources"].update(gpus=1, jobs_per_gpu=4)
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(shared))
    target = "results/paper/binarized_mnist/vae/seed0/model.safetensors"
    result = run([str(BIN / "snakemake"), "-n", "--forceall", "--config", f"params_file={tmp_path / 'p.yaml'}", "--", target])
    assert result.returncode == 0, result.stderr
    assert "gpu=1, gpu_hundredths=25" in result.stdout


@pytest.mark.parametrize("profile", ["smoke", "quick"])
def test_every_table_states_the_setup_of_its_runs(params, profile):
    from flowvae.report.tables import table_context

    for table in plan.table_names(params):
        setup = table_context(params, profile, params["tables"][table]["dataset"], table)["setup"]
        assert setup.startswith(params["tables"][table]["dataset"]) and "epochs" in setup
    setup = table_context(params, profile, "mnist_8bit", "table13")["setup"]
    assert "MLP GAN (generator 32-64" in setup or "MLP GAN (generator 128-256-512-1024" in setup
    assert "PixelCNN of 5 layers x 32 channels" in setup and "pixel real NVP" in setup
