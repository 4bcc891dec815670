"""benchmarks/*.py: every script imports without doing any work, answers ``--help``, and runs end
to end on tiny inputs (or, where it cannot, has its helpers checked on tiny arrays).

The import and ``--help`` checks are parametrized over the folder, so a new script is covered
by them at once; ``test_every_script_has_a_smoke_test`` asks for its tiny run.

compare.py, gap.py, glc.py and real.py have their own files (``TESTED_ELSEWHERE``). The tiny runs
here use one small recipe or generated table, one seed, and refine's smallest settings
(``FAST``, patched into ``refine.run`` and ``refine.update`` where a script does not take model
options): they check that each script still fits the package and writes what it says, not the
figures of its report.
"""

from __future__ import annotations

import ast
import functools
import importlib.util
import json
import math
import os
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import refine
from refine.cli import cli
from tests.conftest import blobs

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted(BENCHMARKS.glob("*.py"))
TESTED_ELSEWHERE = {
    "compare": "test_compare_script.py",
    "gap": "test_gap_script.py",
    "glc": "test_glc_script.py",
    "real": "test_real_script.py",
}
# refine's smallest useful settings: a tiny run takes a fraction of a second.
FAST = dict(folds=3, rounds=1, max_epochs=10, hidden=(16,), report=False)
# What a script may call at its top level, in a constant: ``Path(__file__).resolve()`` is fine,
# ``load_digits()`` is work.
CONSTANT_CALLS = {"dict", "tuple", "list", "set", "frozenset", "Path", "str", "int", "float"}


def _load(path: Path, name: str) -> ModuleType:
    """Execute the script at ``path`` as module ``name``. benchmarks/ is a folder of scripts,
    not a package: gap.py and glc.py import a neighbour by name, so the folder joins the
    import path for as long as the import takes."""
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # a dataclass looks its module up by name
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise
    finally:
        sys.path.remove(str(BENCHMARKS))
    return module


@functools.cache
def script(stem: str) -> ModuleType:
    return _load(BENCHMARKS / f"{stem}.py", f"_benchmark_{stem}")


def _root_name(node: ast.AST) -> str | None:
    """The name a call chain starts from: ``Path`` for ``Path(__file__).resolve().parents``."""
    while True:
        if isinstance(node, ast.Call):
            node = node.func
        elif isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
        elif isinstance(node, ast.BinOp):
            node = node.left
        else:
            return node.id if isinstance(node, ast.Name) else None


def _is_main_guard(node: ast.stmt) -> bool:
    test = getattr(node, "test", None)
    return (
        isinstance(node, ast.If)
        and isinstance(test, ast.Compare)
        and isinstance(test.left, ast.Name)
        and test.left.id == "__name__"
        and isinstance(test.ops[0], ast.Eq)
        and isinstance(test.comparators[0], ast.Constant)
        and test.comparators[0].value == "__main__"
    )


def top_level_work(source: str) -> list[str]:
    """Each top-level statement of ``source`` that does something at import: anything but the
    docstring, imports, definitions, constants bound to plain names and the ``__main__``
    guard."""
    found = []
    for i, node in enumerate(ast.parse(source).body):
        line = f"line {node.lineno}: {ast.unparse(node).splitlines()[0]}"
        if i == 0 and isinstance(node, ast.Expr) and isinstance(node.value, ast.Constant):
            continue  # the docstring
        if isinstance(
            node,
            (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef),
        ) or _is_main_guard(node):
            continue
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            calls = (
                [c for c in ast.walk(node.value) if isinstance(c, ast.Call)] if node.value else []
            )
            if all(isinstance(t, ast.Name) for t in targets) and all(
                _root_name(c) in CONSTANT_CALLS for c in calls
            ):
                continue
        found.append(line)
    return found


def test_the_top_level_check_catches_work():
    source = '"""Doc."""\nimport os\nX = Path(__file__).resolve().parents[1] / "a"\n'
    assert top_level_work(source) == []
    assert top_level_work("from x import load\nDATA = load()\n") == ["line 2: DATA = load()"]
    assert top_level_work("import os\nos.environ['A'] = '1'\n") == ["line 2: os.environ['A'] = '1'"]
    assert top_level_work("main()\n") == ["line 1: main()"]
    assert top_level_work("if __name__ == '__main__':\n    main()\n") == []
    assert top_level_work("if True:\n    main()\n") == ["line 1: if True:"]


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_every_script_imports_without_doing_work(path, tmp_path, monkeypatch, capfd):
    source = path.read_text()
    assert top_level_work(source) == []
    tree = ast.parse(source)
    guards = [node for node in tree.body if _is_main_guard(node)]
    assert len(guards) == 1 and guards[0] is tree.body[-1], "the last statement runs main()"
    assert ast.unparse(guards[0].body[0]) == "main()"

    monkeypatch.chdir(tmp_path)
    environment = dict(os.environ)
    # A fresh module each time, so the script's top level runs again here.
    name = f"_benchmark_import_{path.stem}"
    module = _load(path, name)
    monkeypatch.delitem(sys.modules, name)
    assert dict(os.environ) == environment
    assert list(tmp_path.iterdir()) == []
    assert capfd.readouterr() == ("", "")
    assert callable(module.main)


def _flags(source: str) -> list[str]:
    """The options a script's parser declares by name, leaving out the hidden ones."""
    flags = []
    for node in ast.walk(ast.parse(source)):
        if (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "add_argument"
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and str(node.args[0].value).startswith("--")
            and not any("SUPPRESS" in ast.unparse(k.value) for k in node.keywords)
        ):
            flags.append(node.args[0].value)
    return flags


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_every_script_answers_help(path, monkeypatch, capsys):
    module = script(path.stem)
    monkeypatch.setattr(sys, "argv", [str(path), "--help"])
    with pytest.raises(SystemExit) as exit:
        module.main()
    assert exit.value.code == 0
    text = capsys.readouterr().out
    assert text.startswith(f"usage: {path.name} ")
    # The description is the docstring's first paragraph, rewrapped.
    words = " ".join(text.split())
    assert " ".join(module.__doc__.split("\n\n")[0].split()) in words
    flags = _flags(path.read_text())
    assert flags and all(flag in text for flag in flags)


