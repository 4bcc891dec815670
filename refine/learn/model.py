"""The teacher: a PyTorch MLP behind a scikit-learn style estimator.

``MLPClassifier(...).fit(X, y, sample_weight)`` trains on hard labels ``(N,)`` or soft targets
``(N, K)``; ``predict_proba(X)`` returns ``(N, K)`` probabilities whose columns follow
``classes_`` (``0..K-1``). Weights are created inside ``fit``, so ``sklearn.base.clone`` works.

Noisy labels are memorised by an MLP trained long enough, so the defaults lean on what holds
that off: weight decay, dropout, early stopping on a held-out split (validation loss against
noisy labels still bottoms out where the model generalises best), and averaging the
predictions of the few best epochs' weights (``snapshots``).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from typing import NamedTuple

import numpy as np
import torch
from sklearn.base import BaseEstimator, ClassifierMixin
from torch import nn

from refine.learn.stream import FeatureFile, epoch_windows


def resolve_device(device: str = "auto") -> torch.device:
    """CUDA when present (or asked for), else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from refine.errors import ConfigError

        raise ConfigError("--device cuda was asked for, but PyTorch sees no CUDA device")
    return torch.device(device)


def build_network(
    n_features: int,
    n_classes: int,
    hidden: tuple[int, ...],
    dropout: float,
    image_blocks: tuple[tuple[int, int, int, int], ...] = (),
) -> nn.Module:
    """The MLP; with ``image_blocks`` ``((start, channels, height, width), ...)``, each block of
    columns is read as an image by a small CNN whose features join the other columns."""
    if image_blocks:
        return ImageNetwork(n_features, n_classes, hidden, dropout, image_blocks)
    layers: list[nn.Module] = []
    width = n_features
    for size in hidden:
        layers += [nn.Linear(width, size), nn.GELU(), Dropout(dropout)]
        width = size
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


class Dropout(nn.Dropout):
    """``nn.Dropout`` whose masks on CPU come from ``rng`` (a NumPy generator) when one is set.

    PyTorch's CPU Bernoulli draws took a third of a CPU fit, longer than the layer's matrix
    product; NumPy draws such a mask in an eighth of the time (reports/scale.md, "Dropout on
    CPU"). On other devices, or with no ``rng``, it is ``nn.Dropout``. Each unit is kept with
    probability ``1 - p`` to within 2^-16 (16-bit draws).
    """

    rng: np.random.Generator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rng is None or x.device.type != "cpu" or not 0 < self.p < 1:
            return super().forward(x)
        bits = np.frombuffer(self.rng.bytes(x.numel() * 2), np.uint16).reshape(x.shape)
        mask = (bits >= round(self.p * 65536)).astype(np.float32)
        mask *= 1.0 / (1.0 - self.p)
        return x * torch.from_numpy(mask)


def seed_dropout(net: nn.Module, rng: np.random.Generator | None) -> None:
    """Give every ``Dropout`` of ``net`` the generator its CPU masks are drawn from (None: off)."""
    for module in net.modules():
        if isinstance(module, Dropout):
            module.rng = rng


# The CNN: conv 3x3 -> batch norm -> GELU -> max-pool twice, a third conv, then average pooling
# to a 2x2 grid (position still matters for shapes: a 6 is a rotated 9). Small on purpose: it
# trains from scratch on a few thousand noisy rows, on CPU, in every fold of every round; batch
# norm shortens training and wider channels gain nothing (reports/code-notes.md).
CONV_CHANNELS = (8, 16, 16)
POOL_GRID = 2
# Rows per forward pass when predicting with a CNN (its activations dwarf the input).
IMAGE_EVAL_BATCH = 2048


def _conv_tower(channels: int) -> nn.Module:
    c1, c2, c3 = CONV_CHANNELS
    return nn.Sequential(
        nn.Conv2d(channels, c1, 3, padding=1),
        nn.BatchNorm2d(c1),
        nn.GELU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c1, c2, 3, padding=1),
        nn.BatchNorm2d(c2),
        nn.GELU(),
        nn.MaxPool2d(2),
        nn.Conv2d(c2, c3, 3, padding=1),
        nn.BatchNorm2d(c3),
        nn.GELU(),
        nn.AdaptiveAvgPool2d(POOL_GRID),
        nn.Flatten(),
    )


