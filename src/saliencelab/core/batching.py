"""Choosing chunk sizes by measurement under a memory budget.

Multi-pass methods (IG steps, SmoothGrad samples, Score-CAM channels) run many rows through the
model. The rows are cut into chunks; the chunk size is (1) the user's `chunk_size` if set, else
(2) the best size found earlier for the same model, pass kind and input shape, else (3) found
while doing the real work: start at 8 rows, double while the time per row stays within 1.5× of
the best, then halve from the start down to one row, and keep the fastest per row. A size
measured once gets a second chunk when it stops the climb, and before the search settles each
size within 1.5× of the best runs again while it has run no more often than the best (up to 3
chunks): a new size's first chunk may load GPU kernels, other work on the machine only ever adds
time, and a best that won by one lucky chunk meets its rivals again in the machine's present
state (on this project's shared CPU, 8-row gradient passes of the shapes CNN settled on chunks
of 4, 1.2× slower per row, in 2 of 8 fresh processes; 0 of 8 since). The first chunk is not
measured (it pays one-off warm-up: allocations, kernel selection), so the start size runs twice.
No row is computed twice, so the search costs nothing beyond a few sub-optimal chunks. A pass
too short to finish the search leaves it where it got (its warm-up included), and the next pass
of the same model, shape and length class goes on from there (a dataset loop converges within a
few batches); a whole pass shorter than the size to try counts as a size of its own, and ends
the climb (such passes cannot try larger chunks), so passes of one chunk each (8 images
explained per call) also find their size; a pass shorter than the start size (8) teaches
nothing. Passes search apart by length class (the largest power of two up to their length, at
most the ceiling): an 8-row pass that ends its climb at 8 must not stop a pass of 8000 rows on a
GPU from trying 1024. The engine times the model's part of a chunk, not the building of its
inputs (ROAD's imputation would otherwise steer the choice). The size never exceeds the memory
budget divided by the measured bytes one row keeps for backward.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import torch

# The most chunks a size gets before the search settles (see `ChunkPlan._learn`).
MAX_TRIES = 3

_BEST: dict[tuple, int] = {}
_PARTIAL: dict[tuple, tuple[dict[int, float], dict[int, int], int, bool]] = {}  # a search left open
_BYTES: dict[tuple, int] = {}  # bytes one row keeps for backward, measured once per key
_CAPS: dict[tuple, int] = {}  # rows per chunk that ran out of device memory, halved, per key


_RAM_READ: list[float] = [-math.inf, 0]  # (monotonic time, bytes) of the last RAM reading
RAM_READING_SECONDS = 1.0  # how long a reading of the available RAM is used


def default_budget(device: torch.device) -> int:
    """Bytes a pass may use: half the free GPU memory, or a quarter of the available RAM (read
    at most once per `RAM_READING_SECONDS`: every gradient pass asks)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free * 0.5)
    now = time.monotonic()
    if now - _RAM_READ[0] > RAM_READING_SECONDS:
        _RAM_READ[:] = [now, _available_ram()]
    return int(_RAM_READ[1]) // 4


def _available_ram() -> int:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


