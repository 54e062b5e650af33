"""The configuration of one `tt-train` run: paper defaults (section 4.3, Appendix B) unless a flag says otherwise."""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass, field, fields

from twinturbo.common.device import PRECISION_HELP, PRECISIONS
from twinturbo.common.errors import TwinTurboError

LOSSES = ("cat_cross", "cat_twin", "bin_cross")
RESCALES = ("softmax", "sigmoid")
PRIORS = ("uniform", "labelled")
CRITIC_FORMS = ("minimax", "nonsaturating")
# The weights of Eq. 22's terms (0 = the term is off).
TERM_WEIGHT_FIELDS = ("critic_weight", "latent_weight")
# The share of the free host memory the splits may take by default (--memory-limit); the rest is left to the model,
# optimiser states and activations.
MEMORY_HEADROOM = 0.7


def _option(default, flag: str, help: str, per_run: bool = False, kind: type | None = None, shown: str | None = None):
    """A TrainConfig field with its command-line flag and help text: the one place tt-train and tt-sweep read them.
    `per_run` fields are a sweep's grid axes (its own list options); the others are training flags a sweep shares.
    `kind` is the option's type and `shown` the default as --help says it, where the default (None) says neither."""
    return field(default=default, metadata={"flag": flag, "help": help, "per_run": per_run,
                                            "kind": kind or type(default), "shown": default if shown is None else shown})


