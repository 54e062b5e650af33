"""Splits larger than memory: the train split's unlabelled pass streamed from the store, the test split read in order.

`StreamedSplit` is the reader side of `sampling.streamed_order`: a background thread reads the store's whole chunks
in the epoch's shuffled chunk order, a few chunks ahead; the shuffle buffer holds `capacity` samples; each step's
unlabelled batch is taken from it and its places are refilled from the chunks read ahead. The labelled subset (and so
every x* partner) stays in memory. What is resident at any time is the labelled subset, the buffer and the chunks read
ahead, whatever the split's size; the order is a function of the seed alone (sampling.py draws it), never of the
reader's timing.

`RangeSplit` serves the in-order batches of the test evaluation straight from the store.

Both offer what the training loop uses of `data.SplitTensors`: `len`, `labels`, the token widths, `batch(index,
device)`, `epoch_plan` and `consumed`.
"""
from __future__ import annotations

import queue
import threading

import torch

from twinturbo.common.errors import TwinTurboError
from twinturbo.common.store import SplitReader
from twinturbo.common.sizes import format_size
from twinturbo.train.run.data import Split, SplitTensors, empty_split
from twinturbo.train.run.sampling import EpochPlan, shuffle_buffer_samples, streamed_epoch_plan

SHUFFLE_BUFFER_CHUNKS = 32  # buffer capacity in whole chunks (at least two batches): part of the streamed order
READ_AHEAD_CHUNKS = 4  # chunks the reader thread may hold beyond the buffer


def read_resident(reader: SplitReader, start: int, stop: int, views: bool = False) -> SplitTensors:
    """Samples [start, stop) of the store as stored (with `views`, their views too), in new host tensors (labels
    left at -1)."""
    part = empty_split(reader, stop - start, views)
    reader.read_stored(start, stop, part.cls.numpy(), part.patches.numpy(),
                       None if part.patch_scales is None else part.patch_scales.numpy())
    if part.views_cls is not None:
        reader.read_views_stored(start, stop, part.views_cls.numpy(), part.views_patches.numpy(),
                                 None if part.views_patch_scales is None else part.views_patch_scales.numpy())
    return part


class ChunkReader:
    """A thread reading whole chunks of a split in a given order into a bounded queue (`ahead` chunks at most).

    Errors in the thread reach the consumer at its next `next_chunk`; `stop` ends the thread early."""

    def __init__(self, reader: SplitReader, chunks: list[int], ahead: int = READ_AHEAD_CHUNKS, views: bool = False):
        self._reader, self._chunks, self._views = reader, chunks, views
        self._queue: queue.Queue = queue.Queue(maxsize=ahead)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tt-train-stream", daemon=True)
        self._thread.start()

    def _put(self, item) -> bool:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def _run(self) -> None:
        size, n = self._reader.chunk_size, self._reader.n
        for chunk in self._chunks:
            start, stop = chunk * size, min((chunk + 1) * size, n)
            try:
                part = read_resident(self._reader, start, stop, self._views)
            except BaseException as err:  # re-raised by next_chunk in the training thread
                self._put(err)
                return
            if not self._put((start, part)):
                return

    def next_chunk(self) -> tuple[int, SplitTensors]:
        item = self._queue.get()
        if isinstance(item, BaseException):
            raise item
        return item

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


