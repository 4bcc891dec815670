"""The run report: what a run records for it, the page's sections, escaping, the command, and
the page in a real browser (headless Chromium: no console errors, no requests, no script)."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from PIL import Image

import refine
from refine.cli import cli
from refine.errors import InputError
from refine.io.write import ROUNDS_SCHEMA
from refine.judge.detect import confident_joint
from refine.learn.calibrate import expected_calibration_error, reliability_bins
from refine.report.html import build_report, write_report
from refine.report.metrics import flag_scores
from refine.report.page import CSP
from tests.conftest import blobs

SECTIONS = ["summary", "columns", "noise", "quality", "calibration", "rounds", "classes", "rows"]
PLANTED_LABEL = "<script>window.__pwned=1</script>"
PLANTED_FEATURE = '"><img src=x onerror="window.__pwned=2">'
TINY = dict(rounds=1, folds=3, max_epochs=20, hidden=(32,), seed=0)
CHROMIUM = Path("/usr/bin/chromium")
BROWSER_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]


def invoke(*args: str):
    return CliRunner().invoke(cli, [str(a) for a in args], catch_exceptions=False)


def section(page: str, key: str) -> str:
    """The HTML of one section of the report."""
    match = re.search(f'<section id="{key}">(.*?)</section>', page, re.S)
    assert match, f"no section {key!r}"
    return match.group(1)


@pytest.fixture(scope="module")
def planted_run(tmp_path_factory):
    """A tiny run with string labels, one of them a script tag, a feature string that tries to
    break out of an attribute, and the truth beside the noisy label."""
    n = 150
    X, truth = blobs(n=n, k=3, seed=7)
    names = np.array(["cat", "dog", PLANTED_LABEL], dtype=object)
    rng = np.random.default_rng(8)
    noisy = truth.copy()
    flip = rng.choice(n, size=20, replace=False)
    noisy[flip] = (noisy[flip] + 1) % 3
    table = pa.table(
        {
            "note": pa.array(np.where(np.arange(n) % 2 == 0, PLANTED_FEATURE, "plain")),
            "x0": X[:, 0],
            "x1": X[:, 1],
            "x2": X[:, 2],
            "label": pa.array(names[noisy].tolist()),
            "label_true": pa.array(names[truth].tolist()),
            "is_noisy": pa.array(noisy != truth),
        }
    )
    out = tmp_path_factory.mktemp("report") / "planted"
    refine.run(table, out, ignore=("label_true", "is_noisy"), **TINY)
    return out


def fake_run(path: Path, labels: list, classes: list, **summary) -> Path:
    """A run directory written by hand (no training): the given labels with every row predicted
    as given (the next class where flagged), quality 0.9 (0.01 where flagged); ``flagged_rows``
    names the flagged rows, and the other ``summary`` fields go to run.json as they are, so
    older runs' missing fields can be left out."""
    flagged = np.zeros(len(labels), bool)
    flagged[summary.pop("flagged_rows", [])] = True
    labelled = np.array([v is not None for v in labels])
    predicted = []
    for value, is_flagged in zip(labels, flagged, strict=True):
        code = classes.index(value) + is_flagged if value is not None else 0
        predicted.append(classes[code % len(classes)])
    k = len(classes)
    label = pa.array(labels, type=pa.array(classes).type)
    table = pa.table(
        {
            "x": np.arange(len(labels), dtype=np.float32),
            "label": label,
            "label_refined": label,
            "label_soft": pa.array([[1.0 / k] * k] * len(labels), pa.list_(pa.float32())),
            "label_quality": pa.array(
                np.where(flagged, 0.01, 0.9).astype(np.float32), mask=~labelled
            ),
            "is_label_issue": pa.array(flagged),
            "label_predicted": pa.array(predicted, type=label.type),
            "label_source": pa.array(np.where(labelled, "given", "unlabelled").tolist()),
            "sample_weight": pa.array(labelled.astype(np.float32)),
        }
    )
    path.mkdir(parents=True)
    pq.write_table(table, path / "refined.parquet")
    rounds = [{"round": 1, "flagged": int(flagged.sum()), "changed": 0, "reliable": True}]
    pq.write_table(pa.Table.from_pylist(rounds, schema=ROUNDS_SCHEMA), path / "rounds.parquet")
    (path / "run.json").write_text(json.dumps({"classes": classes, **summary}))
    return path


# --- what a run records for the report ----------------------------------------------------------


