"""Recipes load, list and build into tables whose noise, split and metadata are known exactly."""

from __future__ import annotations

import dataclasses
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from sklearn.model_selection import cross_val_score
from sklearn.neighbors import KNeighborsClassifier

from refine.bench.crowds import crowd_truth
from refine.bench.noise import (
    crowd_annotators,
    crowd_votes,
    crowd_workloads,
    item_hardness,
    votes_long,
)
from refine.bench.recipes import (
    METADATA_KEY,
    RECIPE_DIR,
    BuiltDataset,
    Recipe,
    build_dataset,
    list_recipes,
    load_recipe,
    write_dataset,
)
from refine.bench.sources import gaussian_embeddings, load_source
from refine.errors import InputError

ROOT = Path(__file__).resolve().parent.parent
RECIPE_FILES = sorted((ROOT / "datasets").glob("*.json"))
QUICK = ["breast_cancer-instance20", "digits-sym20", "iris-onedir", "wine-pair30"]
LABEL_COLUMNS = ["label", "label_true", "is_noisy"]


@pytest.fixture(scope="module")
def quick() -> dict[str, BuiltDataset]:
    return {recipe.name: build_dataset(recipe) for recipe in list_recipes("quick")}


def test_recipe_dir_is_the_repositorys_datasets_folder():
    assert RECIPE_DIR == ROOT / "datasets"
    assert not list(RECIPE_DIR.glob("*.py")), "datasets/ holds data, not code"


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.stem)
def test_every_recipe_loads_and_has_a_data_card_entry(path):
    recipe = load_recipe(path.stem)
    assert recipe.name == path.stem
    # every recipe that needs no outside files is in the full suite, but the image recipes
    # (their own suite: a CNN in every fold costs minutes per recipe)
    assert "full" in recipe.suites or recipe.source["kind"] in ("files", "png_images")
    assert f"`{recipe.name}`" in (ROOT / "datasets" / "README.md").read_text()


def test_recipes_list_sorted_by_name_and_by_suite():
    assert [r.name for r in list_recipes()] == [p.stem for p in RECIPE_FILES]
    assert len(RECIPE_FILES) == 24
    assert [r.name for r in list_recipes("quick")] == QUICK
    assert len(list_recipes("full")) == 19
    assert [r.name for r in list_recipes("text")] == [
        "text-sym20",
        "wrench-semeval",
        "wrench-sms",
        "wrench-youtube",
    ]
    assert [r.name for r in list_recipes("image")] == ["digits_png-instance30", "digits_png-sym20"]
    with pytest.raises(
        InputError,
        match="no recipe belongs to suite 'nightly'; the suites are full, image, quick, text",
    ):
        list_recipes("nightly")


def test_an_unknown_recipe_names_the_available_ones():
    with pytest.raises(InputError, match="unknown recipe 'digits-sym99'") as error:
        load_recipe("digits-sym99")
    assert all(name in str(error.value) for name in [p.stem for p in RECIPE_FILES])


def test_the_environment_variable_points_at_another_folder(tmp_path, monkeypatch):
    recipe = load_recipe("iris-onedir").to_dict()
    (tmp_path / "mine.json").write_text(json.dumps({**recipe, "name": "mine"}))
    monkeypatch.setenv("REFINE_DATASETS", str(tmp_path))
    assert [r.name for r in list_recipes()] == ["mine"]
    with pytest.raises(InputError, match="available recipes are: mine$"):
        load_recipe("digits-sym20")


