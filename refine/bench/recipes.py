"""Benchmark datasets from recipes: a source, a noise model and a clean test split, fixed by a seed.

A recipe is one JSON file in ``datasets/`` (its schema and the data card are in
``datasets/README.md``). Building it loads the source without any download, splits off a clean
test set stratified by the true label, injects label noise into the train split only with the
generators of ``refine.bench.noise``, and optionally hides a share of the train labels. Because every
noise generator flips an exact number of rows, the noise share of a built dataset is known to
the row, and the true labels stay aside in ``label_true`` to score a method.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
from sklearn.model_selection import StratifiedKFold, cross_val_predict, train_test_split

from refine.bench.baselines import logistic_regression
from refine.bench.crowds import check_crowd, draw_crowd, with_crowd
from refine.bench.noise import (
    flip_instance_dependent,
    flip_one_direction,
    flip_pair,
    flip_symmetric,
    hide_labels,
)
from refine.bench.sources import (
    IMAGE_COLUMN,
    TEXT_COLUMN,
    load_source,
    png_pixels,
)
from refine.errors import InputError, OutputError
from refine.io.write import umask
from refine.judge.annotators import majority_vote

RECIPE_DIR = Path(
    os.environ.get("REFINE_DATASETS") or Path(__file__).resolve().parents[2] / "datasets"
)
METADATA_KEY = b"refine.recipe"

SOURCE_KINDS = (
    "sklearn",
    "make_classification",
    "gaussian_embeddings",
    "generated_text",
    "png_images",
    "files",
)
# A files source: a train and a test Parquet file, paths relative to the repository root (the
# recipe folder's parent), whose labels are already noisy, with the truth in another column.
FILES_KEYS = {"kind", "train", "test", "text", "truth"}
SKLEARN_SOURCES = ("breast_cancer", "digits", "iris", "wine")
# Required and optional keys of each noise model, besides "model".
NOISE_KEYS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "none": ((), ("rate",)),
    "symmetric": (("rate",), ()),
    "pair": (("rate",), ("mapping",)),
    "instance": (("rate",), ()),
    "one_direction": (("rate", "source", "target"), ()),
    "crowd": (
        ("annotators", "votes"),
        (
            "accuracy",
            "concentration",
            "one_direction",
            "spammers",
            "one_class",
            "workload",
            "difficulty",
        ),
    ),
}
CLEAN_MODEL_FOLDS = 5
EMBEDDING_COLUMN = "embedding"
LABEL_FIELDS = (
    pa.field("label", pa.int64()),
    pa.field("label_true", pa.int64(), nullable=False),
    pa.field("is_noisy", pa.bool_(), nullable=False),
)


@dataclass(frozen=True)
class Recipe:
    """One dataset x noise setting, as written in its JSON file.

    ``source`` and ``noise`` keep the JSON objects as they are (see ``datasets/README.md``);
    ``seed`` drives the split, the noise and the hidden labels, never the source data itself.
    """

    name: str
    description: str
    source: dict[str, Any]
    noise: dict[str, Any]
    unlabelled: float = 0.0
    test_fraction: float = 0.25
    suites: tuple[str, ...] = ()
    seed: int = 0

    @classmethod
    def from_dict(cls, data: Any, origin: str = "<dict>") -> Recipe:
        """Validate a recipe's JSON object; ``origin`` names it in error messages."""
        if not isinstance(data, dict):
            raise InputError(f"recipe {origin}: expected a JSON object, got {type(data).__name__}")
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - set(fields))
        if unknown:
            raise InputError(
                f"recipe {origin}: unknown key {unknown[0]!r}; the keys are {', '.join(fields)}"
            )
        missing = [
            n for n, f in fields.items() if f.default is dataclasses.MISSING and n not in data
        ]
        if missing:
            raise InputError(f"recipe {origin}: missing key {missing[0]!r}")
        recipe = cls(**{**data, "suites": tuple(data.get("suites", ()))})
        recipe._check(origin)
        return recipe

    def to_dict(self) -> dict[str, Any]:
        """The recipe as its JSON object."""
        return {**dataclasses.asdict(self), "suites": list(self.suites)}

    def _check(self, origin: str) -> None:
        def fail(message: str) -> None:
            raise InputError(f"recipe {origin}: {message}")

        if not isinstance(self.name, str) or not self.name:
            fail("'name' must be a non-empty string")
        if not isinstance(self.description, str):
            fail("'description' must be a string")
        if not isinstance(self.source, dict) or self.source.get("kind") not in SOURCE_KINDS:
            fail(f"'source' must be an object whose 'kind' is one of {', '.join(SOURCE_KINDS)}")
        if self.source["kind"] == "sklearn":
            if set(self.source) != {"kind", "name"} or self.source["name"] not in SKLEARN_SOURCES:
                fail(
                    'an sklearn source is {"kind": "sklearn", "name": ...} with a name in '
                    f"{', '.join(SKLEARN_SOURCES)}"
                )
        elif self.source["kind"] == "files":
            if set(self.source) != FILES_KEYS or not all(
                isinstance(self.source[k], str) for k in FILES_KEYS
            ):
                fail(
                    'a files source is {"kind": "files", "train": PATH, "test": PATH, '
                    '"text": COLUMN, "truth": COLUMN}'
                )
            if self.noise.get("model") != "none" or self.unlabelled:
                fail("a files source brings its own noisy labels: use noise model 'none'")
        elif set(self.source) != {"kind", "params"} or not isinstance(self.source["params"], dict):
            fail(f'a {self.source["kind"]} source is {{"kind": ..., "params": {{...}}}}')
        if not isinstance(self.noise, dict) or self.noise.get("model") not in NOISE_KEYS:
            fail(f"'noise' must be an object whose 'model' is one of {', '.join(NOISE_KEYS)}")
        model = self.noise["model"]
        required, optional = NOISE_KEYS[model]
        for key in required:
            if key not in self.noise:
                fail(f"noise model {model!r} needs the key {key!r}")
        extra = sorted(set(self.noise) - {"model", *required, *optional})
        if extra:
            fail(f"noise model {model!r} takes no key {extra[0]!r}")
        rate = self.noise.get("rate", 0.0)
        if not _is_number(rate) or not 0 <= rate <= 1:
            fail(f"noise rate must be a number in [0, 1], got {rate!r}")
        if model == "one_direction" and not all(
            isinstance(self.noise[k], int) and not isinstance(self.noise[k], bool)
            for k in ("source", "target")
        ):
            fail("noise 'source' and 'target' must be class indices (integers)")
        if model == "none" and rate != 0:
            fail("noise model 'none' flips nothing; remove 'rate' or set it to 0")
        if model == "crowd":
            check_crowd(self.noise, self.unlabelled, fail)
        if not _is_number(self.unlabelled) or not 0 <= self.unlabelled < 1:
            fail(f"'unlabelled' must be a number in [0, 1), got {self.unlabelled!r}")
        if not _is_number(self.test_fraction) or not 0 < self.test_fraction < 1:
            fail(f"'test_fraction' must be a number in (0, 1), got {self.test_fraction!r}")
        if not all(isinstance(suite, str) for suite in self.suites):
            fail("'suites' must be a list of strings")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            fail(f"'seed' must be a non-negative integer, got {self.seed!r}")

    def missing_files(self) -> list[str]:
        """The files a ``files`` source names that are not on this machine (none for others)."""
        if self.source.get("kind") != "files":
            return []
        return [
            self.source[k]
            for k in ("train", "test")
            if not (_repo_root() / self.source[k]).is_file()
        ]


