"""Tiny datasets with known answers, and one shared refine run for the contract tests."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import refine
from refine.bench.noise import flip_symmetric

# Small models so the suite stays fast; the defaults are measured in benchmarks/.
FAST = dict(max_epochs=30, hidden=(64,), folds=3, rounds=2)


def blobs(n: int = 360, k: int = 3, dim: int = 4, seed: int = 0, spread: float = 0.6):
    """Well-separated Gaussian clusters: features ``(n, dim)`` and true labels ``(n,)``."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 3.0, size=(k, dim))
    truth = np.arange(n) % k
    X = centres[truth] + rng.normal(0.0, spread, size=(n, dim))
    return X.astype(np.float32), truth


def noisy_table(n: int = 360, k: int = 3, rate: float = 0.15, seed: int = 0):
    """A table with numeric columns ``x0..``, a categorical, an embedding and a noisy int label."""
    X, truth = blobs(n, k, seed=seed)
    noisy = flip_symmetric(truth, rate, k, seed=seed + 1)
    emb = pa.FixedSizeListArray.from_arrays(pa.array(X[:, :2].reshape(-1)), 2)
    table = pa.table(
        {
            "id": pa.array(np.arange(n, dtype=np.int64) * 7 + 3),
            "x0": X[:, 0],
            "x1": pa.array(X[:, 1].astype(np.float64), mask=np.arange(n) % 17 == 0),
            "colour": pa.array(np.array(["red", "green", "blue"])[truth]).dictionary_encode(),
            "emb": emb,
            "label": noisy,
        }
    )
    return table, truth


@pytest.fixture(scope="session")
def noisy_data():
    return noisy_table()


@pytest.fixture(scope="session")
def noisy_parquet(tmp_path_factory, noisy_data):
    path = tmp_path_factory.mktemp("input") / "noisy.parquet"
    pq.write_table(noisy_data[0], path)
    return path


@pytest.fixture(scope="session")
def finished_run(tmp_path_factory, noisy_parquet):
    """One run written to disk, shared by the tests that only read it."""
    out = tmp_path_factory.mktemp("runs") / "first"
    result = refine.run(noisy_parquet, out, ignore=("id",), seed=0, **FAST)
    return result, out


# The words of the tiny sentence encoder's vocabulary (tiny_text_model); others are [UNK].
TINY_WORDS = (
    "the a spam ham win free money call now hello friend meeting today see you click here "
    "prize claim lunch tomorrow offer cash text me later thanks great"
).split()


def count_calls(monkeypatch, module, name: str = "_run") -> list[int]:
    """How many values ``module.name(model, values, progress)`` was given, call by call: how
    many went through a pretrained encoder's network."""
    calls: list[int] = []
    run = getattr(module, name)

    def counting(model, values, progress):
        calls.append(len(values))
        return run(model, values, progress)

    monkeypatch.setattr(module, name, counting)
    return calls


def build_tiny_text_model(path, seed: int = 0):
    """A randomly initialised two-head BERT of width 8 with a word-level tokenizer, saved as a
    sentence-transformers directory (mean pooling) at ``path``: offline, in a second."""
    import torch
    from tokenizers import Tokenizer, pre_tokenizers, processors
    from tokenizers.models import WordLevel
    from transformers import BertConfig, BertModel, PreTrainedTokenizerFast

    try:  # sentence-transformers >= 6 moved the modules; older releases keep them in models
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.sentence_transformer.modules import Pooling, Transformer
    except ImportError:
        from sentence_transformers import SentenceTransformer
        from sentence_transformers.models import Pooling, Transformer

    special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    vocab = {w: i for i, w in enumerate(special + list(TINY_WORDS))}
    tokenizer = Tokenizer(WordLevel(vocab, unk_token="[UNK]"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", 2), ("[SEP]", 3)]
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=32,
    )
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=len(vocab),
        hidden_size=8,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=16,
        max_position_embeddings=32,
    )
    raw = path / "bert"
    BertModel(config).save_pretrained(raw)
    fast.save_pretrained(raw)
    word = Transformer(str(raw), max_seq_length=32)
    width = getattr(word, "get_embedding_dimension", None) or word.get_word_embedding_dimension
    pooling = Pooling(width(), "mean")
    SentenceTransformer(modules=[word, pooling], device="cpu").save(str(path / "model"))
    return path / "model"


@pytest.fixture(scope="session")
def tiny_text_model(tmp_path_factory):
    """The tiny sentence encoder's directory, built once for the session."""
    pytest.importorskip("sentence_transformers")
    return build_tiny_text_model(tmp_path_factory.mktemp("tiny-text-model"))


@pytest.fixture(scope="module")
def png_digits():
    """The digits as 16-pixel PNG bytes and their labels, for the image-model tests."""
    from refine.bench.sources import png_images

    return png_images("digits", side=16)


@pytest.fixture()
def image_table_path(tmp_path, png_digits):
    """80 digit images with six wrong labels, one value that is not an image and one null."""
    images, truth = png_digits
    values = list(images[:80])
    values[3] = b"not an image"
    values[7] = None
    labels = truth[:80].copy()
    labels[:6] = (labels[:6] + 1) % 10  # six wrong labels
    path = tmp_path / "images.parquet"
    pq.write_table(pa.table({"image": pa.array(values, pa.binary()), "label": labels}), path)
    return path


def image_batch(png_digits, path):
    """``path``, written with digit images 70-109 and their labels: ten that
    ``image_table_path``'s run has seen, thirty new, as a batch for ``refine update``."""
    images, truth = png_digits
    batch = pa.table({"image": pa.array(list(images[70:110]), pa.binary()), "label": truth[70:110]})
    pq.write_table(batch, path)
    return path


def assert_update_refuses_the_changed_model(run_dir, batch_path, model, option, out):
    """``refine update RUN_DIR BATCH --out OUT`` after the ``--OPTION`` directory ``model`` got
    other weights: exit 2 naming the model, and nothing written."""
    from click.testing import CliRunner

    from refine.cli import cli

    outcome = CliRunner().invoke(cli, ["update", str(run_dir), str(batch_path), "--out", str(out)])
    assert outcome.exit_code == 2, outcome.output
    assert f"--{option} {str(model.resolve())!r} has changed since the run used it" in (
        outcome.output
    )
    assert not out.exists()
