"""refine on real label noise, side by side with the labels it was given.

Sets, from the WRENCH files in ``--data`` (default ``../shared/data/text``, beside the
repository):

* ``youtube``, ``sms``, ``semeval``: the training labels as WRENCH gives them, a majority vote
  of labelling functions;
* ``NAME-single``: each row labelled by one labelling function drawn at random among those that
  voted on it, as if a single weak annotator had labelled each item;
* ``NAME-notop``: the majority vote without the labelling function that votes on the most rows,
  ties broken at random; rows left without a vote are dropped;
* with ``--embeddings DIR`` (built by ``benchmarks/embed_real.py``), each of those again with the
  text replaced by its sentence embedding: ``NAME-emb``, ``NAME-single-emb``, ``NAME-notop-emb``.

The variants are drawn anew at each seed (generator ``[seed, 1]``). refine reads only the inputs
(``text``, plus ``entity1`` and ``entity2`` for semeval; or ``embedding``) and ``label``, with
its defaults and ``seed=seed``, in three modes:

* ``none``: no verified rows;
* ``verified 5%``: the true label of 5% of the training rows (drawn with generator
  ``[seed, 2]``) in a ``gold`` column, passed as ``verified="gold"``;
* ``valid``: the ``_valid`` split appended as rows with a null ``label`` and their gold label
  in ``gold`` (a user's trusted validation split), ``verified="gold"``;
* ``review 2%``: a simulated reviewer after the ``none`` run. ``refine.review.review`` (what
  ``refine review RUN --budget`` calls) picks 2% of the training rows from that run's outputs;
  their true label goes in ``gold`` and refine runs again. Beside it, ``random 2%``: as many rows
  drawn at random (generator ``[seed, 3]``), run the same way. Both are reported as modes.

Everything is scored on the original training rows only. Labels: the accuracy against
``true_label`` of the given labels and of ``label_refined`` (a null counts as wrong), on every
row and on the rows not verified. Downstream: the test accuracy, on the gold ``_test`` split, of
``refine bench``'s yardstick (``refine.bench.suite._downstream``: TF-IDF + LogisticRegression on
``text``, a standardised LogisticRegression on embeddings) trained on those rows' given labels,
on ``label_refined`` with ``sample_weight``, and on their true labels (the ceiling).

With ``--before PATH`` the same inputs also go through the refine checked out at ``PATH`` (in a
subprocess with ``PYTHONPATH=PATH``). A checkout that cannot read verified labels gets each mode's
table without ``gold``: in ``verified 5%`` that is the ``none`` input again (its figures are
reused), in ``valid`` the appended rows reach it unlabelled. ``review 2%`` is not run by the checkout
before (its rows would need the checkout's own ``none`` run and ``refine review``): it has no
``before`` figures.

    PYTHONPATH=. python benchmarks/real.py [--seeds 0,1] [--sets youtube,sms-single] \
        [--embeddings DIR] [--before PATH]

Writes ``reports/real.md`` and, beside it, ``reports/real.json`` (every case).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

import refine

REPO = Path(__file__).resolve().parents[1]
BASES = ("youtube", "sms", "semeval")
VARIANTS = ("", "single", "notop")
MODES = ("none", "verified 5%", "valid", "review 2%")
REVIEW = "review 2%"
RANDOM = "random 2%"  # the review mode reports this run beside its own
REPORTED = (*MODES, RANDOM)
VERIFIED_SHARE = 0.05
REVIEW_SHARE = 0.02
GOLD = "gold"  # the column of verified labels refine is given
TEXT_INPUTS = {"semeval": ("text", "entity1", "entity2")}
EMBEDDING = "embedding"
ABSTAIN = -1


# --- the sets ------------------------------------------------------------------------------


@dataclass
class RealSet:
    """A real noisy set at a seed: what refine reads, the truth, and the yardstick's data."""

    name: str
    train: pa.Table  # the inputs and the given ``label``, (N,) rows
    truth: np.ndarray  # (N,) true classes
    valid: pa.Table  # the inputs and the gold ``label`` of the valid split
    X: np.ndarray  # (N,) texts or (N, D) embeddings: what the yardstick reads
    X_test: np.ndarray
    y_test: np.ndarray
    note: str  # how its labels were made, for the report

    @property
    def given(self) -> np.ndarray:
        return self.train.column("label").to_numpy()


def set_names(embeddings: bool) -> list[str]:
    names = [f"{b}-{v}" if v else b for b in BASES for v in VARIANTS]
    return names + [f"{n}-emb" for n in names] if embeddings else names


def parse_name(name: str) -> tuple[str, str, bool]:
    """``"sms-notop-emb"`` -> ``("sms", "notop", True)``: base set, variant, embedded."""
    parts = name.split("-")
    embedded = parts[-1] == "emb"
    parts = parts[:-1] if embedded else parts
    base, variant = parts[0], "-".join(parts[1:])
    if base not in BASES or variant not in VARIANTS:
        raise SystemExit(f"unknown set {name!r}; the sets are {', '.join(set_names(True))}")
    return base, variant, embedded


