"""Does cross-modal distillation help? A text student taught by an embedding teacher, against
the same text student trained on the noisy labels, side by side in one process.

Data: ``refine.bench.sources.generated_text`` texts of 4 classes and, for the same rows, an
embedding column (class centres plus Gaussian noise, well separated, so the teacher is
strong); 30% symmetric label noise on the training rows; a clean test split. For each seed:

- distilled: ``refine.run(train, teacher_features=("emb",), student_features=("text",))``,
  its kept model (the student) predicting the test split through ``refine.load_run``;
- noisy: the same student (encoder, folds, model settings, fold ensemble) cross-fitted on
  the noisy one-hot labels, no refining;
- clean: the same student on the true labels (the ceiling);
- teacher: ``refine.run(train, teacher_features=("emb",))``, its model on the test split.

Medians over seeds of test accuracy against the true labels.

    python benchmarks/distill.py [--seeds 3] [--rows 2000] [--out reports/distill.md]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

import refine
from refine.bench.noise import flip_symmetric
from refine.bench.sources import generated_text
from refine.config import ModelConfig
from refine.learn.crossfit import cross_fit, make_folds

CLASSES = 4
NOISE = 0.3
TOPIC_SHARE = 0.3
EMB_DIM = 16
MODEL = dict(hidden=(128,), max_epochs=20)
RUN = dict(folds=3, rounds=2, report=False, **MODEL)
ARMS = ("distilled", "noisy", "clean", "teacher")


def dataset(rows: int, seed: int) -> tuple[pa.Table, np.ndarray]:
    """``rows`` rows of ``text``, ``emb`` (``fixed_size_list<float32>[16]``) and a noisy
    ``label``, and the true labels ``(rows,)``."""
    texts, truth = generated_text(rows, CLASSES, topic_share=TOPIC_SHARE, random_state=seed)
    rng = np.random.default_rng([seed, 1])
    centres = rng.normal(0.0, 2.0, size=(CLASSES, EMB_DIM))
    emb = (centres[truth] + rng.normal(0.0, 1.0, size=(rows, EMB_DIM))).astype(np.float32)
    table = pa.table(
        {
            "text": pa.array(texts.tolist(), pa.string()),
            "emb": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1)), EMB_DIM),
            "label": flip_symmetric(truth, NOISE, CLASSES, seed=seed + 2),
        }
    )
    return table, truth


def fold_student(previous, train: pa.Table, targets: np.ndarray, folds: np.ndarray, seed: int):
    """The student's encoder and model settings, cross-fitted on one-hot ``targets``; the fold
    ensemble's most likely class for ``previous``'s test rows is returned by the caller."""
    X = previous.encoder.transform(train)
    fitted = cross_fit(
        X,
        np.eye(CLASSES, dtype=np.float32)[targets],
        np.ones(len(targets), np.float32),
        folds,
        ModelConfig(**MODEL),
        1,
        seed,
    )
    return [m for fold in fitted.models for m in fold]


def accuracy_of(members, X: np.ndarray, truth: np.ndarray) -> float:
    proba = np.concatenate([m.predict_member_proba(X) for m in members]).mean(0)
    return float((proba.argmax(1) == truth).mean())


def one(rows: int, seed: int, workdir: Path) -> dict[str, float]:
    table, truth = dataset(rows + rows // 2, seed)
    train, test = table.slice(0, rows), table.slice(rows)
    train_truth, test_truth = truth[:rows], truth[rows:]
    scores: dict[str, float] = {}

    started = time.perf_counter()
    out = workdir / f"distilled-{seed}"
    result = refine.run(
        train, out, teacher_features=("emb",), student_features=("text",), seed=seed, **RUN
    )
    scores["seconds_distilled"] = time.perf_counter() - started
    previous = refine.load_run(out)
    scores["distilled"] = float((previous.predict(test)[0].argmax(1) == test_truth).mean())
    scores["student_oof_vs_refined"] = result.summary["student"]["oof_accuracy_vs_refined"]
    scores["label_refined_accuracy"] = float(
        (np.asarray(result.refined.column("label_refined").fill_null(-1)) == train_truth).mean()
    )

    labels = np.asarray(train.column("label"))
    folds = make_folds(labels, RUN["folds"], seed)
    X_test = previous.encoder.transform(test)
    started = time.perf_counter()
    scores["noisy"] = accuracy_of(
        fold_student(previous, train, labels, folds, seed), X_test, test_truth
    )
    scores["seconds_noisy"] = time.perf_counter() - started
    scores["clean"] = accuracy_of(
        fold_student(previous, train, train_truth, folds, seed), X_test, test_truth
    )

    teacher_out = workdir / f"teacher-{seed}"
    refine.run(train, teacher_out, teacher_features=("emb",), seed=seed, **RUN)
    teacher = refine.load_run(teacher_out)
    scores["teacher"] = float((teacher.predict(test)[0].argmax(1) == test_truth).mean())
    print(seed, {k: round(v, 3) for k, v in scores.items()}, flush=True)
    return scores


def render(runs: list[dict[str, float]], rows: int, command: str) -> str:
    def median(key: str) -> float:
        return statistics.median(r[key] for r in runs)

    def seconds(key: str) -> str:
        return ", ".join(f"{r[key]:.0f}" for r in runs)

    lines = [
        "# Cross-modal distillation: a text student taught by an embedding teacher",
        "",
        f"Generated data: {rows} training rows, {rows // 2} clean test rows, {CLASSES} classes; "
        f"text from `generated_text(topic_share={TOPIC_SHARE})`, an embedding column of "
        f"{EMB_DIM} dimensions (class centres + N(0, 1) noise); {NOISE:.0%} symmetric label "
        f"noise on the training rows. refine: {RUN}. Medians over {len(runs)} seeds, one "
        "process.",
        "",
        f"Command: `{command}`",
        "",
        "| model (test accuracy on clean labels) | columns it needs | median | per seed |",
        "|---|---|---|---|",
    ]
    names = {
        "distilled": ("student distilled from the refined teacher (model.pt)", "text"),
        "noisy": ("same student on the noisy labels", "text"),
        "clean": ("same student on the true labels (ceiling)", "text"),
        "teacher": ("teacher, refine on the embedding", "emb"),
    }
    for arm in ARMS:
        label, columns = names[arm]
        per_seed = ", ".join(f"{r[arm]:.3f}" for r in runs)
        lines.append(f"| {label} | `{columns}` | {median(arm):.3f} | {per_seed} |")
    lines += [
        "",
        f"Distilled minus noisy: {median('distilled') - median('noisy'):+.3f} test accuracy "
        f"(medians). The teacher's `label_refined` matches the true label on "
        f"{median('label_refined_accuracy'):.3f} of training rows; the student's out-of-fold "
        f"accuracy against them is {median('student_oof_vs_refined'):.3f}.",
        "",
        f"Cost: the distilled run (teacher rounds + student) took {median('seconds_distilled'):.1f} s, "
        f"the noisy student alone {median('seconds_noisy'):.1f} s (medians; per seed "
        f"{seconds('seconds_distilled')} s and {seconds('seconds_noisy')} s: 2 cores shared with other "
        "work, so only the accuracies are steady).",
        "",
    ]
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--rows", type=int, default=2000)
    parser.add_argument("--out", type=Path, default=Path("reports/distill.md"))
    args = parser.parse_args()
    command = f"python benchmarks/distill.py --seeds {args.seeds} --rows {args.rows}"
    with tempfile.TemporaryDirectory() as tmp:
        runs = [one(args.rows, seed, Path(tmp)) for seed in range(args.seeds)]
    args.out.write_text(render(runs, args.rows, command))
    print(args.out.read_text())


if __name__ == "__main__":
    main()
