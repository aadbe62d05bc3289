"""Data sets as params.yaml describes them: their files (with checksums), format, shape, splits and likelihood.

No torch and no numpy here: the pipeline's planning layer reads these without loading either.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import PurePosixPath

SPLITS = ("train", "valid", "test")
KINDS = ("amat", "idx", "cifar_python", "synthetic", "freyfaces_pickle", "omniglot_mat", "caltech_mat")
SEEDED_KINDS = ("freyfaces_pickle", "omniglot_mat")  # kinds whose split is a seeded shuffle: split_seed required


def relative_file_path(path: str) -> str:
    """path, if it stays inside the folder it is joined to (the mirror, data.raw_dir); else ValueError naming it."""
    parts = PurePosixPath(path).parts if isinstance(path, str) else ()
    if not parts or path.startswith("/") or any(p in (".", "..") for p in path.split("/")):
        raise ValueError(
            f"data file {path!r}: must be a relative path inside the mirror and data.raw_dir: "
            f"no leading '/', no '.' or '..' part"
        )
    return path


@dataclass(frozen=True)
class RemoteFile:
    """One file of a data set: where it lives officially, in a mirror, and what it must hash to."""

    path: str  # relative path, the same inside the mirror and inside the local raw folder
    url: str
    size: int
    checksum: str  # "md5:<hex>" or "sha256:<hex>"

    @classmethod
    def from_params(cls, entry: dict) -> "RemoteFile":
        """Build from a params.yaml entry {path, url, size, md5|sha256}."""
        algorithms = [a for a in ("sha256", "md5") if a in entry]
        if len(algorithms) != 1:
            raise ValueError(f"data file {entry.get('path')!r}: give exactly one of sha256 or md5")
        algo = algorithms[0]
        return cls(relative_file_path(entry["path"]), entry["url"], int(entry["size"]), f"{algo}:{entry[algo]}")

    @property
    def algorithm(self) -> str:
        return self.checksum.split(":", 1)[0]

    @property
    def digest(self) -> str:
        return self.checksum.split(":", 1)[1].lower()


@dataclass(frozen=True)
class UnverifiedFile:
    """A file params.yaml names without a first-hand size and checksum (`datasets.<name>.unverified_files`).

    With a (second-hand) checksum it is fetched and verified like any other file; without one it is
    never fetched nor trusted, and preparing its data set fails with a message saying what to add.
    """

    path: str
    url: str
    checksum: str | None = None  # "md5:<hex>" or "sha256:<hex>"

    @classmethod
    def from_params(cls, entry: dict) -> "UnverifiedFile":
        algorithms = [a for a in ("sha256", "md5") if a in entry]
        if len(algorithms) > 1:
            raise ValueError(f"data file {entry.get('path')!r}: give at most one of sha256 or md5")
        checksum = f"{algorithms[0]}:{entry[algorithms[0]]}" if algorithms else None
        return cls(relative_file_path(entry["path"]), entry["url"], checksum)


@dataclass(frozen=True)
class DatasetSpec:
    """A data set as params.yaml describes it."""

    name: str
    kind: str  # one of KINDS
    likelihood: str | None  # bernoulli | discretized_logistic | categorical (params.yaml requires it; data tests may omit it)
    binarize: str  # none | fixed | dynamic: how batches are served
    shape: tuple[int, int, int]
    files: dict[str, RemoteFile]
    split_sizes: dict[str, int]
    digits: tuple[int, ...] = ()  # keep only these labels (idx data sets)
    split_seed: int | None = None  # the seeded shuffle of SEEDED_KINDS
    unverified_files: dict[str, UnverifiedFile] = field(default_factory=dict)
    entry: dict = field(default_factory=dict, compare=False, repr=False)  # the params.yaml entry as written: the settings record keeps it

    @classmethod
    def from_params(cls, name: str, entry: dict) -> "DatasetSpec":
        """Build from params.yaml `datasets.<name>`."""
        kind = entry.get("kind")
        if kind not in KINDS:
            raise ValueError(f"datasets.{name}.kind: {kind!r} is not one of {KINDS}")
        files = {role: RemoteFile.from_params(f) for role, f in (entry.get("files") or {}).items()}
        unverified = {role: UnverifiedFile.from_params(f) for role, f in (entry.get("unverified_files") or {}).items()}
        both = sorted(files.keys() & unverified.keys())
        if both:
            raise ValueError(f"datasets.{name}: {both} listed under both files and unverified_files")
        split_seed = entry.get("split_seed")
        if kind in SEEDED_KINDS and split_seed is None:
            raise ValueError(f"datasets.{name}.split_seed: required for kind {kind!r} (its split is a seeded shuffle)")
        return cls(
            name=name,
            kind=kind,
            likelihood=entry.get("likelihood"),
            binarize=entry.get("binarize", "none"),
            shape=tuple(entry["shape"]),
            files=files,
            split_sizes={k: int(v) for k, v in entry["splits"].items()},
            digits=tuple(entry.get("digits", ())),
            split_seed=None if split_seed is None else int(split_seed),
            unverified_files=unverified,
            entry=copy.deepcopy(entry),
        )
