"""Label noise with a known answer: flip an exact share of labels, reproducibly by seed.

Each generator takes true labels ``(N,)`` as class indices and returns a new array; the input
is never changed. The ones that flip a rate change exactly ``round(rate * eligible_rows)`` rows,
so a benchmark knows its noise share to the row. Randomness comes only from
``np.random.default_rng(seed)``: the same seed gives the same noise.
"""

from __future__ import annotations

import numpy as np

# Keeps rows the clean model finds easy eligible for instance-dependent flips, at a low weight.
DIFFICULTY_EPSILON = 1e-3


def flip_symmetric(labels: np.ndarray, rate: float, n_classes: int, seed: int) -> np.ndarray:
    """Flip exactly ``round(rate * N)`` labels, each to a uniformly drawn other class.

    ``labels`` ``(N,)`` class indices; returns new noisy labels, ``labels`` is not changed.
    """
    _check_rate(rate)
    rng = np.random.default_rng(seed)
    noisy = np.asarray(labels).copy()
    rows = rng.choice(len(noisy), size=int(round(rate * len(noisy))), replace=False)
    noisy[rows] = (noisy[rows] + rng.integers(1, n_classes, size=len(rows))) % n_classes
    return noisy


def flip_with_matrix(labels: np.ndarray, transition: np.ndarray, seed: int) -> np.ndarray:
    """Draw each noisy label from row ``transition[true]`` (rows sum to 1): ``P(noisy | true)``."""
    transition = np.asarray(transition, dtype=float)
    if not np.allclose(transition.sum(1), 1.0):
        raise ValueError("each row of the transition matrix must sum to 1")
    rng = np.random.default_rng(seed)
    cumulative = transition.cumsum(1)[labels]
    draws = rng.random(len(labels))[:, None]
    return np.minimum((draws > cumulative).sum(1), transition.shape[1] - 1)


def flip_pair(
    labels: np.ndarray,
    rate: float,
    n_classes: int,
    seed: int,
    mapping: np.ndarray | list[int] | None = None,
) -> np.ndarray:
    """Pair (asymmetric) noise: each flipped row of class ``c`` becomes ``mapping[c]``.

    Parameters
    ----------
    labels : ndarray of int, shape (N,)
        True class indices in ``0 .. n_classes - 1``.
    rate : float
        Share of rows to flip, in [0, 1]. Exactly ``round(rate * N)`` rows, drawn uniformly
        among all rows, change.
    n_classes : int
        Number of classes, at least 2.
    seed : int
        Seed of ``np.random.default_rng``; the same seed flips the same rows.
    mapping : array-like of int, shape (n_classes,), optional
        The confusable class of each class; ``mapping[c]`` must differ from ``c``.
        Default ``(c + 1) % n_classes``, the pair-flip of Han et al. (2018).

    Returns
    -------
    ndarray of int, shape (N,)
        New noisy labels; ``labels`` is not changed.
    """
    labels = _check_labels(labels, n_classes)
    _check_rate(rate)
    if mapping is None:
        mapping = (np.arange(n_classes) + 1) % n_classes
    mapping = np.asarray(mapping)
    if mapping.shape != (n_classes,) or not np.issubdtype(mapping.dtype, np.integer):
        raise ValueError(
            f"mapping must hold one class index per class, {n_classes} integers, "
            f"got shape {mapping.shape} of {mapping.dtype}"
        )
    if mapping.min() < 0 or mapping.max() >= n_classes:
        raise ValueError(
            f"mapping names an unknown class: every entry must be in 0..{n_classes - 1}"
        )
    fixed = np.flatnonzero(mapping == np.arange(n_classes))
    if len(fixed):
        raise ValueError(
            f"mapping sends class {int(fixed[0])} to itself; every class needs another class "
            "to flip to"
        )
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    rows = rng.choice(len(noisy), size=int(round(rate * len(noisy))), replace=False)
    noisy[rows] = mapping[noisy[rows]]
    return noisy