def test_every_script_has_a_smoke_test():
    here = {name for name in globals() if name.startswith("test_")}
    for path in SCRIPTS:
        if path.stem in TESTED_ELSEWHERE:
            assert (Path(__file__).parent / TESTED_ELSEWHERE[path.stem]).is_file()
        else:
            assert any(name.startswith(f"test_{path.stem}_") for name in here), path.name


@pytest.fixture
def fast_refine(monkeypatch):
    """``refine.run`` and ``refine.update`` at ``FAST`` settings, for scripts that call them at
    refine's defaults (options a script passes still win)."""
    monkeypatch.setattr(refine, "run", functools.partial(refine.run, **FAST))
    monkeypatch.setattr(refine, "update", functools.partial(refine.update, **FAST))


def _table_rows(text: str, first: str) -> list[list[str]]:
    """The cells of each Markdown table row of ``text`` that starts with ``| first |``."""
    return [
        [cell.strip() for cell in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith(f"| {first} |")
    ]


def _share(cell: str) -> float:
    value = float(cell)
    assert 0 <= value <= 1, cell
    return value


# augment.py ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_augment_main_writes_a_row_per_method_with_its_differences(
    tmp_path, monkeypatch, fast_refine
):
    augment = script("augment")
    # The script runs four fixed recipes (digits at 400 rows) at refine's defaults: iris alone,
    # with small models, keeps every method's path but takes seconds.
    monkeypatch.setattr(augment, "RECIPES", ("iris-onedir",))
    runs, fast = [], refine.run

    def recorded(*args, **kwargs):
        result = fast(*args, **kwargs)
        runs.append((kwargs["augment"], result.synthetic))
        return result

    monkeypatch.setattr(refine, "run", recorded)
    out = tmp_path / "augment.md"
    monkeypatch.setattr(sys, "argv", ["augment.py", "--seeds", "1", "--out", str(out)])
    augment.main()
    # The augmented runs' synthetic rows joined the LogisticRegression's training rows.
    assert [method for method, _ in runs] == [None, "interpolate", "mixup", "noise"]
    assert runs[0][1] is None and all(s.num_rows > 0 for _, s in runs[1:])
    text = out.read_text()
    assert "Generated by `python benchmarks/augment.py --seeds 1`. Means over 1 seeds" in text
    rows = _table_rows(text, "iris-onedir")
    assert [r[1] for r in rows] == ["none", "interpolate", "mixup", "noise"]
    none = rows[0]
    assert none[-1] == ""
    for row in rows:
        f1, label, model, lr = (_share(c) for c in row[2:6])
        assert float(row[6]) >= 0  # seconds
        # Iris's test split is 38 rows: an accuracy is a whole number of them.
        assert abs(model * 38 - round(model * 38)) < 0.025
        assert abs(lr * 38 - round(lr * 38)) < 0.025
        if row is not none:
            d_model, d_lr = (float(d) for d in row[7].split(", "))
            assert d_model == pytest.approx(model - float(none[4]), abs=0.0011)
            assert d_lr == pytest.approx(lr - float(none[5]), abs=0.0011)
            # One recipe: the mean change over recipes is this row's.
            mean = re.search(rf"^- {row[1]}: ([-+]\d\.\d{{4}})$", text, re.M)
            assert float(mean.group(1)) == pytest.approx(d_model, abs=0.0006)


# decisions.py -------------------------------------------------------------------------------


def test_decisions_main_scores_each_variant_and_pools_the_gap(tmp_path, monkeypatch):
    decisions = script("decisions")
    small = {"folds": 3, "rounds": 1, "max_epochs": 10, "hidden": [16], "report": False}
    variants = {"small": small, "small relabel 0.3": {**small, "relabel_threshold": 0.3}}
    out = tmp_path / "decisions.md"
    argv = ["decisions.py", "--seeds", "0", "--recipes", "iris-onedir", "--out", str(out)]
    for name, options in variants.items():
        argv += ["--variant", f"{name}={json.dumps(options)}"]
    monkeypatch.setattr(sys, "argv", argv)
    decisions.main()
    text = out.read_text()
    assert text.startswith("# Decision settings, side by side")
    assert "`python benchmarks/decisions.py --seeds 0 --recipes iris-onedir` with variants" in text
    per_recipe = _table_rows(text, "iris-onedir")
    assert [r[1] for r in per_recipe] == list(variants)
    overall = {r[0]: r for name in variants for r in _table_rows(text, name)}
    assert list(overall) == list(variants)
    for row in per_recipe:
        label, f1, auprc = (_share(c) for c in row[2:5])
        gap = float(row[5])
        assert math.isfinite(gap)  # iris-onedir's noisy and clean LR differ at seed 0
        # One case: the means over every case are the recipe's, and the pooled gap is its gap.
        means = overall[row[1]]
        assert means[1:4] == row[2:5]
        assert means[4] == f"{row[5]} ({row[5]})"


# detection.py -------------------------------------------------------------------------------


def test_detection_noise_flips_within_the_kind(tmp_path):
    detection = script("detection")
    y = np.arange(3000) % 5
    sym = detection.noisy(y, 5, "sym20", seed=0)
    assert (sym != y).sum() == 600
    pair = detection.noisy(y, 5, "pair30", seed=0)
    moved = pair != y
    assert (pair[moved] == (y[moved] + 1) % 5).all()  # class c goes to c + 1 only
    assert 0.27 < moved.mean() < 0.33
    assert (detection.noisy(y, 5, "sym40", seed=0) != y).sum() == 1200
    names = [(name, X.shape[0] == len(y)) for name, X, y in detection.datasets()]
    assert names == [(n, True) for n in ("digits", "wine", "breast_cancer", "make_classification")]


