"""--image-model DIR: a transformers vision model directory for image columns, its embedding
cache, how a run records the model, and the directories refused. The models are tiny random
ViTs (and a CLIP and a ConvNeXt) built offline in a temporary directory."""

from __future__ import annotations

import importlib.abc
import json
import shutil
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

import refine
from refine.cli import cli
from refine.encode import vision
from refine.encode.embedding import EmbeddingCache
from refine.encode.features import fit_features
from refine.encode.vision import encode_images, load_vision_model
from refine.io.query import query
from refine.update import load_run
from tests.conftest import assert_update_refuses_the_changed_model, count_calls, image_batch

transformers = pytest.importorskip("transformers")

SMALL = dict(max_epochs=8, hidden=(16,), folds=2, rounds=1, report=False)
# A one-layer transformer of width 16 on 32-pixel images in 8-pixel patches.
TINY_VISION = dict(
    image_size=32,
    patch_size=8,
    hidden_size=16,
    num_hidden_layers=1,
    num_attention_heads=2,
    intermediate_size=32,
)


def build_tiny_vit(path, seed: int = 0, pooler: bool = True):
    """A randomly initialised one-layer ViT of width 16 on 32-pixel images, with its image
    processor, saved as a transformers directory at ``path``: offline, in a second."""
    import torch

    torch.manual_seed(seed)
    config = transformers.ViTConfig(**TINY_VISION)
    transformers.ViTModel(config, add_pooling_layer=pooler).save_pretrained(path)
    _processor(path)
    return path


def _processor(path, cls: str = "ViTImageProcessor", **sizes) -> None:
    # transformers 5 warns that its default backend wants torchvision; the Pillow one is used.
    pil = getattr(transformers, cls + "Pil", None) or getattr(transformers, cls)
    pil(**(sizes or {"size": {"height": 32, "width": 32}})).save_pretrained(path)


@pytest.fixture(scope="module")
def tiny_vit(tmp_path_factory):
    return build_tiny_vit(tmp_path_factory.mktemp("tiny-vit"))


@pytest.fixture()
def counted(monkeypatch):
    """How many values went through the network, call by call."""
    return count_calls(monkeypatch, vision)


def test_images_embed_deterministically_and_missing_ones_are_nan(tiny_vit, png_digits, counted):
    images = list(png_digits[0][:4])
    values = [images[0], images[1], None, b"\x89PNG\r\n\x1a\n broken", images[0], images[2]]
    first = encode_images(values, str(tiny_vit), cache="off")
    second = encode_images(values, load_vision_model(tiny_vit), cache="off")
    assert first.shape == (6, 16) and first.dtype == np.float32
    np.testing.assert_array_equal(first, second)
    np.testing.assert_array_equal(first[0], first[4])  # equal bytes, one embedding
    assert np.isnan(first[2]).all() and np.isnan(first[3]).all()
    assert np.isfinite(first[[0, 1, 5]]).all() and not np.array_equal(first[0], first[1])
    assert counted == [4, 4]  # each distinct non-null value once per call
    with pytest.raises(refine.InputError, match="value 1 is a str: 'photo.png'"):
        encode_images([images[0], "photo.png"], str(tiny_vit), cache="off")

    # the ViT's pooled output, from the processor's pixels: nothing else decides the numbers
    import io

    import torch
    from PIL import Image

    network, processor, pooled = load_vision_model(tiny_vit).loaded()
    rgb = [Image.open(io.BytesIO(images[1])).convert("RGB")]
    with torch.inference_mode():
        direct = network(**processor(images=rgb, return_tensors="pt")).pooler_output
    assert pooled
    # A batch of four and a batch of one sum in another order: float32 rounding apart (1e-6
    # relative on some CPUs), far below any difference in how the pixels were made.
    np.testing.assert_allclose(first[1], direct[0].numpy(), rtol=1e-5, atol=1e-7)


def test_the_cache_directory_spares_the_model_images_it_has_seen(
    tiny_vit, png_digits, tmp_path, counted
):
    model = load_vision_model(tiny_vit)
    values = list(png_digits[0][:3])
    first = encode_images(values, model, EmbeddingCache(tmp_path / "cache", strict=True))
    # a fresh cache object on the same directory: nothing in memory, everything on disk
    again = encode_images(values[::-1], model, EmbeddingCache(tmp_path / "cache", strict=True))
    np.testing.assert_array_equal(again, first[::-1])
    more = encode_images([*values, png_digits[0][3]], model, EmbeddingCache(tmp_path / "cache"))
    np.testing.assert_array_equal(more[:3], first)
    assert counted == [3, 1]
    assert len(list((tmp_path / "cache" / model.sha256).glob("*.parquet"))) == 2


