"""--image-model DIR with a timm model directory (the hub layout save_for_hf writes: config.json
naming the architecture, and the weights): the embeddings are timm's own, a run records the
model, the cache spares a rerun, and update refuses changed weights. The models are tiny random
timm networks saved offline in a temporary directory.

timm imports torchvision, which must be built for the installed torch; where it is not (a CPU
torch beside PyPI's CUDA torchvision), these tests skip saying so, and test_image_model.py
checks that refine then stops with exit 2 naming the install."""

from __future__ import annotations

import io
import json
import os
import shutil

import numpy as np
import pytest

import refine
from refine.encode import vision
from refine.encode.vision import TimmModel, encode_images, load_vision_model
from tests.conftest import assert_update_refuses_the_changed_model, count_calls, image_batch

try:
    import timm
    import timm.data
    from timm.models import save_for_hf
except Exception as exc:  # ImportError, or RuntimeError from a torchvision built for another torch
    if os.environ.get("REFINE_REQUIRE_TIMM"):
        raise
    pytest.skip(
        f"timm does not import here ({type(exc).__name__}: {exc}); dev/setup.sh installs "
        "refine[timm] where a torchvision built for this torch exists",
        allow_module_level=True,
    )

import torch  # noqa: E402

SMALL = dict(max_epochs=8, hidden=(16,), folds=2, rounds=1, report=False)
# A one-block ViT of width 16 on 32-pixel images in 8-pixel patches.
TINY_VIT = dict(img_size=32, patch_size=8, embed_dim=16, depth=1, num_heads=2)
# Resized to 36 pixels, then the centre 32 cropped: the transform does both.
PIXELS = dict(input_size=(3, 32, 32), crop_pct=0.875, interpolation="bicubic")


def build_tiny_timm(
    path,
    seed: int = 0,
    architecture: str = "vit_tiny_patch16_224",
    model_args: dict | None = None,
    safe: bool = True,
):
    """A randomly initialised timm network with a 3-class head, saved at ``path`` as timm's
    save_for_hf writes a hub directory (config.json with its pretrained_cfg and model_args,
    and model.safetensors, or pytorch_model.bin when not ``safe``). Returns the network."""
    model_args = TINY_VIT if model_args is None else model_args
    torch.manual_seed(seed)
    network = timm.create_model(
        architecture, pretrained=False, num_classes=3, pretrained_cfg_overlay=PIXELS, **model_args
    )
    save_for_hf(network, str(path), model_args=model_args, safe_serialization=safe)
    return network.eval()


def timm_features(network, images: list[bytes]) -> np.ndarray:
    """What timm itself gives for ``images``: its eval transform, then the pooled features
    before the classifier."""
    from PIL import Image

    transform = timm.data.create_transform(
        **timm.data.resolve_data_config({}, model=network), is_training=False
    )
    pixels = torch.stack([transform(Image.open(io.BytesIO(v)).convert("RGB")) for v in images])
    with torch.inference_mode():
        return network.forward_head(network.forward_features(pixels), pre_logits=True).numpy()


