"""The grammar of model variant names: a name is a whole model specification.

The grammar is the family table's patterns (families.py), each VAE family optionally followed by
`_elbo{k}` or `_iwae{k}` (k samples in the training objective).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields

from flowvae.spec.families import BY_NAME, FAMILIES, N

_OBJECTIVE = rf"(?:_(?P<objective>elbo|iwae)(?P<objective_k>{N}))?"


def _alternatives(objectives: bool) -> str:
    """The families' patterns as one alternation, each group renamed <family>__<field> so that names stay unique."""
    return "|".join(
        f"(?P<{f.name}>" + re.sub(r"\?P<(\w+)>", rf"?P<{f.name}__\1>", f.pattern) + ")"
        for f in FAMILIES
        if f.objectives == objectives
    )


_NAMED = f"(?:(?:{_alternatives(True)}){_OBJECTIVE})|(?:{_alternatives(False)})"
_FULL = re.compile(f"^(?:{_NAMED})$")
# Usable as a Snakemake wildcard constraint: no named groups, anchored by Snakemake itself.
WILDCARD_PATTERN = re.sub(r"\?P<\w+>", "", f"(?:{_NAMED})")

GRAMMAR = (
    " | ".join(f.grammar for f in FAMILIES if f.objectives)
    + ", optionally followed by _elbo{k} or _iwae{k} (k samples in the training objective), or "
    + " | ".join(f.grammar for f in FAMILIES if not f.objectives)
    + " (pixel-space density models and the GAN); every number a positive integer, "
    "e.g. 'nf10', 'iaf_d2_w320', 'vae_iwae50', 'osnf16_m32', 'realnvp_s2_b4', 'pixelcnn_l8_c64_gated'"
)


@dataclass(frozen=True)
class Variant:
    """A parsed variant name."""

    name: str
    family: str  # a name in the family table (families.py)
    steps: int = 0  # planar, real-NVP or Sylvester steps, IAF depth, ResNet-VAE rungs, pixel real-NVP scales or PixelCNN layers
    width: int = 0  # MADE hidden width (IAF), residual blocks per s/t network (pixel real NVP), channels (PixelCNN),
    # columns of Q (osnf) or Householder reflections (hsnf)
    fixed_sigma: bool = False  # IAF with sigma fixed to 1
    gated: bool = False  # the gated PixelCNN (vertical and horizontal stacks)
    ladder_posterior: str = ""  # gauss | iaf (resvae only)
    objective: str = "elbo"  # elbo | iwae
    objective_k: int = 1  # samples per data point in the training objective


_FIELD_TYPES = {f.name: f.type for f in fields(Variant)}


def parse_variant(name: str) -> Variant:
    """Parse a variant name; raise ValueError quoting the grammar if it is not one."""
    match = _FULL.match(name) if isinstance(name, str) else None
    if match is None:
        raise ValueError(f"unknown model variant {name!r}; expected {GRAMMAR}")
    groups = match.groupdict()
    family = next(f.name for f in FAMILIES if groups[f.name] is not None)
    values = {}
    for key, text in groups.items():
        prefix, _, field = key.partition("__")
        if prefix != family or not field or text is None:
            continue
        kind = _FIELD_TYPES[field]
        values[field] = int(text) if kind == "int" else bool(text) if kind == "bool" else text
    return Variant(
        name=name,
        family=family,
        objective=groups["objective"] or "elbo",
        objective_k=int(groups["objective_k"] or 1),
        **values,
    )


def variant_sort_key(name: str) -> tuple:
    """A stable reading order for variant names: the family table's order, then steps, width and name."""
    v = parse_variant(name)
    return (list(BY_NAME).index(v.family), v.steps, v.width, v.objective_k, name)