@cache
def read_split(directory: Path, base: str, split: str) -> pa.Table:
    return pq.read_table(directory / f"wrench_{base}_{split}.parquet")


def read_votes(directory: Path, base: str) -> np.ndarray:
    """Each training row's labelling-function votes ``(N, L)``, ``ABSTAIN`` where it abstained."""
    table = read_split(directory, base, "lf_votes").sort_by("row")
    return np.array(table.column("lf_votes").to_pylist(), dtype=np.int64)


def top_function(votes: np.ndarray) -> int:
    """The labelling function that votes on the most rows (the first, on a tie)."""
    return int((votes != ABSTAIN).sum(0).argmax())


def single_annotator(votes: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One vote per row ``(N,)``, of a labelling function drawn uniformly among those that voted
    on it; ``ABSTAIN`` where none did."""
    draw = np.where(votes != ABSTAIN, rng.random(votes.shape), -1.0)
    chosen = votes[np.arange(len(votes)), draw.argmax(1)]
    return np.where((votes != ABSTAIN).any(1), chosen, ABSTAIN)


def majority_vote(votes: np.ndarray, classes: int, rng: np.random.Generator) -> np.ndarray:
    """The class most functions voted for ``(N,)``, ties broken uniformly at random;
    ``ABSTAIN`` where none voted."""
    counts = np.stack([(votes == c).sum(1) for c in range(classes)], axis=1)
    tied = counts == counts.max(1, keepdims=True)
    chosen = np.where(tied, rng.random(counts.shape), -1.0).argmax(1)
    return np.where(counts.max(1) > 0, chosen, ABSTAIN)


def variant_labels(
    variant: str, given: np.ndarray, votes: np.ndarray, classes: int, seed: int
) -> tuple[np.ndarray, str]:
    """A variant's labels ``(N,)`` (``ABSTAIN`` = row dropped) and a line saying how."""
    rng = np.random.default_rng([seed, 1])
    if variant == "single":
        return single_annotator(votes, rng), "one labelling function drawn per row"
    if variant == "notop":
        top = top_function(votes)
        covered = int((votes[:, top] != ABSTAIN).sum())
        labels = majority_vote(np.delete(votes, top, axis=1), classes, rng)
        dropped = int((labels == ABSTAIN).sum())
        return labels, (
            f"majority vote without labelling function {top} (votes on {covered} of "
            f"{len(votes)} rows); {dropped} rows left without a vote dropped"
        )
    return given, "WRENCH's majority vote"


def load_set(name: str, seed: int, data: Path, embeddings: Path | None) -> RealSet:
    """Set ``name`` with its labels for ``seed``: inputs, given label, truth, valid and test."""
    base, variant, embedded = parse_name(name)
    source = embeddings if embedded else data
    if source is None:
        raise SystemExit(f"set {name!r} needs --embeddings")
    inputs = (EMBEDDING,) if embedded else TEXT_INPUTS.get(base, ("text",))
    train = read_split(source, base, "train")
    truth = train.column("true_label").to_numpy()
    votes = read_votes(data, base)
    classes = int(max(truth.max(), votes.max())) + 1
    labels, note = variant_labels(variant, train.column("label").to_numpy(), votes, classes, seed)
    keep = labels != ABSTAIN
    table = train.select(list(inputs)).append_column("label", pa.array(labels, pa.int64()))
    test = read_split(source, base, "test")
    return RealSet(
        name=name,
        train=table.filter(pa.array(keep)),
        truth=truth[keep],
        valid=read_split(source, base, "valid").select([*inputs, "label"]),
        X=yardstick_input(train.filter(pa.array(keep)), embedded),
        X_test=yardstick_input(test, embedded),
        y_test=test.column("label").to_numpy(),
        note=note,
    )


def yardstick_input(table: pa.Table, embedded: bool) -> np.ndarray:
    """What ``_downstream`` reads: the texts (object array, for TF-IDF) or the embeddings."""
    if embedded:
        column = table.column(EMBEDDING).combine_chunks()
        return column.flatten().to_numpy().reshape(len(column), -1)
    return np.asarray(table.column("text").to_pylist(), dtype=object)


# --- the modes -----------------------------------------------------------------------------


def reveal_truth(
    table: pa.Table, truth: np.ndarray, share: float, seed: int
) -> tuple[pa.Table, np.ndarray]:
    """``table`` with a ``gold`` column holding ``truth`` at a random ``share`` of its rows (at
    least one) and null elsewhere; and the mask of those rows ``(N,)``."""
    n = table.num_rows
    chosen = np.zeros(n, bool)
    chosen[np.random.default_rng([seed, 2]).choice(n, max(1, round(share * n)), replace=False)] = (
        True
    )
    return with_gold(table, truth, chosen), chosen


def with_gold(table: pa.Table, truth: np.ndarray, chosen: np.ndarray) -> pa.Table:
    """``table`` with a ``gold`` column: ``truth`` ``(N,)`` where ``chosen`` ``(N,)``, else null."""
    gold = pa.array(np.where(chosen, truth, 0), pa.int64(), mask=~chosen)
    return table.append_column(GOLD, gold)


def review_budget(n: int) -> int:
    """The rows the review mode reveals, of ``n`` training rows (at least one)."""
    return max(1, round(REVIEW_SHARE * n))


def reviewed_rows(run_dir: Path, budget: int) -> np.ndarray:
    """The ``budget`` rows ``(budget,)`` that ``refine review RUN_DIR --budget BUDGET`` picks
    from the run in ``run_dir``: positions in its ``refined.parquet``."""
    from refine.io.verify import ROW_KEY
    from refine.review import review

    written = review(run_dir, budget, run_dir.parent / f"{run_dir.name}-review.parquet")
    return np.asarray(written.table.column(ROW_KEY).to_pylist(), np.int64)


def review_inputs(s: RealSet, run_dir: Path, seed: int) -> dict[str, tuple[pa.Table, np.ndarray]]:
    """The review mode's two inputs and their verified rows ``(N,)``: the training table with the
    true label of the rows ``refine review`` picks from the ``none`` run in ``run_dir``
    (``review 2%``), and of as many rows drawn at random (``random 2%``)."""
    n = s.train.num_rows
    budget = review_budget(n)
    inputs = {}
    for mode, rows in (
        (REVIEW, reviewed_rows(run_dir, budget)),
        (RANDOM, np.random.default_rng([seed, 3]).choice(n, budget, replace=False)),
    ):
        chosen = np.zeros(n, bool)
        chosen[rows] = True
        inputs[mode] = (with_gold(s.train, s.truth, chosen), chosen)
    return inputs


def append_verified(table: pa.Table, valid: pa.Table) -> pa.Table:
    """``table`` (null ``gold``) followed by the ``valid`` rows, whose gold label moves from
    ``label`` (null now) to ``gold``."""
    train = table.append_column(GOLD, pa.nulls(table.num_rows, pa.int64()))
    extra = valid.set_column(
        valid.column_names.index("label"), "label", pa.nulls(valid.num_rows, pa.int64())
    ).append_column(GOLD, valid.column("label").cast(pa.int64()))
    return pa.concat_tables([train, extra.select(train.column_names).cast(train.schema)])


def mode_input(s: RealSet, mode: str, seed: int) -> tuple[pa.Table, np.ndarray]:
    """What refine reads in ``mode``, and which original training rows are verified ``(N,)``;
    the review mode's inputs come from the ``none`` run (``review_inputs``)."""
    if mode == "verified 5%":
        return reveal_truth(s.train, s.truth, VERIFIED_SHARE, seed)
    if mode == "valid":
        return append_verified(s.train, s.valid), np.zeros(s.train.num_rows, bool)
    return s.train, np.zeros(s.train.num_rows, bool)


# --- running refine ------------------------------------------------------------------------


@dataclass
class Outcome:
    """refine's labels and weights on the rows it read ``(M,)``, its trust record, seconds."""

    labels: np.ndarray  # label_refined, -1 where null
    weight: np.ndarray
    trust: dict[str, Any] | None
    seconds: float


def run_refine(
    table: pa.Table, seed: int, out: Path | None = None
) -> tuple[pa.Table, dict[str, Any] | None, float]:
    """refine with its defaults on ``table`` (``gold`` as verified labels where present and
    readable): ``label_refined`` and ``sample_weight``, the trust record, wall seconds. With
    ``out``, the run directory is written there too (without its HTML report)."""
    options: dict[str, Any] = {"seed": seed}
    if out is not None:
        options.update(out=out, report=False)
    if GOLD in table.column_names:
        if reads_verified():
            options["verified"] = GOLD
        else:
            table = table.drop_columns([GOLD])
    started = time.perf_counter()
    result = refine.run(table, **options)
    seconds = time.perf_counter() - started
    return (
        result.refined.select(["label_refined", "sample_weight"]),
        result.summary.get("trust"),
        seconds,
    )


@cache
def _scoring() -> Any:
    """refine's scoring helpers (``_downstream``, ``label_codes``) from whichever refine is
    imported: a ``--before`` checkout may predate 0.2's grouped package."""
    import types

    try:
        from refine.bench.suite import _downstream
        from refine.report.metrics import label_codes
    except ImportError:
        from refine.metrics import label_codes  # type: ignore[no-redef]

        from refine.bench import _downstream  # type: ignore[no-redef]
    return types.SimpleNamespace(_downstream=_downstream, label_codes=label_codes)


def reads_verified() -> bool:
    """Whether the imported refine takes verified labels (checkouts before 140865d do not)."""
    from refine.config import RunConfig

    return "verified" in {f.name for f in dataclasses.fields(RunConfig)}


def outcome(refined: pa.Table, trust: dict[str, Any] | None, seconds: float) -> Outcome:
    weight = refined.column("sample_weight").to_numpy(zero_copy_only=False)
    return Outcome(_scoring().label_codes(refined), weight, trust, seconds)


def run_here(table: pa.Table, seed: int, out: Path | None = None) -> Outcome:
    return outcome(*run_refine(table, seed, out))


def run_before(checkout: Path, tables: dict[str, pa.Table], seed: int) -> dict[str, Outcome]:
    """Each of ``tables`` through the refine at ``checkout``, in one subprocess (``--worker``)."""
    with tempfile.TemporaryDirectory(prefix="real-before-") as tmp:
        jobs = []
        for index, (key, table) in enumerate(tables.items()):
            path = Path(tmp) / f"{index}.parquet"
            pq.write_table(table, path)
            jobs.append({"key": key, "input": str(path), "output": f"{path}.out", "seed": seed})
        (Path(tmp) / "jobs.json").write_text(json.dumps(jobs))
        env = {**os.environ, "PYTHONPATH": str(checkout)}
        subprocess.run(
            [sys.executable, __file__, "--worker", str(Path(tmp) / "jobs.json")],
            env=env,
            cwd=checkout,
            check=True,
        )
        results = {}
        for job in jobs:
            written = pq.read_table(job["output"])
            meta = json.loads(written.schema.metadata[b"real.outcome"])
            if not Path(meta["refine"]).resolve().is_relative_to(checkout):
                raise RuntimeError(f"the worker imported {meta['refine']}, not {checkout}'s refine")
            results[job["key"]] = outcome(written, meta["trust"], meta["seconds"])
        return results


def worker(jobs_file: Path) -> None:
    """Run the jobs ``run_before`` wrote, with whichever refine is on the import path."""
    for job in json.loads(jobs_file.read_text()):
        refined, trust, seconds = run_refine(pq.read_table(job["input"]), job["seed"])
        meta = {"trust": trust, "seconds": seconds, "refine": refine.__file__}
        pq.write_table(
            refined.replace_schema_metadata({"real.outcome": json.dumps(meta, default=str)}),
            job["output"],
        )


def before_refine(checkout: Path) -> dict[str, Any]:
    """Where the refine at ``checkout`` imports from, and whether it reads verified labels.
    Run from ``checkout``: ``python -c`` puts the working directory first on the import path."""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); import real; "
        "print(json.dumps({'file': real.refine.__file__, 'reads_verified': real.reads_verified()}))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(Path(__file__).parent)],
        env={**os.environ, "PYTHONPATH": str(checkout)},
        cwd=checkout,
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(done.stdout)


