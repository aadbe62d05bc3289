"""Where the project's files live: the run folder's layout, the prepared splits, the published numbers.

Every module and rule that names a run's file takes the name from here. A run folder
(`results/{profile}/{dataset}/{model}/seed{seed}`) holds, while it trains, `checkpoint/state.pt` and
`checkpoint/best.safetensors` (a replaced checkpoint moves to `checkpoint.replaced/`); the finished
run has the files of TRAIN_OUTPUTS and, once evaluated, those of EVAL_OUTPUTS.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from flowvae.spec.datasets import SPLITS

PROFILE_FILE = "profile.yaml"  # the active profile, beside the params file (spec/params.py read_params)
PUBLISHED_CSV = "reference/paper_results.csv"
SOURCES_CSV = "reference/sources.csv"  # each published source's citation and set-up, beside it
RESULTS_ROOT = "results"
REPORTS_ROOT = "reports"  # reports/{profile}/{table}.md and .tex, {summary}.md, figures{part}/
# The run folder as a pattern of Snakemake wildcards (and of DVC's foreach items, see dvcgen).
RUN_PATTERN = "results/{profile}/{dataset}/{model}/seed{seed}"

MODEL_FILE = "model.safetensors"  # the kept weights, the settings record as metadata
SETTINGS_FILE = "settings.json"  # the same record, readable
HISTORY_FILE = "train.jsonl"  # one line per epoch
CURVES_FILE = "train_curves.csv"  # train.jsonl's curves as CSV: DVC plots read no JSON lines
TIMINGS_FILE = "train_timings.json"  # seconds per epoch, train_minutes
EVAL_FILE = "eval.json"
METRICS_FILE = "metrics.json"  # a few named numbers of eval.json: what `dvc metrics show` and `dvc metrics diff` list
EVAL_TIMINGS_FILE = "eval_timings.json"
SAMPLES_FILE = "samples.npz"  # images and latent grids for the figures
PER_IMAGE_FILE = "per_image.npz"  # float64 -log p(x) and -ELBO of every test image: what paired differences need
AIS_FILE = "ais.json"  # `flowvae evaluate --estimator ais`: -log p(x) by annealed importance sampling (runs/ais.py)
AIS_PER_IMAGE_FILE = "ais_per_image.npz"  # its test images' indices and float64 -log p(x)
AIS_TIMINGS_FILE = "ais_timings.json"
GAPS_FILE = "gaps.json"  # `flowvae gaps`: L[q], L[q*] and AIS log p(x) on a seeded test subset (runs/gaps.py)
GAPS_PER_IMAGE_FILE = "gaps.npz"  # their per-image float64 values
BDMC_FILE = "bdmc.json"  # `flowvae bdmc`: forward and reverse AIS on images simulated from the model (runs/ais.py)
BDMC_PER_IMAGE_FILE = "bdmc.npz"  # their per-image bounds
# `flowvae gaussian-obs`: a VAE decoder's log p under the GAN's Gaussian observation model (runs/gaussian_observation.py)
GAUSSIAN_OBS_FILE = "gaussian_obs.json"
GAUSSIAN_OBS_PER_IMAGE_FILE = "gaussian_obs.npz"  # its test images' indices and float64 -log p
SAMPLE_QUALITY_FILE = "sample_quality.json"  # `flowvae sample-quality`: the Fréchet classifier distance (runs/sample_quality.py)
# A data set's feature classifier (`flowvae classifier`), beside its runs: results/{profile}/{dataset}/classifier/
CLASSIFIER_PATTERN = "results/{profile}/{dataset}/classifier"
CLASSIFIER_WEIGHTS = "classifier.safetensors"
CLASSIFIER_RECORD = "classifier.json"  # its test accuracy, training history and provenance
SOURCE_DIFF_FILE = "source.diff"  # uncommitted changes of the code that trained the run (--allow-dirty only)
EVAL_SOURCE_DIFF_FILE = "eval_source.diff"  # the same for the code that evaluated it
CHECKPOINT_DIR = "checkpoint"
REPLACED_DIR = "checkpoint.replaced"
STATE_FILE = f"{CHECKPOINT_DIR}/state.pt"
STOPPED_FILE = f"{CHECKPOINT_DIR}/stopped.json"  # why the trainer last stopped early; removed when it resumes
BEST_FILE = f"{CHECKPOINT_DIR}/best.safetensors"

TRAIN_OUTPUTS = (MODEL_FILE, SETTINGS_FILE, HISTORY_FILE, CURVES_FILE, TIMINGS_FILE)
EVAL_OUTPUTS = (EVAL_FILE, METRICS_FILE, EVAL_TIMINGS_FILE, SAMPLES_FILE, PER_IMAGE_FILE)
FIGURE_INPUTS = (EVAL_FILE, HISTORY_FILE, SAMPLES_FILE)  # what the figures notebook reads of each run


def classifier_dir(profile: str, dataset: str, root: str | Path = RESULTS_ROOT) -> Path:
    """results/{profile}/{dataset}/classifier: the feature classifier of the Fréchet classifier distance."""
    return Path(root) / profile / dataset / "classifier"


def run_dir(profile: str, dataset: str, model: str, seed: int, root: str | Path = RESULTS_ROOT) -> Path:
    """results/{profile}/{dataset}/{model}/seed{seed}."""
    return Path(root) / profile / dataset / model / f"seed{seed}"


@dataclass(frozen=True)
class RunFolder:
    """The files of one run's folder."""

    root: Path

    def __truediv__(self, name: str) -> Path:
        return self.root / name

    @property
    def model(self) -> Path:
        return self.root / MODEL_FILE

    @property
    def settings(self) -> Path:
        return self.root / SETTINGS_FILE

    @property
    def history(self) -> Path:
        return self.root / HISTORY_FILE

    @property
    def curves(self) -> Path:
        return self.root / CURVES_FILE

    @property
    def timings(self) -> Path:
        return self.root / TIMINGS_FILE

    @property
    def eval(self) -> Path:
        return self.root / EVAL_FILE

    @property
    def metrics(self) -> Path:
        return self.root / METRICS_FILE

    @property
    def eval_timings(self) -> Path:
        return self.root / EVAL_TIMINGS_FILE

    @property
    def samples(self) -> Path:
        return self.root / SAMPLES_FILE

    @property
    def per_image(self) -> Path:
        return self.root / PER_IMAGE_FILE

    @property
    def ais(self) -> Path:
        return self.root / AIS_FILE

    @property
    def ais_per_image(self) -> Path:
        return self.root / AIS_PER_IMAGE_FILE

    @property
    def ais_timings(self) -> Path:
        return self.root / AIS_TIMINGS_FILE

    @property
    def source_diff(self) -> Path:
        return self.root / SOURCE_DIFF_FILE

    @property
    def eval_source_diff(self) -> Path:
        return self.root / EVAL_SOURCE_DIFF_FILE

    @property
    def checkpoint(self) -> Path:
        return self.root / CHECKPOINT_DIR

    @property
    def state(self) -> Path:
        return self.root / STATE_FILE

    @property
    def stopped(self) -> Path:
        return self.root / STOPPED_FILE

    @property
    def best(self) -> Path:
        return self.root / BEST_FILE

    @property
    def replaced(self) -> Path:
        return self.root / REPLACED_DIR


