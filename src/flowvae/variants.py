"""The grammar of model variant names: a name is a whole model specification."""

from __future__ import annotations

import re
from dataclasses import dataclass

GRAMMAR = (
    "vae | nf{k} | rnvp{k} | iaf_d{depth}_w{width} | iaf_d{depth}_w{width}_fixed | "
    "osnf{k}_m{M} | hsnf{k}_h{H} | tsnf{k} | "
    "resvae_r{rungs}_gauss | resvae_r{rungs}_iaf, optionally followed by _elbo{k} or _iwae{k} "
    "(k samples in the training objective), or realnvp_s{scales}_b{blocks} (a pixel-space real NVP "
    "density model); every number a positive integer, e.g. 'nf10', 'iaf_d2_w320', 'vae_iwae50', 'osnf16_m32', 'realnvp_s2_b4'"
)

_POSITIVE = r"[1-9][0-9]*"
_POSTERIOR = (
    rf"vae|nf(?P<nf>{_POSITIVE})|rnvp(?P<rnvp>{_POSITIVE})"
    rf"|iaf_d(?P<depth>{_POSITIVE})_w(?P<width>{_POSITIVE})(?P<fixed>_fixed)?"
    rf"|resvae_r(?P<rungs>{_POSITIVE})_(?P<ladder>gauss|iaf)"
    rf"|osnf(?P<osnf>{_POSITIVE})_m(?P<columns>{_POSITIVE})|hsnf(?P<hsnf>{_POSITIVE})_h(?P<reflections>{_POSITIVE})"
    rf"|tsnf(?P<tsnf>{_POSITIVE})"
)
_OBJECTIVE = rf"(?:_(?P<objective>elbo|iwae)(?P<objective_k>{_POSITIVE}))?"
_DENSITY = rf"realnvp_s(?P<scales>{_POSITIVE})_b(?P<blocks>{_POSITIVE})"

# Usable as a Snakemake wildcard constraint: no named groups, anchored by Snakemake itself.
WILDCARD_PATTERN = re.sub(r"\?P<\w+>", "", f"(?:(?:{_POSTERIOR}){_OBJECTIVE}|{_DENSITY})")
_FULL = re.compile(f"^(?:(?:{_POSTERIOR}){_OBJECTIVE}|{_DENSITY})$")


@dataclass(frozen=True)
class Variant:
    """A parsed variant name."""

    name: str
    family: str  # vae | nf | rnvp | iaf | osnf | hsnf | tsnf | resvae | realnvp (a pixel-space density model, no VAE)
    steps: int = 0  # planar, real-NVP or Sylvester steps, IAF depth, ResNet-VAE rungs or pixel real-NVP scales
    width: int = 0  # MADE hidden width (IAF), residual blocks per s/t network (pixel real NVP),
    # columns of Q (osnf) or Householder reflections (hsnf)
    fixed_sigma: bool = False  # IAF with sigma fixed to 1
    ladder_posterior: str = ""  # gauss | iaf (resvae only)
    objective: str = "elbo"  # elbo | iwae
    objective_k: int = 1  # samples per data point in the training objective


def parse_variant(name: str) -> Variant:
    """Parse a variant name; raise ValueError quoting the grammar if it is not one."""
    match = _FULL.match(name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(f"unknown model variant {name!r}; expected {GRAMMAR}")
    g = match.groupdict()
    objective = g["objective"] or "elbo"
    objective_k = int(g["objective_k"] or 1)
    common = dict(name=name, objective=objective, objective_k=objective_k)
    if g["scales"]:
        return Variant(family="realnvp", steps=int(g["scales"]), width=int(g["blocks"]), **common)
    if g["nf"]:
        return Variant(family="nf", steps=int(g["nf"]), **common)
    if g["rnvp"]:
        return Variant(family="rnvp", steps=int(g["rnvp"]), **common)
    if g["depth"]:
        return Variant(
            family="iaf",
            steps=int(g["depth"]),
            width=int(g["width"]),
            fixed_sigma=bool(g["fixed"]),
            **common,
        )
    for family, size in (("osnf", "columns"), ("hsnf", "reflections"), ("tsnf", None)):
        if g[family]:
            return Variant(family=family, steps=int(g[family]), width=int(g[size]) if size else 0, **common)
    if g["rungs"]:
        return Variant(family="resvae", steps=int(g["rungs"]), ladder_posterior=g["ladder"], **common)
    return Variant(family="vae", **common)