# --- scoring -------------------------------------------------------------------------------


def label_scores(
    given: np.ndarray, refined: np.ndarray, truth: np.ndarray, verified: np.ndarray
) -> dict[str, Any]:
    """Right labels among ``given`` and ``refined`` (-1 = none, wrong) against ``truth``, on
    every row and on the rows not ``verified``; each ``(N,)``."""
    free = ~verified
    scores: dict[str, Any] = {"rows": len(truth), "unverified_rows": int(free.sum())}
    for name, labels in (("given", given), ("refined", refined)):
        right = labels == truth
        scores[f"{name}_correct"] = int(right.sum())
        scores[f"{name}_accuracy"] = float(right.mean())
        scores[f"unverified_{name}_correct"] = int(right[free].sum())
        scores[f"unverified_{name}_accuracy"] = float(right[free].mean()) if free.any() else None
    return scores


def downstream(s: RealSet, labels: np.ndarray, weight: np.ndarray | None = None) -> float:
    """Test accuracy of the yardstick trained on the training rows' ``labels`` (-1 = left out)
    with ``weight`` (0 = left out; default 1)."""
    weight = np.ones(len(labels)) if weight is None else weight
    return _scoring()._downstream(s.X, labels, weight, s.X_test, s.y_test)


def score_case(
    s: RealSet, verified: np.ndarray, now: Outcome, before: Outcome | None
) -> dict[str, Any]:
    """One (set, seed, mode): label scores and downstream accuracy of refine (and of the
    checkout before), read on the original training rows, the first ``N`` refine wrote."""
    n = s.train.num_rows
    row = label_scores(s.given, now.labels[:n], s.truth, verified)
    row["refined_test"] = downstream(s, now.labels[:n], now.weight[:n])
    trust = now.trust or {}
    measured = trust.get("measured") or {}
    row.update(
        policy=trust.get("policy"),
        reason=trust.get("reason"),
        # refine's own measure on the verified rows with a given label (cross-fitted)
        measured_given=measured.get("given_accuracy", {}).get("value"),
        measured_refined=measured.get("refined_accuracy", {}).get("value"),
        trust=trust,
        seconds=now.seconds,
    )
    if before is not None:
        scores = label_scores(s.given, before.labels[:n], s.truth, verified)
        row.update(
            before_correct=scores["refined_correct"],
            before_accuracy=scores["refined_accuracy"],
            before_test=downstream(s, before.labels[:n], before.weight[:n]),
            before_seconds=before.seconds,
        )
    return row