@dataclass
class BuiltDataset:
    """A built recipe: a noisy train split and a clean test split.

    ``train`` has the feature columns (float32 ``f0 .. f{D-1}``, sklearn's own names where they
    are plain identifiers, or one ``embedding`` column of ``fixed_size_list<float32>[D]``), then
    ``label`` (int64, the noisy label, null on unlabelled rows), ``label_true`` (int64) and
    ``is_noisy`` (bool: ``label`` is not null and differs from ``label_true``). ``test`` has the
    same feature columns and ``label``, the true label. ``recipe.seed`` is the seed it was built
    with.
    """

    recipe: Recipe
    train: pa.Table
    test: pa.Table


def list_recipes(suite: str | None = None, directory: Path | None = None) -> list[Recipe]:
    """Every recipe in ``directory`` (default ``RECIPE_DIR``), sorted by name.

    Parameters
    ----------
    suite : str, optional
        Keep only the recipes of this suite (e.g. ``"quick"``, ``"full"``).
    directory : Path, optional
        Folder of recipe JSON files; default the ``REFINE_DATASETS`` environment variable if set,
        else ``RECIPE_DIR``.

    Returns
    -------
    list of Recipe
    """
    recipes = [_read_recipe(path) for path in sorted(_recipe_dir(directory).glob("*.json"))]
    if suite is None:
        return recipes
    suites = sorted({s for recipe in recipes for s in recipe.suites})
    if suite not in suites:
        raise InputError(
            f"no recipe belongs to suite {suite!r}; the suites are {', '.join(suites)}"
        )
    return [recipe for recipe in recipes if suite in recipe.suites]


