"""The configuration of one `tt-train` run: paper defaults (section 4.3, Appendix B) unless a flag says otherwise."""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, dataclass

from twinturbo.common.errors import TwinTurboError

LOSSES = ("cat_cross", "cat_twin", "bin_cross")
RESCALES = ("softmax", "sigmoid")
PRIORS = ("uniform", "labelled")
CRITIC_FORMS = ("minimax", "nonsaturating")


@dataclass
class TrainConfig:
    """Everything that decides a run's result. Two runs with equal configs on the same device give equal metrics.

    Defaults are the paper's: Eq. 22 with lambda_C = lambda_L = 0 (plain cat-cross), 100 labels, seed 42, 5 epochs of
    batch 512, AdamW at lr 5e-5 with a 150-step linear warm-up from factor 0.001 (Appendix B), head widths of
    Tables 3-5 (projector 8000, predictor 1024, discriminator 500), dropout 0.3. `weight_decay` is AdamW's own
    default (0.01); the paper does not give one.
    """

    loss: str = "cat_cross"
    rescale: str = "softmax"
    critic_weight: float = 0.0
    latent_weight: float = 0.0
    labels: int = 100
    seed: int = 42
    epochs: int = 5
    batch_size: int = 512
    lr: float = 5e-5
    warmup_steps: int = 150
    warmup_start_factor: float = 0.001
    weight_decay: float = 0.01
    proj_dim: int = 8000
    pred_dim: int = 1024
    disc_dim: int = 500
    dropout: float = 0.3
    prior: str = "uniform"
    temperature: float = 1.0
    critic_form: str = "minimax"
    eval_batch_size: int = 1024

    def validate(self) -> "TrainConfig":
        """Raise a one-line TwinTurboError naming the flag of the first bad value."""
        choices = {"--loss": (self.loss, LOSSES), "--rescale": (self.rescale, RESCALES),
                   "--prior": (self.prior, PRIORS), "--critic-form": (self.critic_form, CRITIC_FORMS)}
        for flag, (value, valid) in choices.items():
            if value not in valid:
                raise TwinTurboError(f"{flag} {value}: expected one of {', '.join(valid)}")
        positive = {"--epochs": self.epochs, "--batch-size": self.batch_size, "--proj-dim": self.proj_dim,
                    "--pred-dim": self.pred_dim, "--disc-dim": self.disc_dim, "--labels": self.labels}
        for flag, value in positive.items():
            if value < 1:
                raise TwinTurboError(f"{flag} {value}: expected a positive integer")
        for flag, value in {"--lr": self.lr, "--critic": self.critic_weight, "--latent": self.latent_weight}.items():
            if not math.isfinite(value):
                raise TwinTurboError(f"{flag} {value}: expected a finite number")
        if not self.lr > 0:
            raise TwinTurboError(f"--lr {self.lr}: expected a positive learning rate")
        if self.warmup_steps < 0:
            raise TwinTurboError(f"--warmup {self.warmup_steps}: expected a step count >= 0")
        for flag, value in {"--critic": self.critic_weight, "--latent": self.latent_weight}.items():
            if value < 0:
                raise TwinTurboError(f"{flag} {value}: expected a weight >= 0 (0 switches the term off)")
        if not 0 <= self.dropout < 1:
            raise TwinTurboError(f"dropout {self.dropout}: expected a probability in [0, 1)")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    def run_name(self) -> str:
        """`<loss>_<rescale>_c<critic>_l<latent>_n<labels>_s<seed>`: the default run directory's name."""
        return (f"{self.loss}_{self.rescale}_c{self.critic_weight:g}_l{self.latent_weight:g}"
                f"_n{self.labels}_s{self.seed}")


# The three random streams of a run, each seeded from the run's seed alone, so the fused sweep can replay them.
SEED_STREAMS = ("init", "data", "dropout")


def derived_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for one stream of a run (`init`, `data`, `dropout`).

    Hashing keeps the streams of seed 42 unrelated to those of seed 43, which `seed + k` offsets would not.
    """
    if stream not in SEED_STREAMS:
        raise ValueError(f"unknown seed stream {stream!r}")
    digest = hashlib.sha256(f"twinturbo:{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