def measure_set(
    name: str, seed: int, args: argparse.Namespace, before_verified: bool
) -> list[dict[str, Any]]:
    """Every mode of set ``name`` at ``seed``: one row each."""
    s = load_set(name, seed, args.data, args.embeddings)
    inputs = {mode: mode_input(s, mode, seed) for mode in args.modes if mode != REVIEW}
    before: dict[str, Outcome] = {}
    if args.before is not None:
        # A checkout that cannot read verified labels would get the none input again.
        modes = [m for m in inputs if before_verified or m != "verified 5%"]
        if "verified 5%" in inputs and not before_verified and "none" not in modes:
            modes.append("none")
        tables = {m: (inputs[m] if m in inputs else mode_input(s, m, seed))[0] for m in modes}
        before = run_before(args.before, tables, seed)
        if "verified 5%" in inputs and "verified 5%" not in before:
            before["verified 5%"] = before["none"]
    shared = {
        "set": name,
        "seed": seed,
        "note": s.note,
        "noise": float((s.given != s.truth).mean()),
        "given_test": downstream(s, s.given),
        "clean_test": downstream(s, s.truth),
    }
    rows = []
    with tempfile.TemporaryDirectory(prefix="real-review-") as tmp:
        # The review mode picks its rows from the none run's written outputs, as a user would.
        run_dir = Path(tmp) / "none" if REVIEW in args.modes else None
        if run_dir is not None:
            inputs.setdefault("none", mode_input(s, "none", seed))
        outcomes: dict[str, Outcome] = {}
        if run_dir is not None:
            outcomes["none"] = run_here(inputs["none"][0], seed, run_dir)
            inputs.update(review_inputs(s, run_dir, seed))
        for mode, (table, _) in inputs.items():
            if mode not in outcomes:
                outcomes[mode] = run_here(table, seed)
        for mode in [m for m in REPORTED if m in inputs]:
            if mode == "none" and mode not in args.modes:
                continue  # run only for the review mode's rows
            table, verified = inputs[mode]
            row = {**shared, "mode": mode, "verified_rows": int(verified.sum())}
            # verified rows whose given label was wrong: what the reviewer corrected
            row["picked_wrong"] = int((s.given != s.truth)[verified].sum())
            row.update(score_case(s, verified, outcomes[mode], before.get(mode)))
            if mode == "valid":
                row["verified_rows"] = s.valid.num_rows
            rows.append(row)
            print(
                f"{name} seed {seed} {mode}: labels {row['given_accuracy']:.3f} -> "
                f"{row['refined_accuracy']:.3f} ({row['policy']}), test "
                f"{row['given_test']:.3f} -> {row['refined_test']:.3f}, {row['seconds']:.0f} s",
                flush=True,
            )
    return rows