def load_recipe(name: str, directory: Path | None = None) -> Recipe:
    """The recipe called ``name`` (its file is ``<name>.json``) in ``directory``.

    Raises ``InputError`` naming the available recipes when there is none of that name.
    """
    folder = _recipe_dir(directory)
    path = folder / f"{name}.json"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in folder.glob("*.json"))) or "none"
        raise InputError(
            f"unknown recipe {name!r} in {str(folder)!r}; the available recipes are: {available}"
        )
    return _read_recipe(path)


def build_dataset(recipe: Recipe | str, seed: int | None = None) -> BuiltDataset:
    """Build a recipe's train and test tables.

    Parameters
    ----------
    recipe : Recipe or str
        A recipe, or the name of one in ``RECIPE_DIR``.
    seed : int, optional
        Seed of the split, the noise and the hidden labels; default the recipe's own. The same
        seed gives identical tables; another seed gives another split and other noise over the
        same source data.

    Returns
    -------
    BuiltDataset
        Its ``recipe`` records the seed used. Train rows: ``N_train = N - ceil(test_fraction *
        N)``; exactly ``round(rate * eligible)`` of them are noisy and
        ``round(unlabelled * N_train)`` unlabelled (hidden after the noise, so a few noisy rows
        are among them).
    """
    if isinstance(recipe, str):
        recipe = load_recipe(recipe)
    if seed is not None:
        recipe = dataclasses.replace(recipe, seed=seed)
    recipe._check(repr(recipe.name))
    if recipe.source["kind"] == "files":
        return _build_from_files(recipe)
    try:
        X, y, names = load_source(recipe.source)
    except (TypeError, ValueError) as exc:
        raise InputError(f"recipe {recipe.name!r}: cannot build its source: {exc}") from None

    rows = np.arange(len(y))
    train, test = train_test_split(
        rows, test_size=recipe.test_fraction, stratify=y, random_state=recipe.seed
    )
    # Independent streams for the noise, the hidden labels and the clean model's folds.
    noise_seed, hide_seed, model_seed = (
        int(s) for s in np.random.SeedSequence(recipe.seed).generate_state(3)
    )
    truth = y[train]
    crowd = None
    try:
        if recipe.noise["model"] == "crowd":
            clean = functools.partial(_clean_proba, X[train], truth, model_seed)
            crowd = draw_crowd(recipe.noise, truth, int(y.max()) + 1, noise_seed, clean)
            # ties drawn with the recipe's seed, as refine.run(votes=...) draws them with its own
            noisy = majority_vote(crowd[0], int(y.max()) + 1, recipe.seed)
        else:
            noisy = _apply_noise(recipe.noise, X[train], truth, noise_seed, model_seed)
    except ValueError as exc:
        raise InputError(f"recipe {recipe.name!r}: cannot apply its noise: {exc}") from None
    hidden = hide_labels(len(train), recipe.unlabelled, hide_seed)

    features = _feature_fields(X.shape[1], names, text=X.dtype == object)
    train_table = pa.Table.from_arrays(
        [
            *_feature_arrays(X[train], names),
            pa.array(noisy, type=pa.int64(), mask=hidden),
            pa.array(truth, type=pa.int64()),
            pa.array(~hidden & (noisy != truth)),
        ],
        schema=pa.schema([*features, *LABEL_FIELDS]),
    )
    if crowd is not None:
        train_table = with_crowd(train_table, *crowd)
    test_table = pa.Table.from_arrays(
        [*_feature_arrays(X[test], names), pa.array(y[test], type=pa.int64())],
        schema=pa.schema([*features, LABEL_FIELDS[0]]),
    )
    return BuiltDataset(recipe=recipe, train=train_table, test=test_table)


