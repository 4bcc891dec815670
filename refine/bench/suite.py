"""``refine bench``: refine against cleanlab baselines, side by side, on the dataset recipes.

For each recipe of a suite and each seed, in one process: build the noisy dataset, run refine,
run the baselines on the same rows, and score everything against the truth. Baselines:

* ``cleanlab+LR``: cleanlab's ``find_label_issues`` on 5-fold out-of-fold probabilities of a
  standardised ``LogisticRegression`` (on text recipes: TF-IDF of word 1-2-grams of the raw
  text into ``LogisticRegression``; on image recipes, the decoded, standardised pixels);
* ``cleanlab+HGB``: the same on ``HistGradientBoostingClassifier``;
* ``CleanLearning``: cleanlab's ``CleanLearning(LogisticRegression)``, for downstream accuracy.

Downstream accuracy is that of one learner (the same ``LogisticRegression``) on the clean
test split, trained on the noisy labels, on refine's ``label_refined`` with ``sample_weight``,
and on the true labels (the ceiling). Cost is wall time and peak memory (resident set growth
while the method runs), as ratios to ``cleanlab+LR``.
"""

from __future__ import annotations

import datetime
import os
import platform
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from refine.bench.summary import BenchReport, summarise, summarise_review
from refine.errors import ConfigError
from refine.progress import NULL_PROGRESS, Progress

TRUTH_COLUMNS = ("label_true", "is_noisy")
VOTES_COLUMN = "votes"  # a crowd recipe's votes (refine.bench.crowds.VOTES_COLUMN)
TEXT_COLUMN = "text"  # the text column of text recipes (refine.bench.sources.TEXT_COLUMN)
IMAGE_COLUMN = "image"  # the image column of image recipes (refine.bench.sources.IMAGE_COLUMN)
# The column refine reads revealed true labels from (``--verified``): null where not revealed.
VERIFIED_COLUMN = "label_verified"
# The review loop's reruns, each with the strategy of refine.review.pick that chose its rows.
REVIEW_RUNS = (("random", "random"), ("review", "value"))


def run_bench(
    suite: str = "quick",
    seeds: int = 1,
    recipes: tuple[str, ...] | None = None,
    progress: Progress = NULL_PROGRESS,
    verified: float = 0.0,
    review: float = 0.0,
    **refine_options: Any,
) -> BenchReport:
    """Run every recipe of ``suite`` (or the named ``recipes``) for ``seeds`` seeds.

    ``verified`` in [0, 1): the share of each case's labelled training rows whose true label
    is revealed (``reveal``), to refine as verified labels and to the baselines as fixed ones:
    they train on the given labels with those rows set right and flag exactly the revealed
    rows whose given label was wrong, as refine does. The noisy-label yardstick and
    CleanLearning train on the same labels, and refine's labels must beat them.

    ``review`` in [0, 1): above 0, also simulate a reviewer (``_review_loop``) who verifies
    this share of the training rows after refine's first run, and report it in
    ``BenchReport.review_loop``. Options for ``refine.run`` go in ``refine_options``.
    """
    from refine.bench.recipes import list_recipes, load_recipe

    _check_share("--verified", verified, "of the labelled training rows")
    _check_share("--review", review, "of the training rows (0.02 verifies 2% more)")

    chosen = [load_recipe(n) for n in recipes] if recipes else list_recipes(suite)
    for recipe in [r for r in chosen if r.missing_files()]:
        # the real text sets live outside the repository (../shared/data); not everyone has them
        progress.note(f"skipped {recipe.name}: {recipe.missing_files()[0]} is not on this machine")
        chosen.remove(recipe)
    rows: list[dict[str, Any]] = []
    review_rows: list[dict[str, Any]] = []
    task = progress.start("bench", "datasets", total=len(chosen) * seeds)
    for recipe in chosen:
        for offset in range(seeds):
            progress.note(f"{recipe.name}, seed {recipe.seed + offset}")
            case_rows, loop_rows = _bench_one(
                recipe, recipe.seed + offset, refine_options, verified, review
            )
            rows.extend(case_rows)
            review_rows.extend(loop_rows)
            progress.advance(task)
    progress.finish(task)
    return BenchReport(
        rows=rows,
        summary=summarise(rows),
        header=_header(suite, seeds, verified, review, recipes),
        review_loop={"summary": summarise_review(review_rows, review), "rows": review_rows}
        if review
        else None,
    )


