"""Image columns: decoding, detection, the CNN, undecodable values, errors, a saved run's round
trip and a known-answer refine run on digits rendered to PNG."""

from __future__ import annotations

import io
import warnings

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from click.testing import CliRunner
from PIL import Image
from sklearn.base import clone

import refine
from refine.bench.recipes import build_dataset
from refine.bench.sources import png_images
from refine.cli import cli
from refine.encode.features import FeatureEncoder, fit_features
from refine.encode.image import ImageEncoder, looks_like_image
from refine.errors import InputError
from refine.learn.model import MLPClassifier, build_network
from refine.update import load_run

# Small settings for the CNN: 3 folds, 1 round, few epochs (a few seconds per run here).
TINY = dict(max_epochs=12, hidden=(64,), folds=3, rounds=1)


@pytest.fixture(scope="module")
def digits():
    images, truth = png_images("digits", side=16)
    return images, truth


def image_table(digits, rows: int = 240, values=None) -> pa.Table:
    images, truth = digits
    column = list(images[:rows]) if values is None else values
    return pa.table({"image": pa.array(column, pa.binary()), "label": truth[:rows]})


def corrupted(digits, rows: int = 240) -> list:
    values = list(digits[0][:rows])
    values[3] = b"not an image at all"  # no magic number
    values[5] = values[6][: len(values[6]) // 2]  # a PNG cut in half
    values[7] = None
    values[9] = b"\x89PNG\r\n\x1a\n" + b"\x00" * 50  # a PNG header and garbage
    return values


def test_rendered_digits_are_png_and_the_column_is_found_as_images(digits):
    images, truth = digits
    again, _ = png_images("digits", side=16)
    assert len(images) == 1797 and all(looks_like_image(b) for b in images[:50])
    assert list(images[:20]) == list(again[:20])  # rendering is deterministic
    encoder = fit_features(image_table(digits), "label")
    (image,) = encoder.encoders
    assert isinstance(image, ImageEncoder) and (image.channels, image.side) == (1, 16)
    assert encoder.image_blocks == ((0, 1, 16, 16),) and encoder.width == 256
    assert encoder.notes == []


def test_the_image_encoder_is_deterministic_and_round_trips_its_state(digits):
    table = image_table(digits, values=corrupted(digits))
    first = fit_features(table, "label", seed=3)
    X = first.transform(table)
    np.testing.assert_array_equal(X, fit_features(table, "label", seed=3).transform(table))
    assert X.shape == (240, 257) and np.isfinite(X).all()
    present = X[:, -1] == 0
    assert abs(X[present, :-1].mean()) < 1e-4 and abs(X[present, :-1].std() - 1) < 1e-3
    # the state loads with weights_only and encodes new rows exactly as the run did
    buffer = io.BytesIO()
    torch.save(first.state(), buffer)
    buffer.seek(0)
    restored = FeatureEncoder.from_state(torch.load(buffer, weights_only=True))
    np.testing.assert_array_equal(restored.transform(table), X)
    np.testing.assert_array_equal(
        restored.transform(table.slice(100, 40)), first.transform(table.slice(100, 40))
    )


def test_undecodable_and_null_images_are_missing_and_reported_with_their_rows(digits):
    table = image_table(digits, values=corrupted(digits))
    encoder = fit_features(table, "label")
    assert encoder.notes == [
        "image column 'image': 4 values are not usable images and count as missing "
        "(rows 3, 5, 7, 9): 3 undecodable; 1 null"
    ]
    X = encoder.transform(table)
    missing = np.zeros(240, bool)
    missing[[3, 5, 7, 9]] = True
    np.testing.assert_array_equal(X[:, -1], missing)  # the missing indicator
    assert not X[missing, :-1].any()  # the block's mean


def test_a_struct_of_bytes_and_path_reads_only_the_bytes(digits, tmp_path):
    images, truth = digits
    real_file = tmp_path / "real.png"
    real_file.write_bytes(images[0])
    rows = [{"bytes": images[i], "path": f"img{i}.png"} for i in range(60)]
    rows[2] = {"bytes": None, "path": str(real_file)}  # a path to a real image: never opened
    rows[4] = None
    kind = pa.struct([("bytes", pa.binary()), ("path", pa.string())])
    table = pa.table({"img": pa.array(rows, kind), "label": truth[:60]})
    encoder = fit_features(table, "label")
    assert encoder.notes == [
        "image column 'img': 2 values are not usable images and count as missing (rows 2, 4): "
        "1 null; 1 with a path but no bytes (refine reads only the embedded bytes, never a file "
        "a path names)"
    ]
    X = encoder.transform(table)
    assert X[2, -1] == 1 and not X[2, :-1].any()


def test_image_is_forced_on_a_column_of_mostly_other_bytes(digits):
    values = [b"\x00\x01 junk" if i % 3 else digits[0][i] for i in range(90)]
    table = image_table(digits, rows=90, values=values).append_column(
        "x", pa.array(np.arange(90.0))
    )
    found = fit_features(table, "label")
    assert found.columns == ["x"] and "image" in found.skipped
    forced = fit_features(table, "label", image=("image",))
    assert forced.columns == ["image", "x"]
    (note,) = forced.notes
    assert note.startswith(
        "image column 'image': 60 values are not usable images and count as missing "
        "(rows 1, 2, 4, 5, 7, ...): 60 undecodable"
    )


def test_image_columns_must_exist_and_hold_bytes(digits):
    table = image_table(digits, rows=30).append_column("x", pa.array(np.arange(30.0)))
    with pytest.raises(InputError, match="--image names column 'nope', which the input"):
        fit_features(table, "label", image=("nope",))
    with pytest.raises(InputError) as info:
        fit_features(table, "label", image=("x",))
    assert str(info.value) == (
        "--image column 'x' has type double, not binary; image columns hold encoded image bytes "
        "(binary), or a struct with a binary 'bytes' field"
    )


def test_the_network_is_unchanged_without_images_and_a_cnn_reads_image_blocks(digits):
    torch.manual_seed(0)
    plain = build_network(10, 3, (8,), 0.1)
    assert isinstance(plain, torch.nn.Sequential) and len(plain) == 4  # as before images
    X = fit_features(image_table(digits, rows=120), "label").transform(image_table(digits, 120))
    X = np.concatenate([X, np.ones((120, 2), np.float32)], axis=1)  # 2 more plain columns
    model = MLPClassifier(hidden=(32,), max_epochs=3, image_blocks=((0, 1, 16, 16),))
    assert clone(model).get_params()["image_blocks"] == ((0, 1, 16, 16),)
    fitted = model.fit(X, digits[1][:120])
    proba = fitted.predict_proba(X)
    np.testing.assert_allclose(proba.sum(1), 1, rtol=1e-5)
    again = clone(model).fit(X, digits[1][:120]).predict_proba(X)
    np.testing.assert_array_equal(proba, again)  # deterministic for a seed
    assert any(isinstance(m, torch.nn.Conv2d) for m in fitted.network_.modules())


def test_a_cli_run_on_png_digits_completes_and_reports_the_undecodable_rows(digits, tmp_path):
    path = tmp_path / "images.parquet"
    pq.write_table(image_table(digits, values=corrupted(digits)), path)
    out = tmp_path / "run"
    args = ["run", str(path), "--out", str(out), "--folds", "3", "--rounds", "1"]
    result = CliRunner().invoke(cli, [*args, "--max-epochs", "5", "--no-report"])
    assert result.exit_code == 0, result.output
    printed = " ".join(result.output.split())  # rich wraps long lines
    assert "4 values are not usable images and count as missing (rows 3, 5, 7, 9)" in printed
    refined = pq.read_table(out / "refined.parquet")
    assert refined.num_rows == 240 and refined.column("image").equals(
        pq.read_table(path).column("image")
    )


@pytest.mark.parametrize(
    ("option", "message"),
    [
        (
            "nope",
            "Error: --image names column 'nope', which the input does not have; its "
            "columns are: 'image', 'label', 'x'\n",
        ),
        (
            "x",
            "Error: --image column 'x' has type double, not binary; image columns hold "
            "encoded image bytes (binary), or a struct with a binary 'bytes' field\n",
        ),
        ("label", "Error: --image column 'label' is the label; drop it from --image\n"),
    ],
)
def test_the_cli_refuses_an_image_column_that_is_missing_or_not_binary(
    digits, tmp_path, option, message
):
    path = tmp_path / "images.parquet"
    table = image_table(digits, rows=120).append_column("x", pa.array(np.arange(120.0)))
    pq.write_table(table, path)
    result = CliRunner().invoke(
        cli, ["run", str(path), "--out", str(tmp_path / "r"), "--image", option]
    )
    assert result.exit_code == 2
    assert result.output == message


def test_an_image_model_gives_features_and_a_bad_file_is_refused(digits, tmp_path):
    class Pool(torch.nn.Module):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.adaptive_avg_pool2d(x, 4).flatten(1)

    model_path = tmp_path / "features.pt"
    with warnings.catch_warnings():  # torch 2.9+ deprecates TorchScript for torch.export
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(Pool()), model_path)
    table = image_table(digits, rows=240)
    path = tmp_path / "images.parquet"
    pq.write_table(table, path)
    out = tmp_path / "run"
    result = refine.run(
        path, out, image_model=str(model_path), image_size=32, seed=0, report=False, **TINY
    )
    assert result.summary["features"]["columns"][0]["image_model_features"] == 48  # 3 x 4 x 4
    previous = load_run(out)
    assert previous.models[0].image_blocks == ()  # plain features: no CNN
    assert previous.predict(table)[0].shape == (240, 10)

    # The run recorded the file's SHA-256: a file changed since is refused, not silently used.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.jit.save(torch.jit.script(torch.nn.Flatten()), model_path)
    with pytest.raises(InputError, match="has changed since the run used it"):
        load_run(out)

    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not torchscript")
    refused = CliRunner().invoke(
        cli, ["run", str(path), "--out", str(tmp_path / "r"), "--image-model", str(bad)]
    )
    assert refused.exit_code == 2
    assert refused.output == (
        f"Error: --image-model {str(bad)!r} is not a TorchScript file (RuntimeError); save the "
        "network with torch.jit.save(torch.jit.script(model), path)\n"
    )