@pytest.mark.parametrize(
    "change, message",
    [
        ({"nosie": {}}, "unknown key 'nosie'"),
        ({"name": "other"}, "is named 'other'; a recipe's name must match its file name"),
        ({"noise": {"model": "symmetric"}}, "noise model 'symmetric' needs the key 'rate'"),
        ({"noise": {"model": "gaussian", "rate": 0.1}}, "'model' is one of none, symmetric"),
        (
            {"noise": {"model": "symmetric", "rate": 1.5}},
            r"noise rate must be a number in \[0, 1\]",
        ),
        ({"noise": {"model": "pair", "rate": 0.1, "source": 1}}, "takes no key 'source'"),
        ({"source": {"kind": "sklearn", "name": "mnist"}}, "name in breast_cancer, digits"),
        ({"test_fraction": 1.0}, r"'test_fraction' must be a number in \(0, 1\)"),
        ({"seed": -1}, "'seed' must be a non-negative integer"),
        ({"noise": {"model": "crowd", "votes": [3, 5]}}, "'crowd' needs the key 'annotators'"),
        (
            {"noise": {"model": "crowd", "annotators": 4, "votes": [3, 5]}},
            r"crowd 'votes' must be \[low, high\] votes per item within 1..4",
        ),
        (
            {"noise": {"model": "crowd", "annotators": 4, "votes": [1, 2], "accuracy": [0.9]}},
            r"crowd 'accuracy' must be \[low, high\] within \[0, 1\]",
        ),
    ],
)
def test_a_broken_recipe_is_refused_with_its_path(tmp_path, change, message):
    recipe = {**load_recipe("iris-onedir").to_dict(), "name": "broken", **change}
    (tmp_path / "broken.json").write_text(json.dumps(recipe))
    with pytest.raises(InputError, match=message) as error:
        load_recipe("broken", directory=tmp_path)
    assert "broken.json" in str(error.value)


def test_noise_that_does_not_fit_the_source_fails_at_build():
    recipe = dataclasses.replace(
        load_recipe("wine-pair30"), noise={"model": "pair", "rate": 0.3, "mapping": [1, 0]}
    )
    with pytest.raises(InputError, match="recipe 'wine-pair30': cannot apply its noise: mapping"):
        build_dataset(recipe)


def test_the_quick_suite_stays_small(quick):
    assert sum(b.train.num_rows + b.test.num_rows for b in quick.values()) < 6000


@pytest.mark.parametrize("name", QUICK)
def test_a_built_recipe_has_its_columns_and_types(quick, name):
    built = quick[name]
    train, test = built.train, built.test
    features = train.column_names[: -len(LABEL_COLUMNS)]
    assert train.column_names[-len(LABEL_COLUMNS) :] == LABEL_COLUMNS
    assert test.column_names == [*features, "label"]
    assert all(train.schema.field(f).type == pa.float32() for f in features)
    assert train.schema.field("label").type == pa.int64()
    assert train.schema.field("label_true").type == pa.int64()
    assert train.schema.field("is_noisy").type == pa.bool_()
    assert test.schema.field("label").type == pa.int64()
    assert train.num_rows + test.num_rows == len(load_source(built.recipe.source)[1])
    assert test.num_rows == int(
        np.ceil(built.recipe.test_fraction * (train.num_rows + test.num_rows))
    )


def test_sklearn_feature_names_are_kept_only_when_they_are_identifiers(quick):
    assert quick["digits-sym20"].train.column_names[:2] == ["pixel_0_0", "pixel_0_1"]
    assert quick["iris-onedir"].train.column_names[:4] == ["f0", "f1", "f2", "f3"]


@pytest.mark.parametrize("name", QUICK)
def test_the_noise_share_is_the_recipes_rate_exactly(quick, name):
    built = quick[name]
    label = built.train.column("label").to_numpy()
    truth = built.train.column("label_true").to_numpy()
    is_noisy = built.train.column("is_noisy").to_numpy()
    np.testing.assert_array_equal(is_noisy, label != truth)
    noise = built.recipe.noise
    eligible = (truth == noise["source"]).sum() if "source" in noise else len(truth)
    assert is_noisy.sum() == round(noise["rate"] * eligible)


def test_each_noise_model_flips_where_it_should(quick):
    wine = quick["wine-pair30"].train
    truth, label = wine["label_true"].to_numpy(), wine["label"].to_numpy()
    noisy = truth != label
    np.testing.assert_array_equal(label[noisy], (truth[noisy] + 1) % 3)
    iris = quick["iris-onedir"].train
    truth, label = iris["label_true"].to_numpy(), iris["label"].to_numpy()
    noisy = truth != label
    assert (truth[noisy] == 1).all() and (label[noisy] == 2).all()