def flip_instance_dependent(
    labels: np.ndarray, proba: np.ndarray, rate: float, seed: int
) -> np.ndarray:
    """Instance-dependent noise: hard rows flip more often, each to its most confusable class.

    A row is chosen with probability proportional to its difficulty,
    ``1 - proba[row, true] + DIFFICULTY_EPSILON``, without replacement, and becomes the class
    the clean model rates highest after the true one. This mimics annotators, who err on
    ambiguous rows and towards the class the row resembles.

    Parameters
    ----------
    labels : ndarray of int, shape (N,)
        True class indices in ``0 .. K - 1``.
    proba : ndarray of float, shape (N, K)
        A clean model's out-of-fold class probabilities; the caller computes them
        (``sklearn.model_selection.cross_val_predict(..., method="predict_proba")``), so that
        no row is scored by a model that saw it.
    rate : float
        Share of rows to flip, in [0, 1]. Exactly ``round(rate * N)`` rows change.
    seed : int
        Seed of ``np.random.default_rng``.

    Returns
    -------
    ndarray of int, shape (N,)
        New noisy labels; ``labels`` and ``proba`` are not changed.
    """
    labels = np.asarray(labels)
    proba = np.asarray(proba, dtype=float)
    if proba.ndim != 2 or proba.shape[0] != len(labels) or proba.shape[1] < 2:
        raise ValueError(
            f"proba must have shape (N, K) = ({len(labels)}, K) with K >= 2 classes, "
            f"one row per label; got shape {proba.shape}"
        )
    if not np.isfinite(proba).all():
        raise ValueError("proba holds NaN or infinite values; pass a model's probabilities")
    labels = _check_labels(labels, proba.shape[1])
    _check_rate(rate)
    rows = np.arange(len(labels))
    difficulty = 1.0 - proba[rows, labels] + DIFFICULTY_EPSILON
    difficulty = np.clip(difficulty, DIFFICULTY_EPSILON, None)
    confusion = proba.copy()
    confusion[rows, labels] = -np.inf
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    flipped = rng.choice(
        len(labels),
        size=int(round(rate * len(labels))),
        replace=False,
        p=difficulty / difficulty.sum(),
    )
    noisy[flipped] = confusion[flipped].argmax(1)
    return noisy


def flip_one_direction(
    labels: np.ndarray, source: int, target: int, rate: float, seed: int
) -> np.ndarray:
    """Class-conditional noise in one direction: some rows of ``source`` become ``target``.

    Parameters
    ----------
    labels : ndarray of int, shape (N,)
        True class indices.
    source, target : int
        Classes that occur in ``labels``, ``source != target``.
    rate : float
        Share of the ``source`` rows to flip, in [0, 1]: exactly
        ``round(rate * count(labels == source))`` of them, drawn uniformly. No other row changes.
    seed : int
        Seed of ``np.random.default_rng``.

    Returns
    -------
    ndarray of int, shape (N,)
        New noisy labels; ``labels`` is not changed.
    """
    labels = np.asarray(labels)
    _check_rate(rate)
    present = np.unique(labels)
    for role, value in (("source", source), ("target", target)):
        if value not in present:
            raise ValueError(
                f"{role} class {value!r} does not occur in the labels; "
                f"choose one of {present.tolist()}"
            )
    if source == target:
        raise ValueError(f"source and target are both class {source!r}; choose two classes")
    rng = np.random.default_rng(seed)
    noisy = labels.copy()
    eligible = np.flatnonzero(labels == source)
    rows = rng.choice(eligible, size=int(round(rate * len(eligible))), replace=False)
    noisy[rows] = target
    return noisy


def hide_labels(n: int, fraction: float, seed: int) -> np.ndarray:
    """Choose exactly ``round(fraction * n)`` rows, uniformly, to become unlabelled.

    Parameters
    ----------
    n : int
        Number of rows, at least 0.
    fraction : float
        Share of rows to hide, in [0, 1].
    seed : int
        Seed of ``np.random.default_rng``.

    Returns
    -------
    ndarray of bool, shape (n,)
        True on the rows whose label is to be hidden.
    """
    if n < 0:
        raise ValueError(f"number of rows must be at least 0, got {n}")
    if not 0 <= fraction <= 1:
        raise ValueError(f"unlabelled fraction must be in [0, 1], got {fraction}")
    rng = np.random.default_rng(seed)
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=int(round(fraction * n)), replace=False)] = True
    return mask


