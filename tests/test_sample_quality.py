"""Sample quality: the feature classifier trains from a prepared labelled split and is recorded; a run's samples are
scored in seeded sets, with the same bytes on a rerun; samples like the test images score far better than noise."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from flowvae.runs import sample_quality
from flowvae.runs.sample_quality import evaluate_sample_quality, load_classifier, train_feature_classifier
from flowvae.runs.train import Trainer
from flowvae.spec.layout import SAMPLE_QUALITY_FILE, classifier_dir
from flowvae.spec.run import RunSpec
from flowvae.spec.settings import SampleQualitySettings


def _patterns(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """8-bit 8x8 images of four classes (a bright quadrant each) with noise, and their labels."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 4, n)
    x = rng.integers(0, 60, (n, 1, 8, 8))
    for i, label in enumerate(y):
        r, c = divmod(int(label), 2)
        x[i, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 180
    return x.astype(np.uint8), y.astype(np.int64)


@pytest.fixture
def labelled(tmp_path, monkeypatch):
    """params with a labelled 8-bit data set prepared under tmp_path, run from tmp_path (results/ lands there)."""
    from conftest import tiny_params

    monkeypatch.chdir(tmp_path)
    params = tiny_params(tmp_path, epochs=1)
    folder = tmp_path / "prepared" / "test" / "quadrants"
    folder.mkdir(parents=True)
    sizes = {"train": 400, "valid": 100, "test": 200}
    for i, (split, n) in enumerate(sizes.items()):
        x, y = _patterns(n, i)
        np.savez(folder / f"{split}.npz", x=x, y=y)
    params["datasets"]["quadrants"] = {"kind": "synthetic", "binarize": "none", "likelihood": "discretized_logistic",
                                       "shape": [1, 8, 8], "splits": sizes}
    params["profiles"]["test"]["sample_quality"] = {"samples": 40, "sets": 2, "classifier_epochs": 2, "batch_size": 20}
    return params


def test_the_classifier_is_trained_recorded_and_loaded(labelled):
    record = train_feature_classifier(labelled, "test", "quadrants", threads=1)
    assert record["test_accuracy"] > 0.9 and len(record["history"]) == 2
    model, saved, sha256 = load_classifier("test", "quadrants", torch.device("cpu"))
    assert saved == json.loads((classifier_dir("test", "quadrants") / "classifier.json").read_text()) and len(sha256) == 64
    x, y = _patterns(50, 7)
    assert (model(torch.from_numpy(x / 255.0).float()).argmax(1).numpy() == y).mean() > 0.9


def test_a_dataset_without_labels_is_refused(labelled):
    with pytest.raises(ValueError, match="holds no labels"):
        train_feature_classifier(labelled, "test", "stripes")


def test_a_missing_classifier_names_the_command(labelled, tmp_path):
    with pytest.raises(FileNotFoundError, match="flowvae classifier --profile test --dataset quadrants"):
        load_classifier("test", "quadrants", torch.device("cpu"))


def test_a_runs_samples_are_scored_in_seeded_sets(labelled, tmp_path, monkeypatch):
    train_feature_classifier(labelled, "test", "quadrants", threads=1)
    spec = RunSpec.resolve(labelled, "test", "quadrants", "vae", 0)
    run = tmp_path / "run"
    Trainer(spec, run).run()
    settings = SampleQualitySettings.from_params(labelled["profiles"]["test"]["sample_quality"])
    first = evaluate_sample_quality(spec, run, settings, threads=1)
    text = (run / SAMPLE_QUALITY_FILE).read_text()
    assert first["sample_kind"] == "decoder means of prior draws" and first["samples_per_set"] == 20
    assert len(first["per_set"]) == 2 and first["fcd_se"] > 0 and first["fcd"] == pytest.approx(np.mean(first["per_set"]))
    evaluate_sample_quality(spec, run, settings, threads=1)
    assert (run / SAMPLE_QUALITY_FILE).read_text() == text  # same seeds, same bytes

    # Samples that are test-like images score far below noise under the same classifier.
    real, _ = _patterns(20, 11)
    monkeypatch.setattr(sample_quality, "draw_sets", lambda model, s, seed, device: [real / 255.0, real[::-1] / 255.0])
    like_data = evaluate_sample_quality(spec, run, settings, threads=1)["fcd"]
    noise = np.random.default_rng(0).random((2, 20, 1, 8, 8)).astype(np.float32)
    monkeypatch.setattr(sample_quality, "draw_sets", lambda model, s, seed, device: list(noise))
    assert like_data * 5 < evaluate_sample_quality(spec, run, settings, threads=1)["fcd"]


def test_settings_that_cannot_split_into_sets_are_refused():
    with pytest.raises(ValueError, match="sets"):
        SampleQualitySettings.from_params({"samples": 10, "sets": 3})
    with pytest.raises(ValueError, match="sets"):
        SampleQualitySettings.from_params({"samples": 10, "sets": 1})
