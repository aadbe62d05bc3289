"""What the reports read: eval.json (with its timings), train.jsonl, and the published numbers. Never a model, never torch."""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from flowvae.files.errors import CorruptFileError
from flowvae.files.jsonfiles import read_json_lines, read_json_object
from flowvae.spec.layout import (
    AIS_FILE, AIS_PER_IMAGE_FILE, BDMC_FILE, EVAL_FILE, EVAL_TIMINGS_FILE, GAPS_FILE, GAUSSIAN_OBS_FILE, HISTORY_FILE, PER_IMAGE_FILE,
    SAMPLE_QUALITY_FILE, TIMINGS_FILE,
)
from flowvae.spec.metrics import GAUSSIAN_OBS_ESTIMATOR

# The evaluations beside eval.json that a table reads: (file, key of the eval's dict, the command that writes it)
BESIDE_EVAL = (
    (AIS_FILE, "ais", "flowvae evaluate --estimator ais"),  # ais_neg_log_px, is_bias
    (GAPS_FILE, "gaps", "flowvae gaps RUN_DIR"),  # the GAP_METRICS
    (BDMC_FILE, "bdmc", "flowvae bdmc RUN_DIR"),  # the BDMC check of the AIS settings, stated in the caption
    (SAMPLE_QUALITY_FILE, "sample_quality", "flowvae sample-quality RUN_DIR"),  # the Fréchet classifier distance
    (GAUSSIAN_OBS_FILE, "gaussian_obs", "flowvae gaussian-obs RUN_DIR"),  # a VAE decoder under the Gaussian observation model
)

RETRAIN_HISTORY = f"delete the run's {HISTORY_FILE} and rerun its training (it resumes from its checkpoint and writes the file again)"
PUBLISHED_COLUMNS = ("source", "table", "dataset", "model", "metric", "value", "note", "status", "where")
# primary: read in the paper or the authors' code (`where` says where); secondary: quoted by a named later
# source (`where` names it); unverified: recalled, garbled or not found (`where` says what was searched).
STATUSES = ("primary", "secondary", "unverified")
SOURCE_COLUMNS = ("source", "citation", "data", "network", "training")


def load_published(csv_path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read paper_results.csv: one row per (source, table, dataset, model, metric) with a float value,
    its status and where it was read; ValueError naming the line of a row without them."""
    df = pd.read_csv(csv_path, dtype={c: str for c in ("source", "dataset", "model", "metric", "note", "status", "where")})
    missing = [c for c in PUBLISHED_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing columns {missing}; expected {list(PUBLISHED_COLUMNS)}")
    df["table"] = pd.to_numeric(df["table"], errors="coerce").astype("Int64")
    df["value"] = pd.to_numeric(df["value"], errors="raise").astype(float)
    for column in ("note", "status", "where"):
        df[column] = df[column].fillna("").str.strip()
    for i, row in df.iterrows():
        line = f"{csv_path}, line {i + 2} ({row['source']} {row['model']} {row['metric']})"
        if row["status"] not in STATUSES:
            raise ValueError(f"{line}: status {row['status']!r} is not one of {list(STATUSES)}")
        if not row["where"]:
            raise ValueError(f"{line}: `where` is empty; every published number says where it was read")
    return df


def load_sources(csv_path: str | os.PathLike[str]) -> dict[str, dict[str, str]]:
    """Read sources.csv: per published source, its readable citation and the set-up behind its numbers."""
    df = pd.read_csv(csv_path, dtype=str).fillna("")
    missing = [c for c in SOURCE_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"{csv_path}: missing columns {missing}; expected {list(SOURCE_COLUMNS)}")
    return {row["source"]: dict(row) for _, row in df.iterrows()}


def load_eval(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read one eval.json, with the timings beside it merged in; ValueError if it lacks the fields that identify the run.

    Timings live in their own files (eval_timings.json, train_timings.json) so that eval.json has the
    same bytes for the same run; a table reads train_minutes and eval_seconds from them.
    """
    ev = read_json_object(path, "rerun the run's evaluation (delete it; Snakemake or `flowvae evaluate` writes it again)")
    missing = [k for k in ("model", "dataset") if k not in ev]
    if missing:
        raise ValueError(f"{path}: eval.json lacks {missing}")
    per_image = Path(path).with_name(PER_IMAGE_FILE)
    if per_image.is_file():  # for paired differences between rows (report/paired.py)
        ev["_per_image"] = _arrays(per_image, "delete it and rerun the run's evaluation")
    for name, key, command in BESIDE_EVAL:
        beside = Path(path).with_name(name)
        if beside.is_file():
            ev[key] = read_json_object(beside, f"delete it and rerun `{command}`")
    if "ais" in ev and Path(path).with_name(AIS_PER_IMAGE_FILE).is_file():
        ev["_ais_per_image"] = _arrays(Path(path).with_name(AIS_PER_IMAGE_FILE), "delete it and rerun `flowvae evaluate --estimator ais`")
    if ev.get("estimator") == GAUSSIAN_OBS_ESTIMATOR:  # the GAN's own evaluation is the Gaussian-observation one
        ev["gaussian_obs"] = {k: ev[k] for k in ("neg_log_px", "neg_log_px_se", "bits_per_dim", "sigma") if k in ev}
    for name, keys in ((EVAL_TIMINGS_FILE, ("eval_seconds", "is_samples_per_s")), (TIMINGS_FILE, ("train_minutes",))):
        beside = Path(path).with_name(name)
        if beside.is_file():
            timings = read_json_object(beside, "delete it and rerun the job that writes it")
            ev.update({k: timings[k] for k in keys if k in timings})
    return ev


def _arrays(path: Path, remedy: str) -> dict[str, np.ndarray]:
    """Every array of an .npz file; CorruptFileError naming the file and the remedy if it does not read."""
    try:
        with np.load(path, allow_pickle=False) as arrays:
            return {name: arrays[name] for name in arrays.files}
    except (OSError, ValueError, EOFError) as exc:
        raise CorruptFileError(f"{path} is corrupt ({exc}); {remedy}") from None


def load_train_log(path: str | os.PathLike[str]) -> pd.DataFrame:
    """Read a train.jsonl (one JSON object per epoch) into a DataFrame."""
    return pd.DataFrame(read_json_lines(path, RETRAIN_HISTORY))


def run_id(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Profile, dataset, model and seed of a run file: from the eval.json beside it, else the path."""
    p = Path(path)
    beside = p.with_name(EVAL_FILE)
    if beside.is_file():
        try:
            ev = load_eval(beside)
            return {k: ev.get(k) for k in ("profile", "dataset", "model", "seed")}
        except (OSError, ValueError):
            pass
    # results/{profile}/{dataset}/{model}/seed{seed}/file
    parts = p.parts
    match = re.fullmatch(r"seed(\d+)", parts[-2]) if len(parts) >= 2 else None
    if match and len(parts) >= 5:
        return {"profile": parts[-5], "dataset": parts[-4], "model": parts[-3], "seed": int(match.group(1))}
    return {"profile": None, "dataset": None, "model": p.parent.name or p.stem, "seed": None}