class StreamedSplit(Split):
    """A train split read from the store as it is used (see the module docstring). `memory_limit` bounds the
    labelled subset + shuffle buffer + read-ahead; a run that would need more is refused before it starts."""

    def __init__(self, reader: SplitReader, memory_limit: int, buffer_chunks: int = SHUFFLE_BUFFER_CHUNKS,
                 views: bool = False):
        self.reader = reader
        self.cls_dim, self.num_patches, self.patch_dim = reader.cls_dim, reader.num_patches, reader.patch_dim
        self.labels = torch.from_numpy(reader.labels())
        self.memory_limit = memory_limit
        self.buffer_chunks = buffer_chunks
        self.views = views and reader.num_views > 0  # the augmented views travel with their samples
        self.view_kinds = dict(reader.view_kinds) if self.views else {}
        self._held = torch.empty(0, dtype=torch.int64)
        self._resident = empty_split(reader, 0, self.views)
        self._resident_row = torch.full((len(self.labels),), -1, dtype=torch.int64)  # -1: not in memory now
        self._buffer_start, self._capacity = 0, 0
        self._free: list[int] = []
        self._stream: torch.Tensor | None = None
        self._position = 0
        self._chunk: tuple[int, SplitTensors] | None = None
        self._chunk_offset = 0
        self._chunks: ChunkReader | None = None

    def __len__(self) -> int:
        return len(self.labels)

    def unlabelled_pass(self, batch_size: int) -> dict:
        """How the run's unlabelled batches were drawn (recorded with its metrics: it decides the order)."""
        return {"streamed": True, "shuffle_buffer": self.capacity(batch_size), "chunk_size": self.reader.chunk_size}

    def capacity(self, batch_size: int) -> int:
        return min(len(self), shuffle_buffer_samples(self.reader.chunk_size, batch_size, self.buffer_chunks))

    def resident_nbytes(self, labelled: int, batch_size: int) -> int:
        """Bytes held while training: labelled subset, shuffle buffer and chunks read ahead (plus the one in use)."""
        rows = labelled + self.capacity(batch_size) + (READ_AHEAD_CHUNKS + 1) * self.reader.chunk_size
        return rows * self.reader.stored_row_nbytes(self.views)

    def epoch_plan(self, subset: torch.Tensor, batch_size: int, generator: torch.Generator,
                   read_unlabelled: bool = True) -> EpochPlan:
        """The epoch's batches (sampling.streamed_epoch_plan), with the labelled subset in memory and, when
        `read_unlabelled`, the reader started on the epoch's chunk order and the buffer filled."""
        capacity = self.capacity(batch_size)
        plan = streamed_epoch_plan(len(self), subset, batch_size, generator, self.reader.chunk_size, capacity)
        needed = self.resident_nbytes(len(subset), batch_size)
        if needed > self.memory_limit:
            raise TwinTurboError(
                f"--memory-limit {format_size(self.memory_limit)}: streaming split '{self.reader.name}' still holds "
                f"{format_size(needed)} (labelled subset, a {capacity}-sample shuffle buffer, chunks read ahead); "
                "raise the limit")
        self._stop_reading()
        self._arrange(subset, capacity)
        if read_unlabelled:
            self._stream, self._position = plan.stream, 0
            chunk_order = torch.unique_consecutive(plan.stream // self.reader.chunk_size).tolist()
            self._chunks = ChunkReader(self.reader, chunk_order, views=self.views)
            self._admit(capacity)
        return plan

    def _arrange(self, subset: torch.Tensor, capacity: int) -> None:
        """Rows [0, H) of the resident tensors hold the labelled subset, [H, H + capacity) the shuffle buffer."""
        held = torch.unique(subset.cpu())
        if not torch.equal(held, self._held) or self._capacity != capacity:
            self._resident = empty_split(self.reader, len(held) + capacity, self.views)
            for row, index in enumerate(held.tolist()):
                sample = read_resident(self.reader, index, index + 1, self.views)
                self._resident.put(torch.tensor([row]), sample, torch.tensor([0]))
            self._resident.labels[:len(held)] = self.labels[held]
            self._held, self._buffer_start, self._capacity = held, len(held), capacity
        self._resident_row.fill_(-1)
        self._resident_row[held] = torch.arange(len(held))
        self._free = list(range(self._buffer_start + capacity - 1, self._buffer_start - 1, -1))

    def subset(self, index: torch.Tensor) -> SplitTensors:
        """Samples `index` read from the store one by one into memory (a validation split: ~100-1000 samples)."""
        parts = [read_resident(self.reader, i, i + 1) for i in index.tolist()]
        return SplitTensors(torch.cat([p.cls for p in parts]), torch.cat([p.patches for p in parts]),
                            self.labels[index.cpu()].clone(),
                            None if parts[0].patch_scales is None else torch.cat([p.patch_scales for p in parts]))

    def _admit(self, count: int) -> None:
        """Move the next `count` samples of the stream (fewer at its end) into free buffer places. The stream is the
        chunks of the reader's order laid end to end, so the next samples are the next rows of the current chunk."""
        count = min(count, len(self._stream) - self._position)
        while count > 0:
            if self._chunk is None:
                self._chunk, self._chunk_offset = self._chunks.next_chunk(), 0
            start, part = self._chunk
            take = min(count, len(part) - self._chunk_offset)
            offset = torch.arange(self._chunk_offset, self._chunk_offset + take)
            index = self._stream[self._position:self._position + take]
            if not torch.equal(index, start + offset):
                raise RuntimeError("the chunk reader is out of step with the epoch's stream")
            unheld = self._resident_row[index] < 0  # a labelled sample is served from its labelled row
            index, offset = index[unheld], offset[unheld]
            rows = torch.tensor([self._free.pop() for _ in range(len(index))], dtype=torch.int64)
            self._resident.put(rows, part, offset)
            self._resident.labels[rows] = self.labels[index]
            self._resident_row[index] = rows
            self._chunk_offset += take
            self._position += take
            count -= take
            if self._chunk_offset == len(part):
                self._chunk = None

    def consumed(self, unlabelled_index: torch.Tensor | None) -> None:
        """Step done: free the buffer places of its unlabelled batch and refill them from the stream."""
        if self._chunks is None or unlabelled_index is None:
            return
        index = unlabelled_index.cpu()
        rows = self._resident_row[index]
        in_buffer = rows >= self._buffer_start
        self._free.extend(rows[in_buffer].tolist())
        self._resident_row[index[in_buffer]] = -1
        self._admit(len(index))
        if self._position >= len(self._stream):
            self._stop_reading()

    def batch(self, index: torch.Tensor, device: torch.device,
              views: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(cls, patches, labels) of samples now in memory (labelled subset or shuffle buffer), as SplitTensors.batch."""
        rows = self._resident_row[index.cpu()]
        if bool((rows < 0).any()):
            missing = index.cpu()[rows < 0][:5].tolist()
            raise RuntimeError(f"samples {missing} are not in memory: the batch does not follow the epoch plan")
        return self._resident.batch(rows, device, views)

    def _stop_reading(self) -> None:
        if self._chunks is not None:
            self._chunks.stop()
        self._chunks, self._chunk = None, None

    def close(self) -> None:
        self._stop_reading()


class RangeSplit(Split):
    """A split served in order straight from the store, a batch at a time (the test evaluation's access)."""

    def __init__(self, reader: SplitReader):
        self.reader = reader
        self.cls_dim, self.num_patches, self.patch_dim = reader.cls_dim, reader.num_patches, reader.patch_dim
        self.labels = torch.from_numpy(reader.labels())

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, index: torch.Tensor, device: torch.device,
              views: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """The samples of a contiguous ascending `index` range, as SplitTensors.batch (clean: the evaluation's)."""
        start, stop = int(index[0]), int(index[-1]) + 1
        if len(index) != stop - start or not torch.equal(index.cpu(), torch.arange(start, stop)):
            raise ValueError("RangeSplit serves contiguous ascending index ranges only")
        part = read_resident(self.reader, start, stop)
        part.labels[:] = self.labels[start:stop]
        return part.batch(torch.arange(stop - start), device)