def test_a_run_records_the_model_and_a_rerun_encodes_nothing(
    tiny_vit, image_table_path, tmp_path, counted
):
    cache = str(tmp_path / "cache")
    options = dict(image_model=str(tiny_vit), embedding_cache=cache, seed=0, **SMALL)
    result = refine.run(image_table_path, tmp_path / "a", **options)
    column = result.summary["features"]["columns"][0]
    assert column["kind"] == "image-model" and column["dim"] == 16 and column["indicator"]
    assert (column["undecodable_values"], column["null_values"]) == (1, 1)
    assert column["rows_encoded"] == 78 and column["rows_from_cache"] == 0
    record = column["image_model"]
    assert record["path"] == str(tiny_vit.resolve()) and record["format"] == "transformers"
    assert set(record["files"]) == {"config.json", "model.safetensors", "preprocessor_config.json"}
    assert record["sha256"] == load_vision_model(tiny_vit).sha256
    assert {"transformers", "torch", "pillow"} <= set(record["versions"])
    # fit reads each value once (78 images, 1 undecodable); transform finds them in memory
    assert counted == [79]

    # a rerun from run.json keeps its cache setting and finds every image there
    config = str(tmp_path / "a" / "run.json")
    rerun = CliRunner().invoke(cli, ["run", "--config", config, "--out", str(tmp_path / "b")])
    assert rerun.exit_code == 0, rerun.output
    assert "image column 'image': every embedding came from the cache" in rerun.output
    assert "image column 'image': 2 values are not usable images" in rerun.output
    assert counted[1:] == [1]  # only the undecodable value is read again (it is never cached)
    summary = json.loads((tmp_path / "b" / "run.json").read_text())
    assert summary["features"]["columns"][0]["rows_from_cache"] == 78
    a, b = (pq.read_table(tmp_path / d / "refined.parquet") for d in ("a", "b"))
    assert a.equals(b)
    assert (tmp_path / "a" / "refined.parquet").read_bytes() == (
        tmp_path / "b" / "refined.parquet"
    ).read_bytes()

    # the saved run encodes new rows as the run's (the embeddings from memory or the cache)
    previous = load_run(tmp_path / "a")
    table = pq.read_table(image_table_path)
    np.testing.assert_array_equal(
        previous.encoder.transform(table), result_features(options, table)
    )
    proba = previous.predict(table)[0]
    assert proba.shape[0] == 80 and np.allclose(proba.sum(1), 1, atol=1e-5)


def result_features(options, table):
    encoder = fit_features(
        table,
        "label",
        image_model=options["image_model"],
        embedding_cache=options["embedding_cache"],
    )
    return encoder.transform(table)


def test_update_uses_the_cache_and_refuses_a_changed_model(
    tiny_vit, image_table_path, png_digits, tmp_path, counted
):
    model = tmp_path / "model"
    shutil.copytree(tiny_vit, model)
    cache = str(tmp_path / "cache")
    refine.run(
        image_table_path, tmp_path / "a", image_model=str(model), embedding_cache=cache, **SMALL
    )
    batch_path = image_batch(png_digits, tmp_path / "batch.parquet")
    before = len(counted)
    result = refine.update(tmp_path / "a", batch_path, tmp_path / "b", replay=0)
    assert counted[before:] == [30]
    assert result.summary["features"]["columns"][0]["image_model"]["sha256"]

    # the same directory, other weights: refused before anything is written
    shutil.rmtree(model)
    build_tiny_vit(model, seed=1)
    assert_update_refuses_the_changed_model(
        tmp_path / "a", batch_path, model, "image-model", tmp_path / "c"
    )


def test_a_run_keeps_the_image_embeddings_and_update_reads_them_with_no_cache(
    tiny_vit, image_table_path, png_digits, tmp_path, counted
):
    refine.run(
        image_table_path, tmp_path / "a", image_model=str(tiny_vit), embedding_cache="off", **SMALL
    )
    embeddings = pq.read_table(tmp_path / "a" / "embeddings.parquet")
    assert embeddings.column_names == ["row_number", "image_model", "image_model_sha256", "image"]
    assert embeddings["image_model_sha256"].to_pylist() == [load_vision_model(tiny_vit).sha256] * 80
    vectors = embeddings["image"].to_pylist()
    assert vectors[3] is None and vectors[7] is None  # not an image, null
    direct = encode_images(pq.read_table(image_table_path)["image"], str(tiny_vit), cache="off")
    usable = [i for i in range(80) if i not in (3, 7)]
    np.testing.assert_array_equal(
        np.array([vectors[i] for i in usable], np.float32), direct[usable]
    )
    joined = query(
        tmp_path / "a",
        "SELECT count(*) AS n FROM refined JOIN embeddings USING (row_number) "
        "WHERE embeddings.image IS NOT NULL",
    )
    assert joined["n"].to_pylist() == [78]

    # with no cache at all, the run's file spares the model the images the run saw
    batch_path = image_batch(png_digits, tmp_path / "batch.parquet")
    before = len(counted)
    refine.update(tmp_path / "a", batch_path, tmp_path / "b", replay=0, embedding_cache="off")
    assert counted[before:] == [30]