def test_detection_main_prints_every_variant_beside_cleanlab(monkeypatch, capsys, fast_refine):
    detection = script("detection")
    wine = next(d for d in detection.datasets() if d[0] == "wine")
    # The script runs four fixed datasets (digits and a 2,000-row make_classification among
    # them); wine alone, with small models, takes seconds.
    monkeypatch.setattr(detection, "datasets", lambda: iter([wine]))
    monkeypatch.setattr(sys, "argv", ["detection.py", "--noise", "sym20,pair30"])
    detection.main()  # every variant: the default --variants names them all
    text = capsys.readouterr().out
    assert "wine sym20 seed 0 done\nwine pair30 seed 0 done\n" in text
    means = {}
    for line in text.splitlines()[-5:]:  # the means by method, after pandas' two header lines
        *name, f1, auprc, label, seconds = line.split()
        means[" ".join(name)] = [float(f1), float(auprc), float(label), float(seconds)]
    assert set(means) == {"cleanlab+LR", *detection.VARIANTS}
    for method, (f1, auprc, label, seconds) in means.items():
        assert 0 <= f1 <= 1 and 0 <= auprc <= 1 and 0 <= label <= 1 and seconds >= 0, method
    # The baseline's label accuracy is the given labels': the mean over the two noise kinds.
    y = wine[2]
    given = np.mean([(detection.noisy(y, 3, kind, 0) == y).mean() for kind in ("sym20", "pair30")])
    assert means["cleanlab+LR"][2] == pytest.approx(given, abs=5e-5)


def test_detection_refuses_an_unknown_variant(monkeypatch, capsys):
    detection = script("detection")
    monkeypatch.setattr(sys, "argv", ["detection.py", "--variants", "snapshots=1,seeds=3"])
    with pytest.raises(SystemExit) as exit:
        detection.main()
    assert exit.value.code == 2
    assert (
        "unknown variant 'seeds=3'; the variants are refine (defaults)," in capsys.readouterr().err
    )


# distill.py ---------------------------------------------------------------------------------


@pytest.mark.slow
def test_distill_main_writes_every_arm(tmp_path, monkeypatch):
    distill = script("distill")
    out = tmp_path / "distill.md"
    monkeypatch.setattr(
        sys, "argv", ["distill.py", "--seeds", "1", "--rows", "90", "--out", str(out)]
    )
    distill.main()
    text = out.read_text()
    assert "Generated data: 90 training rows, 45 clean test rows, 4 classes" in text
    assert "Command: `python benchmarks/distill.py --seeds 1 --rows 90`" in text
    rows = [
        [c.strip() for c in line.strip("|").split("|")]
        for line in text.splitlines()
        if line.startswith("| ") and "`" in line
    ]
    assert [r[1] for r in rows] == ["`text`", "`text`", "`text`", "`emb`"]
    accuracy = {}
    for arm, row in zip(distill.ARMS, rows, strict=True):
        assert row[2] == row[3]  # one seed: the median is that seed's figure
        accuracy[arm] = _share(row[2])
    # The embedding is well separated (that is the design): the teacher reads it almost
    # perfectly and its refined labels beat the 70% the noise left.
    assert accuracy["teacher"] > 0.9
    refined = re.search(r"matches the true label on (\d\.\d{3}) of training rows", text)
    assert float(refined.group(1)) > 0.7
    difference = re.search(r"Distilled minus noisy: ([-+]\d\.\d{3})", text)
    assert float(difference.group(1)) == pytest.approx(
        accuracy["distilled"] - accuracy["noisy"], abs=0.0011
    )


# embed_real.py ------------------------------------------------------------------------------
# sentence-transformers and the model are not dependencies of refine: main runs here with a
# stand-in model, which records what it was asked to embed.


class _StandIn:
    def __init__(self, dimensions: int):
        self.dimensions = dimensions
        self.asked: list[list[str]] = []

    def encode(self, sentences, batch_size, normalize_embeddings, convert_to_numpy):
        assert normalize_embeddings and convert_to_numpy
        self.asked.append(list(sentences))
        vectors = np.zeros((len(sentences), self.dimensions), np.float32)
        vectors[:, 0] = [len(s) for s in sentences]
        vectors[:, 1] = np.arange(len(sentences))
        return vectors


def test_embed_real_sentences_name_the_entities_where_there_are_any():
    embed_real = script("embed_real")
    plain = pa.table({"text": ["a b", "c"], "label": [0, 1]})
    assert embed_real.sentences(plain) == ["a b", "c"]
    semeval = pa.table({"text": ["x y"], "entity1": ["x"], "entity2": ["y"], "label": [3]})
    assert embed_real.sentences(semeval) == ["x y [x] [y]"]
    vectors = np.arange(embed_real.DIMENSIONS, dtype=np.float64).reshape(1, -1)
    out = embed_real.embedded(semeval, vectors)
    assert out.column_names == ["label", "embedding"]
    assert out.schema.field("embedding").type == pa.list_(pa.float32(), embed_real.DIMENSIONS)
    np.testing.assert_array_equal(out.column("embedding").to_pylist()[0], vectors[0])


def test_embed_real_main_writes_each_file_without_its_text(tmp_path, monkeypatch):
    embed_real = script("embed_real")
    data, out = tmp_path / "data", tmp_path / "emb"
    data.mkdir()
    for split in embed_real.SPLITS:
        texts = [f"{split} message {i}" * (i + 1) for i in range(3)]
        pq.write_table(
            pa.table({"text": texts, "label": [0, 1, 0], "weak": [1, -1, 0]}),
            data / f"wrench_sms_{split}.parquet",
        )
        pq.write_table(
            pa.table(
                {
                    "text": texts,
                    "entity1": ["a", "b", "c"],
                    "entity2": ["d", "e", "f"],
                    "label": [2, 5, 7],
                }
            ),
            data / f"wrench_semeval_{split}.parquet",
        )
    model = _StandIn(embed_real.DIMENSIONS)
    monkeypatch.setattr(embed_real, "load_model", lambda: model)
    argv = ["embed_real.py", "--data", str(data), "--out", str(out), "--sets", "sms,semeval"]
    monkeypatch.setattr(sys, "argv", [*argv, "--limit", "2"])
    embed_real.main()
    assert sorted(p.name for p in out.iterdir()) == sorted(
        f"wrench_{name}_{split}.parquet"
        for name in ("sms", "semeval")
        for split in embed_real.SPLITS
    )
    assert len(model.asked) == 6
    sms = pq.read_table(out / "wrench_sms_valid.parquet")
    assert sms.column_names == ["label", "weak", "embedding"]
    assert sms.column("weak").to_pylist() == [1, -1]  # the first two rows, in order
    vectors = np.array(sms.column("embedding").to_pylist())
    assert vectors.shape == (2, embed_real.DIMENSIONS)
    assert vectors[:, 0].tolist() == [len("valid message 0"), len("valid message 1") * 2]
    semeval = pq.read_table(out / "wrench_semeval_test.parquet")
    assert semeval.column_names == ["label", "embedding"]
    assert ["test message 0 [a] [d]", "test message 1test message 1 [b] [e]"] in model.asked