@pytest.fixture(scope="module")
def tiny_timm(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-timm")
    return path, build_tiny_timm(path)


@pytest.fixture()
def counted(monkeypatch):
    """How many values went through the network, call by call."""
    return count_calls(monkeypatch, vision)


def test_the_embeddings_are_timms_pooled_features(tiny_timm, png_digits, counted):
    path, network = tiny_timm
    images = list(png_digits[0][:3])
    values = [images[0], None, b"\x89PNG\r\n\x1a\n broken", images[1], images[2], images[0]]
    first = encode_images(values, str(path), cache="off")
    second = encode_images(values, load_vision_model(path), cache="off")
    assert first.shape == (6, 16) and first.dtype == np.float32  # the features, not 3 logits
    np.testing.assert_array_equal(first, second)
    assert np.isnan(first[1]).all() and np.isnan(first[2]).all()
    assert counted == [4, 4]  # each distinct non-null value once per call
    # timm's transform and forward on the saved network: nothing else decides the numbers
    np.testing.assert_allclose(first[[0, 3, 4]], timm_features(network, images), rtol=1e-5)
    assert not np.allclose(first[0], first[3])


def test_a_cnn_saved_as_a_torch_file_reads_with_weights_only(tmp_path, png_digits):
    network = build_tiny_timm(
        tmp_path / "cnn", architecture="test_efficientnet", model_args={}, safe=False
    )
    assert sorted(p.name for p in (tmp_path / "cnn").iterdir()) == [
        "config.json",
        "pytorch_model.bin",
    ]
    images = list(png_digits[0][:3])
    out = encode_images(images, str(tmp_path / "cnn"), cache="off")
    assert out.shape == (3, network.num_features)
    np.testing.assert_allclose(out, timm_features(network, images), rtol=1e-5, atol=1e-6)


def test_a_run_records_the_timm_model_and_a_rerun_encodes_nothing(
    tiny_timm, image_table_path, tmp_path, counted
):
    path = tiny_timm[0]
    options = dict(image_model=str(path), embedding_cache=str(tmp_path / "cache"), seed=0, **SMALL)
    result = refine.run(image_table_path, tmp_path / "a", **options)
    column = result.summary["features"]["columns"][0]
    assert column["kind"] == "image-model" and column["dim"] == 16 and column["indicator"]
    assert column["rows_encoded"] == 78 and column["rows_from_cache"] == 0
    record = column["image_model"]
    assert record["format"] == "timm" and record["architecture"] == "vit_tiny_patch16_224"
    assert record["path"] == str(path.resolve())
    assert set(record["files"]) == {"config.json", "model.safetensors"}
    assert record["sha256"] == load_vision_model(path).sha256
    assert {"timm", "torchvision", "torch", "pillow"} <= set(record["versions"])
    assert record["versions"]["timm"] == timm.__version__
    assert counted == [79]  # 78 images and the undecodable value, once

    again = refine.run(image_table_path, tmp_path / "b", **options)
    assert again.summary["features"]["columns"][0]["rows_from_cache"] == 78
    assert counted[1:] == [1]  # only the undecodable value is read again (it is never cached)
    assert (tmp_path / "a" / "refined.parquet").read_bytes() == (
        tmp_path / "b" / "refined.parquet"
    ).read_bytes()


def test_update_reads_new_images_and_refuses_changed_weights(
    tiny_timm, image_table_path, png_digits, tmp_path, counted
):
    model = tmp_path / "model"
    shutil.copytree(tiny_timm[0], model)
    refine.run(
        image_table_path, tmp_path / "a", image_model=str(model), embedding_cache="off", **SMALL
    )
    batch_path = image_batch(png_digits, tmp_path / "batch.parquet")
    before = len(counted)
    refine.update(tmp_path / "a", batch_path, tmp_path / "b", replay=0, embedding_cache="off")
    assert counted[before:] == [30]  # the run's embeddings.parquet holds the ten it saw

    # the same directory, other weights: refused before anything is written
    shutil.rmtree(model)
    build_tiny_timm(model, seed=1)
    assert_update_refuses_the_changed_model(
        tmp_path / "a", batch_path, model, "image-model", tmp_path / "c"
    )


def test_a_configuration_timm_cannot_build_or_fill_is_refused(tiny_timm, tmp_path, png_digits):
    model = tmp_path / "model"
    shutil.copytree(tiny_timm[0], model)
    config = json.loads((model / "config.json").read_text())
    deeper = {**config, "model_args": {**TINY_VIT, "depth": 2}}
    (model / "config.json").write_text(json.dumps(deeper))
    loaded = load_vision_model(model)
    assert isinstance(loaded, TimmModel)
    with pytest.raises(refine.InputError, match=r"its weights \(model.safetensors\) do not fit"):
        loaded.loaded()
    (model / "config.json").write_text(json.dumps({**config, "architecture": "no_such_net"}))
    with pytest.raises(refine.InputError, match="is not a model timm .* can build"):
        encode_images(list(png_digits[0][:1]), str(model), cache="off")


def test_a_config_from_before_timm_0_9_reads_its_pixels_settings_from_the_top(
    tiny_timm, tmp_path, png_digits
):
    """timm < 0.9 wrote pretrained_cfg's keys (input_size, crop_pct, mean, ...) beside the
    architecture; without them the tiny ViT would get vit_tiny's 224-pixel default."""
    model = tmp_path / "model"
    shutil.copytree(tiny_timm[0], model)
    config = json.loads((model / "config.json").read_text())
    legacy = {**config.pop("pretrained_cfg"), **config}
    (model / "config.json").write_text(json.dumps(legacy))
    images = list(png_digits[0][:3])
    np.testing.assert_array_equal(
        encode_images(images, str(model), cache="off"),
        encode_images(images, str(tiny_timm[0]), cache="off"),
    )