@dataclass
class ChunkPlan:
    """Hands out chunk sizes for `n_rows` rows and learns from how long each chunk took."""

    key: tuple
    n_rows: int
    fixed: int | None = None
    max_rows: int = 64
    start: int = 8
    bytes_per_row: int | None = None
    budget: int | None = None
    _times: dict[int, float] = field(default_factory=dict)
    _tries: dict[int, int] = field(default_factory=dict)
    _size: int = 0
    _settled: bool = False
    _shrinking: bool = False
    _warm: bool = False
    _redo: bool = False
    _search: tuple = field(default=(), init=False)

    def __post_init__(self) -> None:
        if self.bytes_per_row is None:
            self.bytes_per_row = _BYTES.get(self.key)
        # The search's own key: the pass's length class (bytes per row and out-of-memory caps
        # hold for every length, so they stay under `key`).
        reach = min(self.max_rows, 1 << max(0, self.n_rows.bit_length() - 1))
        self._search = (*self.key, reach)
        if self.fixed is not None:
            self._size, self._settled = max(1, int(self.fixed)), True
        elif reach < self.start:  # shorter than the start size: one chunk, nothing to learn
            self._size, self._settled = min(self.start, self.max_rows), True
        elif self._search in _BEST:
            self._size, self._settled = _BEST[self._search], True
        elif self._search in _PARTIAL:  # go on with the search an earlier, shorter pass began
            times, tries, self._size, self._shrinking = _PARTIAL[self._search]
            self._times, self._tries, self._warm = dict(times), dict(tries), True
        else:
            self._size = min(self.start, self.max_rows)

    @property
    def cap(self) -> int:
        if self.fixed is not None:  # the user's chunk size wins
            return self._size
        cap = min(self.max_rows, _CAPS.get(self.key, self.max_rows))
        if self.bytes_per_row and self.budget:
            cap = min(cap, max(1, self.budget // self.bytes_per_row))
        return cap

    def chunks(self) -> Iterator[torch.Tensor]:
        """Row indices of each chunk in order; call `record` after each (or `out_of_memory`,
        after which the same rows come again in smaller chunks).

        While the search runs, each chunk has the size it is trying. Once a size is found, the
        rows left are cut into about as many chunks as that size gives, of near-equal length
        (`_balanced`): 9 rows at a found 8 run as one chunk of 9, not 8 and a lone row whose
        chunk costs as much bookkeeping as the 8. The user's `chunk_size` is kept exactly.
        """
        done = 0
        while done < self.n_rows:
            left = self.n_rows - done
            if self._settled and self.fixed is None:
                size = _balanced(left, self._size, self.cap)
            else:
                size = min(self._size, self.cap, left)
            self._redo = False
            yield torch.arange(done, done + size)
            if not self._redo:
                done += size

    def out_of_memory(self, rows: int) -> bool:
        """A chunk of `rows` rows ran out of device memory: chunks of this model, pass kind and
        input shape are capped at half of it from now on (this pass included: its rows come
        again) and the search settles there. False if it was one row (nothing smaller)."""
        if rows <= 1:
            return False
        _CAPS[self.key] = rows // 2
        self._settle(rows // 2)
        self._redo = True
        return True

    def record(self, rows: int, seconds: float) -> None:
        """Learn from a chunk of `rows` rows that took `seconds` (see `_learn`)."""
        self._learn(rows, seconds)
        if not self._settled and (self._times or self._warm):
            _PARTIAL[self._search] = (
                dict(self._times),
                dict(self._tries),
                self._size,
                self._shrinking,
            )

    def _learn(self, rows: int, seconds: float) -> None:
        """Learn from a chunk of `rows` rows that took `seconds`.

        Try each size of the ladder: doubling from the start while the time per row stays
        within 1.5× of the best so far (and the cap allows; a size that looks slower is run a
        second time before the doubling stops, since the first chunk of a new size may pay
        one-off costs, e.g. loading GPU kernels for it), then halving from the start down to
        one row (cheap chunks; per-row cost is not monotonic in the size on every CPU). Then
        run each size within 1.5× of the best again while it has run no more often than the
        best, up to `MAX_TRIES` chunks (other work on the machine only ever adds time, so one
        slow chunk must not rule a size out, nor one fast chunk crown it) and settle on the
        fastest per row (the minimum over each size's chunks).
        """
        if self._settled or (rows < self._size and rows < self.n_rows):
            return  # a pass's short last chunk says little (a whole pass shorter than the size
            # counts as that size: else passes of a fixed length below it would never learn)
        if not self._warm:  # the first chunk pays warm-up: not a fair measurement
            self._warm = True  # (kept for the next pass: one-chunk passes learn from the 2nd)
            return
        short = rows < self._size  # a whole pass shorter than the size to try
        if short and rows < self.start:
            return  # shorter than the start size: says nothing about the sizes tried (a 1-row
            # pass would otherwise end the climb and settle the search on 1 row)
        self._tries[rows] = self._tries.get(rows, 0) + 1
        first = self._tries[rows] == 1
        self._times[rows] = min(seconds / rows, self._times.get(rows, math.inf))
        best = min(self._times, key=self._times.get)
        if not self._shrinking:
            bigger = rows * 2
            if not short and bigger <= self.cap and self._times[rows] < 1.5 * self._times[best]:
                self._size = bigger
                return
            if first and rows != best and not short:
                return  # a size's first chunk may pay one-off costs (GPU kernels): once more
            self._shrinking = True  # (passes this short cannot try larger chunks)
        smaller = min(self._times) // 2
        if smaller >= 1:
            self._size = smaller
            return
        again = [
            size
            for size, t in self._times.items()
            if size != best
            and t < 1.5 * self._times[best]
            and self._tries[size] <= self._tries[best]
            and self._tries[size] < MAX_TRIES
        ]
        if again:
            self._size = min(again[0], self.cap)
            return
        self._settle(best)

    def _settle(self, size: int) -> None:
        self._size, self._settled = size, True
        _BEST[self._search] = size
        _PARTIAL.pop(self._search, None)

    @property
    def size(self) -> int:
        return self._size

    @property
    def settled(self) -> bool:
        """Whether the size is decided (the user's, or found): chunk times teach nothing."""
        return self._settled

    def remember_bytes(self, bytes_per_row: int) -> None:
        """The measured bytes per row, kept for every later plan of the same key."""
        self.bytes_per_row = _BYTES[self.key] = max(1, int(bytes_per_row))


def _balanced(rows: int, size: int, cap: int) -> int:
    """The next chunk's length when `rows` rows are left at a found `size`: cut them into
    k = max(⌈rows / cap⌉, round(rows / size), 1) chunks and take ⌈rows / k⌉, so chunks stay
    within about [2/3, 3/2] of the size, never above the cap, and differ by at most one row."""
    k = max(-(-rows // max(1, cap)), math.floor(rows / max(1, size) + 0.5), 1)
    return -(-rows // k)


def row_range(rows: torch.Tensor) -> tuple[int, int]:
    """(lo, hi): the rows of one chunk of a pass, lo .. hi - 1.

    `ChunkPlan.chunks` hands a pass's rows out as ranges, in order, in CPU tensors, so a chunk
    is read from its first row and its length, on the host. On a GPU, moving the rows to the
    device (or indexing or testing a device tensor with them) waits for the device once per
    chunk: a copy from host memory waits for the work queued before it.
    """
    lo = int(rows[0])
    return lo, lo + rows.numel()


def row_slice(table: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """`table[rows]` for the rows of one chunk (`row_range`), as a view: a per-row table made
    on the device (e.g. the sample of each row) is read with no wait for the device."""
    lo, hi = row_range(rows)
    return table[lo:hi]


def batch_rows(
    x: torch.Tensor,
) -> tuple[Callable[[torch.Tensor], torch.Tensor], Callable[[torch.Tensor], torch.Tensor]]:
    """`make_inputs` and `sample_of` of a pass over the rows of `x`, row i being sample i: each
    chunk's rows are a copy of a slice of `x` (a model or a pass may change its inputs in
    place; the caller's `x` stays as it was) and its samples a slice of an arange made once on
    x's device (`row_slice`: no chunk waits for a GPU)."""
    samples = torch.arange(x.shape[0], device=x.device)
    return (lambda r: row_slice(x, r).clone()), (lambda r: row_slice(samples, r))


def forget_chunk_sizes() -> None:
    """Forget every measured chunk size (e.g. after moving a model to another device)."""
    _BEST.clear()
    _PARTIAL.clear()
    _BYTES.clear()
    _CAPS.clear()