def test_reliability_bins_hold_the_ece():
    rng = np.random.default_rng(0)
    proba = rng.dirichlet(np.ones(4) * 0.5, size=500)
    labels = rng.integers(0, 4, size=500)
    bins = reliability_bins(proba, labels)
    assert len(bins["edges"]) == 16 and len(bins["count"]) == 15
    assert sum(bins["count"]) == 500
    filled = [i for i, c in enumerate(bins["count"]) if c]
    ece = sum(bins["count"][i] * abs(bins["accuracy"][i] - bins["confidence"][i]) for i in filled)
    assert ece / 500 == pytest.approx(expected_calibration_error(proba, labels))
    # Known answer: two rows in the top bin, one right; nothing elsewhere.
    tiny = reliability_bins(np.array([[0.99, 0.01], [0.97, 0.03]]), np.array([0, 1]))
    assert tiny["count"] == [0] * 14 + [2]
    assert tiny["accuracy"][-1] == 0.5 and tiny["confidence"][-1] == pytest.approx(0.98)
    assert tiny["accuracy"][0] is None


def test_confident_joint_counts_given_by_likely_class():
    labels = np.array([0, 0, 0, 1, 1, 1])
    proba = np.array([[0.9, 0.1], [0.8, 0.2], [0.1, 0.9], [0.2, 0.8], [0.1, 0.9], [0.1, 0.9]])
    assert confident_joint(labels, proba) == [[2, 1], [0, 3]]
    assert confident_joint(np.zeros(4, int), np.full((4, 2), 0.5)) is None


def test_a_run_records_what_the_report_needs(finished_run):
    result, out = finished_run
    summary = json.loads((out / "run.json").read_text())
    assert summary["command"] is None  # run from Python
    joint = np.array(summary["noise_matrix"]["confident_joint"])
    assert joint.shape == (3, 3) and joint.sum() == summary["labelled"]
    reliability = summary["calibration"]["reliability"]
    assert sum(reliability["before"]["count"]) == sum(reliability["after"]["count"]) == 360
    assert summary["config"]["report"] is True


# --- the page ---------------------------------------------------------------------------------


def test_a_run_writes_a_self_contained_report_with_every_section(finished_run):
    _, out = finished_run
    page = (out / "report.html").read_text()
    assert page.startswith("<!doctype html>")
    assert f'<meta http-equiv="Content-Security-Policy" content="{CSP}">' in page
    for key in SECTIONS:
        assert f'<section id="{key}">' in page and f'href="#{key}"' in page
    assert '<section id="truth">' not in page  # the data has no truth columns
    assert "<script" not in page.lower() and "@import" not in page
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert all(s.startswith(("data:image/svg+xml;base64,", "#")) for s in sources), sources
    assert len([s for s in sources if s.startswith("data:")]) == 4  # the four plots
    assert "<th>command</th><td>not recorded (run from Python)</td>" in page
    assert "@media print" in page


def test_refine_report_rebuilds_the_same_page_from_the_files(finished_run, tmp_path):
    _, out = finished_run
    target = tmp_path / "again.html"
    result = invoke("report", out, "--out", target)
    assert result.exit_code == 0, result.output
    assert result.output == f"wrote {target}\n"
    assert target.read_text() == (out / "report.html").read_text()
    assert write_report(out, tmp_path / "lib.html").read_text() == target.read_text()


def test_every_data_value_is_escaped(planted_run):
    page = (planted_run / "report.html").read_text()
    assert PLANTED_LABEL not in page and "<img src=x" not in page
    assert "&lt;script&gt;window.__pwned=1&lt;/script&gt;" in page
    assert "&quot;&gt;&lt;img src=x onerror=&quot;window.__pwned=2&quot;&gt;" in page
    assert "<script" not in page.lower() and "onerror=" not in page.replace("onerror=&quot;", "")


def test_a_run_with_the_truth_scores_the_flags_and_labels(planted_run):
    page = (planted_run / "report.html").read_text()
    truth = section(page, "truth")
    refined = pq.read_table(planted_run / "refined.parquet")
    is_noisy = refined.column("is_noisy").to_numpy()
    scores = flag_scores(
        refined.column("is_label_issue").to_numpy(zero_copy_only=False),
        is_noisy,
        refined.column("label_quality").to_numpy(zero_copy_only=False),
    )
    assert scores["recall"] > 0.5  # the run found noise to score
    cells = re.findall(r'<td class="num">([^<]*)</td>', truth)
    for key in ("precision", "recall", "f1", "auprc"):
        assert f"{scores[key]:.3f}" in cells
    given = np.array(refined.column("label").to_pylist())
    right = given == np.array(refined.column("label_true").to_pylist())
    assert f"{right.mean():.3f}" in cells  # accuracy of the given labels, for comparison
    assert "label_refined" in truth