def crowd_annotators(
    n_classes: int,
    annotators: int,
    seed: int,
    accuracy: tuple[float, float] = (0.35, 0.9),
    concentration: float = 0.5,
    one_direction: float = 0.0,
    spammers: float = 0.0,
    one_class: float = 0.0,
) -> np.ndarray:
    """Annotators with known confusion matrices ``(A, K, K)``: row ``[a, k]`` is
    ``P(annotator a votes l | true class k)``.

    Each annotator's accuracy is drawn uniformly in ``accuracy`` and sits on the diagonal of
    every row. Its errors, ``1 - accuracy``, spread over the other classes by a
    ``Dirichlet(concentration)`` drawn per row (small ``concentration``: errors pile on a few
    classes), except for the first ``round(one_direction * A)`` annotators, who send every
    error on class ``k`` to one other class drawn once per row (class-dependent, one-way
    confusion, as a labelling function's). The last ``round(spammers * A)`` annotators then
    vote uniformly at random whatever the class, and the ``round(one_class * A)`` before them
    always vote one class, drawn per annotator. Randomness only from ``default_rng(seed)``.
    """
    low, high = accuracy
    if n_classes < 2 or annotators < 1:
        raise ValueError(
            f"a crowd needs n_classes >= 2 and annotators >= 1, got {n_classes} and {annotators}"
        )
    if not 0 <= low <= high <= 1:
        raise ValueError(f"annotator accuracy must be a range within [0, 1], got {accuracy}")
    if not 0 <= spammers <= 1 or not 0 <= one_class <= 1 - spammers:
        raise ValueError(
            f"spammers and one_class must be shares summing to at most 1, got {spammers} "
            f"and {one_class}"
        )
    if concentration <= 0 or not 0 <= one_direction <= 1:
        raise ValueError(
            "concentration must be above 0 and one_direction in [0, 1], got "
            f"{concentration} and {one_direction}"
        )
    rng = np.random.default_rng(seed)
    right = rng.uniform(low, high, annotators)
    one_way = int(round(one_direction * annotators))
    confusion = np.zeros((annotators, n_classes, n_classes))
    for a in range(annotators):
        for k in range(n_classes):
            if a < one_way:
                errors = np.zeros(n_classes - 1)
                errors[rng.integers(n_classes - 1)] = 1.0
            else:
                errors = rng.dirichlet(np.full(n_classes - 1, concentration))
            confusion[a, k] = np.insert(errors * (1 - right[a]), k, right[a])
    # Drawn after the others, so a crowd without them keeps the same annotators.
    spam = int(round(spammers * annotators))
    single = int(round(one_class * annotators))
    if spam:
        confusion[annotators - spam :] = 1.0 / n_classes
    for a in range(annotators - spam - single, annotators - spam):
        confusion[a] = 0.0
        confusion[a, :, rng.integers(n_classes)] = 1.0
    return confusion


def crowd_workloads(annotators: int, skew: float, seed: int) -> np.ndarray:
    """Each annotator's share of the votes ``(A,)``, summing to 1, largest first: lognormal
    with sigma ``skew`` (0: equal shares; 1.5: a few annotators give most of the votes, as on
    crowdsourcing platforms)."""
    if annotators < 1 or skew < 0:
        raise ValueError(f"workloads need annotators >= 1 and skew >= 0, got {annotators}, {skew}")
    shares = np.sort(np.random.default_rng(seed).lognormal(0.0, skew, annotators))[::-1]
    return shares / shares.sum()


