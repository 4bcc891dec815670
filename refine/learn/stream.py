"""Features on disk: a float32 ``.npy`` file of ``(N, D)`` read in bounded pieces, and the order
in which a fit visits its rows, the same whether the features are in memory or on disk.

A fit visits its training rows in shuffled *windows*: the rows are cut into chunks of
consecutive rows (about a megabyte each), the chunks are dealt at random into windows of
``WINDOW_CHUNKS`` chunks, and each window's rows are shuffled. Reading a window costs
``WINDOW_CHUNKS`` sequential reads instead of one random read per row, and the order does not
depend on where the rows are, so both paths give the same batches and the same bytes. A table
of one window (up to ~64 MB of features) is simply shuffled whole, as it always was.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch

# Bytes of features per chunk: large enough for a sequential read to run at disk or page-cache
# speed, small enough that a window of chunks spread over the file mixes the classes of a
# table sorted by label.
CHUNK_BYTES = 1 << 20
WINDOW_CHUNKS = 64


def chunk_rows(n_features: int) -> int:
    """Rows per chunk for rows of ``n_features`` float32 values: a power of two, at least 64."""
    rows = CHUNK_BYTES // max(4 * n_features, 1)
    return int(max(64, 1 << max(int(rows).bit_length() - 1, 0)))


def window_bytes(n_features: int) -> int:
    """Bytes of features one window holds in memory."""
    return WINDOW_CHUNKS * chunk_rows(n_features) * 4 * n_features


def epoch_windows(
    rows: np.ndarray, n_total: int, n_features: int, generator: torch.Generator
) -> list[np.ndarray]:
    """One epoch's visiting order of ``rows`` (sorted indices into ``n_total`` rows), as the
    windows' rows in training order; their concatenation is the epoch's order.

    With a single window the order is ``rows[randperm(len(rows))]`` and nothing else is
    drawn from ``generator``, so small fits are unchanged by windowing."""
    chunk = chunk_rows(n_features)
    n_chunks = -(-n_total // chunk)
    if n_chunks <= WINDOW_CHUNKS:
        return [rows[torch.randperm(len(rows), generator=generator).numpy()]]
    dealt = torch.randperm(n_chunks, generator=generator).numpy()
    row_chunk = rows // chunk
    # Each row's position in the dealt order of chunks, then its window.
    place = np.empty(n_chunks, np.int64)
    place[dealt] = np.arange(n_chunks)
    window = place[row_chunk] // WINDOW_CHUNKS
    by_window = np.argsort(window, kind="stable")  # rows stay sorted within each window
    bounds = np.searchsorted(window[by_window], np.arange(-(-n_chunks // WINDOW_CHUNKS) + 1))
    out = []
    for start, end in zip(bounds[:-1], bounds[1:], strict=True):
        members = rows[by_window[start:end]]
        out.append(members[torch.randperm(len(members), generator=generator).numpy()])
    return out


class FeatureFile:
    """The features ``(N, D)`` float32 of an ``.npy`` file, read by plain file reads into
    buffers of the caller's size: unlike pages of a memory map, they leave the process's
    resident memory once used."""

    def __init__(self, path: str | Path, offset: int, shape: tuple[int, int]):
        self.path, self.offset, self.shape = str(path), int(offset), shape
        self._file = open(self.path, "rb")  # noqa: SIM115 - closed by close()

    @classmethod
    def of(cls, X: np.ndarray) -> FeatureFile | None:
        """The file behind ``X`` when it is a whole, C-ordered float32 ``np.memmap`` of one
        (``np.load(path, mmap_mode="r")``), else None."""
        if not isinstance(X, np.memmap) or X.filename is None or X.ndim != 2:
            return None
        if X.dtype != np.float32 or not X.flags.c_contiguous:
            return None
        path = Path(X.filename)
        if X.offset + X.nbytes != path.stat().st_size:  # a slice of the file, not all of it
            return None
        return cls(path, X.offset, (int(X.shape[0]), int(X.shape[1])))

    def close(self) -> None:
        self._file.close()

    def read(self, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` ``(stop - start, D)``."""
        width = self.shape[1]
        out = np.empty((stop - start, width), np.float32)
        self._file.seek(self.offset + 4 * width * start)
        self._file.readinto(out.data.cast("B"))  # .data is memoryview(out)
        return out

    def take(self, rows: np.ndarray) -> np.ndarray:
        """Rows ``rows`` (sorted) ``(len(rows), D)``, read a chunk at a time."""
        chunk = chunk_rows(self.shape[1])
        out = np.empty((len(rows), self.shape[1]), np.float32)
        which = rows // chunk
        bounds = np.flatnonzero(np.diff(which)) + 1
        for part in np.split(np.arange(len(rows)), bounds):
            if len(part):
                first, last = int(rows[part[0]]), int(rows[part[-1]])
                out[part] = self.read(first, last + 1)[rows[part] - first]
        return out

    def window_batches(
        self, windows: list[np.ndarray], batch: int
    ) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """``(rows, features)`` of consecutive ``batch``-row slices of the windows' order,
        holding one window (and one batch) in memory at a time."""
        rows_left = np.zeros(0, np.int64)
        x_left = np.zeros((0, self.shape[1]), np.float32)
        for order in windows:
            gathered = self.take(np.sort(order))
            x = gathered[np.searchsorted(np.sort(order), order)]
            rows_all = np.concatenate([rows_left, order])
            x_all = np.concatenate([x_left, x]) if len(x_left) else x
            whole = len(rows_all) - len(rows_all) % batch
            for start in range(0, whole, batch):
                yield rows_all[start : start + batch], x_all[start : start + batch]
            rows_left, x_left = rows_all[whole:], x_all[whole:]
        if len(rows_left):
            yield rows_left, x_left


def save_features(path: Path, batches: Iterator[np.ndarray], shape: tuple[int, int]) -> np.memmap:
    """Write ``batches`` of rows (float32, in order, ``shape`` in all) to the ``.npy`` file
    ``path`` by plain writes, and map it read-only."""
    header = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=shape)
    offset = header.offset
    del header
    written = 0
    with open(path, "r+b") as f:
        f.seek(offset)
        for rows in batches:
            f.write(np.ascontiguousarray(rows, np.float32).tobytes())
            written += len(rows)
    if written != shape[0]:
        raise ValueError(f"wrote {written} rows of features, expected {shape[0]}")
    return np.load(path, mmap_mode="r")