class ImageNetwork(nn.Module):
    """A CNN per image block, whose features are concatenated with the other columns and fed
    to the same MLP head as ``build_network`` builds without images."""

    def __init__(
        self,
        n_features: int,
        n_classes: int,
        hidden: tuple[int, ...],
        dropout: float,
        image_blocks: tuple[tuple[int, int, int, int], ...],
    ):
        super().__init__()
        self.blocks = [tuple(int(v) for v in block) for block in image_blocks]
        self.towers = nn.ModuleList(_conv_tower(c) for _, c, _, _ in self.blocks)
        # The columns outside every block, as (start, end) slices.
        self.rest: list[tuple[int, int]] = []
        start = 0
        for begin, c, h, w in sorted(self.blocks):
            if begin > start:
                self.rest.append((start, begin))
            start = begin + c * h * w
        if start < n_features:
            self.rest.append((start, n_features))
        width = sum(e - b for b, e in self.rest) + len(self.blocks) * CONV_CHANNELS[-1] * (
            POOL_GRID**2
        )
        self.head = build_network(width, n_classes, hidden, dropout)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [x[:, b:e] for b, e in self.rest]
        for (start, c, h, w), tower in zip(self.blocks, self.towers, strict=True):
            parts.append(tower(x[:, start : start + c * h * w].reshape(-1, c, h, w)))
        return self.head(torch.cat(parts, dim=1))


def _adamw(net: nn.Module, lr: float, weight_decay: float) -> torch.optim.AdamW:
    """AdamW, fused into one kernel where this PyTorch has it for the device (CPU: 2.4 on).

    On CPU the unfused step took 15% of a fit and the fused one 6% (reports/scale.md,
    "Dropout on CPU").
    """
    try:
        return torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay, fused=True)
    except RuntimeError:  # an older PyTorch: fused on CUDA only
        return torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)


def auto_batch_size(n_rows: int) -> int:
    """Small batches for small data (more steps), up to 1024 rows on large data: a CPU core
    trains as many rows a second at 1024 as at 4096, and the extra steps fit better at the
    same rows seen (reports/scale.md, "Fewer rows seen, smaller batches")."""
    return int(min(1024, max(64, 2 ** round(math.log2(max(n_rows, 1) / 200)))))


