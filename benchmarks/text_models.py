"""Which text representation finds wrong labels best: measured side by side, same folds.

Three models give 5-fold out-of-fold probabilities on the same noisy labels, and each is scored
as a detector (flag = the out-of-fold prediction is another class; AUPRC of the given label's
probability) against the known noise, with no refine rounds, so only the representation differs:

* ``tfidf-lr``: TF-IDF of word 1-2-grams into LogisticRegression (the usual baseline);
* ``svd-mlp``: refine's text encoder (TF-IDF n-grams, truncated SVD) into refine's MLP, as
  ``refine run`` trains it: the labels choose word-only or word-and-character n-grams and the
  width, by a 3-fold LogisticRegression log-loss;
* ``svd-mlp-rule``: the same with the block fixed as it was before the labels chose it: word and
  character n-grams, one component per 16 rows (the encoder fitted without labels);
* ``embbag``: fastText-style: hashed word 1-2-grams and character 3-5-grams (2**18 buckets) into
  a PyTorch ``EmbeddingBag`` (mean of 64-d vectors, weighted by term counts) and a linear layer,
  trained with sparse Adam and early stopping on a validation split.

    python benchmarks/text_models.py [--seeds 3] [--datasets text-sym20,wrench-youtube,...]

Writes ``reports/text-models.md``: medians over seeds (the model seed; the folds and the data
stay fixed) per dataset.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from sklearn.feature_extraction.text import HashingVectorizer
from sklearn.model_selection import StratifiedKFold

from refine.bench.baselines import text_logistic_regression
from refine.bench.recipes import build_dataset, load_recipe
from refine.encode.features import fit_features
from refine.learn.model import MLPClassifier
from refine.report.metrics import flag_scores

BUCKETS = 2**18
DIM = 64


def hashed(texts: list[str]):
    """Sparse counts ``(N, BUCKETS)`` of hashed word 1-2-grams and character 3-5-grams."""
    words = HashingVectorizer(
        n_features=BUCKETS, ngram_range=(1, 2), alternate_sign=False, norm=None
    )
    chars = HashingVectorizer(
        n_features=BUCKETS,
        analyzer="char_wb",
        ngram_range=(3, 5),
        alternate_sign=False,
        norm=None,
    )
    return (words.transform(texts) + chars.transform(texts)).tocsr()


class FastText(torch.nn.Module):
    def __init__(self, classes: int):
        super().__init__()
        # sparse gradients: a step touches only the rows of the n-grams in its batch
        self.bag = torch.nn.EmbeddingBag(BUCKETS, DIM, mode="sum", sparse=True)
        self.out = torch.nn.Linear(DIM, classes)

    def forward(self, ids, offsets, weights):
        return self.out(self.bag(ids, offsets, per_sample_weights=weights))


def _batch(matrix, rows):
    """``EmbeddingBag`` inputs for ``rows``: n-gram ids, row offsets and per-id weights that
    average each row's vectors by term count, as fastText averages its inputs."""
    part = matrix[rows]
    lengths = np.diff(part.indptr)
    totals = np.maximum(np.asarray(part.sum(1)).reshape(-1), 1.0)
    weights = part.data / np.repeat(totals, lengths)
    return (
        torch.from_numpy(part.indices.astype(np.int64)),
        torch.from_numpy(part.indptr[:-1].astype(np.int64)),
        torch.from_numpy(weights.astype(np.float32)),
    )