@pytest.mark.parametrize("name", QUICK)
def test_the_test_split_holds_the_true_labels(quick, name):
    built = quick[name]
    X, y, _ = load_source(built.recipe.source)
    truth_of = {}
    for row, label in zip(X, y, strict=True):
        truth_of.setdefault(row.tobytes(), set()).add(int(label))

    def features(table: pa.Table) -> np.ndarray:
        columns = table.column_names[: X.shape[1]]
        return np.column_stack([table.column(c).to_numpy() for c in columns])

    test = built.test
    for row, label in zip(features(test), test["label"].to_numpy(), strict=True):
        assert label in truth_of[row.tobytes()]
    for row, label in zip(features(built.train), built.train["label_true"].to_numpy(), strict=True):
        assert label in truth_of[row.tobytes()]
    # Stratified: each class's share of the test split is its share of the source, within a row.
    expected = np.bincount(y) * test.num_rows / len(y)
    assert np.abs(np.bincount(test["label"].to_numpy()) - expected).max() <= 1


def test_the_unlabelled_share_is_exact_and_keeps_the_truth():
    built = build_dataset("digits-unlabelled50")
    train = built.train
    hidden = train.column("label").is_null().to_numpy(zero_copy_only=False)
    assert hidden.sum() == round(0.5 * train.num_rows)
    assert train.column("label_true").null_count == 0
    assert not train.column("is_noisy").to_numpy()[hidden].any()
    label = train.column("label").to_numpy(zero_copy_only=False)
    truth = train.column("label_true").to_numpy()
    np.testing.assert_array_equal(
        train["is_noisy"].to_numpy()[~hidden], label[~hidden] != truth[~hidden]
    )
    assert 0.15 < train["is_noisy"].to_numpy()[~hidden].mean() < 0.25


def test_the_same_seed_gives_identical_tables_and_another_seed_other_noise(quick):
    first = quick["digits-sym20"]
    again = build_dataset("digits-sym20")
    assert first.train.equals(again.train) and first.test.equals(again.test)
    other = build_dataset("digits-sym20", seed=1)
    assert other.recipe.seed == 1 and first.recipe.seed == 0
    assert not other.train.equals(first.train) and not other.test.equals(first.test)
    assert other.train["is_noisy"].to_numpy().sum() == first.train["is_noisy"].to_numpy().sum()


def test_instance_noise_is_reproducible(quick):
    again = build_dataset("breast_cancer-instance20")
    assert quick["breast_cancer-instance20"].train.equals(again.train)


def test_write_dataset_writes_both_splits_atomically_with_the_recipe(quick, tmp_path):
    built = quick["iris-onedir"]
    train_path, test_path = write_dataset(built, tmp_path / "out" / "iris.parquet")
    assert train_path == tmp_path / "out" / "iris.parquet"
    assert test_path == tmp_path / "out" / "iris.test.parquet"
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "iris.parquet",
        "iris.test.parquet",
    ]
    for path, table in ((train_path, built.train), (test_path, built.test)):
        written = pq.read_table(path)
        assert written.equals(table)
        assert json.loads(written.schema.metadata[METADATA_KEY]) == built.recipe.to_dict()
    # Writing again replaces the files and still leaves no temporary file behind.
    write_dataset(built, train_path)
    assert len(list((tmp_path / "out").iterdir())) == 2


def test_written_datasets_honour_the_umask(quick, tmp_path):
    """mkstemp makes its file 0600; the dataset is for colleagues as much as any file."""
    previous = os.umask(0o022)
    try:
        train_path, test_path = write_dataset(quick["iris-onedir"], tmp_path / "iris.parquet")
    finally:
        os.umask(previous)
    assert [stat.S_IMODE(p.stat().st_mode) for p in (train_path, test_path)] == [0o644, 0o644]


