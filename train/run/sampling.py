"""Semi-supervised batches (section 4.1, Appendix B): a labelled subset, its repetition, x* partners, prior draws.

All draws come from one `torch.Generator` (the run's data stream) in this fixed order, so runs with the same seed
and label budget see the same batches whatever their loss weights:

    1. `labelled_subset`                        once per run
    2. per epoch: `epoch_plan`                  the unlabelled permutation, then the labelled repetitions
                  (`streamed_epoch_plan` instead when the split is streamed: chunk order, then shuffle-buffer picks)
    3. per step:  `draw_partners`, then `draw_prior_onehot`   (drawn every step, used only when their term is on)

Stored views (`draw_views`) come from streams of their own, one per view row group (RunDraws.view_streams).
"""
from __future__ import annotations

from dataclasses import dataclass, field

import torch

from twinturbo.common.errors import TwinTurboError
from twinturbo.train.config import TrainConfig, derived_seed


def labelled_subset(labels: torch.Tensor, budget: int, num_classes: int, generator: torch.Generator) -> torch.Tensor:
    """Indices of a class-balanced labelled subset of `budget` samples (the `--labels K` of section 4.1).

    Every class gets K // C samples; the K % C left over go one each to classes 0, 1, ... (deterministic). Within a
    class the samples are a uniform draw without replacement. Returned sorted by class, then by draw order.
    """
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    check_budgets(labels, num_classes, budget, 0)
    chosen = []
    for c in range(num_classes):
        quota = budget // num_classes + (1 if c < budget % num_classes else 0)
        members = torch.nonzero(labels == c).squeeze(1)
        order = torch.randperm(len(members), generator=generator)
        chosen.append(members[order[:quota]])
    return torch.cat(chosen)


def validation_subset(labels: torch.Tensor, size: int, num_classes: int, labelled: torch.Tensor,
                      seed: int) -> torch.Tensor:
    """Indices of a run's validation split (`--val-labels N`): N train samples outside the labelled subset, class
    balanced as `labelled_subset` is (N // C per class, the rest one each to classes 0, 1, ...), drawn from the run's
    own `validation` stream, so no other draw of the run changes.

    The order is round robin over the classes of a per-class permutation, so the first n of a draw of N > n are
    the draw of n: one run evaluated on 1000 validation labels also says what 100 or 500 would have chosen. The
    images stay in the unlabelled pool; only the labels are held out, and they are never trained on.
    """
    if size == 0:
        return torch.empty(0, dtype=torch.int64)
    generator = torch.Generator().manual_seed(derived_seed(seed, "validation"))
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    check_budgets(labels, num_classes, len(labelled), size)
    outside = torch.ones(len(labels), dtype=torch.bool)
    outside[labelled.cpu()] = False
    members = []
    for c in range(num_classes):
        quota = size // num_classes + (1 if c < size % num_classes else 0)
        candidates = torch.nonzero((labels == c) & outside).squeeze(1)
        members.append(candidates[torch.randperm(len(candidates), generator=generator)[:quota]])
    rounds = max(len(m) for m in members)
    order = [m[r] for r in range(rounds) for m in members if r < len(m)]
    return torch.stack(order)


def check_budgets(labels: torch.Tensor, num_classes: int, budget: int, val_labels: int) -> None:
    """Raise the TwinTurboError `labelled_subset` or `validation_subset` would raise for this label budget and
    validation size on `labels`, without drawing: a sweep checks its grid with it before it writes anything."""
    labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
    counts = torch.bincount(labels[labels >= 0], minlength=num_classes)
    if budget < num_classes:
        raise TwinTurboError(f"--labels {budget}: need at least one label per class ({num_classes} classes)")
    if budget > int(counts.sum()):
        raise TwinTurboError(f"--labels {budget}: the train split has only {int(counts.sum())} labelled samples")
    for c in range(num_classes):
        quota = budget // num_classes + (1 if c < budget % num_classes else 0)
        val_quota = val_labels // num_classes + (1 if c < val_labels % num_classes else 0)
        if int(counts[c]) < quota:
            raise TwinTurboError(f"--labels {budget}: class {c} has only {int(counts[c])} samples, a balanced subset "
                                 f"needs {quota}")
        if int(counts[c]) - quota < val_quota:
            raise TwinTurboError(
                f"--val-labels {val_labels}: class {c} has only {int(counts[c]) - quota} train samples outside the "
                f"labelled subset, a balanced validation split needs {val_quota}; lower --val-labels (0 = none)")