def test_text_and_image_models_share_the_embeddings_file(
    tiny_vit, tiny_text_model, png_digits, tmp_path
):
    images, truth = png_digits
    words = ["free money now", "hello friend", "see you today", "click here"]
    table = pa.table(
        {
            "image": pa.array(list(images[:60]), pa.binary()),
            "note": [words[t % 4] for t in truth[:60]],
            "label": truth[:60],
        }
    )
    path = tmp_path / "both.parquet"
    pq.write_table(table, path)
    refine.run(
        path,
        tmp_path / "a",
        image_model=str(tiny_vit),
        text_model=str(tiny_text_model),
        text=("note",),
        embedding_cache="off",
        **SMALL,
    )
    embeddings = pq.read_table(tmp_path / "a" / "embeddings.parquet")
    assert embeddings.column_names == [
        "row_number",
        "text_model",
        "text_model_sha256",
        "note",
        "image_model",
        "image_model_sha256",
        "image",
    ]
    assert embeddings.schema.field("note").type == pa.list_(pa.float32())
    assert embeddings["image"].null_count == 0


@pytest.mark.parametrize(
    ("files", "lacking"),
    [
        (
            {},
            "config.json, preprocessor_config.json, weights (model.safetensors or pytorch_model.bin)",
        ),
        (
            {"config.json": "{}"},
            "preprocessor_config.json, weights (model.safetensors or pytorch_model.bin)",
        ),
    ],
)
def test_a_directory_that_is_not_a_model_is_exit_2_naming_what_it_lacks(
    image_table_path, tmp_path, files, lacking
):
    folder = tmp_path / "not-a-model"
    folder.mkdir()
    for name, text in files.items():
        (folder / name).write_text(text)
    outcome = CliRunner().invoke(
        cli,
        ["run", str(image_table_path), "--image-model", str(folder), "--out", str(tmp_path / "r")],
    )
    assert outcome.exit_code == 2
    assert outcome.output == (
        f"Error: --image-model {str(folder)!r} is not a model directory refine can read: it "
        f"lacks {lacking}. Pass a Hugging Face transformers vision model saved with "
        "model.save_pretrained(DIR) and image_processor.save_pretrained(DIR), or a TorchScript "
        "file\n"
    )
    assert not (tmp_path / "r").exists()


def test_an_open_clip_directory_is_exit_2_saying_what_to_pass(image_table_path, tmp_path):
    folder = tmp_path / "other-model"
    folder.mkdir()
    (folder / "open_clip_config.json").write_text("{}")
    (folder / "open_clip_model.safetensors").write_bytes(b"")
    outcome = CliRunner().invoke(
        cli,
        ["run", str(image_table_path), "--image-model", str(folder), "--out", str(tmp_path / "r")],
    )
    assert outcome.exit_code == 2
    assert outcome.output == (
        f"Error: --image-model {str(folder)!r} is an open_clip model directory: refine does not "
        "read those. Save the network with torch.jit.save(torch.jit.script(model), 'model.pt') "
        "and pass that file, or pass a timm or Hugging Face transformers model directory\n"
    )