def test_the_embeddings_generator_is_balanced_and_reproducible():
    X, y = gaussian_embeddings(rows=400, dim=8, classes=5, random_state=1)
    assert X.shape == (400, 8) and X.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y), [80] * 5)
    np.testing.assert_array_equal(
        X, gaussian_embeddings(rows=400, dim=8, classes=5, random_state=1)[0]
    )
    assert not np.array_equal(X, gaussian_embeddings(rows=400, dim=8, classes=5, random_state=2)[0])
    # Clusters overlap a little at the default separation, and not at all when far apart.
    knn = KNeighborsClassifier(n_neighbors=5)
    X, y = gaussian_embeddings(rows=600, dim=32, classes=5)
    assert 0.8 < cross_val_score(knn, X, y, cv=3).mean() < 0.99
    X, y = gaussian_embeddings(rows=600, dim=32, classes=5, separation=3.0)
    assert cross_val_score(knn, X, y, cv=3).mean() > 0.99
    with pytest.raises(ValueError, match="rows >= classes >= 2"):
        gaussian_embeddings(rows=400, dim=8, classes=1)


def test_an_embeddings_recipe_builds_one_fixed_size_list_column():
    recipe = dataclasses.replace(
        load_recipe("embeddings-sym20"),
        source={"kind": "gaussian_embeddings", "params": {"rows": 300, "dim": 8, "classes": 5}},
    )
    built = build_dataset(recipe)
    assert built.train.column_names == ["embedding", *LABEL_COLUMNS]
    assert built.test.column_names == ["embedding", "label"]
    assert built.train.schema.field("embedding").type == pa.list_(pa.float32(), 8)
    assert built.train["is_noisy"].to_numpy().sum() == round(0.2 * built.train.num_rows)


def test_a_recipe_round_trips_through_its_dict():
    recipe = load_recipe("digits-pair30")
    assert Recipe.from_dict(recipe.to_dict()) == recipe


def test_image_instance_noise_does_not_depend_on_the_thread_count():
    # The clean model's probabilities decide which rows flip; in float32 they moved with the
    # BLAS thread count and redrew a fifth of digits_png's noisy labels on another machine.
    script = (
        "import hashlib; from refine.bench.recipes import build_dataset; "
        "t = build_dataset('digits_png-instance30').train; "
        "print(hashlib.sha256(t['label'].to_numpy().tobytes()).hexdigest())"
    )
    digests = set()
    for threads in ("1", "2"):
        env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
        done = subprocess.run(
            [sys.executable, "-c", script], env=env, capture_output=True, text=True, check=True
        )
        digests.add(done.stdout.strip())
    assert len(digests) == 1


def test_crowd_votes_follow_each_annotators_confusion_matrix():
    confusion = crowd_annotators(4, 6, seed=1, accuracy=(0.3, 0.9), one_direction=0.5)
    assert confusion.shape == (6, 4, 4)
    np.testing.assert_allclose(confusion.sum(2), 1.0)
    accuracy = confusion[:, 0, 0]
    assert ((accuracy >= 0.3) & (accuracy <= 0.9)).all()
    assert all(np.allclose(np.diagonal(c), c[0, 0]) for c in confusion)
    # the first round(0.5 * 6) annotators send each class's errors to one class only
    assert ((confusion[:3] > 0).sum(2) == 2).all() and ((confusion[3:] > 0).sum(2) > 2).any()
    labels = np.arange(40_000) % 4
    votes = crowd_votes(labels, confusion, (2, 4), seed=2)
    assert votes.shape == (40_000, 6) and votes.dtype == np.int64
    cast = (votes >= 0).sum(1)
    assert cast.min() == 2 and cast.max() == 4
    for a in range(6):
        seen = votes[:, a] >= 0
        assert abs((votes[seen, a] == labels[seen]).mean() - accuracy[a]) < 0.015
        for k in range(4):
            on_k = seen & (labels == k)
            share = np.bincount(votes[on_k, a], minlength=4) / on_k.sum()
            assert np.abs(share - confusion[a, k]).max() < 0.03


