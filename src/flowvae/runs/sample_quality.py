"""Sample quality: the Fréchet classifier distance (FCD, runs/frechet.py) of a trained model's samples.

`flowvae classifier` trains a data set's feature classifier on its training split and labels, and writes
results/{profile}/{dataset}/classifier/ (weights, and a record with its test accuracy and provenance).
`flowvae sample-quality RUN_DIR` draws `samples` images from the run's model in `sets` seeded sets and writes
sample_quality.json: each set's FCD to the test images, their mean and its standard error.

What a "sample" is depends on the model, and the JSON says it: the VAEs' `sample` decodes prior draws to the
decoder's mean image (as VAE samples are usually shown); the pixel real NVP, the PixelCNN and the GAN draw
images. Images are compared in [0, 1]: 8-bit values k/255, binary ones 0/1.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import numpy as np
import torch

from flowvae.data.prepare import load_split
from flowvae.files import provenance
from flowvae.files.atomic import write_json
from flowvae.files.errors import CorruptFileError
from flowvae.files.jsonfiles import read_json_object
from flowvae.files.provenance import SourceState, source_state
from flowvae.files.safeload import load_safetensors
from flowvae.models.contract import LatentVariableModel
from flowvae.runs.checkpoint import save_weights
from flowvae.runs.device import pick_device
from flowvae.runs.frechet import FeatureClassifier, accuracy, frechet_with_error, train_classifier
from flowvae.spec.datasets import DatasetSpec
from flowvae.spec.layout import CLASSIFIER_RECORD, CLASSIFIER_WEIGHTS, SAMPLE_QUALITY_FILE, classifier_dir, prepared_dir
from flowvae.spec.params import profile_settings, source_dataset
from flowvae.spec.settings import SampleQualitySettings

CLASSIFIER_SEED = 0
SAMPLE_SEED = 80_000  # set i of run seed s draws with torch.Generator seed SAMPLE_SEED + 1000 s + i


def sample_quality_settings(params: dict, profile: str) -> SampleQualitySettings:
    """profiles.<profile>.sample_quality, typed."""
    return SampleQualitySettings.from_params(profile_settings(params, profile)["sample_quality"])


def images_01(x: np.ndarray, dataset: DatasetSpec) -> np.ndarray:
    """A prepared split's images (uint8) in [0, 1]: binary ones as they are, 8-bit ones k/255."""
    x = x.astype(np.float32)
    return x if dataset.binarize == "fixed" else x / 255.0


def labelled_split(params: dict, profile: str, dataset: str, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images in [0, 1], labels) of a prepared split; ValueError if the data set has no labels."""
    source = source_dataset(params, profile, dataset)
    spec = DatasetSpec.from_params(source, params["datasets"][source])
    path = prepared_dir(params, profile, dataset) / f"{split}.npz"
    x, y = load_split(path, spec=spec)
    if y is None:
        raise ValueError(f"{path} holds no labels: the feature classifier needs a labelled data set, and {dataset} has none")
    return images_01(x, spec), y


def train_feature_classifier(params: dict, profile: str, dataset: str, threads: int | None = None,
                             device: str | None = None, source: SourceState | None = None) -> dict:
    """Train a data set's feature classifier; write its weights and record under classifier_dir; return the record."""
    if threads is not None:
        torch.set_num_threads(threads)
    settings = sample_quality_settings(params, profile)
    dev = pick_device(device)
    (x, y), (xv, yv), (xt, yt) = (labelled_split(params, profile, dataset, s) for s in ("train", "valid", "test"))
    start = time.perf_counter()
    model, history = train_classifier(x, y, xv, yv, settings.classifier_epochs, 128, CLASSIFIER_SEED, dev)
    record = {
        "profile": profile, "dataset": dataset, "num_classes": int(model.head.out_features), "image_shape": list(x.shape[1:]),
        "epochs": settings.classifier_epochs, "seed": CLASSIFIER_SEED, "optimizer": "adam", "lr": 1e-3, "batch_size": 128,
        "n_params": sum(p.numel() for p in model.parameters()), "history": history,
        "test_accuracy": accuracy(model, xt, yt), "train_seconds": round(time.perf_counter() - start, 1),
        **provenance.record(source if source is not None else source_state()),
    }
    out = classifier_dir(profile, dataset)
    out.mkdir(parents=True, exist_ok=True)
    save_weights(model.state_dict(), out / CLASSIFIER_WEIGHTS, {k: record[k] for k in ("dataset", "num_classes", "image_shape")})
    write_json(out / CLASSIFIER_RECORD, record)
    return record


