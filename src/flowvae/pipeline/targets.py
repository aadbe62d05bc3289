"""A requested target that no rule can make, explained before Snakemake's generic "No rule to produce".

Only paths under results/ and reports/ are checked, and only their names that params.yaml and the
variant grammar define (profile, data set, model, seed, run file, table, summary page); any other
target is left to Snakemake. The message lists the valid patterns and the nearest known names.
"""

from __future__ import annotations

import difflib
import re
from pathlib import Path, PurePosixPath

from flowvae.spec import layout
from flowvae.spec.variants import WILDCARD_PATTERN

PATTERNS = (
    "results/<profile>/<dataset>/<model>/seed<n>/<file>   e.g. results/quick/binarized_mnist/iaf_d4_w1920/seed0/eval.json",
    "reports/<profile>/<table>.md (or .tex)              e.g. reports/quick/table1.md",
    "reports/<profile>/summary.md, summary_<name>.md     every table, or one of params.yaml's summaries",
    "reports/<profile>/verify_<table>.txt                re-run a table's first seeds and compare",
)
# Models named anywhere in params.yaml, and a few of every family, to suggest from.
_EXAMPLE_MODELS = ("vae", "nf10", "rnvp5", "iaf_d2_w320", "iaf_d4_w1920", "osnf4_m8", "hsnf4_h8", "tsnf4", "resvae_r4_iaf",
                   "vae_iwae50", "realnvp_s2_b2")


def _nearest(name: str, known) -> str:
    close = difflib.get_close_matches(name, sorted(known), n=3, cutoff=0.5)
    return f"; did you mean {' or '.join(close)}?" if close else ""


def _known_models(params: dict) -> set[str]:
    models = {row["model"] for table in (params.get("tables") or {}).values() for row in table["rows"]}
    return models | set((params.get("figures") or {}).get("latent2d", {}).get("variants", [])) | set(_EXAMPLE_MODELS)


def _run_file_names() -> set[str]:
    return {v for k, v in vars(layout).items() if k.endswith("_FILE") and isinstance(v, str)}


def problems(params: dict, target: str) -> list[str]:
    """What is wrong with one target's names; empty when they are all known (or the target is not checked)."""
    parts = PurePosixPath(target.strip()).parts
    if len(parts) < 2 or parts[0] not in ("results", "reports"):
        return []
    found = []
    profile = parts[1]
    if profile not in params["profiles"]:
        found.append(f"profile {profile!r} is not one of {', '.join(params['profiles'])}{_nearest(profile, params['profiles'])}")
    if parts[0] == "results":
        if len(parts) > 2 and parts[2] not in params["datasets"]:
            found.append(f"data set {parts[2]!r} is not in params.yaml's datasets{_nearest(parts[2], params['datasets'])}")
        if len(parts) > 3 and not re.fullmatch(WILDCARD_PATTERN, parts[3]):
            found.append(f"model {parts[3]!r} is not a variant name{_nearest(parts[3], _known_models(params))}")
        if len(parts) > 4 and not re.fullmatch(r"seed\d+", parts[4]):
            found.append(f"{parts[4]!r} is not a seed folder (seed0, seed1, ...)")
        if len(parts) < 6 and not found:
            rest = ["<profile>", "<dataset>", "<model>", "seed0", layout.EVAL_FILE][len(parts) - 1:]
            found.append(f"a folder is not a target: name a file in it, e.g. {'/'.join([*parts, *rest])}")
        files = _run_file_names()
        if len(parts) == 6 and parts[5] not in files:
            found.append(f"{parts[5]!r} is not a file of a run folder ({', '.join(sorted(files))}){_nearest(parts[5], files)}")
    elif len(parts) == 2 and not found:
        found.append(f"a folder is not a target: name a table or summary page in it, e.g. {parts[0]}/{profile}/summary.md")
    elif len(parts) == 3:
        name, suffix = PurePosixPath(parts[2]).stem, PurePosixPath(parts[2]).suffix
        tables = set(params.get("tables") or {})
        pages = tables | {f"summary_{s}" for s in params.get("summaries") or {}} | {"summary"}
        if suffix in (".md", ".tex") and name not in pages:
            found.append(f"{name!r} is not a table or summary page of params.yaml{_nearest(name, pages)}")
        if suffix == ".txt" and name.startswith("verify_") and name.removeprefix("verify_") not in tables:
            table = name.removeprefix("verify_")
            found.append(f"{table!r} is not a table of params.yaml{_nearest(table, tables)}")
    return found


def unknown_targets_message(params: dict, targets) -> str | None:
    """One message for every requested target with an unknown name, or None when there is none."""
    lines = [f"{target}: {problem}" for target in sorted(targets or ()) for problem in problems(params, target)]
    if not lines:
        return None
    return "\n".join(["No rule can make these targets:", *(f"  {line}" for line in lines), "Targets look like:",
                      *(f"  {p}" for p in PATTERNS)])


def command_line_targets(argv: list[str]) -> list[str]:
    """The targets of a `snakemake ...` command line (Snakemake parses its Snakefile before it knows them)."""
    if not argv or Path(argv[0]).name != "snakemake":
        return []
    from snakemake.cli import get_argument_parser

    try:
        return list(get_argument_parser().parse_args(argv[1:]).targets or [])
    except (SystemExit, Exception):  # a command line Snakemake itself will reject: leave the message to it
        return []
