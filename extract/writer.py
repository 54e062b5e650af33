"""Writing in the background: the next batch computes while this one is written, chunk by chunk (data, then the
done flag: FeatureStore.write_chunk)."""
from __future__ import annotations

import queue
import threading

import numpy as np
import torch

from twinturbo.common.store import FeatureStore

class ChunkWriter:
    """A thread that writes finished batches chunk by chunk (data, then the done flag, see `write_chunk`).

    On CUDA the device->host copy runs on a side stream into pinned memory and the thread waits for it, so the
    copy overlaps the next batch's forward. Errors in the thread are raised in the caller at the next `put`/`close`.
    """

    def __init__(self, store: FeatureStore, max_pending: int = 2):
        self.store = store
        self.chunk_size = int(store.attrs["chunk_size"])
        self._queue: queue.Queue = queue.Queue(maxsize=max_pending)
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="tt-extract-writer", daemon=True)
        self._thread.start()
        self._copy_stream: torch.cuda.Stream | None = None

    def put(self, split: str, start: int, tokens: tuple[torch.Tensor, ...], labels: np.ndarray,
            chunks: list[int]) -> None:
        """Queue samples [start, start + len(cls)) for writing; only the chunks listed are written. `tokens` is
        (cls, patches), and with views (views_cls [B, V, Dc], views_patches [B, V, T, Dp]) after them."""
        self._raise_if_failed()
        ready = None
        if tokens[0].device.type == "cuda":
            if self._copy_stream is None:
                self._copy_stream = torch.cuda.Stream(device=tokens[0].device)
            self._copy_stream.wait_stream(torch.cuda.current_stream(tokens[0].device))
            with torch.cuda.stream(self._copy_stream):
                host = tuple(torch.empty(t.shape, dtype=t.dtype, pin_memory=True) for t in tokens)
                for target, source in zip(host, tokens):
                    target.copy_(source, non_blocking=True)
                ready = torch.cuda.Event()
                ready.record(self._copy_stream)
            # The device tensors must outlive the copy queued on the side stream.
            for source in tokens:
                source.record_stream(self._copy_stream)
            tokens = host
        self._queue.put((split, start, tokens, labels, chunks, ready))

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is None:
                return
            if self._error is not None:
                continue  # drain after a failure so `put` never blocks forever
            split, start, tokens, labels, chunks, ready = item
            try:
                if ready is not None:
                    ready.synchronize()
                arrays = [t.numpy() for t in tokens]
                for k in chunks:
                    lo = k * self.chunk_size - start
                    hi = min(lo + self.chunk_size, len(arrays[0]))
                    self.store.write_chunk(split, k, *(a[lo:hi] for a in arrays[:2]), labels[lo:hi],
                                           *(a[lo:hi] for a in arrays[2:]))
            except BaseException as err:  # re-raised in the main thread
                self._error = err

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise self._error

    def close(self) -> None:
        """Wait for every queued write, then raise any error the thread met."""
        self._queue.put(None)
        self._thread.join()
        self._raise_if_failed()