def item_hardness(proba: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """How hard each item is ``(N,)`` in [0, 1], and the classes it is confused with ``(N, K)``,
    from a clean model's out-of-fold probabilities ``proba`` ``(N, K)``: hardness is one minus
    the probability of the true class, and the confusable classes are the other classes in
    proportion to their probabilities (rows sum to 1)."""
    labels = _check_labels(labels, proba.shape[1])
    rows = np.arange(len(labels))
    hardness = 1.0 - proba[rows, labels]
    others = proba.astype(np.float64, copy=True) + 1e-6
    others[rows, labels] = 0.0
    return np.clip(hardness, 0.0, 1.0), others / others.sum(1, keepdims=True)


def crowd_votes(
    labels: np.ndarray,
    confusion: np.ndarray,
    per_item: tuple[int, int],
    seed: int,
    *,
    workload: np.ndarray | None = None,
    hardness: np.ndarray | None = None,
    confusable: np.ndarray | None = None,
    difficulty: float = 0.0,
) -> np.ndarray:
    """Votes ``(N, A)``: each item gets ``m`` votes, ``m`` drawn uniformly in ``per_item``
    (inclusive), from ``m`` distinct annotators drawn uniformly (or in proportion to
    ``workload`` ``(A,)``); annotator ``a`` votes class ``l`` with probability
    ``confusion[a, labels[i], l]``. -1 where an annotator gave no vote.

    With ``difficulty`` > 0, ``hardness`` ``(N,)`` in [0, 1] and ``confusable`` ``(N, K)`` (as
    from ``item_hardness``), an annotator whose vote depends on the class is fooled by item
    ``i`` with probability ``difficulty * hardness[i]`` and then votes a class drawn from
    ``confusable[i]`` (never the true one): annotators err most where a clean model is unsure,
    towards the classes it confuses. Spammers and one-class annotators are not fooled.

    ``labels`` ``(N,)`` true class indices; ``confusion`` ``(A, K, K)`` as from
    ``crowd_annotators``. ``votes_long`` turns the result into a long table.
    """
    confusion = np.asarray(confusion, dtype=float)
    n_annotators, n_classes = confusion.shape[0], confusion.shape[1]
    labels = _check_labels(labels, n_classes)
    low, high = per_item
    if not 1 <= low <= high <= n_annotators:
        raise ValueError(
            f"votes per item must be a range within 1..{n_annotators} (the annotators), "
            f"got {list(per_item)}"
        )
    if difficulty and (hardness is None or confusable is None or not 0 <= difficulty <= 1):
        raise ValueError(
            f"difficulty must be in [0, 1] and needs hardness and confusable, got {difficulty}"
        )
    rng = np.random.default_rng(seed)
    count = rng.integers(low, high + 1, size=len(labels))
    if workload is None:
        # The first m of a random order of the annotators: m distinct ones per item.
        order = rng.random((len(labels), n_annotators)).argsort(1)
    else:
        # Gumbel keys: the first m are a draw without replacement in proportion to workload.
        keys = np.log(np.asarray(workload, float)) - np.log(
            -np.log(rng.random((len(labels), n_annotators)))
        )
        order = (-keys).argsort(1)
    chosen = np.argsort(order, 1) < count[:, None]
    per_item_confusion = confusion[:, labels, :].transpose(1, 0, 2)  # (N, A, K)
    if difficulty:
        assert hardness is not None and confusable is not None  # checked above
        attentive = ~np.all(np.isclose(confusion, confusion[:, :1]), axis=(1, 2))  # (A,)
        fooled = difficulty * np.asarray(hardness)[:, None, None] * attentive[None, :, None]
        per_item_confusion = (1 - fooled) * per_item_confusion + fooled * confusable[:, None]
    cumulative = per_item_confusion.cumsum(2)
    drawn = (rng.random((len(labels), n_annotators))[..., None] > cumulative).sum(2)
    return np.where(chosen, np.minimum(drawn, n_classes - 1), -1).astype(np.int64)


def votes_long(votes: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The votes ``(N, A)`` (-1 = none) as a long table: ``(row, annotator, label)``, each
    ``(V,)`` for the ``V`` votes cast, ordered by row then annotator."""
    rows, annotators = np.nonzero(np.asarray(votes) >= 0)
    return rows, annotators, np.asarray(votes)[rows, annotators]


def _check_rate(rate: float) -> None:
    if not 0 <= rate <= 1:
        raise ValueError(f"noise rate must be in [0, 1], got {rate}")


def _check_labels(labels: np.ndarray, n_classes: int) -> np.ndarray:
    """``labels`` as an integer array ``(N,)`` whose values are all in ``0 .. n_classes - 1``."""
    labels = np.asarray(labels)
    if labels.ndim != 1 or (labels.size and not np.issubdtype(labels.dtype, np.integer)):
        raise ValueError(
            f"labels must be class indices of shape (N,), got shape {labels.shape} of {labels.dtype}"
        )
    if n_classes < 2:
        raise ValueError(f"label noise needs at least 2 classes, got n_classes={n_classes}")
    unknown = labels[(labels < 0) | (labels >= n_classes)]
    if len(unknown):
        raise ValueError(
            f"label {int(unknown[0])} is not a known class: with n_classes={n_classes}, "
            f"labels must be in 0..{n_classes - 1}"
        )
    return labels