def fasttext_proba(train, labels, test, classes: int, seed: int) -> np.ndarray:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    order = rng.permutation(train.shape[0])
    n_val = max(1, len(order) // 10)
    val, fit = order[:n_val], order[n_val:]
    model = FastText(classes)
    optimisers = [
        torch.optim.SparseAdam(model.bag.parameters(), lr=0.02),
        torch.optim.Adam(model.out.parameters(), lr=0.02),
    ]
    target = torch.from_numpy(labels.astype(np.int64))
    best, best_state, waited = np.inf, None, 0
    for _ in range(40):
        model.train()
        order = rng.permutation(fit)
        for start in range(0, len(order), 64):
            rows = order[start : start + 64]
            loss = torch.nn.functional.cross_entropy(model(*_batch(train, rows)), target[rows])
            for optimiser in optimisers:
                optimiser.zero_grad()
            loss.backward()
            for optimiser in optimisers:
                optimiser.step()
        model.eval()
        with torch.no_grad():
            val_loss = float(
                torch.nn.functional.cross_entropy(model(*_batch(train, val)), target[val])
            )
        if val_loss < best - 1e-4:
            best, waited = val_loss, 0
            best_state = {k: v.clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= 3:
                break
    model.load_state_dict(best_state)
    model.eval()
    with torch.no_grad():
        return torch.softmax(model(*_batch(test, np.arange(test.shape[0]))), 1).numpy()


def out_of_fold(name: str, texts, table: pa.Table, labels, folds, classes: int, seed: int):
    proba = np.zeros((len(labels), classes))
    if name == "svd-mlp":
        X = fit_features(table.select(["text", "label"]), "label", seed=seed).transform(table)
    elif name == "svd-mlp-rule":  # no labels to choose by
        unlabelled = pa.table({"text": table.column("text"), "label": pa.nulls(len(labels))})
        X = fit_features(unlabelled, "label", seed=seed).transform(table)
    elif name == "embbag":
        X = hashed(list(texts))
    for fold in range(folds.max() + 1):
        tr, te = folds != fold, folds == fold
        if name == "tfidf-lr":
            model = text_logistic_regression().fit(texts[tr], labels[tr])
            proba[te] = model.predict_proba(texts[te])
        elif name.startswith("svd-mlp"):
            model = MLPClassifier(n_classes=classes, random_state=seed).fit(X[tr], labels[tr])
            proba[te] = model.predict_proba(X[te])
        else:
            proba[te] = fasttext_proba(X[tr], labels[tr], X[te], classes, seed)
    return proba


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--datasets", default="text-sym20,wrench-youtube,wrench-sms")
    parser.add_argument("--out", type=Path, default=Path("reports/text-models.md"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    models = ("tfidf-lr", "svd-mlp", "svd-mlp-rule", "embbag")
    lines = [
        "# Text representations as label-error detectors",
        "",
        f"`python benchmarks/text_models.py --seeds {args.seeds} --datasets {args.datasets}`. "
        "5 stratified folds (fixed), out-of-fold probabilities from each model trained on the "
        "noisy labels, flags = prediction is another class, AUPRC of the given label's "
        "probability. Medians over model seeds. No refine rounds: only the representation "
        "differs.",
        "",
        "| dataset | model | precision | recall | F1 | AUPRC | seconds |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in args.datasets.split(","):
        recipe = load_recipe(name)
        if recipe.missing_files():
            print(f"skipped {name}: {recipe.missing_files()[0]} is not on this machine")
            continue
        train = build_dataset(recipe).train
        texts = np.asarray(train.column("text").to_pylist(), dtype=object)
        labels = train.column("label").to_numpy()
        noisy = train.column("is_noisy").to_numpy()
        classes = int(labels.max()) + 1
        folds = np.zeros(len(labels), np.int64)
        for fold, (_, te) in enumerate(
            StratifiedKFold(5, shuffle=True, random_state=0).split(texts, labels)
        ):
            folds[te] = fold
        for model in models:
            scores, seconds = [], []
            for seed in range(args.seeds if model != "tfidf-lr" else 1):
                started = time.perf_counter()
                proba = out_of_fold(model, texts, train, labels, folds, classes, seed)
                seconds.append(time.perf_counter() - started)
                flagged = proba.argmax(1) != labels
                quality = proba[np.arange(len(labels)), labels]
                scores.append(flag_scores(flagged, noisy, quality))
            med = {k: float(np.median([s[k] for s in scores])) for k in scores[0]}
            row = (
                f"| {name} | {model} | {med['precision']:.3f} | {med['recall']:.3f} | "
                f"{med['f1']:.3f} | {med['auprc']:.3f} | {np.median(seconds):.1f} |"
            )
            print(row, flush=True)
            lines.append(row)
    args.out.write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