def write_dataset(built: BuiltDataset, out: str | Path) -> tuple[Path, Path]:
    """Write the train table to ``out`` and the test table to ``<stem>.test.parquet`` beside it.

    Each file is written to a temporary file in the same directory and renamed into place, so a
    reader never sees half a file. Both carry the recipe as JSON under the Parquet key-value
    metadata key ``refine.recipe``.

    Returns
    -------
    (train_path, test_path) : tuple of Path
    """
    out = Path(out)
    test_out = out.with_name(f"{out.stem}.test.parquet")
    recipe = json.dumps(built.recipe.to_dict()).encode()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(
            f"cannot create the directory {str(out.parent)!r}: {exc.strerror}"
        ) from None
    for table, path in ((built.train, out), (built.test, test_out)):
        metadata = {**(table.schema.metadata or {}), METADATA_KEY: recipe}
        _write_atomic(table.replace_schema_metadata(metadata), path)
    return out, test_out


def _recipe_dir(directory: Path | None) -> Path:
    if directory is not None:
        return Path(directory)
    # Read the variable at call time too, so a test or a shell can point at another folder.
    return Path(os.environ.get("REFINE_DATASETS") or RECIPE_DIR)


def _read_recipe(path: Path) -> Recipe:
    try:
        data = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise InputError(f"cannot read the recipe {str(path)!r}: {exc}") from None
    recipe = Recipe.from_dict(data, origin=repr(str(path)))
    if recipe.name != path.stem:
        raise InputError(
            f"recipe {str(path)!r} is named {recipe.name!r}; a recipe's name must match its "
            f"file name, so rename one of them to {path.stem!r}"
        )
    return recipe


def _apply_noise(
    noise: dict[str, Any], X: np.ndarray, truth: np.ndarray, seed: int, model_seed: int
) -> np.ndarray:
    """Noisy labels ``(N,)`` for the train rows ``X`` ``(N, D)`` with true labels ``truth``."""
    model = noise["model"]
    n_classes = int(truth.max()) + 1
    if model == "none":
        return truth.copy()
    if model == "symmetric":
        return flip_symmetric(truth, noise["rate"], n_classes, seed)
    if model == "pair":
        return flip_pair(truth, noise["rate"], n_classes, seed, noise.get("mapping"))
    if model == "one_direction":
        return flip_one_direction(truth, noise["source"], noise["target"], noise["rate"], seed)
    proba = _clean_proba(X, truth, model_seed)
    return flip_instance_dependent(truth, proba, noise["rate"], seed)


def _clean_proba(X: np.ndarray, truth: np.ndarray, seed: int) -> np.ndarray:
    """Out-of-fold probabilities ``(N, K)`` of a standardised LogisticRegression on clean labels.

    Pixels are fitted in float64: in float32 the solver's result, and so the noise drawn from
    it, depended on the BLAS thread count. The float32 tabular recipes did not, and stay in
    float32, as casting them would redraw their noise (reports/code-notes.md).
    """
    folds = StratifiedKFold(n_splits=CLEAN_MODEL_FOLDS, shuffle=True, random_state=seed)
    if X.dtype == object and isinstance(X[0, 0], bytes):  # an image column: its pixels
        X = png_pixels(X[:, 0]).astype(np.float64)
        model = logistic_regression()
    elif X.dtype == object:  # a text column
        from refine.bench.baselines import text_logistic_regression

        model, X = text_logistic_regression(), X[:, 0]
    else:
        model = logistic_regression()
    return cross_val_predict(model, X, truth, cv=folds, method="predict_proba")