def _check_share(option: str, share: float, of: str) -> None:
    if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 <= share < 1:
        raise ConfigError(f"{option} must be a share in [0, 1) {of}, got {share!r}")


def reveal(labelled: np.ndarray, share: float, seed: int) -> np.ndarray:
    """The rows whose true label a bench case reveals: a mask ``(N,)`` of exactly
    ``round(share * labelled.sum())`` of the ``labelled`` rows ``(N,)``, drawn at random.

    The draw has a stream of its own (``[seed, 25]``), so the same seed reveals the same rows
    and the recipe's noise, drawn from other streams, neither moves it nor is moved by it.
    """
    rows = np.flatnonzero(labelled)
    chosen = np.random.default_rng([seed, 25]).choice(rows, round(share * len(rows)), False)
    mask = np.zeros(len(labelled), bool)
    mask[chosen] = True
    return mask


@dataclass(frozen=True)
class Case:
    """One recipe at one seed: the rows every method runs on and is scored against.

    Arrays are ``(N,)`` over the training rows (``given`` is -1 where unlabelled). ``X`` is
    refine's encoding of them, which the HGB baseline reads; ``X_lr`` and ``X_lr_test`` are
    what the LogisticRegression baseline and the test-accuracy yardstick read
    (``yardstick_inputs``); ``y_test`` the clean test labels.
    """

    name: str
    seed: int
    train: Any  # the built training table, truth columns included
    truth: np.ndarray
    given: np.ndarray
    labelled: np.ndarray
    is_noisy: np.ndarray
    X: np.ndarray
    X_lr: np.ndarray
    X_lr_test: np.ndarray
    y_test: np.ndarray

    @property
    def text(self) -> bool:
        return TEXT_COLUMN in self.train.column_names

    def known(self, revealed: np.ndarray) -> np.ndarray:
        """The given labels ``(N,)`` with the ``revealed`` rows ``(N,)`` set to their true
        label: what the baselines and the yardsticks train on, and what refine must beat."""
        return np.where(revealed, self.truth, self.given)


@dataclass(frozen=True)
class Yardsticks:
    """Test accuracy of the bench's LogisticRegression trained on the given labels with the
    revealed rows fixed (``noisy``) and on the true ones (``clean``), and of CleanLearning on
    the same labels as ``noisy``: every refine run of a case is measured against these three."""

    noisy: float
    clean: float
    cleanlearning: float

    def columns(self) -> dict[str, float]:
        return {
            "noisy_test_accuracy": self.noisy,
            "clean_test_accuracy": self.clean,
            "cleanlearning_test_accuracy": self.cleanlearning,
        }

    def gap_recovered(self, test_accuracy: float) -> float | None:
        """The share of the noisy->clean gap that ``test_accuracy`` closes; None where the gap
        is under half a point (the ratio would be noise)."""
        gap = self.clean - self.noisy
        return (test_accuracy - self.noisy) / gap if gap > 0.005 else None