def test_crowds_are_reproducible_by_seed_and_come_as_a_long_table():
    confusion = crowd_annotators(3, 5, seed=0)
    labels = np.arange(300) % 3
    np.testing.assert_array_equal(crowd_annotators(3, 5, seed=0), confusion)
    assert not np.array_equal(crowd_annotators(3, 5, seed=1), confusion)
    votes = crowd_votes(labels, confusion, (1, 3), seed=4)
    np.testing.assert_array_equal(crowd_votes(labels, confusion, (1, 3), seed=4), votes)
    assert not np.array_equal(crowd_votes(labels, confusion, (1, 3), seed=5), votes)
    rows, annotators, cast = votes_long(np.array([[-1, 2, 0], [1, -1, -1]]))
    assert rows.tolist() == [0, 0, 1] and annotators.tolist() == [1, 2, 0]
    assert cast.tolist() == [2, 0, 1]
    with pytest.raises(ValueError, match=r"votes per item must be a range within 1..5"):
        crowd_votes(labels, confusion, (2, 6), seed=0)


def test_item_difficulty_raises_errors_on_hard_items_towards_confusable_classes():
    labels = np.arange(20_000) % 4
    # Half the items are hard (a clean model gives the true class 0.1) and confused with the
    # next class; the other half easy (0.9).
    proba = np.full((20_000, 4), 0.0)
    hard = np.arange(20_000) < 10_000
    proba[np.arange(20_000), labels] = np.where(hard, 0.1, 0.9)
    proba[np.arange(20_000), (labels + 1) % 4] += 1.0 - proba[np.arange(20_000), labels]
    hardness, confusable = item_hardness(proba, labels)
    np.testing.assert_allclose(hardness, np.where(hard, 0.9, 0.1))
    np.testing.assert_allclose(confusable.sum(1), 1.0)
    assert (confusable[np.arange(20_000), labels] == 0).all()
    confusion = crowd_annotators(4, 6, seed=1, accuracy=(0.8, 0.95), spammers=1 / 6)
    assert np.allclose(confusion[5], 0.25)  # the spammer votes at random
    kwargs = dict(hardness=hardness, confusable=confusable)
    plain = crowd_votes(labels, confusion, (3, 3), seed=2, **kwargs)
    hardened = crowd_votes(labels, confusion, (3, 3), seed=2, difficulty=0.8, **kwargs)
    np.testing.assert_array_equal(
        crowd_votes(labels, confusion, (3, 3), seed=2, difficulty=0.8, **kwargs), hardened
    )
    assert not np.array_equal(
        crowd_votes(labels, confusion, (3, 3), seed=3, difficulty=0.8, **kwargs), hardened
    )

    def error(votes, rows, annotators=slice(0, 5)):
        v = votes[rows][:, annotators]
        seen = v >= 0
        return (v != labels[rows][:, None])[seen].mean()

    # Without difficulty, hard and easy items alike; with it, the hard ones are much worse.
    assert abs(error(plain, hard) - error(plain, ~hard)) < 0.02
    assert error(hardened, hard) > error(hardened, ~hard) + 0.5
    # The extra errors go to the confusable class; the spammer is not fooled.
    wrong = (hardened[hard, :5] >= 0) & (hardened[hard, :5] != labels[hard, None])
    towards = hardened[hard, :5] == ((labels[hard] + 1) % 4)[:, None]
    assert (towards & wrong).sum() / wrong.sum() > 0.8
    assert abs(error(hardened, hard, [5]) - 0.75) < 0.03


