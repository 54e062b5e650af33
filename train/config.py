"""The configuration of one `tt-train` run: paper defaults (section 4.3, Appendix B) unless a flag says otherwise.

TrainConfig's fields come from three places: the ones below (data, schedule, head, widths, precision), one weight per
additive term of Eq. 22 plus the options that term reads, declared by the term itself (train/terms/), and the options
of each head (train/heads/). Every field carries its flag and help text, from which tt-train and tt-sweep build their
options (train/cli.py).
"""
from __future__ import annotations

import hashlib
import math
from dataclasses import asdict, field, fields, make_dataclass

from twinturbo.common.device import PRECISION_HELP, PRECISIONS
from twinturbo.common.errors import TwinTurboError
from twinturbo.train.heads import DEFAULT_HEAD, HEAD_OPTIONS, HEADS, check_head, head_help
from twinturbo.train.terms import (DISPLAY_ORDER, OPTION_TERMS, OPTIONAL_OPTION_FIELDS, TASK_LOSSES, TERMS,
                                   WEIGHT_FIELDS, active_terms)

RESCALES = ("softmax", "sigmoid")


def _option(default, flag: str, help: str, per_run: bool = False, kind: type | None = None, shown: str | None = None,
            choices: tuple = ()):
    """A TrainConfig field with its command-line flag and help text: the one place tt-train and tt-sweep read them.
    `per_run` fields are a sweep's grid axes (its own list options); the others are training flags a sweep shares.
    `kind` is the option's type and `shown` the default as --help says it, where the default (None) says neither;
    `choices` are the values --help lists and validate accepts."""
    return field(default=default, metadata={"flag": flag, "help": help, "per_run": per_run, "choices": choices,
                                            "kind": kind or type(default), "shown": default if shown is None else shown})