def load_classifier(profile: str, dataset: str, device: torch.device) -> tuple[FeatureClassifier, dict, str]:
    """The trained feature classifier of a data set, its record and the sha256 of its weights file."""
    folder = classifier_dir(profile, dataset)
    remedy = f"train it with `flowvae classifier --profile {profile} --dataset {dataset}` (Snakemake's rule classifier)"
    record_path, weights = folder / CLASSIFIER_RECORD, folder / CLASSIFIER_WEIGHTS
    if not weights.is_file():
        raise FileNotFoundError(f"{weights} is missing: {remedy}")
    record = read_json_object(record_path, remedy)
    if "num_classes" not in record or "image_shape" not in record:
        raise CorruptFileError(f"{record_path} lacks num_classes or image_shape; {remedy}")
    model = FeatureClassifier(int(record["num_classes"]), tuple(record["image_shape"]))
    model.load_state_dict(load_safetensors(weights, "a feature classifier", remedy))
    return model.to(device).eval(), record, hashlib.sha256(weights.read_bytes()).hexdigest()


def sample_kind(model) -> str:
    """What `model.sample` returns, in words for the JSON: a VAE's decoder means, or the images a density model or GAN draws."""
    return "decoder means of prior draws" if isinstance(model, LatentVariableModel) and not model.exact_likelihood else "samples"


@torch.no_grad()
def draw_sets(model, settings: SampleQualitySettings, seed: int, device: torch.device) -> list[np.ndarray]:
    """`sets` seeded sets of samples/sets images each, in [0, 1], drawn batch by batch."""
    per_set = settings.samples // settings.sets
    sets = []
    for i in range(settings.sets):
        generator = torch.Generator(device=device).manual_seed(SAMPLE_SEED + 1000 * seed + i)
        parts, drawn = [], 0
        while drawn < per_set:
            n = min(settings.batch_size, per_set - drawn)
            parts.append(model.sample(n, generator=generator).float().clamp(0, 1).cpu().numpy())
            drawn += n
        sets.append(np.concatenate(parts))
    return sets


def evaluate_sample_quality(spec, run_dir: str | Path, settings: SampleQualitySettings, threads: int | None = None,
                            device: str | None = None, source: SourceState | None = None) -> dict:
    """FCD of a trained run's samples to its data set's test images; writes sample_quality.json and returns its dict."""
    from flowvae.runs.ais import load_trained

    if threads is not None:
        torch.set_num_threads(threads)
    dev = pick_device(device)
    model = load_trained(spec, run_dir, dev)
    classifier, record, sha256 = load_classifier(spec.profile, spec.dataset_name, dev)
    test_images = test_images_01(spec)
    start = time.perf_counter()
    sets = draw_sets(model, settings, spec.seed, dev)
    sampling_seconds = time.perf_counter() - start
    fcd = frechet_with_error(classifier, sets, test_images, settings.batch_size)
    result = {
        "profile": spec.profile, "dataset": spec.dataset_name, "model": spec.variant.name, "seed": spec.seed,
        "code_version": spec.code_version, **provenance.record(source if source is not None else source_state()),
        "metric": "Fréchet classifier distance (FID's construction with this project's classifier, not Inception)",
        "fcd": fcd["fcd"], "fcd_se": fcd["fcd_se"], "per_set": fcd["per_set"],
        "samples": settings.samples, "sets": settings.sets, "samples_per_set": settings.samples // settings.sets,
        "reference": f"the {len(test_images)} test images", "sample_kind": sample_kind(model),
        "classifier": {"test_accuracy": record.get("test_accuracy"), "epochs": record.get("epochs"), "sha256": sha256},
        "sampling_seconds": round(sampling_seconds, 1),
    }
    write_json(Path(run_dir) / SAMPLE_QUALITY_FILE, result)
    return result


def test_images_01(spec) -> np.ndarray:
    """The test images of a run's data set, in [0, 1]: the reference the samples are compared with."""
    x, _ = load_split(spec.prepared_dir / "test.npz", spec=spec.dataset)
    return images_01(x, spec.dataset)
