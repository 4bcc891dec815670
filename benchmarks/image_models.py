"""How fast ``--image-model DIR`` encodes images on this machine's CPU, cold and from the cache.

No pretrained weights can be downloaded here, so each model is a transformers ViT with
randomly initialised weights, saved with its image processor in a temporary directory: the
arithmetic, and so the speed, is a pretrained model's of the same shape (the values are not).

* ``tiny``: the tests' ViT (32-pixel images, patch 8, width 16, one layer);
* ``vit-s16``: ViT-S/16's shape (224-pixel images, patch 16, width 384, 12 layers, 6 heads,
  22M parameters), as DINO's and DeiT's small models.

The images are ``--rows`` generated 256 x 256 RGB PNGs (noise under a few coloured boxes, so
each decodes as a photo-sized image would). Per model: seconds to fingerprint the directory
and load the network, then ``encode_images`` on every image through an empty cache directory
(cold: decode, processor, network; rows/s over the encoding alone), then again through that
directory in a fresh cache object (warm: what a rerun pays).

    PYTHONPATH=. python benchmarks/image_models.py [--models tiny,vit-s16] [--rows 300] \\
        [--batch-sizes 8,32,64]

Writes ``reports/image-models.md`` (``--out``) and ``reports/image-models.json`` beside it.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import platform
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
SHAPES = {
    "tiny": dict(
        image_size=32, patch_size=8, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
        intermediate_size=32,
    ),
    "vit-s16": dict(
        image_size=224, patch_size=16, hidden_size=384, num_hidden_layers=12,
        num_attention_heads=6, intermediate_size=1536,
    ),
}  # fmt: skip


def images(rows: int, seed: int = 0, side: int = 256) -> list[bytes]:
    """``rows`` PNGs of ``side`` x ``side``: noise under three boxes of random colours."""
    from PIL import Image, ImageDraw

    rng = np.random.default_rng(seed)
    out = []
    for _ in range(rows):
        image = Image.fromarray(rng.integers(0, 256, (side, side, 3), dtype=np.uint8))
        draw = ImageDraw.Draw(image)
        for _ in range(3):
            x, y = sorted(rng.integers(0, side, 2)), sorted(rng.integers(0, side, 2))
            draw.rectangle((x[0], y[0], x[1], y[1]), fill=tuple(rng.integers(0, 256, 3).tolist()))
        buffer = io.BytesIO()
        image.save(buffer, format="PNG")
        out.append(buffer.getvalue())
    return out


def build(shape: str, path: Path) -> Path:
    """A ViT of ``shape`` with random weights and its image processor, saved at ``path``."""
    import torch
    import transformers

    torch.manual_seed(0)
    config = transformers.ViTConfig(**SHAPES[shape])
    transformers.ViTModel(config).save_pretrained(path)
    side = config.image_size
    # transformers 5 warns that the default processor wants torchvision: take the Pillow one.
    processor = (
        getattr(transformers, "ViTImageProcessorPil", None) or transformers.ViTImageProcessor
    )
    processor(size={"height": side, "width": side}).save_pretrained(path)
    return path


def measure(path: Path, values: list[bytes], batch: int, workdir: Path) -> dict[str, Any]:
    """Load, cold, fill and warm timings of the model at ``path`` on ``values``."""
    from refine.encode.embedding import EmbeddingCache, Encoded
    from refine.encode.vision import encode_images, load_vision_model

    started = time.perf_counter()
    model = load_vision_model(path, device="cpu")
    model.batch = batch
    model.loaded()
    load = time.perf_counter() - started
    cold = Encoded()
    cache = workdir / f"cache-{path.name}-{batch}"
    encode_images(values, model, EmbeddingCache(cache), stats=cold)  # an empty cache: cold
    started = time.perf_counter()
    warm = Encoded()
    encode_images(values, model, EmbeddingCache(cache), stats=warm)
    warm_seconds = time.perf_counter() - started
    return {
        "batch": model.batch_size,
        "load_seconds": round(load, 2),
        "rows": len(values),
        "encoded": cold.encoded,
        "seconds": round(cold.seconds, 2),
        "rows_per_second": cold.rows_per_second,
        "warm_seconds": round(warm_seconds, 3),
        "warm_encoded": warm.encoded,
        "warm_rows_per_second": round(len(values) / warm_seconds, 1) if warm_seconds else None,
    }


def render(results: dict[str, list[dict[str, Any]]], header: str) -> str:
    lines = [
        "# `--image-model DIR`: encoding speed on the CPU",
        "",
        header,
        "",
        "Random weights: no pretrained model can be downloaded on this machine; a pretrained "
        "model of the same shape does the same arithmetic. Cold: decode, image processor and "
        "network, into an empty cache (the model already loaded). Warm: the same images again, "
        "from a cache directory read by a fresh cache object (a rerun or `refine update`).",
        "",
        "| model | batch | load s | rows | cold s | cold rows/s | warm s | warm rows/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, rows in results.items():
        for r in rows:
            lines.append(
                f"| {name} | {r['batch']} | {r['load_seconds']} | {r['rows']} | {r['seconds']} "
                f"| {r['rows_per_second']} | {r['warm_seconds']} | {r['warm_rows_per_second']} |"
            )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--models", default=",".join(SHAPES))
    parser.add_argument("--rows", type=int, default=300)
    parser.add_argument("--batch-sizes", default="32", help="images per batch, comma-separated")
    parser.add_argument("--out", type=Path, default=REPO / "reports" / "image-models.md")
    args = parser.parse_args()
    import torch

    values = images(args.rows)
    results: dict[str, list[dict[str, Any]]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        for name in args.models.split(","):
            path = build(name, workdir / name)
            results[name] = [
                measure(path, values, int(b), workdir) for b in args.batch_sizes.split(",")
            ]
            print(f"{name} done", flush=True)
    header = (
        f"`PYTHONPATH=. python benchmarks/image_models.py --models {args.models} --rows "
        f"{args.rows} --batch-sizes {args.batch_sizes}"
        f"{' --out ' + str(args.out.relative_to(REPO)) if args.out.is_relative_to(REPO) else ''}`"
        f"; {args.rows} generated 256 x 256 PNGs; torch {torch.__version__} on "
        f"{platform.machine()} with {torch.get_num_threads()} torch threads "
        f"({os.cpu_count()} CPUs, shared with other jobs: timings are noisy)."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(render(results, header))
    args.out.with_suffix(".json").write_text(json.dumps(results, indent=1) + "\n")
    print(args.out.read_text())


if __name__ == "__main__":
    main()