class _TrainConfigMethods:
    """The behaviour of TrainConfig (its fields are assembled below)."""

    def __post_init__(self) -> None:
        if self.val_labels is None:  # the default: a validation split the size of the labelled subset
            self.val_labels = self.labels

    @staticmethod
    def flag(name: str) -> str:
        """The command-line flag of field `name` (e.g. warmup_steps -> --warmup)."""
        return next(f.metadata["flag"] for f in fields(TrainConfig) if f.name == name)

    def validate(self):
        """Raise a one-line TwinTurboError naming the flag of the first bad value."""
        flag = self.flag
        for spec in fields(self):
            value = getattr(self, spec.name)
            if spec.metadata["choices"] and value not in spec.metadata["choices"]:
                hint = " (a plugin's? pass --plugins FILE.py)" if spec.name == "head" else ""
                raise TwinTurboError(f"{flag(spec.name)} {value}: expected one of "
                                     f"{', '.join(spec.metadata['choices'])}{hint}")
        for name in ("epochs", "batch_size", "proj_dim", "pred_dim", "disc_dim", "labels", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise TwinTurboError(f"{flag(name)} {getattr(self, name)}: expected a positive integer")
        for name in ("lr", "weight_decay", "temperature", "warmup_start_factor") + WEIGHT_FIELDS:
            if not math.isfinite(getattr(self, name)):
                raise TwinTurboError(f"{flag(name)} {getattr(self, name)}: expected a finite number")
        for name in ("lr", "temperature"):
            if not getattr(self, name) > 0:
                raise TwinTurboError(f"{flag(name)} {getattr(self, name)}: expected a positive number")
        if self.val_labels < 0:
            raise TwinTurboError(f"--val-labels {self.val_labels}: expected a number of images >= 0 (0 = none)")
        if self.warmup_steps < 0:
            raise TwinTurboError(f"--warmup {self.warmup_steps}: expected a step count >= 0")
        for name in WEIGHT_FIELDS + ("weight_decay",):
            if getattr(self, name) < 0:
                raise TwinTurboError(f"{flag(name)} {getattr(self, name)}: expected a weight >= 0 (0 switches it off)")
        if not 0 < self.warmup_start_factor <= 1:
            raise TwinTurboError(f"--warmup-start {self.warmup_start_factor}: expected a factor in (0, 1]")
        if not 0 <= self.dropout < 1:
            raise TwinTurboError(f"--dropout {self.dropout}: expected a probability in [0, 1)")
        for owner in list(TASK_LOSSES.values()) + list(TERMS.values()) + list(HEADS.values()):
            for option in owner.options:
                value = getattr(self, option.name)
                if option.bounds and not option.bounds[0] < value <= option.bounds[1]:
                    raise TwinTurboError(f"{option.flag} {value}: expected a number in ({option.bounds[0]:g}, "
                                         f"{option.bounds[1]:g}]")
        if HEADS[self.head].check is not None:
            HEADS[self.head].check(self)
        check_head(self, active_terms(self))
        return self

    def check_given(self, given: set[str]) -> None:
        """The options the user gave (field names) that this run would not read: a head's options with another head,
        a term's options while its weight is 0. One TwinTurboError naming the flag: the run would record the value
        in config.json and compute as if it were not there (ours: tt-train refuses; a sweep's shared flags may serve
        some of its runs only)."""
        for name in sorted(given):
            value = getattr(self, name)
            if name in HEAD_OPTIONS and HEAD_OPTIONS[name].name != self.head:
                raise TwinTurboError(f"{self.flag(name)} {value}: an option of --head {HEAD_OPTIONS[name].name}, "
                                     f"and this run's head is {self.head}; leave it out or give --head "
                                     f"{HEAD_OPTIONS[name].name}")
            owner = OPTION_TERMS.get(name)
            if owner is not None and getattr(self, owner.weight_field) == 0:
                raise TwinTurboError(f"{self.flag(name)} {value}: an option of the {owner.name} term, which this run "
                                     f"does not compute ({owner.weight.flag} 0); leave it out or give "
                                     f"{owner.weight.flag} > 0")

    def to_dict(self) -> dict:
        return asdict(self)

    def identity(self) -> dict:
        """What names this run in a sweep (its run id hashes it): every field, except the weights of Eq. 22 that are 0,
        the options of a term not of the paper while it is off, the head when it is the paper's and a head's options
        unless it is the run's head. A weight of 0 switches its term off whatever the term is, so adding a term (and
        its options) or a head to the package keeps every existing run id."""
        def off(name: str) -> bool:
            term = OPTIONAL_OPTION_FIELDS.get(name)
            if name in HEAD_OPTIONS:  # a head's options name a run only with that head
                return HEAD_OPTIONS[name].name != self.head
            return (term is not None and getattr(self, term.weight_field) == 0) or (name == "head" and
                                                                                   self.head == DEFAULT_HEAD)

        return {name: value for name, value in self.to_dict().items()
                if not (name in WEIGHT_FIELDS and value == 0) and not off(name)}

    def run_name(self) -> str:
        """`[<head>_]<loss>_<rescale>_c<critic>_l<latent>[_<term><weight>...]_n<labels>_s<seed>`: the default run
        directory (the head named unless it is the paper's)."""
        weights = "".join(f"_{term.weight.id_letter or term.name}{getattr(self, term.weight_field):g}"
                          for term in DISPLAY_ORDER if term.weight.id_letter or getattr(self, term.weight_field) > 0)
        head = "" if self.head == DEFAULT_HEAD else f"{self.head}_"
        return f"{head}{self.loss}_{self.rescale}{weights}_n{self.labels}_s{self.seed}"


def _term_fields() -> list[tuple]:
    """One `<term>_weight` field per additive term (default 0: off), then every term's own options."""
    weights = [(term.weight_field, float, _option(0.0, term.weight.flag, term.weight.help, per_run=True))
               for term in DISPLAY_ORDER]
    options = [(option.name, type(option.default), _option(option.default, option.flag, option.help,
                                                           per_run=option.grid, choices=option.choices))
               for term in list(TASK_LOSSES.values()) + list(TERMS.values()) for option in term.options]
    return weights + options


_FIELDS = [
    ("loss", str, _option("cat_cross", "--loss", "Task loss: " + ", ".join(
        f"{name} ({term.summary})" for name, term in TASK_LOSSES.items()) + ".", per_run=True,
        choices=tuple(TASK_LOSSES))),
    ("rescale", str, _option("softmax", "--rescale", "sigma of the losses: softmax (Eq. 8) or sigmoid (Eq. 9).",
                             per_run=True, choices=RESCALES)),
    ("head", str, _option(DEFAULT_HEAD, "--head", head_help(), per_run=True, choices=tuple(HEADS))),
    *[spec for spec in _term_fields() if spec[2].metadata["per_run"]],
    ("labels", int, _option(100, "--labels", "Size K of the class-balanced labelled subset.", per_run=True)),
    ("seed", int, _option(42, "--seed", "Decides init, data order, labelled subset and dropout.", per_run=True)),
    ("epochs", int, _option(5, "--epochs", "Passes over the unlabelled train split (Appendix B).")),
    ("batch_size", int, _option(512, "--batch-size", "Unlabelled and labelled batch size (Appendix B).")),
    ("lr", float, _option(5e-5, "--lr", "Learning rate of both optimisers (Appendix B).")),
    ("warmup_steps", int, _option(150, "--warmup", "Linear warm-up steps (Appendix B).")),
    ("warmup_start_factor", float, _option(0.001, "--warmup-start", "Learning-rate factor the warm-up starts from "
                                           "(Appendix B).")),
    ("weight_decay", float, _option(0.01, "--weight-decay", "AdamW weight decay on every parameter (ours: the paper "
                                    "names neither the optimiser nor a decay; 0.01 is AdamW's default).")),
    ("proj_dim", int, _option(8000, "--proj-dim", "Projector width, the latent z (Table 3).")),
    ("pred_dim", int, _option(1024, "--pred-dim", "Predictor hidden width (Table 4).")),
    ("disc_dim", int, _option(500, "--disc-dim", "Discriminator width (Table 5).")),
    ("dropout", float, _option(0.3, "--dropout", "Projector dropout probability (Table 3).")),
    *[(option.name, type(option.default), _option(option.default, option.flag, option.help))
      for head in HEADS.values() for option in head.options],
    *[spec for spec in _term_fields() if not spec[2].metadata["per_run"]],
    ("eval_batch_size", int, _option(1024, "--eval-batch-size", "Batch size of the evaluations (no effect on "
                                     "results).")),
    ("val_labels", int | None, _option(None, "--val-labels", "Size of the validation split: class-balanced train "
                                       "images outside the labelled subset whose labels only score the run (never "
                                       "trained on; the images stay unlabelled data), for choosing lambda without "
                                       "the test set; 0 = none.", kind=int, shown="as many as --labels")),
    ("precision", str, _option("auto", "--precision", PRECISION_HELP, choices=PRECISIONS)),
]

def _check_unique(specs: list[tuple]) -> None:
    """A plugin term or head whose weight or option would take the name (or flag) of another field is one line naming
    it."""
    owners = {option.name: owner for owner in list(TASK_LOSSES.values()) + list(TERMS.values()) + list(HEADS.values())
              for option in owner.options}
    owners.update({term.weight_field: term for term in TERMS.values()})
    seen: dict[str, str] = {}
    for name, _, spec in specs:
        for key in (name, spec.metadata["flag"]):
            if key in seen:
                owner = owners.get(name) or owners[seen[key]]
                other = seen[key] if owners.get(name) is owner else name
                kind = "head" if owner.name in HEADS and HEADS[owner.name] is owner else "term"
                raise TwinTurboError(f"{owner.source}: {kind} {owner.name!r}: {key} is already taken by the training "
                                     f"option {other}; rename the " + ("term" if kind == "term" else "head's option"))
            seen[key] = name


_check_unique(_FIELDS)
TrainConfig = make_dataclass("TrainConfig", _FIELDS, bases=(_TrainConfigMethods,))
TrainConfig.__module__ = __name__
TrainConfig.__doc__ = """Everything that decides a run's result. Two runs with equal configs on the same device give
equal metrics.

Defaults are the paper's: Eq. 22 with every lambda 0 (plain cat-cross), 100 labels, seed 42, 5 epochs of batch 512,
learning rate 5e-5 with a 150-step linear warm-up from factor 0.001 (Appendix B), head widths of Tables 3-5
(projector 8000, predictor 1024, discriminator 500), dropout 0.3. Ours, where the paper says nothing: AdamW with
weight decay 0.01 on every parameter, the validation split, the precision.
"""


# The random streams of a run, each seeded from the run's seed alone, so the fused sweep can replay them. Adding a
# stream leaves the others' draws unchanged (each is its own generator). A view row group has two of its own,
# `views:<group>` and `dropout:<group>` (sampling.RunDraws.view_streams).
SEED_STREAMS = ("init", "data", "dropout", "validation")
GROUP_STREAMS = ("views", "dropout")


def derived_seed(seed: int, stream: str) -> int:
    """An independent 63-bit seed for one stream of a run (`init`, `data`, `dropout`, `validation`, or
    `views:<group>` / `dropout:<group>` of a view row group).

    Hashing keeps the streams of seed 42 unrelated to those of seed 43, which `seed + k` offsets would not.
    """
    kind, _, group = stream.partition(":")
    if not (stream in SEED_STREAMS or (kind in GROUP_STREAMS and group)):
        raise ValueError(f"unknown seed stream {stream!r}")
    digest = hashlib.sha256(f"twinturbo:{seed}:{stream}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1
