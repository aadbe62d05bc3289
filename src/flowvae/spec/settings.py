"""Typed settings: every block of a profile (network, ladder, pixel flow, PixelCNN, GAN, train, eval, resources), with
their defaults declared here once.

params.yaml is validated against the schema first (schema.py); these classes then give the values
names and types, so that no module reads profile dicts with `.get(key, default)`. The three model
blocks (network, ladder, pixel_flow) also give the run's settings record its `network` entry:
`record()` is the block with every default filled in.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields
from dataclasses import replace as dataclasses_replace
from typing import Any


def _from_block(cls, block: dict[str, Any] | None, known: set[str] | None = None, where: str = ""):
    """An instance of a settings dataclass from a validated params block (lists become tuples)."""
    block = block or {}
    known = known or {f.name for f in fields(cls)}
    unknown = sorted(set(block) - known)
    if unknown:
        noun = f"key(s) {unknown} in {where}" if where else f"setting(s) {unknown}"
        raise ValueError(f"unknown {noun}; known: {sorted(known)}")
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in block.items()})


def _as_record(values: dict[str, Any]) -> dict[str, Any]:
    """Tuples back to lists: the JSON-ready form."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in values.items()}


def _positive_int(value: Any, what: str) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{what} must be a positive integer, not {value!r}")


# Each network kind's keys and their defaults. Every kind also carries the posterior flow's sizes:
# context_dim (encoder context h), coupling_hidden (real-NVP) and made_layers (IAF MADE hidden layers).
NETWORK_DEFAULTS: dict[str, dict[str, Any]] = {
    "mlp": {"kind": "mlp", "z_dim": 32, "context_dim": 450, "coupling_hidden": 256, "made_layers": 1, "hidden": 450, "layers": 2},
    "resnet": {
        "kind": "resnet", "z_dim": 32, "context_dim": 450, "coupling_hidden": 256, "made_layers": 1,
        "channels": (16, 32, 32), "dense": 450,
    },
    "gatedconv": {"kind": "gatedconv", "z_dim": 64, "context_dim": 256, "coupling_hidden": 256, "made_layers": 1},
}


@dataclass(frozen=True)
class NetworkSettings:
    """profiles.<profile>.network, updated by the data set's own `network`: encoder, decoder and flow sizes.

    mlp uses hidden and layers, resnet channels and dense, gatedconv neither (its layers are fixed);
    the fields of other kinds stay None and are not recorded.
    """

    kind: str
    z_dim: int
    context_dim: int
    coupling_hidden: int
    made_layers: int
    hidden: int | None = None
    layers: int | None = None
    channels: tuple[int, ...] | None = None
    dense: int | None = None

    @classmethod
    def from_params(cls, block: dict[str, Any]) -> "NetworkSettings":
        kind = block.get("kind", "mlp")
        if kind not in NETWORK_DEFAULTS:
            raise ValueError(f"unknown network kind {kind!r}; expected one of {sorted(NETWORK_DEFAULTS)}")
        defaults = NETWORK_DEFAULTS[kind]
        return _from_block(cls, {**defaults, **block}, set(defaults), f"{kind} network settings")

    def record(self) -> dict[str, Any]:
        return _as_record({k: getattr(self, k) for k in NETWORK_DEFAULTS[self.kind]})


@dataclass(frozen=True)
class LadderSettings:
    """profiles.<profile>.ladder: the bidirectional ResNet VAE (models/ladder.py)."""

    channels: int = 64
    z_channels: int = 32
    free_bits: float = 0.1
    stages: int = 1

    @classmethod
    def from_params(cls, block: dict[str, Any]) -> "LadderSettings":
        s = _from_block(cls, block, where="ladder settings")
        for key in ("channels", "z_channels", "stages"):
            _positive_int(getattr(s, key), f"ladder setting {key}")
        if float(s.free_bits) < 0:
            raise ValueError(f"ladder setting free_bits must be >= 0, not {s.free_bits!r}")
        return s

    def record(self) -> dict[str, Any]:
        return _as_record(asdict(self))