def verify_report(profile: str, table: str) -> str:
    """reports/{profile}/verify_{table}.txt: what `flowvae verify` found for one seed of each row of a table."""
    return f"{REPORTS_ROOT}/{profile}/verify_{table}.txt"


def report_files(profile: str, name: str, root: str | Path = ".") -> list[Path]:
    """The files of a table (its .md, .tex and .html) or of a summary page (its .md) under reports/{profile}/."""
    folder = Path(root) / REPORTS_ROOT / profile
    return [folder / f"{name}.md", folder / f"{name}.tex", folder / f"{name}.html"]


def prepared_dir(params: dict, profile: str, dataset: str) -> Path:
    """data/prepared/{profile}/{dataset}: each profile prepares its own subsets."""
    return Path(params["data"]["prepared_dir"]) / profile / dataset


def prepared_files(params: dict, profile: str, dataset: str) -> list[str]:
    """The prepared split files of a data set for a profile."""
    root = params["data"]["prepared_dir"]
    return [f"{root}/{profile}/{dataset}/{split}.npz" for split in SPLITS]


def train_log(profile: str, dataset: str, model: str, seed: int, root: str | Path = ".") -> Path:
    """The Snakemake log of a run's training: logs/train/<profile>/<dataset>/<model>/seed<seed>.log."""
    return Path(root) / "logs" / "train" / profile / dataset / model / f"seed{seed}.log"