# --- the report ----------------------------------------------------------------------------


def mean(rows: list[dict[str, Any]], key: str) -> float | None:
    values = [r[key] for r in rows if r.get(key) is not None]
    return float(np.mean(values)) if values else None


def fmt(value: float | None, digits: int = 3) -> str:
    return "" if value is None else f"{value:.{digits}f}"


def policies(rows: list[dict[str, Any]]) -> str:
    """The policy of each seed, once where they all agree."""
    chosen = [r["policy"] or "-" for r in rows]
    return chosen[0] if len(set(chosen)) == 1 else ", ".join(chosen)


def worse(rows: list[dict[str, Any]], ours: str, theirs: str) -> list[dict[str, Any]]:
    """Rows where ``ours`` is below ``theirs`` (both present)."""
    return [r for r in rows if r.get(ours) is not None and r[ours] < r[theirs]]


def mode_table(rows: list[dict[str, Any]], mode: str, before: bool) -> list[str]:
    """One line per set: means over seeds of the ``mode`` rows."""
    columns = [("rows", "rows", 0), ("noise", "noise", 3), ("given_accuracy", "given", 3)]
    columns.append(("refined_accuracy", "refined", 3))
    if before:
        columns.append(("before_accuracy", "before", 3))
    if mode in ("verified 5%", REVIEW, RANDOM):
        columns += [
            ("unverified_given_accuracy", "unverified: given", 3),
            ("unverified_refined_accuracy", "unverified: refined", 3),
            ("measured_given", "refine's measure: given", 3),
            ("measured_refined", "refine's measure: refined", 3),
        ]
    columns += [("given_test", "test: given", 3), ("refined_test", "test: refined", 3)]
    if before:
        columns.append(("before_test", "test: before", 3))
    columns += [("clean_test", "test: clean", 3), ("seconds", "seconds", 0)]
    if before:
        columns.append(("before_seconds", "seconds before", 0))
    lines = [
        "| set | " + " | ".join(title for _, title, _ in columns) + " | policy |",
        "|---|" + "---|" * (len(columns) + 1),
    ]
    for name in dict.fromkeys(r["set"] for r in rows):
        mine = [r for r in rows if r["set"] == name and r["mode"] == mode]
        cells = [fmt(mean(mine, key), digits) for key, _, digits in columns]
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {policies(mine)} |")
    return lines