def test_crowds_with_spammers_one_class_annotators_and_skewed_workloads():
    confusion = crowd_annotators(5, 20, seed=0, spammers=0.1, one_class=0.1)
    np.testing.assert_allclose(confusion.sum(2), 1.0)
    assert np.allclose(confusion[18:], 0.2)
    for a in (16, 17):  # one class whatever the truth
        assert (confusion[a] == confusion[a, 0]).all() and confusion[a, 0].max() == 1.0
    # Without the new kinds, the same annotators as before.
    np.testing.assert_array_equal(crowd_annotators(5, 20, seed=0)[:16], confusion[:16])
    shares = crowd_workloads(20, 1.5, seed=3)
    assert shares.sum() == pytest.approx(1.0) and (np.diff(shares) <= 0).all()
    np.testing.assert_array_equal(crowd_workloads(20, 1.5, seed=3), shares)
    np.testing.assert_allclose(crowd_workloads(20, 0.0, seed=3), 1 / 20)
    labels = np.arange(20_000) % 5
    votes = crowd_votes(labels, confusion, (2, 2), seed=1, workload=shares)
    given = (votes >= 0).sum(0)
    assert (given.argsort()[::-1][:3] == [0, 1, 2]).all() or given[0] == given.max()
    assert given[0] > 5 * given[-1]
    with pytest.raises(ValueError, match="spammers and one_class must be shares"):
        crowd_annotators(5, 20, seed=0, spammers=0.6, one_class=0.6)


def test_the_music_like_crowd_stands_in_for_a_weak_featured_crowd_with_hard_items():
    from refine.judge.annotators import majority_vote

    built = build_dataset("music-like-crowd", seed=10)
    train = built.train
    votes = np.array(train.column("votes").to_pylist())
    truth = train.column("label_true").to_numpy()
    assert votes.shape == (705, 44)
    assert 3.8 < (votes >= 0).sum(1).mean() < 4.2
    given = (votes >= 0).sum(0)
    assert given.max() > 10 * np.median(given)  # a few annotators give most votes
    accuracy = np.array(crowd_truth(train)["accuracy"], dtype=float)
    assert np.nanmin(accuracy) < 0.15 and np.nanmax(accuracy) > 0.85
    assert 0.6 < (majority_vote(votes, 10, 10) == truth).mean() < 0.8
    again = build_dataset("music-like-crowd", seed=10)
    assert again.train.equals(train)


def test_a_crowd_recipe_has_votes_its_majority_and_the_crowds_truth():
    from refine.judge.annotators import majority_vote

    built = build_dataset("wine-crowd")
    train = built.train
    assert train.column_names[-4:] == [*LABEL_COLUMNS, "votes"]
    assert train.schema.field("votes").type == pa.list_(pa.int64())
    assert built.test.column_names == [*train.column_names[:-4], "label"]
    votes = np.array(train.column("votes").to_pylist())
    assert votes.shape == (133, 10)
    cast = (votes >= 0).sum(1)
    assert cast.min() >= 3 and cast.max() <= 5
    label, truth = train.column("label").to_numpy(), train.column("label_true").to_numpy()
    np.testing.assert_array_equal(label, majority_vote(votes, 3, built.recipe.seed))
    np.testing.assert_array_equal(train.column("is_noisy").to_numpy(), label != truth)
    assert 0.05 < (label != truth).mean() < 0.5
    crowd = crowd_truth(train)
    assert len(crowd["accuracy"]) == 10 and np.shape(crowd["confusion"]) == (10, 3, 3)
    assert all(0.45 <= a <= 0.9 for a in crowd["accuracy"])
    assert crowd_truth(build_dataset("wine-pair30").train) is None
    again = build_dataset("wine-crowd")
    assert again.train.equals(train) and again.train.schema.metadata == train.schema.metadata


def test_building_a_crowd_recipe_suggests_running_on_its_votes(tmp_path):
    from click.testing import CliRunner

    from refine.cli import cli

    out = tmp_path / "wc.parquet"
    result = CliRunner().invoke(cli, ["datasets", "build", "wine-crowd", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines()[-1] == (
        f"next: refine run {out} --votes votes --ignore label_true,is_noisy --out runs/wine-crowd"
    )
    written = pq.read_table(out)
    assert crowd_truth(written) == crowd_truth(build_dataset("wine-crowd").train)