@dataclass(frozen=True)
class PixelFlowSettings:
    """profiles.<profile>.pixel_flow: the pixel-space real NVP (models/pixelflow.py)."""

    channels: int = 64  # width of the s/t ResNets (the paper's CIFAR-10 model: 64 features)
    logit_alpha: float = 0.05  # Dinh et al. 2017 Sec. 4.1: "alpha is picked here as .05"

    @classmethod
    def from_params(cls, block: dict[str, Any]) -> "PixelFlowSettings":
        s = _from_block(cls, block, where="pixel_flow settings")
        _positive_int(s.channels, "pixel_flow setting channels")
        if not 0 < float(s.logit_alpha) < 1:
            raise ValueError(f"pixel_flow setting logit_alpha must be in (0, 1), not {s.logit_alpha!r}")
        return s

    def record(self) -> dict[str, Any]:
        return _as_record(asdict(self))


@dataclass(frozen=True)
class PixelCNNSettings:
    """profiles.<profile>.pixel_cnn: the PixelCNN's kernels (models/pixelcnn.py); layers and channels are in its name."""

    first_kernel: int = 7  # van den Oord et al. 2016a (PixelRNN) Table 2: "7 x 7 conv mask A"
    kernel: int = 3  # PixelRNN Table 2: "3 x 3 conv mask B" in the residual blocks

    @classmethod
    def from_params(cls, block: dict[str, Any]) -> "PixelCNNSettings":
        s = _from_block(cls, block, where="pixel_cnn settings")
        for key in ("first_kernel", "kernel"):
            _positive_int(getattr(s, key), f"pixel_cnn setting {key}")
            if getattr(s, key) % 2 == 0:
                raise ValueError(f"pixel_cnn setting {key} must be odd (a kernel centred on its pixel), not {getattr(s, key)}")
        return s

    def record(self) -> dict[str, Any]:
        return _as_record(asdict(self))


@dataclass(frozen=True)
class GANSettings:
    """profiles.<profile>.gan: the MLP GAN of seed 004_03d37b577c6a1cf6.txt (models/gan.py). Its optimiser, batch size
    and epochs are the profile's train block (with budgets), like every other family's."""

    latent_dim: int = 100  # a3_gan_template.py --latent_dim (the course template the seed's code follows)
    generator_hidden: tuple[int, ...] = (128, 256, 512, 1024)  # a3_gan_template.py Generator's suggested layers
    discriminator_hidden: tuple[int, ...] = (512, 256)  # a3_gan_template.py Discriminator's suggested layers
    dropout: float = 0.3  # seed line 165: dropout in D "both during training and testing"; rate not given: a choice
    label_noise: float = 0.3  # seed line 165 "noisy labels", after ganhacks trick 6 (fake labels in [0, 0.3])

    @classmethod
    def from_params(cls, block: dict[str, Any]) -> "GANSettings":
        s = _from_block(cls, block, where="gan settings")
        _positive_int(s.latent_dim, "gan setting latent_dim")
        for key in ("generator_hidden", "discriminator_hidden"):
            if not getattr(s, key):
                raise ValueError(f"gan setting {key} must list at least one layer width")
            for width in getattr(s, key):
                _positive_int(width, f"gan setting {key} entry")
        if not 0.0 <= float(s.dropout) < 1.0:
            raise ValueError(f"gan setting dropout must lie in [0, 1), not {s.dropout!r}")
        if not 0.0 <= float(s.label_noise) < 0.5:
            raise ValueError(f"gan setting label_noise must lie in [0, 0.5), not {s.label_noise!r}")
        return s

    def record(self) -> dict[str, Any]:
        return _as_record(asdict(self))


ModelSettings = NetworkSettings | LadderSettings | PixelFlowSettings | PixelCNNSettings | GANSettings
# A family's `block` (families.py) names one of these.
MODEL_BLOCKS: dict[str, type] = {
    "network": NetworkSettings,
    "ladder": LadderSettings,
    "pixel_flow": PixelFlowSettings,
    "pixel_cnn": PixelCNNSettings,
    "gan": GANSettings,
}