def test_mixed_image_and_numeric_rows_train_with_the_image_block_after_the_numbers(digits):
    images, truth = digits
    rows = 240
    ink = [float(np.asarray(Image.open(io.BytesIO(b))).mean()) for b in images[:rows]]
    table = pa.table(
        {
            "ink": pa.array(ink, pa.float64()),
            "image": pa.array(list(images[:rows]), pa.binary()),
            "label": truth[:rows],
        }
    )
    encoder = fit_features(table, "label")
    assert [c["kind"] for c in encoder.describe()["columns"]] == ["numeric", "image"]
    assert encoder.image_blocks == ((encoder.encoders[0].width, 1, 16, 16),)
    result = refine.run(table, seed=0, report=False, **TINY)
    assert result.proba.shape == (rows, 10)
    accuracy = (result.proba.argmax(1) == truth[:rows]).mean()
    assert accuracy > 0.5  # measured 0.75; the ink column alone gets 0.17 of 10 classes


def test_a_saved_image_run_predicts_what_the_run_did(digits, tmp_path):
    images, truth = digits
    rows = 300
    label = pa.array(truth[:rows], mask=np.arange(rows) % 10 == 0)  # 30 unlabelled rows
    table = pa.table({"image": pa.array(list(images[:rows]), pa.binary()), "label": label})
    result = refine.run(table, tmp_path / "run", seed=0, report=False, pseudo_label=False, **TINY)
    previous = load_run(tmp_path / "run")
    assert previous.models[0].image_blocks == ((0, 1, 16, 16),)
    unlabelled = np.arange(rows) % 10 == 0  # their run probabilities: every fold model's mean
    proba, _ = previous.predict(table.filter(pa.array(unlabelled)))
    np.testing.assert_allclose(proba, result.proba[unlabelled], atol=1e-5)