def _bench_one(
    recipe: Any, seed: int, refine_options: dict[str, Any], verified: float, review: float
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One case: refine's row and the baselines' (with the yardsticks), then the review loop's
    rows when ``review`` is above 0."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    case = _build_case(recipe, seed)
    labelled = case.labelled
    revealed = reveal(labelled, verified, seed)
    base = {
        "dataset": case.name,
        "seed": seed,
        "rows": case.train.num_rows,
        "noise_rate": float(case.is_noisy[labelled].mean()),
        "verified_rows": int(revealed.sum()),
    }
    result, seconds, memory = measure(lambda: _run_refine(case, revealed, refine_options))
    baselines = [
        {**base, "method": name, **_baseline(case, revealed, model, features)}
        for name, model, features in (
            ("cleanlab+LR", _lr_model(case.text), case.X_lr[labelled]),
            ("cleanlab+HGB", HistGradientBoostingClassifier(random_state=seed), case.X[labelled]),
        )
    ]
    yardsticks = _yardsticks(case, revealed)
    scores = score_refine(case, result, revealed, yardsticks)
    refine_row = {**base, "method": "refine", **scores, "seconds": seconds, "memory_mb": memory}
    refine_row.update(crowd_scores(case, result))
    rows = [{**row, **yardsticks.columns()} for row in (refine_row, *baselines)]
    if not review:
        return rows, []
    return rows, _review_loop(case, revealed, result, scores, review, yardsticks, refine_options)


def _review_loop(
    case: Case,
    revealed: np.ndarray,
    result: Any,
    scores: dict[str, Any],
    share: float,
    yardsticks: Yardsticks,
    refine_options: dict[str, Any],
) -> list[dict[str, Any]]:
    """A reviewer after refine's first run on ``case`` (its ``result`` and ``scores``, the
    ``revealed`` rows ``(N,)`` verified): ``round(share * N)`` more rows, the ones
    ``refine.review.pick`` chooses from that result (``review``) or as many drawn at random
    (``random``), are revealed too, and refine runs again with each set. One row per run,
    ``first`` included, each scored as the first against the same ``yardsticks``."""
    from refine.review import doubt, pick

    doubts = doubt(result.refined)
    budget = min(round(share * len(doubts)), int((~revealed).sum()))
    base = {"dataset": case.name, "seed": case.seed, "rows": len(doubts), **yardsticks.columns()}
    rows = [{**base, "run": "first", "picked": 0, "verified_rows": int(revealed.sum()), **scores}]
    for run, strategy in REVIEW_RUNS:
        picked = pick(doubts, case.X, budget, strategy, case.seed, eligible=~revealed)
        more = revealed.copy()
        more[picked] = True
        scored = score_refine(case, _run_refine(case, more, refine_options), more, yardsticks)
        rows.append(
            {**base, "run": run, "picked": len(picked), "verified_rows": int(more.sum()), **scored}
        )
    return rows


def _build_case(recipe: Any, seed: int) -> Case:
    from refine.bench.recipes import build_dataset
    from refine.encode.features import fit_features

    built = build_dataset(recipe, seed=seed)
    train, test = built.train, built.test
    encoder = fit_features(train, "label", ignore=not_features(train))
    X, X_test = encoder.transform(train), encoder.transform(test)
    X_lr, X_lr_test = yardstick_inputs(train, test, lambda: (X, X_test))
    return Case(
        recipe.name,
        seed,
        train,
        *truth_arrays(train),
        X,
        X_lr,
        X_lr_test,
        test.column("label").to_numpy(),
    )


def _run_refine(case: Case, revealed: np.ndarray, refine_options: dict[str, Any]) -> Any:
    import refine

    table, verified = refine_input(case.train, case.truth, revealed)
    ignore = TRUTH_COLUMNS + tuple(verified.values())
    # A crowd recipe gives refine its votes; refine's majority vote is then the given label.
    votes = VOTES_COLUMN if VOTES_COLUMN in table.column_names else None
    options = {**verified, **refine_options}
    return refine.run(table, ignore=ignore, seed=case.seed, votes=votes, **options)


def not_features(train: Any) -> tuple[str, ...]:
    """The columns of a built training table that no model may read: the truth and the votes."""
    return TRUTH_COLUMNS + ((VOTES_COLUMN,) if VOTES_COLUMN in train.column_names else ())


def crowd_scores(case: Case, result: Any) -> dict[str, float]:
    """On a crowd recipe, beside refine's scores: the mean absolute error of its estimated
    annotator accuracies (``result.annotators``) against the true ones
    (``annotator_error``), the same for Dawid-Skene's (``dawid_skene_annotator_error``),
    and the accuracy against the truth of the majority vote and of Dawid-Skene's consensus
    (each counting a row without a vote as wrong). Nothing on other recipes."""
    from refine.bench.crowds import crowd_truth
    from refine.judge.annotators import annotator_accuracy, dawid_skene, majority_vote

    truth = crowd_truth(case.train)
    if truth is None or result.annotators is None:
        return {}
    votes = np.array(case.train.column(VOTES_COLUMN).to_pylist(), dtype=np.int64)
    true_accuracy = np.asarray(truth["accuracy"])
    k = len(truth["confusion"][0])
    estimated = result.annotators.column("accuracy").to_numpy(zero_copy_only=False)
    ds = dawid_skene(votes, k).posterior
    ds_accuracy = annotator_accuracy(votes, ds)[1]
    return {
        "annotator_error": float(np.nanmean(np.abs(estimated.astype(float) - true_accuracy))),
        "dawid_skene_annotator_error": float(np.nanmean(np.abs(ds_accuracy - true_accuracy))),
        "majority_accuracy": float((majority_vote(votes, k, case.seed) == case.truth).mean()),
        "dawid_skene_accuracy": float((ds.argmax(1) == case.truth).mean()),
    }


def refine_input(train: Any, truth: np.ndarray, revealed: np.ndarray) -> tuple[Any, dict[str, Any]]:
    """The training table refine reads and the ``refine.run`` option naming its verified
    labels: ``train`` with a ``label_verified`` column holding ``truth`` ``(N,)`` on the
    ``revealed`` rows ``(N,)`` and null elsewhere. With nothing revealed, ``train`` as built
    and no option, so refine runs exactly as it would without ``--verified``."""
    if not revealed.any():
        return train, {}
    column = pa.array(truth, train.schema.field("label").type, mask=~revealed)
    return train.append_column(VERIFIED_COLUMN, column), {"verified": VERIFIED_COLUMN}


def _baseline(case: Case, revealed: np.ndarray, model: Any, features: np.ndarray) -> dict[str, Any]:
    """A cleanlab baseline's scores on the labelled rows of ``case`` (``baseline_flags`` with
    ``model`` on ``features`` ``(M, D)``, one row per labelled row), its labels being the given
    ones with the ``revealed`` rows fixed."""
    labelled = case.labelled
    given, truth = case.given[labelled], case.truth[labelled]
    (issues, quality), seconds, memory = measure(
        lambda: baseline_flags(features, given, truth, revealed[labelled], model, case.seed)
    )
    known = case.known(revealed)[labelled]
    return {
        **_flags(issues, case.is_noisy[labelled], quality),
        **_labels(known, truth, known),
        "seconds": seconds,
        "memory_mb": memory,
    }


def baseline_flags(
    features: np.ndarray,
    given: np.ndarray,
    truth: np.ndarray,
    revealed: np.ndarray,
    model: Any,
    seed: int,
) -> tuple[np.ndarray, np.ndarray]:
    """cleanlab's issue mask and label quality ``(M,)`` for the labels ``given`` ``(M,)`` of
    ``features`` ``(M, D)``, told the ``truth`` of the ``revealed`` rows ``(M,)`` as refine is
    told its verified rows: it trains on their true label, and flags exactly the revealed rows
    whose given label was wrong (quality 0; 1 for the right ones)."""
    from refine.bench.baselines import cleanlab_baseline

    known = np.where(revealed, truth, given)
    issues, quality, _ = cleanlab_baseline(features, known, folds=5, seed=seed, model=model)
    wrong = given[revealed] != truth[revealed]
    issues, quality = np.array(issues, bool), np.array(quality, np.float64)
    issues[revealed] = wrong
    quality[revealed] = np.where(wrong, 0.0, 1.0)
    return issues, quality


def _yardsticks(case: Case, revealed: np.ndarray) -> Yardsticks:
    """The yardsticks of ``case``, their noisy labels the given ones with ``revealed`` fixed."""
    labelled = case.labelled
    X, X_test, y_test = case.X_lr, case.X_lr_test, case.y_test
    given = case.known(revealed)[labelled]
    return Yardsticks(
        noisy=_downstream(X[labelled], given, np.ones(len(given)), X_test, y_test),
        clean=_downstream(X, case.truth, np.ones(len(case.truth)), X_test, y_test),
        cleanlearning=_clean_learning(X[labelled], given, X_test, y_test, case.seed),
    )


def score_refine(
    case: Case, result: Any, revealed: np.ndarray, yardsticks: Yardsticks
) -> dict[str, Any]:
    """Score one refine ``result`` (a ``RunResult`` on ``case.train``, told the truth of the
    ``revealed`` rows ``(N,)``) as the bench does: its flags against the injected noise and
    its labels against the truth (labelled rows), ``given_accuracy`` being that of the given
    labels with the revealed rows fixed; its pseudo-labels; and the test accuracy of the
    yardstick learner trained on its labels, with the share of the gap it recovers; and the
    policy refine chose (``keep``, ``rules`` or ``posterior``)."""
    from refine.report.metrics import label_codes

    refined = result.refined
    labels = label_codes(refined)
    weight = refined.column("sample_weight").to_numpy()
    labelled, truth = case.labelled, case.truth
    X, X_test, y_test = case.X_lr, case.X_lr_test, case.y_test
    test_accuracy = _downstream(X, labels, weight, X_test, y_test)
    return {
        **_flags(
            refined.column("is_label_issue").to_numpy(zero_copy_only=False)[labelled],
            case.is_noisy[labelled],
            refined.column("label_quality").to_numpy(zero_copy_only=False)[labelled],
        ),
        **_labels(labels[labelled], truth[labelled], case.known(revealed)[labelled]),
        **_pseudo(refined, labels, labelled, truth, X, weight, X_test, y_test),
        "test_accuracy": test_accuracy,
        "gap_recovered": yardsticks.gap_recovered(test_accuracy),
        "policy": result.summary["trust"]["policy"],
        **_true_calibration(result, truth),
    }


def _true_calibration(result: Any, truth: np.ndarray) -> dict[str, float]:
    """ECE against the true labels of every training row, of the probabilities calibrated
    against the given labels (``ece_true_before``) and of those refine turned towards the true
    class and writes (``ece_true_after``): undoing that second temperature gives the first."""
    from refine.learn.calibrate import apply_temperature, expected_calibration_error

    calibration = result.summary["trust"].get("calibration") or {}
    after = result.proba
    before = (
        apply_temperature(after, 1.0 / calibration["temperature"])
        if calibration.get("method") in ("verified", "noise")
        else after
    )
    return {
        "ece_true_before": expected_calibration_error(before, truth),
        "ece_true_after": expected_calibration_error(after, truth),
    }


def yardstick_inputs(
    train: Any, test: Any, encoded: Callable[[], tuple[np.ndarray, np.ndarray]] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """What the LogisticRegression baselines and the test-accuracy yardstick read, for a built
    recipe's ``train`` and ``test`` tables: ``(X, X_test)``.

    Text recipes give their raw text (an object array, which ``_lr_model`` reads through TF-IDF,
    as a practitioner would) rather than refine's own encoding of it. Other recipes give
    refine's encoding: ``encoded()`` where the caller has it (called only then: encoding text
    is the slow part), else features fitted here on ``train``.

    Image recipes get it in float64: in float32 the solver's result on their pixels moves with
    the BLAS thread count, and float64 narrows that to a few of cleanlab+LR's flags; refine's
    scores do not move (reports/code-notes.md).
    """
    if TEXT_COLUMN in train.column_names:
        return (
            np.asarray(train.column(TEXT_COLUMN).to_pylist(), dtype=object),
            np.asarray(test.column(TEXT_COLUMN).to_pylist(), dtype=object),
        )
    if encoded is None:
        from refine.encode.features import fit_features

        encoder = fit_features(train, "label", ignore=not_features(train))
        X, X_test = encoder.transform(train), encoder.transform(test)
    else:
        X, X_test = encoded()
    if IMAGE_COLUMN in train.column_names:
        return X.astype(np.float64), X_test.astype(np.float64)
    return X, X_test


def truth_arrays(train: Any) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """A built recipe's training table as arrays: ``truth``, ``given`` (-1 where unlabelled),
    ``labelled`` and ``is_noisy``, each ``(N,)``."""
    truth = train.column("label_true").to_numpy()
    given = train.column("label").to_numpy(zero_copy_only=False)
    labelled = ~np.isnan(given.astype(float))
    given = np.where(labelled, given, -1).astype(np.int64)
    is_noisy = train.column("is_noisy").to_numpy(zero_copy_only=False)
    return truth, given, labelled, is_noisy


def _flags(is_issue: np.ndarray, is_noisy: np.ndarray, quality: np.ndarray) -> dict[str, float]:
    from refine.report.metrics import flag_scores

    return flag_scores(np.asarray(is_issue, bool), np.asarray(is_noisy, bool), np.asarray(quality))


def _labels(refined: np.ndarray, truth: np.ndarray, given: np.ndarray) -> dict[str, float]:
    from refine.report.metrics import label_accuracy

    scores = label_accuracy(refined, truth)
    return {
        "label_accuracy": scores["accuracy"],
        "kept": scores["kept"],
        "given_accuracy": float((given == truth).mean()),
    }


def _pseudo(refined, refined_labels, labelled, truth, X, weight, X_test, y_test) -> dict[str, Any]:
    """Pseudo-labels on the unlabelled rows, where the recipe has any: their share, their
    accuracy, the accuracy on the same rows of a model trained on the true labels of the
    labelled rows (the yardstick) and on every unlabelled row, and downstream test accuracy
    with the pseudo-labelled rows left out."""
    if labelled.all():
        return {}
    pseudo = np.asarray(refined.column("label_source").to_pylist(), dtype=object) == "pseudo"
    clean_predicted = _lr_model(X.dtype == object).fit(X[labelled], truth[labelled]).predict(X)
    any_pseudo = bool(pseudo.any())
    return {
        "pseudo_share": float(pseudo[~labelled].mean()),
        "pseudo_accuracy": float((refined_labels[pseudo] == truth[pseudo]).mean())
        if any_pseudo
        else None,
        "clean_model_accuracy_on_pseudo": float((clean_predicted[pseudo] == truth[pseudo]).mean())
        if any_pseudo
        else None,
        "clean_model_accuracy_on_unlabelled": float(
            (clean_predicted[~labelled] == truth[~labelled]).mean()
        ),
        "test_accuracy_without_pseudo": _downstream(
            X, np.where(pseudo, -1, refined_labels), weight, X_test, y_test
        ),
    }


def _lr_model(text: bool) -> Any:
    from refine.bench.baselines import logistic_regression, text_logistic_regression

    return text_logistic_regression() if text else logistic_regression()


def _downstream(X, labels, weight, X_test, y_test) -> float:
    """Test accuracy of a LogisticRegression trained on ``labels`` (-1 = skip): standardised
    on numeric features, over TF-IDF on a text array (``X`` of dtype object)."""
    keep = (labels >= 0) & (weight > 0)
    model = _lr_model(X.dtype == object)
    model.fit(X[keep], labels[keep], logisticregression__sample_weight=weight[keep])
    return float((model.predict(X_test) == y_test).mean())


def _clean_learning(X, labels, X_test, y_test, seed: int) -> float:
    from cleanlab.classification import CleanLearning

    model = CleanLearning(
        _lr_model(X.dtype == object), seed=seed, find_label_issues_kwargs={"n_jobs": 1}
    ).fit(X, labels)
    return float((model.predict(X_test) == y_test).mean())


def measure(function: Callable[[], Any]) -> tuple[Any, float, float]:
    """Call ``function``; return its result, wall seconds and peak resident-set growth in MB.

    Memory is sampled from /proc every 20 ms in a thread (Linux); elsewhere it is NaN.
    """
    statm = Path("/proc/self/statm")
    page = os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else 4096

    def rss() -> float:
        return int(statm.read_text().split()[1]) * page / 2**20

    if not statm.exists():
        started = time.perf_counter()
        return function(), time.perf_counter() - started, float("nan")
    start_rss = peak = rss()
    done = threading.Event()

    def sample() -> None:
        nonlocal peak
        while not done.wait(0.02):
            peak = max(peak, rss())

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    started = time.perf_counter()
    try:
        result = function()
    finally:
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
    return result, seconds, max(peak, rss()) - start_rss


def _header(
    suite: str,
    seeds: int,
    verified: float,
    review: float,
    recipes: tuple[str, ...] | None = None,
) -> dict[str, Any]:
    import torch

    from refine.finish import versions

    options = "".join(
        f" --{name} {share:g}"
        for name, share in (("verified", verified), ("review", review))
        if share
    )
    chosen = "".join(f" --dataset {r}" for r in recipes) if recipes else f" --suite {suite}"
    return {
        "command": " ".join(["refine", *sys.argv[1:]])
        if sys.argv[0].endswith("refine")
        else f"refine bench{chosen} --seeds {seeds}{options}",
        "suite": suite,
        "seeds": seeds,
        "verified": verified,
        "review": review,
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        # Threads speed refine and the baselines unequally, so the time ratios depend on them.
        "machine": f"{platform.machine()}, {os.cpu_count()} cores "
        f"(threads: {torch.get_num_threads()}), {platform.platform()}",
        "versions": versions(),
    }