@dataclass
class EpochPlan:
    """One epoch: `unlabelled[i]` and `labelled[i]` are the sample indices of step i's two batches (same length)."""

    unlabelled: list[torch.Tensor]
    labelled: list[torch.Tensor]
    stream: torch.Tensor | None = None  # streamed splits: every sample index in the order the reader reads them

    def __len__(self) -> int:
        return len(self.unlabelled)


def epoch_plan(num_train: int, subset: torch.Tensor, batch_size: int, generator: torch.Generator) -> EpochPlan:
    """One pass over the whole train split without labels, paired with the labelled subset repeated to its length.

    The last batch may be short (no sample is dropped). The labelled stream is ceil(N/K) fresh permutations of the
    subset laid end to end, cut at N, so each labelled sample appears equally often up to one.
    """
    unlabelled = torch.randperm(num_train, generator=generator)
    return epoch_plan_labelled(num_train, subset, batch_size, generator, list(unlabelled.split(batch_size)))


def epoch_plan_labelled(num_train: int, subset: torch.Tensor, batch_size: int, generator: torch.Generator,
                        unlabelled: list[torch.Tensor]) -> EpochPlan:
    """Pair the unlabelled batches with the labelled stream (the second draw of an epoch, see epoch_plan)."""
    repeats = -(-num_train // len(subset))
    labelled = torch.cat([subset[torch.randperm(len(subset), generator=generator)] for _ in range(repeats)])
    labelled = labelled[:num_train]
    return EpochPlan(unlabelled, list(labelled.split(batch_size)))


def shuffle_buffer_samples(chunk_size: int, batch_size: int, buffer_chunks: int) -> int:
    """Capacity of the shuffle buffer of a streamed split: `buffer_chunks` whole chunks, and never less than two
    batches (rounded up to whole chunks), so that every step picks from more samples than it takes."""
    return chunk_size * max(buffer_chunks, -(-2 * batch_size // chunk_size))


def streamed_order(num_train: int, chunk_size: int, capacity: int, batch_size: int,
                   generator: torch.Generator) -> tuple[torch.Tensor, list[torch.Tensor]]:
    """The unlabelled pass of a split read from the store in shuffled whole-chunk order (as WebDataset and MosaicML
    streaming shuffle shards): (stream, batches).

    `stream` is every sample index once, chunk by chunk in a random chunk order. A buffer holds the first `capacity`
    samples of the stream; each step takes `batch_size` uniformly drawn buffer entries as its batch and refills their
    places with the next samples of the stream; once the stream is exhausted the buffer empties in random batches.
    Every sample is in exactly one batch, every batch but the last has `batch_size` samples, and a batch only holds
    samples the stream has reached: the reader needs the buffer and the chunks being read ahead, never the split.
    """
    num_chunks = -(-num_train // chunk_size)
    chunk_order = torch.randperm(num_chunks, generator=generator)
    stream = (chunk_order[:, None] * chunk_size + torch.arange(chunk_size)).flatten()
    stream = stream[stream < num_train]
    buffer, position, batches = stream[:capacity].clone(), min(capacity, num_train), []
    while len(buffer):
        take = min(batch_size, len(buffer))
        picks = torch.randperm(len(buffer), generator=generator)[:take]
        batches.append(buffer[picks].clone())
        incoming = stream[position:position + take]
        position += len(incoming)
        buffer[picks[:len(incoming)]] = incoming
        if len(incoming) < take:  # the stream ran out: the picked places without a new sample close
            keep = torch.ones(len(buffer), dtype=torch.bool)
            keep[picks[len(incoming):]] = False
            buffer = buffer[keep]
    return stream, batches


def streamed_epoch_plan(num_train: int, subset: torch.Tensor, batch_size: int, generator: torch.Generator,
                        chunk_size: int, capacity: int) -> EpochPlan:
    """`epoch_plan` for a streamed split: the unlabelled batches of `streamed_order` (same count and sizes as
    epoch_plan's), then the labelled repetitions drawn exactly as there. Its `stream` is the order to read samples in."""
    stream, unlabelled = streamed_order(num_train, chunk_size, capacity, batch_size, generator)
    plan = epoch_plan_labelled(num_train, subset, batch_size, generator, unlabelled)
    plan.stream = stream
    return plan


class PartnerTable:
    """For the latent loss (Eq. 21): x*_i is another labelled sample of x_i's class (a different index when the
    class has more than one labelled sample, itself otherwise)."""

    def __init__(self, subset: torch.Tensor, labels: torch.Tensor):
        labels = torch.as_tensor(labels, dtype=torch.int64).cpu()
        self.subset = subset.cpu()
        subset_labels = labels[self.subset]
        order = torch.argsort(subset_labels, stable=True)
        self.by_class = self.subset[order]  # subset grouped by class
        counts = torch.bincount(subset_labels, minlength=int(subset_labels.max()) + 1)
        starts = torch.cumsum(counts, 0) - counts
        # For every train index in the subset: where its class group starts, its size, its position in the group.
        n = len(labels)
        self.group_start = torch.full((n,), -1, dtype=torch.int64)
        self.group_size = torch.zeros(n, dtype=torch.int64)
        self.position = torch.zeros(n, dtype=torch.int64)
        grouped_labels = subset_labels[order]
        self.group_start[self.by_class] = starts[grouped_labels]
        self.group_size[self.by_class] = counts[grouped_labels]
        self.position[self.by_class] = torch.arange(len(self.by_class)) - starts[grouped_labels]


def draw_partners(table: PartnerTable, batch: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """x* indices for a labelled batch: uniform over the *other* members of each sample's class group."""
    size = table.group_size[batch]
    shift = 1 + (torch.rand(len(batch), generator=generator, dtype=torch.float64) * (size - 1)).long()
    shift = torch.where(size > 1, shift, torch.zeros_like(shift))
    return table.by_class[table.group_start[batch] + (table.position[batch] + shift) % size]


def class_prior(prior: str, subset_labels: torch.Tensor, num_classes: int) -> torch.Tensor:
    """p(y) for the critic's real samples (Eq. 20): `uniform`, or the labelled subset's class frequencies."""
    if prior == "uniform":
        return torch.full((num_classes,), 1.0 / num_classes, dtype=torch.float64)
    counts = torch.bincount(subset_labels.cpu(), minlength=num_classes).double()
    return counts / counts.sum()


def draw_prior_onehot(prior: torch.Tensor, n: int, generator: torch.Generator) -> torch.Tensor:
    """n one-hot vectors y ~ p(y), float32 [n, C]: the discriminator's real samples."""
    classes = torch.multinomial(prior, n, replacement=True, generator=generator)
    return torch.nn.functional.one_hot(classes, num_classes=len(prior)).float()


def draw_views(view_kinds: dict[str, tuple[int, int]], kind: str, n: int, generator: torch.Generator) -> torch.Tensor:
    """n stored view indices of `kind`, uniform over that kind's views (view_kinds: name -> (first index, count))."""
    first, count = view_kinds[kind]
    return first + torch.randint(count, (n,), generator=generator)


@dataclass
class RunDraws:
    """A run's random streams and its once-per-run draws, shared by every run with the same seed and label budget."""

    data: torch.Generator  # CPU: subset, epoch plans, partners, prior draws (the order above)
    dropout: torch.Generator  # on the training device: the projector's keep-masks
    subset: torch.Tensor
    partners: PartnerTable
    prior: torch.Tensor
    seed: int = 0
    _view_streams: dict = field(default_factory=dict)

    def view_streams(self, group: str, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
        """(view choices on the CPU, dropout masks on `device`) of a view row group, each its own stream of the
        run's seed: a group's draws do not depend on which other groups the step reads, so fused runs share them
        and a run's draws are its own whatever it is fused with."""
        if group not in self._view_streams:
            self._view_streams[group] = (
                torch.Generator().manual_seed(derived_seed(self.seed, f"views:{group}")),
                torch.Generator(device=device).manual_seed(derived_seed(self.seed, f"dropout:{group}")))
        return self._view_streams[group]


def start_run_draws(config: TrainConfig, train_labels: torch.Tensor, num_classes: int,
                    device: torch.device) -> RunDraws:
    """Seed both streams from the run's seed and make its first draw (the labelled subset, step 1 above)."""
    data = torch.Generator().manual_seed(derived_seed(config.seed, "data"))
    dropout = torch.Generator(device=device).manual_seed(derived_seed(config.seed, "dropout"))
    train_labels = train_labels.cpu()
    subset = labelled_subset(train_labels, config.labels, num_classes, data)
    return RunDraws(data, dropout, subset, PartnerTable(subset, train_labels),
                    class_prior(config.prior, train_labels[subset], num_classes), config.seed)