def test_a_timm_directory_without_timm_is_exit_2_naming_the_install(
    image_table_path, tmp_path, monkeypatch
):
    """Runs without timm: tests/test_timm_model.py reads timm directories where it imports."""
    folder = tmp_path / "timm-model"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps({"architecture": "vit_small_patch16_224"}))
    args = [
        "run",
        str(image_table_path),
        "--image-model",
        str(folder),
        "--out",
        str(tmp_path / "r"),
    ]
    unweighted = CliRunner().invoke(cli, args)
    assert unweighted.exit_code == 2
    assert unweighted.output == (
        f"Error: --image-model {str(folder)!r} is a timm model directory that lacks weights "
        "(model.safetensors or pytorch_model.bin): save the model with "
        "timm.models.save_for_hf(model, DIR, safe_serialization=True)\n"
    )
    (folder / "model.safetensors").write_bytes(b"")
    monkeypatch.setitem(sys.modules, "timm", None)  # as on a machine without timm
    outcome = CliRunner().invoke(cli, args)
    assert outcome.exit_code == 2
    assert outcome.output == (
        f"Error: --image-model {str(folder)!r} is a timm model directory (architecture "
        "'vit_small_patch16_224'): reading it needs timm, which is not installed: "
        "pip install 'refine[timm]'\n"
    )
    assert not (tmp_path / "r").exists()

    # a torchvision built for another torch (PyPI's CUDA one beside a CPU torch) fails to import
    import torch

    class BuiltForAnotherTorch(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name in ("timm", "torchvision"):
                raise RuntimeError("operator torchvision::nms does not exist")

    for name in ("timm", "torchvision"):
        monkeypatch.delitem(sys.modules, name, raising=False)
    monkeypatch.setattr(sys, "meta_path", [BuiltForAnotherTorch(), *sys.meta_path])
    broken = CliRunner().invoke(cli, args)
    assert broken.exit_code == 2
    assert broken.output.startswith(
        f"Error: --image-model {str(folder)!r} is a timm model directory (architecture "
        "'vit_small_patch16_224'): reading it needs timm, which needs torchvision, and "
        "torchvision "
    )
    assert broken.output.endswith(
        " does not import (RuntimeError: operator torchvision::nms does not exist): it is not "
        f"the build made for torch {torch.__version__}; install the one that is, from the index "
        "that torch came from; then pip install 'refine[timm]'\n"
    )


def test_image_size_and_a_missing_transformers_are_exit_2(
    tiny_vit, image_table_path, tmp_path, monkeypatch
):
    args = [
        "run",
        str(image_table_path),
        "--image-model",
        str(tiny_vit),
        "--out",
        str(tmp_path / "r"),
    ]
    sized = CliRunner().invoke(cli, [*args, "--image-size", "64"])
    assert sized.exit_code == 2
    assert sized.output == (
        "Error: --image-size 64 does not apply to a model directory: its image processor "
        "(preprocessor_config.json, or a timm config's pretrained_cfg) sizes the images; drop "
        "--image-size\n"
    )
    monkeypatch.setitem(sys.modules, "transformers", None)  # import fails
    missing = CliRunner().invoke(cli, args)
    assert missing.exit_code == 2
    assert missing.output == (
        "Error: --image-model with a model directory needs transformers, which is not "
        "installed: pip install 'refine[image]'\n"
    )
    assert not (tmp_path / "r").exists()


def test_each_kind_of_output_gives_the_images_vector(tmp_path, png_digits):
    """CLIP with a projection: its image embedding; a ViT saved without a pooler: the CLS
    token, not a randomly initialised pooler; ConvNeXt: its pooled output."""
    import torch

    torch.manual_seed(0)
    clip = tmp_path / "clip"
    transformers.CLIPVisionModelWithProjection(
        transformers.CLIPVisionConfig(**TINY_VISION, projection_dim=12)
    ).save_pretrained(clip)
    _processor(
        clip,
        "CLIPImageProcessor",
        size={"shortest_edge": 32},
        crop_size={"height": 32, "width": 32},
    )
    convnext = tmp_path / "convnext"
    transformers.ConvNextModel(
        transformers.ConvNextConfig(hidden_sizes=[8, 24], depths=[1, 1], num_stages=2)
    ).save_pretrained(convnext)
    _processor(convnext, "ConvNextImageProcessor", size={"shortest_edge": 32})
    bare = build_tiny_vit(tmp_path / "bare", pooler=False)
    values = list(png_digits[0][:3])
    widths = {
        p.name: encode_images(values, str(p), cache="off").shape[1] for p in (clip, convnext, bare)
    }
    assert widths == {"clip": 12, "convnext": 24, "bare": 16}
    twice = [encode_images(values, str(bare), cache="off") for _ in range(2)]
    np.testing.assert_array_equal(*twice)  # the random pooler, were it used, is drawn anew
    assert not load_vision_model(bare).loaded()[2]


def test_weights_that_do_not_fit_the_configuration_are_refused(tmp_path, png_digits):
    model = build_tiny_vit(tmp_path / "vit")
    config = json.loads((model / "config.json").read_text())
    (model / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 2}))
    with pytest.raises(refine.InputError, match=r"its weights do not fit its configuration \(16 "):
        encode_images(list(png_digits[0][:2]), str(model), cache="off")
