"""refine with verified labels against Gold Loss Correction, on the bench's recipes.

Gold Loss Correction (GLC; Hendrycks, Mazeika, Wilson and Gimpel 2018, "Using Trusted Data to
Train Deep Networks on Labels Corrupted by Severe Noise") learns the noise from a small set of
trusted rows, which issue 25 names as the reference to beat:

1. train a model on the untrusted rows with their noisy labels (cross-entropy);
2. estimate the corruption matrix ``C[i, j]``: the mean, over the trusted rows of true class
   ``i``, of that model's softmax probability of class ``j`` (a class with no trusted row gets
   the identity row);
3. train a fresh model on the untrusted rows with ``NLL(softmax(logits) @ C, noisy label)`` and
   on the trusted rows with plain cross-entropy against the true label; it predicts the test
   split with ``argmax(logits)``.

Both models of a family share one fixed setting (``GLCConfig``, chosen once for every recipe):
``linear``, a multinomial logistic regression, and ``mlp``, one hidden ReLU layer, trained with
Adam on the bench's yardstick inputs (standardised features; TF-IDF of word 1-2-grams on text).

Cases are ``refine bench``'s: each recipe of ``--suite`` (default ``full``) at each seed, built
with ``refine.bench.suite._build_case``, the trusted rows drawn with ``refine.bench.suite.reveal`` exactly as
``refine bench --verified 0.05`` draws them. refine runs as the bench runs it with those rows
verified. Test accuracy on the clean test split of:

* ``noisy LR``: the bench's yardstick (``refine.bench.suite._downstream``, a standardised
  LogisticRegression) on the given labels with the trusted rows set right;
* ``GLC linear``, ``GLC MLP``;
* ``refine LR``: the yardstick on refine's ``label_refined`` with ``sample_weight``, as the bench
  scores refine;
* ``refine model``: refine's own fold-model ensemble (``refine.load_run(run).predict``);
* ``clean LR``: the yardstick on every training row's true label (the ceiling).

GLC trains only on labelled rows; refine also pseudo-labels the unlabelled rows of the
``-unlabelled50`` recipes, and the clean ceiling uses their true labels.

    PYTHONPATH=. python benchmarks/glc.py [--seeds 0,1] [--dataset NAME ...] [--skip NAME ...] \
        [--verified 0.05]

On text the MLP's first layer is 256 x the TF-IDF vocabulary (36,000 terms on ``text-sym20``),
and dense Adam over it took minutes per fit; ``embeddings-sym20`` (45,000 training rows) costs
refine several minutes. ``--skip`` leaves such recipes out on a busy machine.

Writes ``reports/glc.md`` and, beside it, ``reports/glc.json`` (every case, with the settings).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import math
import os
import platform
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from real import git_commit  # a sibling script: benchmarks/ is on the path when it runs
from scipy import sparse

import refine
from refine.bench.recipes import build_dataset, list_recipes, load_recipe
from refine.bench.suite import (
    Case,
    Yardsticks,
    _build_case,
    _downstream,
    _run_refine,
    reveal,
    score_refine,
)
from refine.learn.crossfit import one_thread

REPO = Path(__file__).resolve().parents[1]
FAMILIES = {"linear": 0, "mlp": 256}  # hidden units; 0 is a linear model
# The Markdown table's columns: (JSON key, header).
COLUMNS = (
    ("noisy_lr", "noisy LR"),
    ("glc_linear", "GLC linear"),
    ("glc_mlp", "GLC MLP"),
    ("refine_lr", "refine LR"),
    ("refine_model", "refine model"),
    ("clean_lr", "clean LR"),
)


@dataclass(frozen=True)
class GLCConfig:
    """How every GLC model trains, on every recipe (set once, never per dataset).

    ``epochs`` passes over the rows, but at least ``min_steps`` Adam steps: iris's 106 untrusted
    rows make one batch, and 30 steps would leave a linear model far from its optimum.
    """

    epochs: int = 30
    min_steps: int = 1000
    batch_size: int = 128
    lr: float = 1e-3
    weight_decay: float = 1e-4
    hidden: int = 256


# --- GLC -----------------------------------------------------------------------------------


def corruption_matrix(proba: np.ndarray, truth: np.ndarray, n_classes: int) -> np.ndarray:
    """GLC's estimate ``C`` ``(K, K)``: row ``i`` is the mean of ``proba`` ``(M, K)`` (the noisy
    model's softmax on the trusted rows) over the trusted rows whose true label ``truth``
    ``(M,)`` is ``i``; the identity row where no trusted row has class ``i``."""
    C = np.eye(n_classes)
    for i in range(n_classes):
        rows = truth == i
        if rows.any():
            C[i] = proba[rows].mean(0)
    return C


class Net(torch.nn.Module):
    """A linear model (``hidden`` 0) or one hidden ReLU layer; reads dense or sparse rows."""

    def __init__(self, dim: int, classes: int, hidden: int) -> None:
        super().__init__()
        self.first = torch.nn.Linear(dim, hidden or classes)
        self.rest = (
            torch.nn.Sequential(torch.nn.ReLU(), torch.nn.Linear(hidden, classes))
            if hidden
            else torch.nn.Identity()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.is_sparse:
            return self.rest(torch.sparse.mm(x, self.first.weight.T) + self.first.bias)
        return self.rest(self.first(x))


def glc_loss(
    logits: torch.Tensor, labels: torch.Tensor, trusted: torch.Tensor, C: torch.Tensor | None
) -> torch.Tensor:
    """Mean loss of a batch: cross-entropy on trusted rows (and on every row when ``C`` is
    None), ``NLL(softmax(logits) @ C, label)`` on the others."""
    log_p = F.log_softmax(logits, 1)
    plain = -log_p.gather(1, labels[:, None])[:, 0]
    if C is None:
        return plain.mean()
    corrected = -torch.log((log_p.exp() @ C).clamp_min(1e-12)).gather(1, labels[:, None])[:, 0]
    return torch.where(trusted, plain, corrected).mean()


def fit(
    X: Any,
    labels: np.ndarray,
    trusted: np.ndarray,
    C: np.ndarray | None,
    n_classes: int,
    hidden: int,
    config: GLCConfig,
    seed: int,
) -> Net:
    """A fresh ``Net`` trained with Adam on ``X`` ``(N, D)`` (dense array or scipy CSR) and
    ``labels`` ``(N,)``, with ``glc_loss`` (``C`` None: plain cross-entropy)."""
    torch.manual_seed(seed)
    net = Net(X.shape[1], n_classes, hidden)
    optimiser = torch.optim.Adam(net.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    generator = torch.Generator().manual_seed(seed)
    y, is_trusted = torch.as_tensor(labels), torch.as_tensor(trusted)
    C_t = None if C is None else torch.as_tensor(C, dtype=torch.float32)
    n = X.shape[0]
    epochs = max(config.epochs, math.ceil(config.min_steps / math.ceil(n / config.batch_size)))
    net.train()
    for _ in range(epochs):
        for batch in torch.randperm(n, generator=generator).split(config.batch_size):
            loss = glc_loss(net(rows(X, batch.numpy())), y[batch], is_trusted[batch], C_t)
            optimiser.zero_grad()
            loss.backward()
            optimiser.step()
    return net.eval()


def predict_proba(net: Net, X: Any) -> np.ndarray:
    """Softmax ``(N, K)`` of ``net`` on ``X``, in batches."""
    with torch.no_grad():
        parts = [
            F.softmax(net(rows(X, np.arange(start, min(start + 4096, X.shape[0])))), 1)
            for start in range(0, X.shape[0], 4096)
        ]
    return torch.cat(parts).numpy().astype(np.float64)


def rows(X: Any, index: np.ndarray) -> torch.Tensor:
    if sparse.issparse(X):
        part = X[index].tocoo()
        indices = torch.as_tensor(np.vstack([part.row, part.col]), dtype=torch.int64)
        return torch.sparse_coo_tensor(
            indices, part.data, part.shape, dtype=torch.float32, check_invariants=False
        )
    return torch.as_tensor(X[index], dtype=torch.float32)


def glc(
    X: Any,
    labels: np.ndarray,
    trusted: np.ndarray,
    X_test: Any,
    n_classes: int,
    hidden: int,
    config: GLCConfig,
    seed: int,
) -> dict[str, Any]:
    """Gold Loss Correction on ``X`` ``(N, D)``: ``labels`` ``(N,)`` are noisy except on the
    ``trusted`` rows ``(N,)``, where they are true. Returns the test predictions ``(N_test,)``
    of the corrected model (``predicted``) and of the first, noisy one (``noisy_predicted``),
    and ``C``."""
    untrusted = ~trusted
    first = fit(
        X[untrusted], labels[untrusted], trusted[untrusted], None, n_classes, hidden, config, seed
    )
    C = corruption_matrix(predict_proba(first, X[trusted]), labels[trusted], n_classes)
    second = fit(X, labels, trusted, C, n_classes, hidden, config, seed + 1)
    return {
        "predicted": predict_proba(second, X_test).argmax(1),
        "noisy_predicted": predict_proba(first, X_test).argmax(1),
        "C": C,
    }


def glc_inputs(case: Case) -> tuple[Any, Any]:
    """GLC's features for the labelled training rows and the test rows: the yardstick's own
    path (TF-IDF of ``text_logistic_regression`` on text, else a StandardScaler), fitted on the
    labelled rows as the yardstick fits it on the rows it trains on."""
    from sklearn.preprocessing import StandardScaler

    from refine.bench.baselines import text_logistic_regression

    X, X_test = case.X_lr[case.labelled], case.X_lr_test
    if case.text:
        vectoriser = text_logistic_regression().steps[0][1]
        train = vectoriser.fit_transform(X).astype(np.float32).tocsr()
        return train, vectoriser.transform(X_test).astype(np.float32).tocsr()
    scaler = StandardScaler().fit(X)
    return scaler.transform(X).astype(np.float32), scaler.transform(X_test).astype(np.float32)


def true_transition(truth: np.ndarray, noisy: np.ndarray, n_classes: int) -> np.ndarray:
    """The corruption the untrusted rows really have: ``T[i, j]`` the share of rows of true
    class ``i`` labelled ``j``, ``(K, K)`` (identity row for an absent class)."""
    return corruption_matrix(np.eye(n_classes)[noisy], truth, n_classes)


# --- one case ------------------------------------------------------------------------------


def measure_case(
    recipe: Any, seed: int, share: float, config: GLCConfig, refine_options: dict[str, Any]
) -> dict[str, Any]:
    """One recipe at one seed: every column of ``COLUMNS``, plus diagnostics."""
    case = _build_case(recipe, seed)
    labelled = case.labelled
    revealed = reveal(labelled, share, seed)
    known = case.known(revealed)
    X_lr, X_lr_test, y_test = case.X_lr, case.X_lr_test, case.y_test
    noisy_lr = _downstream(
        X_lr[labelled], known[labelled], np.ones(int(labelled.sum())), X_lr_test, y_test
    )
    clean_lr = _downstream(X_lr, case.truth, np.ones(len(case.truth)), X_lr_test, y_test)
    row: dict[str, Any] = {
        "dataset": case.name,
        "seed": seed,
        "rows": len(case.truth),
        "labelled": int(labelled.sum()),
        "trusted": int(revealed.sum()),
        "noise_rate": float(case.is_noisy[labelled].mean()),
        "test_rows": len(y_test),
        "noisy_lr": noisy_lr,
        "clean_lr": clean_lr,
    }

    started = time.perf_counter()
    n_classes = int(max(case.truth.max(), y_test.max())) + 1
    X, X_test = glc_inputs(case)
    trusted = revealed[labelled]
    labels = known[labelled]
    untrusted = ~trusted
    T = true_transition(case.truth[labelled][untrusted], labels[untrusted], n_classes)
    for family, hidden in FAMILIES.items():
        hidden = hidden and config.hidden
        # Small models step fastest on one thread, as refine's fold models train.
        with one_thread():
            out = glc(X, labels, trusted, X_test, n_classes, hidden, config, seed)
        row[f"glc_{family}"] = float((out["predicted"] == y_test).mean())
        row[f"noisy_{family}"] = float((out["noisy_predicted"] == y_test).mean())
        # Half the L1 distance per row, averaged over classes: 0 is the true corruption.
        row[f"glc_{family}_C_error"] = float(np.abs(out["C"] - T).sum(1).mean() / 2)
    row["glc_seconds"] = time.perf_counter() - started

    started = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp) / "run"
        result = _run_refine(case, revealed, {**refine_options, "out": run_dir, "report": False})
        row["refine_seconds"] = time.perf_counter() - started
        yardsticks = Yardsticks(noisy=noisy_lr, clean=clean_lr, cleanlearning=float("nan"))
        scores = score_refine(case, result, revealed, yardsticks)
        row["refine_lr"] = scores["test_accuracy"]
        row["refine_label_accuracy"] = scores["label_accuracy"]
        row["refine_policy"] = scores["policy"]
        row["refine_model"] = refine_model_accuracy(run_dir, recipe, seed, y_test)
    return row


def refine_model_accuracy(run_dir: Path, recipe: Any, seed: int, y_test: np.ndarray) -> float:
    """Test accuracy of the fold-model ensemble the run saved, on the recipe's test table (built
    again: the bench's ``Case`` keeps only its encoding)."""
    test = build_dataset(recipe, seed=seed).test
    saved = refine.load_run(run_dir, device="cpu")
    proba, _ = saved.predict(test)
    classes = np.asarray(saved.classes.to_pylist())
    return float((classes[proba.argmax(1)] == y_test).mean())