# image_models.py ----------------------------------------------------------------------------


def test_image_models_main_times_the_tiny_vit_cold_and_warm(tmp_path, monkeypatch):
    pytest.importorskip("transformers")
    image_models = script("image_models")
    out = tmp_path / "image-models.md"
    argv = ["image_models.py", "--models", "tiny", "--rows", "6", "--batch-sizes", "4,8"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    image_models.main()
    rows = _table_rows(out.read_text(), "tiny")
    assert [r[1] for r in rows] == ["4", "8"] and all(r[3] == "6" for r in rows)
    (first, second) = json.loads(out.with_suffix(".json").read_text())["tiny"]
    assert first["encoded"] == 6 and first["rows_per_second"] > 0
    assert first["warm_encoded"] == 0 == second["warm_encoded"]  # all from the cache


# ray_engine.py ------------------------------------------------------------------------------


def test_ray_engine_shards_read_back_as_one_table(tmp_path):
    ray_engine = script("ray_engine")
    truth = ray_engine.make_shards(tmp_path / "shards", 103, 4, 3)
    table = pq.read_table(tmp_path / "shards")
    assert len(list((tmp_path / "shards").iterdir())) == ray_engine.SHARDS
    assert table.num_rows == 103 and sorted(table.column("id").to_pylist()) == list(range(103))
    noisy = np.array(table.sort_by("id").column("label").to_pylist())
    assert (noisy != truth).mean() == pytest.approx(0.2, abs=0.01)  # 20% flipped


def test_ray_engine_tree_rss_counts_this_process():
    ray_engine = script("ray_engine")
    own = int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    assert ray_engine.tree_rss(os.getpid()) >= own > 0
    assert ray_engine.tree_rss(-1) == 0


# ray_inference.py ---------------------------------------------------------------------------


@pytest.mark.slow
def test_ray_inference_main_times_both_paths_and_finds_the_same_embeddings(
    tmp_path, monkeypatch, capsys, tiny_text_model
):
    pytest.importorskip("ray")
    texts = tmp_path / "texts.parquet"
    pq.write_table(pa.table({"text": ["free money now", "hello friend", "see you today"]}), texts)
    argv = ["ray_inference.py", "--rows", "40", "--runs", "1", "--cpus", "1"]
    argv += ["--texts", str(texts), "--model", str(tiny_text_model)]
    monkeypatch.setattr(sys, "argv", argv)
    script("ray_inference").main()
    out = capsys.readouterr().out
    assert out.startswith(f"40 texts, {tiny_text_model}, 1 CPUs")
    assert [row[0] for row in _table_rows(out, "this process")] == ["this process"]
    assert len(_table_rows(out, "1 Ray actors")) == 1
    assert "same embeddings: True (largest difference 0.00e+00)" in out


# ray_predict.py -----------------------------------------------------------------------------


@pytest.mark.slow
def test_ray_predict_main_times_both_engines_and_compares_their_tables(
    tmp_path, monkeypatch, capsys
):
    pytest.importorskip("ray")
    ray_predict = script("ray_predict")
    commands: list[list[str]] = []

    def in_process(*args):
        args = list(args)
        if args[0] == "run":  # a tiny run: the script's defaults are for a real measurement
            args += ["--rounds", "1", "--folds", "2", "--max-epochs", "2"]
        commands.append(args)
        result = CliRunner().invoke(cli, args, catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return 1.0

    monkeypatch.setattr(ray_predict, "cli", in_process)
    argv = ["ray_predict.py", "--rows", "300", "--files", "3", "--train-rows", "200"]
    argv += ["--dim", "4", "--classes", "3", "--runs", "1", "--workdir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", argv)
    ray_predict.main()
    out = capsys.readouterr().out
    assert [c[0] for c in commands] == ["run", "distill", "predict", "predict"]
    assert [c[c.index("--engine") + 1] for c in commands[2:]] == ["local", "ray"]
    assert len(list((tmp_path / "data_300").iterdir())) == 3
    assert len(_table_rows(out, "here")) == 1
    assert "Same table from both engines: yes." in out


def cli_in_process(commands, measured):
    """A stand-in for a script's `python -m refine run` subprocess: the same arguments go to
    refine's CLI in this process (a second interpreter costs more than the tiny run itself),
    each command is kept in ``commands``, and ``measured`` is what the script gets back."""

    def run(command, timeline=None):  # scale.py passes its --timeline path
        assert command[:4] == [sys.executable, "-m", "refine", "run"]
        commands.append(command)
        result = CliRunner().invoke(cli, command[3:], catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return measured

    return run


@pytest.mark.slow
def test_ray_engine_main_runs_every_engine_and_compares_their_output(tmp_path, monkeypatch, capsys):
    pytest.importorskip("ray")
    ray_engine = script("ray_engine")
    commands: list[list[str]] = []
    monkeypatch.setattr(ray_engine, "timed_run", cli_in_process(commands, (1.0, 0)))
    argv = ["ray_engine.py", "--rows", "120", "--dim", "4", "--classes", "3", "--runs", "1"]
    argv += ["--folds", "3", "--rounds", "1", "--max-epochs", "2", "--workdir", str(tmp_path)]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(tmp_path / "table.md")])
    ray_engine.main()
    text = capsys.readouterr().out
    assert (tmp_path / "table.md").read_text() == text
    budget = str(ray_engine.streaming_budget(120, 4, 3, 3))
    assert [c[c.index("--max-epochs") + 2 :] for c in commands] == [
        ["--workers", "1"],
        ["--workers", str(os.cpu_count())],
        ["--engine", "ray"],
        ["--engine", "ray", "--memory", budget],
    ]
    assert len(_table_rows(text, "local, --workers 1")) == 1
    streamed = _table_rows(text, "--engine ray, streaming (--memory under the in-memory plan)")
    assert len(streamed) == 1 and float(streamed[0][3]) >= 0  # its encode seconds
    assert "Same refined.parquet from every engine and run: yes." in text


# rows_seen.py -------------------------------------------------------------------------------


def test_rows_seen_posterior_is_the_mixtures_bayes_rule():
    rows_seen = script("rows_seen")
    centres = rows_seen.mixture(seed=1)
    x, truth = rows_seen.draw(300, centres, spread=2.0, seed=2)
    proba = rows_seen.posterior(x, centres, spread=2.0)
    np.testing.assert_allclose(proba.sum(1), 1.0)
    # By hand for one row: each class's density is the mean of its centres' Gaussians.
    row = x[7].astype(np.float64)
    density = np.exp(-((row - centres) ** 2).sum(1) / (2 * 2.0**2)).reshape(10, 3).sum(1)
    np.testing.assert_allclose(proba[7], density / density.sum(), rtol=1e-6)
    # The Bayes rule is right on most rows and beats chance by far.
    assert (proba.argmax(1) == truth).mean() > 0.8


def test_rows_seen_main_runs_each_setting_on_one_table(tmp_path, monkeypatch, capsys):
    rows_seen = script("rows_seen")
    out = tmp_path / "table.md"
    argv = ["rows_seen.py", "--cases", "400:sym20,400:pair30", "--caps", "2000,500:64"]
    argv += ["--folds", "3", "--rounds", "1", "--test-rows", "200", "--workers", "1"]
    monkeypatch.setattr(sys, "argv", [*argv, "--workdir", str(tmp_path), "--out", str(out)])
    rows_seen.main()
    results = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line[:1] == "{"]
    assert [(r["noise"], r["cap"], r["batch"]) for r in results] == [
        ("sym20", 2000, 0),
        ("sym20", 500, 64),
        ("pair30", 2000, 0),
        ("pair30", 500, 64),
    ]
    assert [r["given_acc"] for r in results] == [0.8, 0.8, 0.7, 0.7]  # exactly 20% and 30% flipped
    # 240 training rows a fold: 500 rows seen allow 3 epochs, 2000 allow 9.
    assert all(max(r["epochs"]) <= (3 if r["cap"] == 500 else 9) for r in results)
    for r in results:
        for key in ("refined_acc", "flag_f1", "test_acc", "bayes_test_acc"):
            assert 0 <= r[key] <= 1, key
    assert len([line for line in out.read_text().splitlines() if line.startswith("| 400 |")]) == 4


