"""The model families: one entry each, read by the variant grammar, the run resolution, the planner, the
model builder and the figures' ordering.

Adding a family is one entry here plus its model module: the name pattern (a regular expression
whose named groups fill Variant's `steps`, `width`, `fixed_sigma`, `gated` and `ladder_posterior`), the
profile block its settings come from, and where its builder lives. Builders are named as
"module:function" strings so that this table, like all of spec/, loads without torch.
"""

from __future__ import annotations

from dataclasses import dataclass

N = r"[1-9][0-9]*"  # a positive integer in a name pattern

# The posterior VAE's builder: an encoder, the family's flow, a decoder (models/vae.py).
FLOW_VAE = "flowvae.models.vae:build_flow_vae"


@dataclass(frozen=True)
class Family:
    """One model family."""

    name: str  # the Variant.family value
    pattern: str  # the variant names of this family, without the objective suffix
    grammar: str  # the same for people, e.g. "nf{k}"
    block: str = "network"  # the profile block its settings come from: network | ladder | pixel_flow | pixel_cnn | gan
    builder: str = FLOW_VAE  # "module:function"(variant, settings, image_shape, likelihood) -> LatentVariableModel
    flow: str = ""  # for FLOW_VAE: "module:function"(variant, latent_dim, settings) -> Flow
    objectives: bool = True  # takes the _elbo{k} / _iwae{k} suffix (a VAE); False: a density model or a GAN
    trainer: str = "flowvae.runs.train:Trainer"  # "module:class"(spec, out, **options) with run() -> dict
    evaluator: str = "flowvae.runs.evaluate:evaluate"  # "module:function"(spec, run_dir, **options) -> eval.json's dict


FAMILIES: tuple[Family, ...] = (
    Family("vae", "vae", "vae", flow="flowvae.models.posteriors:diagonal"),
    Family("nf", rf"nf(?P<steps>{N})", "nf{k}", flow="flowvae.models.posteriors:planar"),
    Family("rnvp", rf"rnvp(?P<steps>{N})", "rnvp{k}", flow="flowvae.models.posteriors:coupling"),
    Family(
        "iaf",
        rf"iaf_d(?P<steps>{N})_w(?P<width>{N})(?P<fixed_sigma>_fixed)?",
        "iaf_d{depth}_w{width} | iaf_d{depth}_w{width}_fixed",
        flow="flowvae.models.posteriors:inverse_autoregressive",
    ),
    Family("osnf", rf"osnf(?P<steps>{N})_m(?P<width>{N})", "osnf{k}_m{M}", flow="flowvae.models.posteriors:orthogonal_sylvester"),
    Family("hsnf", rf"hsnf(?P<steps>{N})_h(?P<width>{N})", "hsnf{k}_h{H}", flow="flowvae.models.posteriors:householder_sylvester"),
    Family("tsnf", rf"tsnf(?P<steps>{N})", "tsnf{k}", flow="flowvae.models.posteriors:triangular_sylvester"),
    Family(
        "resvae",
        rf"resvae_r(?P<steps>{N})_(?P<ladder_posterior>gauss|iaf)",
        "resvae_r{rungs}_gauss | resvae_r{rungs}_iaf",
        block="ladder",
        builder="flowvae.models.ladder:LadderVAE",
    ),
    Family(
        "realnvp",
        rf"realnvp_s(?P<steps>{N})_b(?P<width>{N})",
        "realnvp_s{scales}_b{blocks}",
        block="pixel_flow",
        builder="flowvae.models.pixelflow:build_pixel_flow",
        objectives=False,
    ),
    Family(
        "pixelcnn",
        rf"pixelcnn_l(?P<steps>{N})_c(?P<width>{N})(?P<gated>_gated)?",
        "pixelcnn_l{layers}_c{channels} | pixelcnn_l{layers}_c{channels}_gated",
        block="pixel_cnn",
        builder="flowvae.models.pixelcnn:build_pixelcnn",
        objectives=False,
    ),
    Family(
        "gan",
        "gan",
        "gan",
        block="gan",
        builder="flowvae.models.gan:build_gan",
        objectives=False,
        trainer="flowvae.runs.gan_training:GANTrainer",
        evaluator="flowvae.runs.gaussian_observation:evaluate_gan",
    ),
)

BY_NAME: dict[str, Family] = {f.name: f for f in FAMILIES}


def family(name: str) -> Family:
    """The family of that name; ValueError listing the known ones."""
    try:
        return BY_NAME[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r}; known: {', '.join(BY_NAME)}") from None


def load(target: str):
    """The object a "module:function" string names (imports the module)."""
    import importlib

    module, _, attribute = target.partition(":")
    return getattr(importlib.import_module(module), attribute)