class MLPClassifier(ClassifierMixin, BaseEstimator):
    """A multilayer perceptron classifier trained with AdamW and early stopping.

    Parameters
    ----------
    n_classes : int or None
        Number of classes K; inferred from ``y`` when None.
    hidden : tuple of int
        Widths of the hidden layers.
    dropout, lr, weight_decay : float
        Regularisation and AdamW settings.
    batch_size : int
        Rows per step; 0 chooses from the number of rows (64 to 1024).
    max_epochs : int
        Most passes over the data.
    max_rows_seen : int
        Most rows seen in all (epochs x rows); bounds the cost on large data.
    patience : int
        Epochs without a better validation loss before stopping.
    val_fraction : float
        Share of rows held out for early stopping.
    snapshots : int
        Number of best epochs whose weights are kept; their predictions are averaged.
    device : {"auto", "cpu", "cuda"}
    random_state : int
        Seeds the initial weights, the validation split, the batch order and dropout.
    image_blocks : tuple of (start, channels, height, width)
        Blocks of columns of ``X`` that hold an image's pixels, channel-major; a small CNN reads
        each (``FeatureEncoder.image_blocks``). Empty: a plain MLP.
    mixup : float
        mixup (Zhang et al., 2018) with mixing weights drawn from Beta(mixup, mixup): each step
        trains on convex blends of its rows with a shuffle of them, targets and weights blended
        alike. 0: off. The validation loss is on unblended rows.
    """

    def __init__(
        self,
        n_classes: int | None = None,
        hidden: tuple[int, ...] = (256, 256),
        dropout: float = 0.2,
        lr: float = 2e-3,
        weight_decay: float = 1e-4,
        batch_size: int = 0,
        max_epochs: int = 60,
        max_rows_seen: int = 2_000_000,
        patience: int = 6,
        val_fraction: float = 0.1,
        snapshots: int = 3,
        device: str = "auto",
        random_state: int = 0,
        image_blocks: tuple[tuple[int, int, int, int], ...] = (),
        mixup: float = 0.0,
    ):
        self.n_classes = n_classes
        self.hidden = hidden
        self.dropout = dropout
        self.lr = lr
        self.weight_decay = weight_decay
        self.batch_size = batch_size
        self.max_epochs = max_epochs
        self.max_rows_seen = max_rows_seen
        self.patience = patience
        self.val_fraction = val_fraction
        self.snapshots = snapshots
        self.device = device
        self.random_state = random_state
        self.image_blocks = image_blocks
        self.mixup = mixup

    def fit(
        self,
        X: np.ndarray,
        y: np.ndarray,
        sample_weight: np.ndarray | None = None,
        on_epoch: Callable[[int, int], None] | None = None,
        rows: np.ndarray | None = None,
    ) -> MLPClassifier:
        """Train on ``X`` ``(N, D)`` float32 and ``y``: class indices ``(N,)`` or soft targets ``(N, K)``.

        ``on_epoch(epoch, max_epochs)`` is called after each epoch (for progress bars).
        ``rows`` (sorted indices into ``X``, ``y`` and ``sample_weight``): train on these rows
        only, as if given ``X[rows]``. When ``X`` is a memory map of a whole ``.npy`` file
        (``np.load(path, mmap_mode="r")``), its rows are read a window at a time, never all
        at once, and the result is the same as from the array in memory.
        """
        source = FeatureFile.of(X)
        if source is None:
            X = np.ascontiguousarray(X, dtype=np.float32)
        n_total = len(X)
        rows = np.arange(n_total) if rows is None else np.asarray(rows, np.int64)
        y = np.asarray(y)
        if y.ndim == 2 and y.dtype == np.float32 and y.flags.c_contiguous and y.flags.writeable:
            # Soft targets of every row of X: training reads them by row index, and rows
            # outside ``rows`` are never read, so they serve as they are, without two copies.
            full_targets = np.ascontiguousarray(y, dtype=np.float32)
            classes = full_targets.argmax(1)[rows]
            n, k = len(rows), y.shape[1]
        else:
            targets = self._targets(y[rows] if len(rows) != n_total else y)
            (n, k), classes = targets.shape, targets.argmax(1)
            # The targets of every row of X, so that a row index means one row.
            full_targets = np.zeros((n_total, k), np.float32)
            full_targets[rows] = targets
            del targets
        weight = (
            np.ones(n, np.float32)
            if sample_weight is None
            else np.asarray(sample_weight, np.float32)
        )
        if len(weight) != n:
            weight = weight[rows]
        self.classes_ = np.arange(k)
        self.n_features_in_ = X.shape[1]
        device = resolve_device(self.device)
        self.device_ = str(device)
        rng = np.random.default_rng(self.random_state)
        local_train, local_val = self._holdout(classes, rng)
        train_idx, val_idx = rows[local_train], rows[local_val]
        batch = self.batch_size or auto_batch_size(len(train_idx))
        epochs = max(
            1, min(self.max_epochs, math.ceil(self.max_rows_seen / max(len(train_idx), 1)))
        )

        devices = [device.index or 0] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.random_state)
            net, optimiser, schedule = self._build(
                X.shape[1], k, device, steps=epochs * math.ceil(len(train_idx) / batch)
            )
            full_weight = np.zeros(n_total, np.float32)  # as full_targets
            full_weight[rows] = weight
            data = _Rows(
                source,
                None if source is not None else _to(device, X),
                _to(device, full_targets),
                _to(device, full_weight),
                train_idx,
                val_idx,
            )
            try:
                kept = self._train(net, optimiser, schedule, data, batch, epochs, rng, on_epoch)
            finally:
                if source is not None:
                    source.close()
        self.epochs_ = len(self.history_)
        self.snapshot_epochs_ = [e for _, e, _ in kept]
        self.states_ = [s for _, _, s in kept]
        self.network_ = net.eval()
        return self

    def _holdout(
        self, classes: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """Training and validation row indices for rows whose targets' most likely classes are
        ``classes`` ``(N,)``, stratified by class."""
        n = len(classes)
        val = _stratified_holdout(classes, self.val_fraction, rng) if n >= 20 else np.zeros(n, bool)
        return np.flatnonzero(~val), np.flatnonzero(val)

    def _build(
        self, n_features: int, n_classes: int, device: torch.device, steps: int
    ) -> tuple[nn.Module, torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        """The network on ``device``, its AdamW optimiser and a cosine schedule over ``steps``."""
        net = build_network(
            n_features, n_classes, tuple(self.hidden), self.dropout, tuple(self.image_blocks)
        ).to(device)
        optimiser = _adamw(net, self.lr, self.weight_decay)
        schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimiser, T_max=steps)
        return net, optimiser, schedule

    def _train(
        self,
        net: nn.Module,
        optimiser: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        data: _Rows,
        batch: int,
        epochs: int,
        rng: np.random.Generator,
        on_epoch: Callable[[int, int], None] | None,
    ) -> list[tuple[float, int, dict]]:
        """Epochs until early stopping; the kept ``(val loss, epoch, weights)``, best first."""
        generator = torch.Generator(device="cpu").manual_seed(self.random_state)
        # Its own stream, so the masks never shift the holdout's or mixup's draws.
        seed_dropout(net, np.random.default_rng([self.random_state, 1]))
        kept: list[tuple[float, int, dict]] = []  # (val loss, epoch, weights), best first
        best, since_best = math.inf, 0
        self.history_ = []
        for epoch in range(epochs):
            self._train_epoch(net, optimiser, schedule, data, batch, rng, generator)
            val_loss = self._val_loss(net, data) if len(data.val) else -epoch
            self.history_.append(float(val_loss))
            if on_epoch is not None:
                on_epoch(epoch + 1, epochs)
            state = {name: t.detach().clone() for name, t in net.state_dict().items()}
            kept = sorted([*kept, (val_loss, epoch, state)], key=lambda s: s[0])[: self.snapshots]
            if val_loss < best - 1e-4:
                best, since_best = val_loss, 0
            else:
                since_best += 1
                if since_best >= self.patience:
                    break
        seed_dropout(net, None)
        return kept

    def _train_epoch(
        self,
        net: nn.Module,
        optimiser: torch.optim.Optimizer,
        schedule: torch.optim.lr_scheduler.LRScheduler,
        data: _Rows,
        batch: int,
        rng: np.random.Generator,
        generator: torch.Generator,
    ) -> None:
        """One pass over the training rows in shuffled batches of ``batch`` rows (the order of
        ``refine.learn.stream.epoch_windows``)."""
        device = data.targets.device
        net.train()
        windows = epoch_windows(data.train, len(data.weight), self.n_features_in_, generator)
        for idx, xb in data.batches(windows, batch):
            tb, wb = data.targets[idx], data.weight[idx]
            if self.mixup > 0:
                lam = float(rng.beta(self.mixup, self.mixup))
                perm = torch.randperm(len(idx), generator=generator).to(device)
                xb = lam * xb + (1 - lam) * xb[perm]
                tb = lam * tb + (1 - lam) * tb[perm]
                wb = lam * wb + (1 - lam) * wb[perm]
            loss = _weighted_ce(net(xb), tb, wb)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()

    @classmethod
    def from_states(
        cls,
        states: list[dict[str, torch.Tensor]],
        n_features: int,
        n_classes: int,
        hidden: tuple[int, ...],
        dropout: float,
        device: str = "auto",
        image_blocks: tuple[tuple[int, int, int, int], ...] = (),
    ) -> MLPClassifier:
        """A fitted classifier from saved snapshot weights (a run's ``model.pt``)."""
        blocks = tuple((int(s), int(c), int(h), int(w)) for s, c, h, w in image_blocks)
        model = cls(
            n_classes=n_classes,
            hidden=tuple(hidden),
            dropout=dropout,
            device=device,
            image_blocks=blocks,
        )
        net = build_network(n_features, n_classes, tuple(hidden), dropout, blocks)
        net.load_state_dict(states[0])
        model.network_ = net.to(resolve_device(device)).eval()
        model.states_ = [{k: v.to(resolve_device(device)) for k, v in s.items()} for s in states]
        model.classes_ = np.arange(n_classes)
        return model

    @torch.no_grad()
    def predict_member_proba(self, X: np.ndarray, batch_size: int = 65536) -> np.ndarray:
        """Probabilities of each kept snapshot: ``(S, N, K)``."""
        if self.image_blocks:  # a CNN's activations are far wider than its input
            batch_size = min(batch_size, IMAGE_EVAL_BATCH)
        X = np.ascontiguousarray(X, dtype=np.float32)
        device = next(self.network_.parameters()).device
        net = copy.deepcopy(self.network_)
        # Filled on the device and copied back once, so no batch waits on the device; on a GPU
        # the forward pass runs in bfloat16 (autocast), the softmax in float32.
        shape = (len(self.states_), len(X), len(self.classes_))
        out = torch.empty(shape, dtype=torch.float32, device=device)
        autocast = device.type == "cuda"
        for s, state in enumerate(self.states_):
            net.load_state_dict(state)
            net.eval()
            for start in range(0, len(X), batch_size):
                xb = _upload(X[start : start + batch_size], device)
                with torch.autocast("cuda", torch.bfloat16) if autocast else nullcontext():
                    logits = net(xb)
                out[s, start : start + len(xb)] = torch.softmax(logits.float(), dim=1)
        return out.cpu().numpy()

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        """Mean probabilities of the kept snapshots: ``(N, K)``, rows sum to 1."""
        return self.predict_member_proba(X).mean(axis=0)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.predict_proba(X).argmax(axis=1)

    def _targets(self, y: np.ndarray) -> np.ndarray:
        y = np.asarray(y)
        if y.ndim == 2:
            return np.ascontiguousarray(y, dtype=np.float32)
        k = self.n_classes or int(y.max()) + 1
        onehot = np.zeros((len(y), k), np.float32)
        onehot[np.arange(len(y)), y.astype(np.int64)] = 1.0
        return onehot

    @torch.no_grad()
    def _val_loss(self, net: nn.Module, data: _Rows, batch_size: int = 65536) -> float:
        if self.image_blocks:
            batch_size = min(batch_size, IMAGE_EVAL_BATCH)
        net.eval()
        # Summed in float64 on the device and read once, so the loop waits on no device.
        total = torch.zeros((), dtype=torch.float64, device=data.targets.device)
        weight = torch.zeros_like(total)
        for start in range(0, len(data.val), batch_size):
            idx_np = data.val[start : start + batch_size]
            idx = torch.from_numpy(idx_np).to(data.targets.device)
            w = data.weight[idx]
            logits = net(data.take(idx_np, idx))
            losses = -(data.targets[idx] * torch.log_softmax(logits, dim=1)).sum(1)
            total += (losses * w).sum().double()
            weight += w.sum().double()
        return float(total) / max(float(weight), 1e-12)


def _to(device: torch.device, array: np.ndarray) -> torch.Tensor:
    tensor = torch.from_numpy(np.ascontiguousarray(array))
    return tensor.to(device)


class _Rows(NamedTuple):
    """A fit's rows: the features, from ``source`` (a file) or ``X`` ``(N, D)`` on the device;
    ``targets`` ``(N, K)`` and ``weight`` ``(N,)`` on the device; and the ``train`` and ``val``
    row indices (numpy, sorted)."""

    source: FeatureFile | None
    X: torch.Tensor | None
    targets: torch.Tensor
    weight: torch.Tensor
    train: np.ndarray
    val: np.ndarray

    def take(self, rows: np.ndarray, on_device: torch.Tensor) -> torch.Tensor:
        """Features of ``rows`` (sorted; ``on_device`` is the same indices as a tensor)."""
        if self.X is not None:
            return self.X[on_device]
        assert self.source is not None
        return _upload(self.source.take(rows), self.targets.device)

    def batches(
        self, windows: list[np.ndarray], batch: int
    ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """``(row indices, features)`` on the device, ``batch`` rows at a time, in the
        windows' order."""
        device = self.targets.device
        if self.X is not None:
            order = torch.from_numpy(np.concatenate(windows)).to(device)
            for start in range(0, len(order), batch):
                idx = order[start : start + batch]
                yield idx, self.X[idx]
            return
        assert self.source is not None
        for rows, x in self.source.window_batches(windows, batch):
            yield torch.from_numpy(rows).to(device), _upload(x, device)


def _upload(x: np.ndarray, device: torch.device) -> torch.Tensor:
    """``x`` on ``device``; to a GPU through pinned memory, without waiting for the copy."""
    tensor = torch.from_numpy(x)
    if device.type == "cuda":
        return tensor.pin_memory().to(device, non_blocking=True)
    return tensor


def _weighted_ce(logits: torch.Tensor, targets: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
    losses = -(targets * torch.log_softmax(logits, dim=1)).sum(1)
    return (losses * weight).sum() / weight.sum().clamp_min(1e-12)


def _stratified_holdout(
    classes: np.ndarray, fraction: float, rng: np.random.Generator
) -> np.ndarray:
    """A mask holding out ``fraction`` of each class (at least one row of classes with 2+ rows)."""
    n = len(classes)
    perm = rng.permutation(n)
    order = perm[np.argsort(classes[perm], kind="stable")]  # grouped by class, shuffled within
    grouped = classes[order]
    rank = np.arange(n) - np.searchsorted(grouped, grouped, side="left")
    counts = np.bincount(classes)
    take = np.where(counts >= 2, np.maximum(1, np.round(fraction * counts)), 0)
    mask = np.zeros(n, bool)
    mask[order[rank < take[grouped]]] = True
    return mask