# scale.py -----------------------------------------------------------------------------------


def test_scale_embeddings_are_seeded_clusters():
    scale = script("scale")
    vectors, truth = scale.make_embeddings(500, 6, 4, seed=3)
    assert vectors.shape == (500, 6) and vectors.dtype == np.float32
    assert truth.shape == (500,) and set(truth) == {0, 1, 2, 3}
    again, _ = scale.make_embeddings(500, 6, 4, seed=3)
    np.testing.assert_array_equal(vectors, again)
    assert not np.array_equal(vectors, scale.make_embeddings(500, 6, 4, seed=4)[0])


@pytest.mark.slow
def test_scale_main_runs_the_cli_and_reports_the_run(tmp_path, monkeypatch, capsys):
    scale = script("scale")
    commands: list[list[str]] = []
    measured = {"wall": 1.0, "cpu": 1.5, "process_rss": 2**30, "tree_rss": 2**31}
    monkeypatch.setattr(scale, "run_refine", cli_in_process(commands, measured))
    argv = ["scale.py", "--rows", "200,300", "--dim", "4", "--classes", "3", "--folds", "3"]
    monkeypatch.setattr(sys, "argv", [*argv, "--workdir", str(tmp_path)])
    scale.main()
    reports = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert [(r["rows"], r["engine"]) for r in reports] == [
        (200, "memory"),
        (200, "streaming"),
        (300, "memory"),
        (300, "streaming"),
    ]
    assert "--memory" not in commands[0] and "--memory" in commands[1]
    assert [r["execution"]["features"] for r in reports[:2]] == ["in memory", "streaming"]
    data = pq.read_table(tmp_path / "embeddings_200x4.parquet")
    assert data.column_names == ["id", "embedding", "label"]
    assert data.schema.field("embedding").type == pa.list_(pa.float32(), 4)
    report = reports[0]
    assert report["dim"] == 4 and report["seconds_per_million_rows"] == 5000.0
    assert (report["peak_process_rss_gb"], report["peak_tree_rss_gb"]) == (1.0, 2.0)
    assert report["given_accuracy"] == 0.8  # exactly 20% flipped
    for key in ("precision", "recall", "label_accuracy"):
        assert 0 <= report[key] <= 1, key
    assert {"train", "detect", "write"} <= set(report["stage_seconds"])
    assert report["recall"] * 40 == pytest.approx(round(report["recall"] * 40), abs=0.01)
    # The same seed gives the same labels whichever path the features took.
    runs = tmp_path / "run-200-memory", tmp_path / "run-200-streaming"
    memory, streaming = (pq.read_table(r / "refined.parquet") for r in runs)
    assert memory.equals(streaming)