def gap_recovered(row: dict[str, Any]) -> float | None:
    """The share of the given->clean test-accuracy gap that the refined labels close; None where
    the gap is under half a point (as ``refine bench`` has it: the ratio would be noise)."""
    gap = row["clean_test"] - row["given_test"]
    return (row["refined_test"] - row["given_test"]) / gap if gap > 0.005 else None


def pooled_gap(rows: list[dict[str, Any]]) -> float | None:
    """Test accuracy recovered over the given->clean gap, summed over ``rows`` before dividing."""
    gap = sum(r["clean_test"] - r["given_test"] for r in rows)
    return sum(r["refined_test"] - r["given_test"] for r in rows) / gap if gap > 0 else None


def review_summary(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """``review 2%`` against ``random 2%`` over the cases (set and seed) that ran both: each
    run's mean label accuracy (all rows, unverified rows), mean test accuracy, gap recovered
    (mean of cases and pooled); and the cases where the reviewed rows did better."""
    pairs = {}
    for r in rows:
        if r["mode"] in (REVIEW, RANDOM):
            pairs.setdefault((r["set"], r["seed"]), {})[r["mode"]] = r
    cases = [p for p in pairs.values() if len(p) == 2]
    if not cases:
        return None
    runs = {}
    for mode in (REVIEW, RANDOM):
        mine = [c[mode] for c in cases]
        gaps = [g for g in map(gap_recovered, mine) if g is not None]
        runs[mode] = {
            "label_accuracy": mean(mine, "refined_accuracy"),
            "unverified_label_accuracy": mean(mine, "unverified_refined_accuracy"),
            "test_accuracy": mean(mine, "refined_test"),
            "mean_gap_recovered": float(np.mean(gaps)) if gaps else None,
            "pooled_gap_recovered": pooled_gap(mine),
        }

    def beat(key: str) -> int:
        return sum(c[REVIEW][key] > c[RANDOM][key] for c in cases)

    def lost(key: str) -> int:
        return sum(c[REVIEW][key] < c[RANDOM][key] for c in cases)

    return {
        "cases": len(cases),
        "runs": runs,
        "review_beat_random": {k: beat(k) for k in ("refined_correct", "refined_test")},
        "review_lost_to_random": {k: lost(k) for k in ("refined_correct", "refined_test")},
        "review_given_wrong": sum(int(c[REVIEW]["picked_wrong"]) for c in cases),
        "random_given_wrong": sum(int(c[RANDOM]["picked_wrong"]) for c in cases),
    }


def review_lines(rows: list[dict[str, Any]]) -> list[str]:
    """The review section: the summary of ``review_summary`` and a line per set."""
    summary = review_summary(rows)
    if summary is None:
        return []

    def pct(value: float | None) -> str:
        return "" if value is None else f"{value:.0%}"

    lines = [
        "## Review loop: the rows `refine review` picks against rows drawn at random",
        "",
        f"{summary['cases']} cases (set and seed). After the `none` run, the true label of "
        f"{REVIEW_SHARE:.0%} of the training rows is revealed and refine runs again with them "
        "verified. `given wrong` counts the revealed rows whose given label was wrong (what a "
        "reviewer would have corrected); gap recovered is the share of the given->clean test "
        "accuracy gap closed (cases with a gap under half a point left out of the mean).",
        "",
        "| run | label acc | unverified label acc | test acc | gap recovered (mean) "
        "| gap recovered (pooled) | given wrong |",
        "|---|---|---|---|---|---|---|",
    ]
    for mode, wrong in ((REVIEW, "review_given_wrong"), (RANDOM, "random_given_wrong")):
        run = summary["runs"][mode]
        lines.append(
            f"| {mode} | {fmt(run['label_accuracy'], 4)} | "
            f"{fmt(run['unverified_label_accuracy'], 4)} | {fmt(run['test_accuracy'], 4)} | "
            f"{pct(run['mean_gap_recovered'])} | {pct(run['pooled_gap_recovered'])} | "
            f"{summary[wrong]} |"
        )
    beat, lost = summary["review_beat_random"], summary["review_lost_to_random"]
    lines += [
        "",
        f"Reviewed rows gave more right labels than random ones in {beat['refined_correct']} "
        f"of {summary['cases']} cases (fewer in {lost['refined_correct']}), and a higher test "
        f"accuracy in {beat['refined_test']} (lower in {lost['refined_test']}).",
        "",
        "| set | review: label acc | random: label acc | review: test | random: test "
        "| review: given wrong | random: given wrong | policies (review; random) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in dict.fromkeys(r["set"] for r in rows):
        mine = {
            m: [r for r in rows if r["set"] == name and r["mode"] == m] for m in (REVIEW, RANDOM)
        }
        if not all(mine.values()):
            continue
        cells = [
            fmt(mean(mine[REVIEW], "refined_accuracy"), 4),
            fmt(mean(mine[RANDOM], "refined_accuracy"), 4),
            fmt(mean(mine[REVIEW], "refined_test"), 4),
            fmt(mean(mine[RANDOM], "refined_test"), 4),
            fmt(mean(mine[REVIEW], "picked_wrong"), 1),
            fmt(mean(mine[RANDOM], "picked_wrong"), 1),
        ]
        lines.append(
            f"| {name} | "
            + " | ".join(cells)
            + f" | {policies(mine[REVIEW])}; {policies(mine[RANDOM])} |"
        )
    return [*lines, "", "Means over seeds.", ""]


def summary_table(rows: list[dict[str, Any]], before: bool) -> list[str]:
    header = "| mode | cases | labels: refined < given | unverified rows: refined < given | test: refined < given |"
    rule = "|---|---|---|---|---|"
    if before:
        header += " labels: before < given | test: before < given |"
        rule += "---|---|"
    lines = [header, rule]
    ran = {r["mode"] for r in rows}
    shown = [m for m in REPORTED if m in ran]  # a mode not run is no row of zeros
    for mode in [*shown, "all"]:
        mine = [r for r in rows if mode in (r["mode"], "all")]
        cells = [
            len(mine),
            len(worse(mine, "refined_correct", "given_correct")),
            len(worse(mine, "unverified_refined_correct", "unverified_given_correct")),
            len(worse(mine, "refined_test", "given_test")),
        ]
        if before:
            cells += [
                len(worse(mine, "before_correct", "given_correct")),
                len(worse(mine, "before_test", "given_test")),
            ]
        lines.append(f"| {mode} | " + " | ".join(str(c) for c in cells) + " |")
    return lines


def case_lines(cases: list[dict[str, Any]], what: str) -> list[str]:
    """A line per case: the set, seed and mode, the figures, refine's policy and reason."""
    if not cases:
        return ["None.", ""]
    lines = []
    for r in cases:
        lines.append(
            f"- **{r['set']}**, seed {r['seed']}, {r['mode']}: right labels {r['given_correct']} "
            f"given, {r['refined_correct']} refined (of {r['rows']}; unverified rows "
            f"{r['unverified_given_correct']} -> {r['unverified_refined_correct']}); test "
            f"{r['given_test']:.3f} -> {r['refined_test']:.3f}. Policy `{r['policy']}`: "
            f"{r['reason']}"
        )
    return [*lines, ""]


def render(rows: list[dict[str, Any]], header: dict[str, Any]) -> str:
    before = header["before"] is not None
    lines = [
        "# refine on real label noise",
        "",
        f"Generated by `{header['command']}` on {header['date']}, refine at `{header['commit']}`"
        + (f", before = `{header['before']['commit']}`" if before else "")
        + f". Machine: {header['machine']}.",
        "",
        "How the sets, modes and scores are made: the docstring of `benchmarks/real.py`, in "
        "short: WRENCH's labelling-function majority vote (`youtube`, `sms`, `semeval`), one "
        "random labelling function per row (`-single`), the majority vote without the most "
        "prolific labelling function (`-notop`), and each on all-MiniLM-L6-v2 sentence "
        "embeddings instead of text (`-emb`). Label accuracy is on the original training rows "
        "against `true_label` (a null `label_refined` counts as wrong); test accuracy is "
        "`refine bench`'s LogisticRegression (TF-IDF of `text` for text sets, so semeval's "
        "entities are not read by it; standardised, on embeddings) trained on those rows and "
        "tested on the gold `_test` split. `noise` is the share of given labels that are wrong.",
        "",
        "## Summary",
        "",
        "Cases (set and seed) where refine did worse than the given labels. The promise is "
        "zero in the label columns; the test column compares the downstream classifier.",
        "",
        *summary_table(rows, before),
        "",
    ]
    for title, ours, theirs in (
        (
            "Cases where refined labels were less accurate than the given ones",
            "refined_correct",
            "given_correct",
        ),
        (
            "Cases where the unverified rows' refined labels were less accurate",
            "unverified_refined_correct",
            "unverified_given_correct",
        ),
        (
            "Cases where the classifier trained on refined labels was worse",
            "refined_test",
            "given_test",
        ),
    ):
        cases = worse(rows, ours, theirs)
        lines += [f"### {title}", "", *case_lines(cases, title.lower())]
    lines += review_lines(rows)
    modes = list(dict.fromkeys(r["mode"] for r in rows))
    for mode in modes:
        lines += [f"## Mode: {mode}", "", mode_note(mode, header), ""]
        lines += [*mode_table(rows, mode, before), ""]
    lines += ["## How each set's labels were made", "", "| set | seed | labels |", "|---|---|---|"]
    for r in rows:
        if r["mode"] == modes[0]:
            lines.append(f"| {r['set']} | {r['seed']} | {r['note']} |")
    lines += [
        "",
        "## Every case's policy and reason",
        "",
        "<details><summary>set, seed, mode: policy, and refine's reason</summary>",
        "",
    ]
    lines += [
        f"- {r['set']}, seed {r['seed']}, {r['mode']}: `{r['policy']}`: {r['reason']}" for r in rows
    ]
    lines += ["", "</details>", ""]
    return "\n".join(lines)


def mode_note(mode: str, header: dict[str, Any]) -> str:
    note = {
        "none": "No verified rows.",
        "verified 5%": f"The true label of {VERIFIED_SHARE:.0%} of the training rows given as "
        "verified labels; `unverified` columns score the other rows; `refine's measure` is "
        "what refine reports (`trust.measured`) of the given and refined labels' accuracy on "
        "the verified rows, its refined labels cross-fitted.",
        "valid": "The gold `_valid` split appended as verified rows without a given label; "
        "scored on the training rows, none of which is verified.",
        REVIEW: f"The true label of the {REVIEW_SHARE:.0%} of the training rows that `refine "
        "review` picks from the `none` run, given as verified labels; `unverified` columns "
        "score the other rows.",
        RANDOM: f"The true label of {REVIEW_SHARE:.0%} of the training rows drawn at random, "
        "given as verified labels: the yardstick for `review 2%`.",
    }[mode]
    if header["before"] is not None and mode in (REVIEW, RANDOM):
        note += " The checkout before does not run this mode."
    elif header["before"] is not None and not header["before"]["reads_verified"] and mode != "none":
        note += " The checkout before cannot read verified labels: " + (
            "its figures are those of mode none."
            if mode == "verified 5%"
            else "the appended rows reach it unlabelled."
        )
    return note + " Means over seeds."


def git_commit(path: Path) -> str:
    done = subprocess.run(
        ["git", "-C", str(path), "rev-parse", "--short", "HEAD"], capture_output=True, text=True
    )
    dirty = subprocess.run(
        ["git", "-C", str(path), "status", "--porcelain", "--untracked-files=no"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    return done.stdout.strip() + (" (with uncommitted changes)" if dirty else "")


def make_header(args: argparse.Namespace, before: dict[str, Any] | None) -> dict[str, Any]:
    import torch

    return {
        "command": "python benchmarks/real.py " + " ".join(sys.argv[1:]),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(REPO),
        "refine": refine.__file__,
        "machine": f"{platform.machine()}, {os.cpu_count()} cores "
        f"(threads: {torch.get_num_threads()})",
        "seeds": args.seeds,
        "before": None
        if before is None
        else {"path": str(args.before), "commit": git_commit(args.before), **before},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--sets", help="comma-separated; default every set the files allow")
    parser.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data" / "text")
    parser.add_argument("--embeddings", type=Path, help="benchmarks/embed_real.py's output")
    parser.add_argument("--before", type=Path, help="a checkout of refine to compare against")
    parser.add_argument(
        "--modes",
        default=",".join(MODES),
        help="comma-separated, of: " + ", ".join(MODES).replace("%", "%%"),
    )
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "real.md")
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker is not None:
        worker(args.worker)
        return
    if not Path(refine.__file__).resolve().is_relative_to(REPO):
        print(f"warning: refine is imported from {refine.__file__}, not {REPO}; set PYTHONPATH")
    names = args.sets.split(",") if args.sets else set_names(args.embeddings is not None)
    args.modes = args.modes.split(",")
    if unknown := sorted(set(args.modes) - set(MODES)):
        parser.error(f"unknown mode {unknown[0]!r}; choose from {', '.join(MODES)}")
    seeds = [int(s) for s in args.seeds.split(",")]
    if args.before is not None:
        args.before = args.before.resolve()
    before = before_refine(args.before) if args.before is not None else None
    header = make_header(args, before)
    before_verified = before is not None and before["reads_verified"]
    rows = [
        r
        for name in names
        for seed in seeds
        for r in measure_set(name, seed, args, before_verified)
    ]
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, header))
    args.out.with_suffix(".json").write_text(
        json.dumps(
            {"header": header, "review": review_summary(rows), "rows": rows}, indent=1, default=str
        )
        + "\n"
    )
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")


if __name__ == "__main__":
    main()