@dataclass(frozen=True)
class TrainSettings:
    """profiles.<profile>.train: everything that changes what a training computes."""

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adamax"  # adamax | adam
    betas: tuple[float, float] = (0.9, 0.999)  # the optimiser's beta1, beta2
    warmup_epochs: float = 0.0  # KL weight rises linearly from 0 to 1 over these epochs
    lr_warmup_steps: int = 0  # the learning rate rises linearly from lr/N to lr over the first N updates (0: none)
    patience: int = 0  # early stopping after this many epochs without a better validation -ELBO (0: never)
    ema: float = 0.0  # decay of the exponential moving average of the weights (0: none)
    amp: str = "none"  # none | bf16: autocast of the training step (CUDA and CPU)

    # Changing only these extends (or shortens) a run on resume instead of invalidating its checkpoint.
    EXTENDABLE = ("epochs", "patience")

    @classmethod
    def from_params(cls, block: dict[str, Any]) -> "TrainSettings":
        return _from_block(cls, block)

    def record(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict."""
        return _as_record(asdict(self))


AIS_SCHEDULES = ("sigmoid", "linear")
AIS_INITIALS = ("auto", "encoder", "moments", "prior")


@dataclass(frozen=True)
class SampleQualitySettings:
    """profiles.<profile>.sample_quality: the Fréchet classifier distance of a model's samples (runs/sample_quality.py).

    `samples` images per model in `sets` equal sets, each set's distance to the test images' features; the table
    shows their mean and its standard error. The feature classifier trains `classifier_epochs` epochs.
    """

    samples: int = 10_000
    sets: int = 5
    classifier_epochs: int = 5
    batch_size: int = 500

    @classmethod
    def from_params(cls, block: dict[str, Any] | None) -> "SampleQualitySettings":
        s = _from_block(cls, block, where="sample_quality settings")
        for key in ("samples", "sets", "classifier_epochs", "batch_size"):
            _positive_int(getattr(s, key), f"sample_quality setting {key}")
        if s.sets < 2 or s.samples % s.sets or s.samples // s.sets < 2:
            raise ValueError(f"sample_quality settings: samples ({s.samples}) must split into sets ({s.sets}, at least 2) "
                             "of equal size, at least 2 images each (the standard error needs two sets)")
        return s

    def record(self) -> dict[str, Any]:
        return _as_record(asdict(self))


@dataclass(frozen=True)
class AISSettings:
    """profiles.<profile>.ais: annealed importance sampling (runs/ais.py), `flowvae evaluate --estimator ais`.

    T intermediate distributions on the geometric path from the initial distribution to p(z) p(x|z), on a
    sigmoidal schedule (Wu et al. 2017); one HMC transition of L leapfrog steps per temperature, with a step
    size per image adapted towards target_accept; S independent chains per image; `images` test images
    (a seeded random subset; 0: all). initial: encoder (the encoder's base Gaussian), moments (a Gaussian with
    the mean and sd of draws from the full amortized posterior, flow included), prior, or auto (encoder for the
    diagonal family, moments for the flow families, the prior for the ladder).
    """

    T: int = 500
    L: int = 10
    S: int = 16
    schedule: str = "sigmoid"
    sigmoid_radius: float = 4.0  # the schedule's sigmoid runs over [-radius, radius] (Wu et al.: 4)
    initial: str = "auto"
    images: int = 500
    batch_size: int = 25  # test images per AIS batch (S chains each)
    step_size: float = 0.05  # initial leapfrog step size
    target_accept: float = 0.65

    @classmethod
    def from_params(cls, block: dict[str, Any] | None) -> "AISSettings":
        s = _from_block(cls, block, where="ais settings")
        for key in ("T", "L", "S", "batch_size"):
            _positive_int(getattr(s, key), f"ais setting {key}")
        if isinstance(s.images, bool) or not isinstance(s.images, int) or s.images < 0:
            raise ValueError(f"ais setting images must be a non-negative integer (0: all), not {s.images!r}")
        if s.schedule not in AIS_SCHEDULES:
            raise ValueError(f"ais setting schedule must be one of {list(AIS_SCHEDULES)}, not {s.schedule!r}")
        if s.initial not in AIS_INITIALS:
            raise ValueError(f"ais setting initial must be one of {list(AIS_INITIALS)}, not {s.initial!r}")
        if not 0 < float(s.target_accept) < 1:
            raise ValueError(f"ais setting target_accept must be in (0, 1), not {s.target_accept!r}")
        for key in ("step_size", "sigmoid_radius"):
            if not float(getattr(s, key)) > 0:
                raise ValueError(f"ais setting {key} must be positive, not {getattr(s, key)!r}")
        return s

    def record(self) -> dict[str, Any]:
        return _as_record(asdict(self))


@dataclass(frozen=True)
class EvalSettings:
    """profiles.<profile>.eval: what only the evaluation reads."""

    K: int  # importance samples per test image
    K_by_dataset: dict = field(default_factory=dict)  # per data set overrides of K
    batch_size: int = 100  # test images per forward pass
    is_curve_points: int = 0  # test images whose raw log-weights give the IS-vs-K curve
    curve_K: tuple[int, ...] = ()
    max_batch: int | None = None  # samples per decoder pass (default: 2,000 convolutional, 20,000 otherwise)
    compile: bool = False  # torch.compile the decoder
    decoder_bf16: bool = False  # bfloat16 decoder (check its effect first: python -m flowvae.bench --bf16-check)
    prior_samples: int = 64  # model samples kept in samples.npz for the figures (a PixelCNN draws them pixel by pixel)
    ais: AISSettings = field(default_factory=AISSettings)  # `flowvae evaluate --estimator ais`

    @classmethod
    def from_params(cls, block: dict[str, Any]) -> "EvalSettings":
        block = dict(block or {})
        ais = AISSettings.from_params(block.pop("ais", None))
        return dataclasses_replace(_from_block(cls, block), ais=ais)

    def K_for(self, dataset: str) -> int:
        """K for one data set."""
        return int(self.K_by_dataset.get(dataset, self.K))


@dataclass(frozen=True)
class Resources:
    """profiles.<profile>.resources: how jobs run; changing them reruns nothing."""

    threads: int = 1
    mem_mb: int = 4000
    runtime_min: int = 120
    gpus: int = 0  # GPUs per training or evaluation job; above 1, a training runs data-parallel, one process per GPU
    nproc: int = 1  # training processes on a CPU (data-parallel, gloo) when the job has no GPUs; --nproc overrides
    jobs_per_gpu: int = 1  # small runs sharing one GPU (Snakemake's gpu_hundredths resource)
    max_minutes: float | None = None  # time box of one `flowvae train` call: checkpoint and exit 75 after it
    compile_train: bool = False  # torch.compile the training step (pays on GPUs; a compile costs minutes on a CPU)

    @classmethod
    def from_params(cls, block: dict[str, Any] | None) -> "Resources":
        return _from_block(cls, block)


def diff_settings(recorded: Any, current: Any, prefix: str = "") -> list[tuple[str, Any, Any]]:
    """(key path, recorded value, current value) for every leaf that differs between two nested dicts."""
    if isinstance(recorded, dict) and isinstance(current, dict):
        out = []
        for key in sorted(set(recorded) | set(current), key=str):
            path = f"{prefix}.{key}" if prefix else str(key)
            out += diff_settings(recorded.get(key, "(absent)"), current.get(key, "(absent)"), path)
        return out
    return [] if recorded == current else [(prefix or "(all)", recorded, current)]


def describe_diff(changes: list[tuple[str, Any, Any]]) -> str:
    """'train.lr: 0.002 -> 0.001; ...' for a list from diff_settings."""
    return "; ".join(f"{key}: {old!r} -> {new!r}" for key, old, new in changes)