def test_scale_streaming_takes_a_memory_budget_as_given():
    scale = script("scale")
    assert scale.engine_flags("streaming", 1000, 4, 3, 3, "6GB") == ["--memory", "6GB"]
    estimated = scale.engine_flags("streaming", 1000, 4, 3, 3)
    assert estimated[0] == "--memory" and int(estimated[1]) > 0
    assert scale.engine_flags("memory", 1000, 4, 3, 3, "6GB") == []


def test_scale_measures_the_whole_process_tree():
    scale = script("scale")
    command = [sys.executable, "-c", "import time; b = bytearray(200 << 20); time.sleep(2)"]
    cost = scale.run_refine(command)
    assert cost["wall"] >= 1 and cost["cpu"] > 0
    assert cost["process_rss"] >= 200 << 20 and cost["tree_rss"] >= 200 << 20
    assert 200 << 20 <= cost["tree_pss"] <= cost["tree_rss"]
    with pytest.raises(subprocess.CalledProcessError):
        scale.run_refine([sys.executable, "-c", "raise SystemExit(3)"])


def test_scale_does_not_count_its_own_peak_as_the_run_s():
    # Linux carries the parent's high-water mark into a forked child past exec, so wait4's
    # ru_maxrss would report the 300 MB this test holds as the small child's peak.
    scale = script("scale")
    held = np.ones(300 << 17)  # 300 MiB of float64, resident
    cost = scale.run_refine([sys.executable, "-c", "import time; time.sleep(1)"])
    assert held.sum() > 0 and cost["process_rss"] < 150 << 20


# stream.py ----------------------------------------------------------------------------------


def test_stream_batches_shift_from_low_digits_to_high_ones():
    stream = script("stream")
    batches, truths, test, first_truth = stream.make_stream(seed=0)
    assert len(batches) == len(truths) == stream.BATCHES
    assert test.num_rows == stream.TEST_ROWS
    assert sum(b.num_rows for b in batches) + test.num_rows == 1797
    assert np.array_equal(first_truth, truths[0][1])
    means = [truth.mean() for _, truth in truths]
    assert means == sorted(means) and means[0] < 3 < 6 < means[-1]
    noisy = np.concatenate([is_noisy for is_noisy, _ in truths])
    assert 0.17 < noisy.mean() < 0.23
    for batch, (is_noisy, truth) in zip(batches, truths, strict=True):
        assert np.array_equal(np.asarray(batch.column("label")) != truth, is_noisy)


def _tiny_stream(seed: int):
    """``make_stream``'s shape on blobs: five batches of 60 rows and 60 clean test rows."""
    X, truth = blobs(360, k=3, dim=4, seed=seed)
    rng = np.random.default_rng(seed)
    noisy = np.where(rng.random(360) < 0.2, (truth + 1) % 3, truth)

    def table(rows, labels):
        return pa.table({**{f"px{i}": X[rows, i] for i in range(4)}, "label": labels[rows]})

    parts = np.split(np.arange(360), 6)
    batches = [table(rows, noisy) for rows in parts[:5]]
    truths = [(noisy[rows] != truth[rows], truth[rows]) for rows in parts[:5]]
    return batches, truths, table(parts[5], truth), truth[parts[0]]


@pytest.mark.slow
def test_stream_main_writes_update_and_scratch_per_batch(tmp_path, monkeypatch, fast_refine):
    stream = script("stream")
    # Digits in five batches is ten runs on up to 1,500 rows: blobs in batches of 60 keep the
    # update-versus-scratch loop at seconds.
    monkeypatch.setattr(stream, "make_stream", _tiny_stream)
    out = tmp_path / "stream.md"
    monkeypatch.setattr(sys, "argv", ["stream.py", "--seeds", "1", "--out", str(out)])
    stream.main()
    text = out.read_text()
    assert "Generated by `python benchmarks/stream.py --seeds 1`." in text
    rows = {(int(r[0]), r[1]): r[2:] for b in range(5) for r in _table_rows(text, str(b))}
    assert list(rows) == [(b, m) for b in range(5) for m in ("update", "scratch")]
    for cells in rows.values():
        for cell in cells[:-1]:
            _share(cell)
        assert float(cells[-1]) >= 0  # seconds
    # Batch 0 is a plain run either way, on the same rows with the same seed.
    assert rows[0, "update"][:-1] == rows[0, "scratch"][:-1]
    assert re.search(r"Batches 1-4 in all: update \d+ s, scratch \d+ s \(\d+\.\dx\)\.", text)


# text_models.py -----------------------------------------------------------------------------


def test_text_models_batches_average_each_row_by_its_counts():
    text_models = script("text_models")
    matrix = text_models.hashed(["ab cd ab", "ef"])
    assert matrix.shape == (2, text_models.BUCKETS)
    ids, offsets, weights = text_models._batch(matrix, np.array([1, 0]))
    assert offsets.tolist() == [0, len(matrix[1].indices)]
    row_sums = np.add.reduceat(weights.numpy(), offsets.numpy())
    np.testing.assert_allclose(row_sums, [1.0, 1.0], rtol=1e-6)
    # "ab cd ab": the word "ab" counts twice, "cd" once.
    words = text_models.HashingVectorizer(
        n_features=text_models.BUCKETS, alternate_sign=False, norm=None
    ).transform(["ab", "cd"])
    a, b = words[0].indices[0], words[1].indices[0]
    weight = dict(zip(ids.tolist()[offsets[1] :], weights.numpy()[offsets[1] :], strict=True))
    assert weight[a] == pytest.approx(2 * weight[b])