def test_no_report_writes_none_and_the_cli_records_its_command(
    tmp_path, noisy_parquet, monkeypatch
):
    out = tmp_path / "run"
    args = ["run", noisy_parquet, "--out", out, "--ignore", "id", "--quiet", "--no-report"]
    # the CLI records the process's argv; under pytest that is pytest's own, so set it
    monkeypatch.setattr("sys.argv", ["refine", "run", "data file.parquet", "--no-report"])
    result = invoke(*args, "--max-epochs", "5", "--folds", "3", "--rounds", "1")
    assert result.exit_code == 0, result.output
    assert not (out / "report.html").exists()
    summary = json.loads((out / "run.json").read_text())
    assert summary["config"]["report"] is False
    assert summary["command"] == "refine run 'data file.parquet' --no-report"
    # The report can still be built afterwards, from the files alone.
    assert invoke("report", out).output == f"wrote {out / 'report.html'}\n"
    assert '<section id="rows">' in (out / "report.html").read_text()


def test_an_update_writes_a_report_too(finished_run, tmp_path, noisy_data):
    _, first = finished_run
    out = tmp_path / "next"
    command = "refine update first batch.parquet --out next"
    batch = noisy_data[0].slice(0, 90)
    refine.update(first, batch, out, replay=0, rounds=1, max_epochs=5, command=command)
    page = (out / "report.html").read_text()
    assert "updated from" in section(page, "summary")
    assert f"<code>{command}</code>" in section(page, "summary")
    assert json.loads((out / "run.json").read_text())["command"] == command


def test_report_errors(tmp_path):
    missing = invoke("report", tmp_path / "nowhere")
    assert missing.exit_code == 2
    assert missing.output.strip() == (
        f"Error: run directory {str(tmp_path / 'nowhere')!r} does not exist; "
        "pass the --out of a refine run"
    )
    (tmp_path / "empty").mkdir()
    empty = invoke("report", tmp_path / "empty")
    assert empty.exit_code == 2
    assert empty.output.strip() == (
        f"Error: {str(tmp_path / 'empty')!r} is not a refine run: it has no run.json. "
        "Pass a directory written by refine run or refine update"
    )
    assert not (tmp_path / "empty" / "report.html").exists()
    run = fake_run(tmp_path / "run", [0, 1] * 3, [0, 1])
    cannot = invoke("report", run, "--out", tmp_path / "no" / "such" / "dir.html")
    assert cannot.exit_code == 2
    assert cannot.output.startswith(
        f"Error: cannot write the report to {str(tmp_path / 'no' / 'such' / 'dir.html')!r}: "
    )
    (run / "run.json").write_text("{not json")
    with pytest.raises(InputError, match="cannot read the run"):
        build_report(run)


def test_importing_refine_does_not_load_matplotlib():
    code = "import sys, refine.cli; print('matplotlib' in sys.modules)"
    found = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert found.stdout.strip() == "False"  # refine --help stays fast


# --- edge runs ------------------------------------------------------------------------------


def test_an_older_run_without_the_new_fields_shows_not_recorded(tmp_path):
    run = fake_run(tmp_path / "old", ["a", "b", None] * 4, ["a", "b"], rows=12, flagged_rows=[0])
    page = build_report(run)
    assert "Noise matrix not recorded" in section(page, "noise")
    assert "Reliability diagram: not recorded." in section(page, "calibration")
    assert "<th>command</th><td>not recorded</td>" in page
    assert "<th>device</th><td>not recorded</td>" in page
    assert "4 unlabelled" in section(page, "summary")  # counts come from refined.parquet
    assert "0.0100" in section(page, "rows")  # the flagged row, lowest quality first


def test_a_run_with_nothing_flagged_and_unlabelled_rows(tmp_path):
    joint = {"confident_joint": [[10, 0], [0, 10]]}
    run = fake_run(tmp_path / "calm", [True, False, None] * 10, [False, True], noise_matrix=joint)
    page = build_report(run)
    assert "No row was flagged; the 50 labelled rows with the lowest label quality" in page
    assert "Estimated noise: 0 of 20 labelled rows (0.0%)" in section(page, "noise")