@dataclass
class TrainConfig:
    """Everything that decides a run's result. Two runs with equal configs on the same device give equal metrics.

    Defaults are the paper's: Eq. 22 with lambda_C = lambda_L = 0 (plain cat-cross), 100 labels, seed 42, 5 epochs of
    batch 512, AdamW at lr 5e-5 with a 150-step linear warm-up from factor 0.001 (Appendix B), head widths of
    Tables 3-5 (projector 8000, predictor 1024, discriminator 500), dropout 0.3. `weight_decay` is AdamW's own
    default (0.01); the paper does not give one.
    """

    loss: str = _option("cat_cross", "--loss", "Task loss: cat_cross (Eq. 17), cat_twin (Eq. 18) or bin_cross "
                        "(Eq. 19).", per_run=True)
    rescale: str = _option("softmax", "--rescale", "sigma of the losses: softmax (Eq. 8) or sigmoid (Eq. 9).",
                           per_run=True)
    critic_weight: float = _option(0.0, "--critic", "lambda_C of Eq. 22 (0 = no discriminator).", per_run=True)
    latent_weight: float = _option(0.0, "--latent", "lambda_L of Eq. 22 (0 = no latent alignment).", per_run=True)
    labels: int = _option(100, "--labels", "Size K of the class-balanced labelled subset.", per_run=True)
    seed: int = _option(42, "--seed", "Decides init, data order, labelled subset and dropout.", per_run=True)
    epochs: int = _option(5, "--epochs", "Passes over the unlabelled train split.")
    batch_size: int = _option(512, "--batch-size", "Unlabelled and labelled batch size.")
    lr: float = _option(5e-5, "--lr", "AdamW learning rate (both optimisers).")
    warmup_steps: int = _option(150, "--warmup", "Linear warm-up steps (Appendix B).")
    warmup_start_factor: float = _option(0.001, "--warmup-start", "Learning-rate factor the warm-up starts from.")
    weight_decay: float = _option(0.01, "--weight-decay", "AdamW weight decay (AdamW's default; the paper gives "
                                  "none).")
    proj_dim: int = _option(8000, "--proj-dim", "Projector width, the latent z (Table 3).")
    pred_dim: int = _option(1024, "--pred-dim", "Predictor hidden width (Table 4).")
    disc_dim: int = _option(500, "--disc-dim", "Discriminator width (Table 5).")
    dropout: float = _option(0.3, "--dropout", "Projector dropout probability (Table 3).")
    prior: str = _option("uniform", "--prior", "Class prior of the critic's real one-hots: uniform or labelled "
                         "(the labelled subset's frequencies).")
    temperature: float = _option(1.0, "--temperature", "Temperature of the latent InfoNCE (Eq. 21).")
    critic_form: str = _option("minimax", "--critic-form", "Model side of the critic: minimax (Eq. 20, the paper) or "
                               "nonsaturating (-log D).")
    eval_batch_size: int = _option(1024, "--eval-batch-size", "Batch size of the test evaluation (no effect on "
                                   "results).")
    val_labels: int | None = _option(None, "--val-labels", "Size of the validation split: class-balanced train images "
                                     "outside the labelled subset whose labels only score the run (never trained "
                                     "on; the images stay unlabelled data), for choosing lambda without the test set; "
                                     "0 = none.", kind=int, shown="as many as --labels")
    precision: str = _option("auto", "--precision", PRECISION_HELP)

    def __post_init__(self) -> None:
        if self.val_labels is None:  # the default: a validation split the size of the labelled subset
            self.val_labels = self.labels

    @staticmethod
    def flag(name: str) -> str:
        """The command-line flag of field `name` (e.g. warmup_steps -> --warmup)."""
        return next(f.metadata["flag"] for f in fields(TrainConfig) if f.name == name)

    def validate(self) -> "TrainConfig":
        """Raise a one-line TwinTurboError naming the flag of the first bad value."""
        flag = self.flag
        choices = {"loss": LOSSES, "rescale": RESCALES, "prior": PRIORS, "critic_form": CRITIC_FORMS,
                   "precision": PRECISIONS}
        for name, valid in choices.items():
            if getattr(self, name) not in valid:
                raise TwinTurboError(f"{flag(name)} {getattr(self, name)}: expected one of {', '.join(valid)}")
        for name in ("epochs", "batch_size", "proj_dim", "pred_dim", "disc_dim", "labels", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise TwinTurboError(f"{flag(name)} {getattr(self, name)}: expected a positive integer")
        for name in ("lr", "critic_weight", "latent_weight", "weight_decay", "temperature", "warmup_start_factor"):
            if not math.isfinite(getattr(self, name)):
                raise TwinTurboError(f"{flag(name)} {getattr(self, name)}: expected a finite number")
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise TwinTurboError(f"{flag(name)} {getattr(self, name)}: expected a positive number")
        if self.val_labels < 0:
            raise TwinTurboError(f"--val-labels {self.val_labels}: expected a number of images >= 0 (0 = none)")
        if self.warmup_steps < 0:
            raise TwinTurboError(f"--warmup {self.warmup_steps}: expected a step count >= 0")
        for name in ("critic_weight", "latent_weight", "weight_decay"):
            if getattr(self, name) < 0:
                raise TwinTurboError(f"{flag(name)} {getattr(self, name)}: expected a weight >= 0 (0 switches it off)")
        if not 0 < self.warmup_start_factor <= 1:
            raise TwinTurboError(f"--warmup-start {self.warmup_start_factor}: expected a factor in (0, 1]")
        if not 0 <= self.dropout < 1:
            raise TwinTurboError(f"--dropout {self.dropout}: expected a probability in [0, 1)")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        """What names this run in a sweep (its run id hashes it): every field, except the weights of Eq. 22 that are 0.
        A weight of 0 switches its term off whatever the term is, so adding a term to the package keeps every
        existing run id."""
        return {name: value for name, value in self.to_dict().items()
                if not (name in TERM_WEIGHT_FIELDS and value == 0)}

    def run_name(self) -> str:
        """`<loss>_<rescale>_c<critic>_l<latent>_n<labels>_s<seed>`: the default run directory's name."""
        return (f"{self.loss}_{self.rescale}_c{self.critic_weight:g}_l{self.latent_weight:g}"
                f"_n{self.labels}_s{self.seed}")


# The random streams of a run, each seeded from the run's seed alone, so the fused sweep can replay them. Adding a
# stream leaves the others' draws unchanged (each is its own generator).
SEED_STREAMS = ("init", "data", "dropout", "validation")


def derived_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for one stream of a run (`init`, `data`, `dropout`, `validation`).

    Hashing keeps the streams of seed 42 unrelated to those of seed 43, which `seed + k` offsets would not.
    """
    if stream not in SEED_STREAMS:
        raise ValueError(f"unknown seed stream {stream!r}")
    digest = hashlib.sha256(f"twinturbo:{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