@pytest.mark.slow
def test_text_models_main_scores_every_model_on_a_tiny_recipe(tmp_path, monkeypatch):
    text_models = script("text_models")
    recipes = tmp_path / "recipes"
    recipes.mkdir()
    tiny = {
        "name": "tiny-text",
        "description": "160 generated texts of 3 distinct topics, 20% of train labels flipped",
        "source": {
            "kind": "generated_text",
            "params": {"rows": 160, "classes": 3, "topic_words": 8, "topic_share": 0.7},
        },
        "noise": {"model": "symmetric", "rate": 0.2},
        "unlabelled": 0.0,
        "test_fraction": 0.25,
        "suites": ["text"],
        "seed": 0,
    }
    (recipes / "tiny-text.json").write_text(json.dumps(tiny))
    files = {
        "kind": "files",
        "train": "nowhere/train.parquet",
        "test": "nowhere/test.parquet",
        "text": "text",
        "truth": "true_label",
    }
    absent = {**tiny, "name": "absent", "source": files, "noise": {"model": "none"}}
    (recipes / "absent.json").write_text(json.dumps(absent))
    monkeypatch.setenv("REFINE_DATASETS", str(recipes))
    # 2**18 buckets of 64 floats is 64 MB a fold, copied at every better epoch; 2**12 keeps the
    # fastText model's path and takes a fraction of a second.
    monkeypatch.setattr(text_models, "BUCKETS", 2**12)
    out = tmp_path / "text-models.md"
    argv = ["text_models.py", "--seeds", "1", "--datasets", "absent,tiny-text"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    text_models.main()
    text = out.read_text()
    assert "`python benchmarks/text_models.py --seeds 1 --datasets absent,tiny-text`" in text
    assert "| absent |" not in text
    rows = _table_rows(text, "tiny-text")
    assert [r[1] for r in rows] == ["tfidf-lr", "svd-mlp", "svd-mlp-rule", "embbag"]
    for row in rows:
        precision, recall, f1, auprc = (_share(c) for c in row[2:6])
        assert f1 == pytest.approx(2 * precision * recall / (precision + recall), abs=0.002)
        # 24 of the 120 training labels are wrong, so chance is an AUPRC of 0.2; on topics this
        # distinct every model ranks most wrong labels first (each scores above 0.95 here).
        assert auprc > 0.6, row


def test_crowd_main_scores_every_method_on_wrench_files(tmp_path, monkeypatch):
    crowd = script("crowd")
    monkeypatch.setattr(crowd, "RUN_OPTIONS", {k: v for k, v in FAST.items() if k != "report"})
    rng = np.random.default_rng(0)
    truth = np.arange(60) % 2
    words = np.array(["buy cheap now", "nice song thanks"])
    pq.write_table(
        pa.table({"text": words[truth], "label": truth, "true_label": truth}),
        tmp_path / "wrench_youtube_train.parquet",
    )
    # Two good labelling functions that abstain now and then, one that always votes spam.
    votes = [
        [int(t) if rng.random() < 0.7 else -1, int(t) if rng.random() < 0.7 else -1, 0]
        for t in truth
    ]
    pq.write_table(
        pa.table({"row": np.arange(60), "lf_votes": pa.array(votes, pa.list_(pa.int8()))}),
        tmp_path / "wrench_youtube_lf_votes.parquet",
    )
    out = tmp_path / "crowd.md"
    monkeypatch.setattr(
        sys, "argv", ["crowd.py", "--sets", "youtube", "--data", str(tmp_path), "--out", str(out)]
    )
    crowd.main()
    rows = [line for line in out.read_text().splitlines() if line.startswith("| youtube")]
    cells = [c.strip() for c in rows[0].strip("|").split("|")]
    assert cells[:4] == [
        "youtube",
        "60",
        "3",
        str(round(float(np.mean([sum(v >= 0 for v in r) for r in votes])), 1)),
    ]
    assert len(cells) == 4 + len(crowd.METHODS)
    scores = {
        m: None if c == "-" else float(c) for m, c in zip(crowd.METHODS, cells[4:], strict=True)
    }
    # crowd-kit's methods are a dev-only install: "-" exactly where it is missing.
    has_crowdkit = importlib.util.find_spec("crowdkit") is not None
    assert all(
        (scores[m] is not None) == has_crowdkit for m in crowd.METHODS if m.startswith("ck-")
    )
    # The always-"spam" function ties with a good one on a third of the ham rows: the majority
    # draws, refine given the votes learns to discount it.
    assert scores["majority"] < 0.85 and scores["refine(votes)"] >= scores["majority"] + 0.1
    # The held-out choice is reported, and refine on the majority scores a label per row.
    assert "refine(votes)'s held-out choice (last round): youtube " in out.read_text()
    assert 0.5 <= scores["held-out"] <= 1 and 0.5 <= scores["refine(majority)"] <= 1
    # No test split here: no downstream row; the figures are written as JSON too.
    figures = json.loads(out.with_suffix(".json").read_text())["sets"]["youtube"]
    assert "downstream" not in figures and figures["seconds_votes"] > 0


def test_crowd_downstream_trains_with_the_weights_it_is_given():
    crowd = script("crowd")
    rng = np.random.default_rng(0)
    truth = np.arange(200) % 2
    x = truth * 2.0 + rng.normal(0.0, 0.6, 200)
    table = pa.table({"x": x, "y": rng.normal(0.0, 1.0, 200)})
    test_truth = np.arange(100) % 2
    test = (pa.table({"x": test_truth * 2.0, "y": np.zeros(100)}), test_truth)
    # Every class-1 row but the surest labelled 0: unweighted, the model learns it; with the
    # flipped rows weighted 0 it trains on the right labels alone, as if they were dropped.
    labels = truth.copy()
    flipped = (truth == 1) & (x < 2.5)
    labels[flipped] = 0
    weight = np.where(flipped, 0.0, 1.0)
    dropped = np.where(flipped, -1, labels)
    plain = crowd.downstream(table, labels, test, seed=0)
    weighted = crowd.downstream(table, labels, test, seed=0, weight=weight)
    assert weighted == crowd.downstream(table, dropped, test, seed=0) == 1.0
    assert plain < 0.9


def test_student_main_compares_student_ensemble_and_given(tmp_path, monkeypatch, fast_refine):
    from refine.bench.sources import generated_text

    student = script("student")
    monkeypatch.setattr(student, "TIMED_ROWS", 2_000)
    texts, truth = generated_text(160, 2, random_state=0)
    for split, rows in (("train", slice(0, 120)), ("test", slice(120, 160))):
        pq.write_table(
            pa.table({"text": texts[rows].tolist(), "label": truth[rows]}),
            tmp_path / f"wrench_tiny_{split}.parquet",
        )
    out = tmp_path / "student.md"
    argv = ["student.py", "--seeds", "0", "--recipes", "wine-sym20", "--real", "tiny"]
    argv += ["--data", str(tmp_path), "--predict-rows", "500", "--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    student.main()
    text = out.read_text()
    assert "refine.predict end to end: 500 rows of 4 numeric columns in" in text
    assert "--recipes wine-sym20 --real tiny" in text
    for name in ("wine-sym20", "wrench-tiny"):
        summary, seed = _table_rows(text, name)
        ensemble, single = _share(summary[1]), _share(summary[2])
        assert summary[3] == f"{single / ensemble:.1%}"
        assert seed[2] == summary[1] and seed[3] == summary[2]  # one seed: its figures
        params = [int(p.replace(",", "")) for p in seed[8].split(" / ")]
        assert params[1] < params[0]  # the student is one of the ensemble's networks


# encoders.py --------------------------------------------------------------------------------
# Runs on conftest's tiny random sentence encoder in place of MiniLM (a dev-only install).


def test_encoders_main_scores_each_method_and_the_cache(tmp_path, monkeypatch, fast_refine):
    pytest.importorskip("sentence_transformers")
    from tests.conftest import TINY_WORDS, build_tiny_text_model

    encoders = script("encoders")
    model = build_tiny_text_model(tmp_path / "model")
    rng = np.random.default_rng(0)
    data = tmp_path / "data"
    data.mkdir()
    half = len(TINY_WORDS) // 2
    for split, rows in (("train", 90), ("test", 30)):
        truth = np.arange(rows) % 2
        texts = [" ".join(rng.choice(TINY_WORDS[t * half : (t + 1) * half], 4)) for t in truth]
        given = np.where(np.arange(rows) % 9 == 0, 1 - truth, truth)
        columns = {"text": texts, "label": given if split == "train" else truth}
        if split == "train":
            columns["true_label"], distinct = truth, len(set(texts))
        pq.write_table(pa.table(columns), data / f"wrench_sms_{split}.parquet")
    out = tmp_path / "encoders.md"
    argv = [
        "encoders.py",
        "--data",
        str(data),
        "--sets",
        "sms",
        "--seeds",
        "0",
        "--batch-sizes",
        "4,32",
        "--verified",  # refine sees a tenth of the gold labels
        "0.1",
    ]
    monkeypatch.setattr(sys, "argv", [*argv, "--model", str(model), "--out", str(out)])
    encoders.main()
    text = out.read_text()
    rows = {r[1]: r for r in _table_rows(text, "sms") if len(r) == 9}
    assert set(rows) == {*encoders.METHODS, "given", "gold"}
    assert _share(rows["gold"][6]) == 1.0
    assert abs(_share(rows["given"][6]) - 80 / 90) < 1e-3  # every ninth label flipped
    for method in encoders.METHODS:
        _share(rows[method][4])  # F1
    cost = json.loads(out.with_suffix(".json").read_text())["costs"]["sms"]
    assert cost["rows"] == 90 and cost["values_encoded"] == distinct
    assert cost["rows_per_second"] > 0 and cost["warm_seconds"] >= 0
    assert "| batch size | 4 | 32 |" in text
    assert "--verified 0.1" in text
    # --cache DIR: the first run fills it and measures the cold cost, a rerun reads it warm,
    # leaves the cost out and scores the same.
    cached = [*argv[:-4], "--model", str(model), "--cache", str(tmp_path / "cache")]
    firsts = []
    for run in ("first", "again"):
        monkeypatch.setattr(sys, "argv", [*cached, "--out", str(tmp_path / f"{run}.md")])
        encoders.main()
        firsts.append(json.loads((tmp_path / f"{run}.json").read_text()))
    assert set(firsts[0]["costs"]) == {"sms"} and firsts[1]["costs"] == {}
    assert [r.get("f1") for r in firsts[0]["rows"]] == [r.get("f1") for r in firsts[1]["rows"]]
    assert "--cache DIR" in (tmp_path / "again.md").read_text()


# student_temperature.py ---------------------------------------------------------------------


def test_student_temperature_helpers_known_answers():
    module = script("student_temperature")
    rng = np.random.default_rng(0)
    oof = rng.dirichlet(np.ones(4), size=50)
    # The belief is the student's own probabilities at T = 2: matching the mean confidence, or
    # every bin of it, finds T = 2 again.
    belief = module.scaled(oof, 2.0)
    assert module.mean_matched(oof, belief) == pytest.approx(2.0, rel=1e-6)
    assert module.binned(oof, belief) == pytest.approx(2.0, rel=1e-2)
    proba = np.array([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]])
    moved = module.with_top(proba, np.array([0.8, 0.9]))
    np.testing.assert_allclose(moved, [[0.8, 0.12, 0.08], [0.025, 0.9, 0.075]])


def test_student_temperature_main_scores_each_target(tmp_path, monkeypatch):
    import refine.judge.trust as trust

    # Default settings: at FAST ones the run keeps the labels and finds no temperature to study.
    module = script("student_temperature")
    originals = (trust.fit_temperature_to, trust.given_label_posterior)
    out = tmp_path / "cases.jsonl"
    argv = ["student_temperature.py", "--seeds", "10", "--recipes", "wine-pair30"]
    monkeypatch.setattr(sys, "argv", [*argv, "--out", str(out)])
    module.main()
    assert (trust.fit_temperature_to, trust.given_label_posterior) == originals  # put back
    (case,) = [json.loads(line) for line in out.read_text().splitlines()]
    assert (case["recipe"], case["seed"]) == ("wine-pair30", 10)
    targets = {"belief", "belief-mean", "belief-binned", "row-belief", "noise", "noise-teacher"}
    assert set(case["temperature"]) == targets | {"oracle"}
    assert set(case["ece"]) == targets | {"oracle", "belief-isotonic", "oracle-isotonic"}
    assert all(0.05 <= t <= 20.0 for t in case["temperature"].values())
    assert all(0.0 <= e <= 1.0 for e in case["ece"].values())