@pytest.mark.slow
def test_flipped_labels_in_png_digits_are_found_and_fixed():
    built = build_dataset("digits_png-sym20")
    train = built.train
    truth = train.column("label_true").to_numpy()
    given = train.column("label").to_numpy()
    result = refine.run(
        train, ignore=("label_true", "is_noisy"), seed=0, report=False, **{**TINY, "max_epochs": 20}
    )
    refined = result.refined.column("label_refined").to_numpy(zero_copy_only=False)
    given_accuracy = (given == truth).mean()  # 0.800
    refined_accuracy = (refined == truth).mean()  # measured 0.965 (+0.165), 6.6 s on 2 cores
    assert refined_accuracy > given_accuracy + 0.10


def test_symmetric_noise_on_png_digits_is_exact():
    built = build_dataset("digits_png-sym20")
    noisy = built.train.column("is_noisy").to_numpy(zero_copy_only=False)
    assert built.train.schema.field("image").type == pa.binary()
    assert noisy.sum() == round(0.2 * built.train.num_rows)


def test_an_image_student_learns_from_a_pixel_teacher(digits, tmp_path):
    """Cross-modal distillation onto an image column: the teacher reads the 64 raw pixel values
    (an embedding column), the student that model.pt keeps is the CNN on the PNG bytes."""
    from sklearn.datasets import load_digits

    from refine.bench.noise import flip_symmetric

    images, truth = digits
    rows = 300
    pixels = load_digits().data[:rows].astype(np.float32)
    table = pa.table(
        {
            "pixels": pa.FixedSizeListArray.from_arrays(pa.array(pixels.reshape(-1)), 64),
            "image": pa.array(list(images[:rows]), pa.binary()),
            "label": flip_symmetric(truth[:rows], 0.2, 10, seed=3),
        }
    )
    out = tmp_path / "run"
    result = refine.run(
        table,
        out,
        teacher_features=("pixels",),
        student_features=("image",),
        seed=0,
        report=False,
        **TINY,
    )
    assert result.summary["student"]["features"] == ["image"]
    previous = load_run(out)
    assert previous.encoder.columns == ["image"]
    assert previous.models[0].image_blocks == ((0, 1, 16, 16),)
    proba, _ = previous.predict(table.select(["image"]))  # no pixel column needed
    assert proba.shape == (rows, 10)
    # Rows it trained on, so only a sanity floor: the labels it learned were 80% right.
    accuracy = (proba.argmax(1) == truth[:rows]).mean()
    assert accuracy > 0.5  # measured 0.66 with these tiny settings (12 epochs, 1 round)