def _feature_fields(dim: int, names: list[str] | None, text: bool = False) -> list[pa.Field]:
    if names == [IMAGE_COLUMN]:
        return [pa.field(IMAGE_COLUMN, pa.binary())]
    if text:
        assert names is not None, "a text source names its column"
        return [pa.field(name, pa.string()) for name in names]
    if names is None:
        return [pa.field(EMBEDDING_COLUMN, pa.list_(pa.float32(), dim))]
    return [pa.field(name, pa.float32()) for name in names]


def _feature_arrays(X: np.ndarray, names: list[str] | None) -> list[pa.Array]:
    if X.dtype == object:
        kind = pa.binary() if names == [IMAGE_COLUMN] else pa.string()
        return [pa.array(X[:, i].tolist(), kind) for i in range(X.shape[1])]
    if names is None:
        values = pa.array(np.ascontiguousarray(X).reshape(-1))
        return [pa.FixedSizeListArray.from_arrays(values, X.shape[1])]
    return [pa.array(X[:, i]) for i in range(X.shape[1])]


def _write_atomic(table: pa.Table, path: Path) -> None:
    """Write ``table`` to a temporary sibling of ``path``, then rename it to ``path``."""
    try:
        handle, tmp = tempfile.mkstemp(prefix=f".{path.name}.tmp-", dir=path.parent)
        os.close(handle)
        os.chmod(tmp, 0o666 & ~umask())  # mkstemp makes it 0600, unreadable to colleagues
    except OSError as exc:
        raise OutputError(f"cannot write in {str(path.parent)!r}: {exc.strerror}") from None
    try:
        pq.write_table(table, tmp, compression="zstd")
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _repo_root() -> Path:
    return _recipe_dir(None).resolve().parent


def _build_from_files(recipe: Recipe) -> BuiltDataset:
    """A ``files`` recipe: its labels are already noisy; the truth column says which."""
    source = recipe.source
    missing = recipe.missing_files()
    if missing:
        raise InputError(
            f"recipe {recipe.name!r} reads {missing[0]!r} (relative to {str(_repo_root())!r}), "
            "which is not on this machine"
        )
    train = pq.read_table(_repo_root() / source["train"])
    test = pq.read_table(_repo_root() / source["test"])
    for table, path, needed in (
        (train, source["train"], (source["text"], "label", source["truth"])),
        (test, source["test"], (source["text"], "label")),
    ):
        absent = [c for c in needed if c not in table.column_names]
        if absent:
            raise InputError(f"recipe {recipe.name!r}: {path!r} has no column {absent[0]!r}")
    noisy = train.column("label").cast(pa.int64())
    truth = train.column(source["truth"]).cast(pa.int64())
    text = train.column(source["text"]).cast(pa.string())
    train_table = pa.table(
        [text, noisy, truth, pc_not_equal(noisy, truth)],
        schema=pa.schema([pa.field(TEXT_COLUMN, pa.string()), *LABEL_FIELDS]),
    )
    test_table = pa.table(
        [test.column(source["text"]).cast(pa.string()), test.column("label").cast(pa.int64())],
        schema=pa.schema([pa.field(TEXT_COLUMN, pa.string()), LABEL_FIELDS[0]]),
    )
    return BuiltDataset(recipe=recipe, train=train_table, test=test_table)


def pc_not_equal(a: pa.ChunkedArray, b: pa.ChunkedArray) -> pa.ChunkedArray:
    import pyarrow.compute as pc

    return pc.fill_null(pc.not_equal(a, b), False)