# --- the report ----------------------------------------------------------------------------


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Means of every column, and refine against each GLC family case by case."""
    means = {key: float(np.mean([r[key] for r in rows])) for key, _ in COLUMNS}
    pairs = {}
    for mine, theirs in (
        ("refine_lr", "glc_linear"),
        ("refine_lr", "glc_mlp"),
        ("refine_model", "glc_mlp"),
    ):
        diff = np.array([r[mine] - r[theirs] for r in rows])
        pairs[f"{mine} - {theirs}"] = {
            "at_least": int((diff >= 0).sum()),
            "cases": len(diff),
            "mean": float(diff.mean()),
            "se": float(diff.std(ddof=1) / np.sqrt(len(diff))) if len(diff) > 1 else None,
            "glc_wins": [
                f"{r['dataset']} (seed {r['seed']}, {d:+.3f})"
                for r, d in zip(rows, diff, strict=True)
                if d < 0
            ],
        }
    return {"means": means, "pairs": pairs}


def render(rows: list[dict[str, Any]], summary: dict[str, Any], header: dict[str, Any]) -> str:
    config = header["glc_config"]
    cases = (
        f"the recipes {', '.join(header['recipes'])}"
        if header["suite"] is None
        else f"the `refine bench --suite {header['suite']}` recipes"
    )
    lines = [
        "# refine with verified labels against Gold Loss Correction",
        "",
        f"Generated by `{header['command']}` on {header['date']}, refine at `{header['commit']}`.",
        f"Machine: {header['machine']}. Total time {header['seconds'] / 60:.1f} min.",
        "",
        f"Cases: {cases} at seeds "
        f"{', '.join(map(str, header['seeds']))}; trusted rows: the {header['verified']:.0%} of "
        "labelled training rows `refine bench --verified` reveals (`refine.bench.suite.reveal`), given "
        "to refine as verified labels and to GLC as its trusted set. Test accuracy on the clean "
        "test split. `noisy LR`, `refine LR` and `clean LR` are the bench's yardstick (a "
        "standardised LogisticRegression; TF-IDF + LogisticRegression on text) trained on the "
        "given labels with the trusted rows set right, on refine's `label_refined` with "
        "`sample_weight`, and on every true label. `refine model` is refine's own fold-model "
        "ensemble (`refine.load_run(run).predict`). GLC (Hendrycks et al. 2018) trains on the "
        "labelled rows only, on the yardstick's inputs, with one setting for every recipe: "
        f"Adam, lr {config['lr']:g}, weight decay {config['weight_decay']:g}, batch "
        f"{config['batch_size']}, {config['epochs']} epochs but at least {config['min_steps']} "
        f"steps, on one torch thread; `GLC MLP` has one hidden layer of {config['hidden']} ReLU "
        "units.",
        "",
        *(
            [
                "Not run: "
                + ", ".join(f"{n} ({why})" for n, why in header["skipped"].items())
                + ".",
                "",
            ]
            if header["skipped"]
            else []
        ),
        "| dataset | seed | " + " | ".join(h for _, h in COLUMNS) + " |",
        "|---|---|" + "---|" * len(COLUMNS),
    ]
    for r in rows:
        cells = " | ".join(f"{r[key]:.3f}" for key, _ in COLUMNS)
        lines.append(f"| {r['dataset']} | {r['seed']} | {cells} |")
    means = summary["means"]
    lines.append(
        f"| **mean** ({len(rows)} cases) | | "
        + " | ".join(f"**{means[key]:.3f}**" for key, _ in COLUMNS)
        + " |"
    )
    lines += [
        "",
        "## Summary",
        "",
        "Like for like: `refine LR` against `GLC linear` (both linear models), `refine model` "
        "against `GLC MLP` (both networks). `refine LR` against `GLC MLP` pits a linear model "
        "against a network, which wins wherever a linear model falls short even on clean labels "
        "(`clean LR`).",
        "",
    ]
    for name, pair in summary["pairs"].items():
        mine, theirs = name.split(" - ")
        label = dict(COLUMNS)
        se = f" ± {pair['se']:.3f}" if pair["se"] is not None else ""
        wins = ", ".join(pair["glc_wins"]) or "none"
        lines.append(
            f"- **{label[mine]} vs {label[theirs]}**: {label[mine]} at least as accurate in "
            f"{pair['at_least']} of {pair['cases']} cases; mean paired difference "
            f"{pair['mean']:+.4f}{se} (standard error). {label[theirs]} wins on: {wins}."
        )
    lines += [
        "",
        "## GLC diagnostics",
        "",
        "`first` is GLC's first model (untrusted rows, noisy labels, no correction); `C error` "
        "is the distance of GLC's estimated corruption matrix from the corruption the untrusted "
        "rows really have (half the L1 distance of a row, averaged over classes: 0 is exact, 1 "
        "is disjoint). Seconds: GLC (both families) and refine.",
        "",
        "| dataset | seed | trusted | first linear | GLC linear | C error linear | first MLP "
        "| GLC MLP | C error MLP | GLC s | refine s |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['dataset']} | {r['seed']} | {r['trusted']} | {r['noisy_linear']:.3f} | "
            f"{r['glc_linear']:.3f} | {r['glc_linear_C_error']:.3f} | {r['noisy_mlp']:.3f} | "
            f"{r['glc_mlp']:.3f} | {r['glc_mlp_C_error']:.3f} | {r['glc_seconds']:.1f} | "
            f"{r['refine_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--suite", default="full")
    parser.add_argument("--seeds", default="0", help="comma-separated, e.g. 0,1")
    parser.add_argument(
        "--dataset", action="append", help="a recipe to run (repeatable); default the suite's"
    )
    parser.add_argument("--skip", action="append", default=[], help="a recipe to leave out")
    parser.add_argument("--verified", type=float, default=0.05, help="share of trusted rows")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "glc.md")
    defaults = GLCConfig()
    for field in dataclasses.fields(GLCConfig):
        name = "--" + field.name.replace("_", "-")
        default = getattr(defaults, field.name)
        parser.add_argument(name, type=type(default), default=default, help="GLC training")
    args = parser.parse_args(argv)
    config = GLCConfig(**{f.name: getattr(args, f.name) for f in dataclasses.fields(GLCConfig)})
    seeds = [int(s) for s in args.seeds.split(",")]
    recipes = [load_recipe(n) for n in args.dataset] if args.dataset else list_recipes(args.suite)
    skipped = {r.name: "--skip" for r in recipes if r.name in args.skip}
    for recipe in [r for r in recipes if r.missing_files()]:
        skipped[recipe.name] = f"{recipe.missing_files()[0]} is not on this machine"
    for name, why in skipped.items():
        print(f"skipped {name}: {why}")
    recipes = [r for r in recipes if r.name not in skipped]

    started = time.perf_counter()
    rows = []
    for recipe in recipes:
        for seed in seeds:
            row = measure_case(recipe, seed, args.verified, config, {})
            print(
                f"{recipe.name} seed {seed}: "
                + ", ".join(f"{h} {row[k]:.3f}" for k, h in COLUMNS)
                + f" (GLC {row['glc_seconds']:.0f}s, refine {row['refine_seconds']:.0f}s)",
                flush=True,
            )
            rows.append(row)
    header = {
        "command": "python benchmarks/glc.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git_commit(REPO),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores "
        f"(torch threads: {torch.get_num_threads()}), {platform.platform()}",
        "suite": None if args.dataset else args.suite,
        "recipes": [r.name for r in recipes],
        "skipped": skipped,
        "seeds": seeds,
        "verified": args.verified,
        "glc_config": dataclasses.asdict(config),
        "seconds": time.perf_counter() - started,
    }
    summary = summarise(rows)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(rows, summary, header))
    args.out.with_suffix(".json").write_text(
        json.dumps({"header": header, "summary": summary, "rows": rows}, indent=1) + "\n"
    )
    print(f"wrote {args.out} and {args.out.with_suffix('.json')}")
    return args.out


if __name__ == "__main__":
    main()