def test_a_run_without_labelled_rows(tmp_path):
    run = fake_run(
        tmp_path / "none",
        [None] * 6,
        ["x", "y"],
        noise_matrix={"confident_joint": None},
        calibration={"reliability": None},
    )
    page = build_report(run)
    assert "fewer than two classes have labelled rows" in section(page, "noise")
    assert "No labelled rows, so no label quality to show." in section(page, "quality")
    assert "no labelled rows to measure" in section(page, "calibration")


def test_two_hundred_classes_show_the_noisiest_twenty(tmp_path):
    k = 200
    classes = [f"class {i:03d}" for i in range(k)]
    rng = np.random.default_rng(1)
    joint = np.diag(rng.integers(5, 20, size=k))
    joint[3, 7] = joint[150, 2] = 9
    labels = [classes[i] for i in rng.integers(0, k, size=1000)]
    run = fake_run(
        tmp_path / "many",
        labels,
        classes,
        noise_matrix={"confident_joint": joint.tolist()},
        flagged_rows=list(range(0, 1000, 7)),
    )
    page = build_report(run)
    assert "Showing the 20 of 200 classes with the most estimated off-diagonal rows" in page
    assert "they hold 18 of the 18 off-diagonal rows" in page
    assert "The 30 of 200 classes with the most flagged rows." in section(page, "classes")


# --- in a real browser ------------------------------------------------------------------------


def _playwright():
    """playwright's sync API driving Debian's chromium, or a skip (a failure in CI, where
    REFINE_REQUIRE_BROWSER=1) naming what is missing."""
    reason = None
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        reason = "playwright is not installed: pip install -e '.[test]'"
    if reason is None and not CHROMIUM.exists():
        reason = f"no {CHROMIUM}: apt-get install chromium"
    if reason is not None:
        if os.environ.get("REFINE_REQUIRE_BROWSER") == "1":
            pytest.fail(reason)
        pytest.skip(reason)
    return sync_playwright


@pytest.mark.browser
def test_the_report_opens_in_chromium_offline_and_runs_no_planted_script(planted_run, tmp_path):
    sync_playwright = _playwright()
    url = (planted_run / "report.html").resolve().as_uri()
    console, errors, requests = [], [], []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=BROWSER_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda r: requests.append(r.url))
            page.goto(url, wait_until="load")
            page.screenshot(path=tmp_path / "report.png", full_page=True)
            pwned = page.evaluate("typeof window.__pwned")
            headings = page.locator("section h2").all_inner_texts()
            images = page.eval_on_selector_all(
                "img", "images => images.map(i => i.complete && i.naturalWidth > 0)"
            )
            label_shown = page.get_by_text(PLANTED_LABEL, exact=True).first.is_visible()
            feature_shown = page.get_by_text(PLANTED_FEATURE, exact=True).first.is_visible()
            columns = page.locator("#columns")
            columns_shown = columns.is_visible() and columns.locator("table").first.is_visible()
            columns_text = columns.inner_text()
            key_shown = page.locator("#rows thead th").all_inner_texts()[:3]
        finally:
            browser.close()
    assert console == [] and errors == []
    assert all(r == url or r.startswith("data:") for r in requests), requests
    assert pwned == "undefined"
    assert label_shown and feature_shown
    assert columns_shown
    assert "label_true, is_noisy (the --ignore'd columns)" in columns_text
    assert "x0, x1, x2" in columns_text
    assert key_shown == ["row_number", "label_true", "is_noisy"]
    assert headings == [
        "Summary",
        "Columns",
        "Trust",
        "Estimated label noise",
        "Label quality",
        "Calibration",
        "Rounds",
        "Classes",
        "Likely wrong labels",
        "Against the true labels",
    ]
    assert images == [True] * 4  # every plot decoded
    assert (tmp_path / "report.png").stat().st_size > 10_000


@pytest.mark.browser
def test_the_screenshot_script_works(planted_run, tmp_path):
    """The repository keeps no screenshot (it went stale); this script is the way to take one."""
    _playwright()
    out = tmp_path / "report.png"
    script = Path(__file__).resolve().parent.parent / "dev" / "screenshot_report.py"
    done = subprocess.run(
        [sys.executable, str(script), str(planted_run), str(out), "--full-page", "--colours", "64"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == f"wrote {out}\n"
    with Image.open(out) as image:
        assert image.format == "PNG" and image.mode == "P" and image.width == 1280
        assert image.height > 900  # the whole page, not one screen
