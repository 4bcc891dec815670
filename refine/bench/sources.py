"""Where the bench's data comes from, with no download: scikit-learn's bundled sets, generated
clustered embeddings (a stand-in for a model's embeddings of many classes), generated text of
topic words, and scikit-learn's digits rendered as PNG images. ``refine.bench.recipes`` builds
datasets from them.
"""

from __future__ import annotations

from typing import Any

import numpy as np

TEXT_COLUMN = "text"
IMAGE_COLUMN = "image"


def load_source(source: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, list[str] | None]:
    """Features ``(N, D)`` float32, true labels ``(N,)`` int64 in ``0 .. K - 1``, and the
    feature column names (None: one ``embedding`` column)."""
    kind = source["kind"]
    if kind == "sklearn":
        from sklearn import datasets

        bunch = getattr(datasets, f"load_{source['name']}")()
        names = [str(n) for n in bunch.feature_names]
        if not all(n.isidentifier() for n in names) or {"label", "label_true", "is_noisy"} & set(
            names
        ):
            names = [f"f{i}" for i in range(len(names))]
        return bunch.data.astype(np.float32), bunch.target.astype(np.int64), names
    if kind == "generated_text":
        texts, y = generated_text(**source["params"])
        return texts[:, None], y, [TEXT_COLUMN]
    if kind == "png_images":
        images, y = png_images(**source["params"])
        return images[:, None], y, [IMAGE_COLUMN]
    if kind == "make_classification":
        from sklearn.datasets import make_classification

        # The source's labels are the truth, so make_classification's own label noise is off
        # unless a recipe asks for it.
        X, y = make_classification(**{"flip_y": 0.0, "random_state": 0, **source["params"]})
        return X.astype(np.float32), y.astype(np.int64), [f"f{i}" for i in range(X.shape[1])]
    X, y = gaussian_embeddings(**source["params"])
    return X, y, None


def gaussian_embeddings(
    rows: int,
    dim: int,
    classes: int,
    centres_per_class: int = 3,
    separation: float = 0.8,
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Clustered Gaussian vectors, a stand-in for a model's embeddings of many classes.

    Each class has ``centres_per_class`` centres drawn from ``N(0, separation**2 I)``; each row
    is a centre of its class plus ``N(0, I)`` noise. Classes are balanced (sizes differ by at
    most one) and multimodal, so a linear model falls well short while a good non-linear one
    does not. With the defaults at 60,000 rows, 32 dimensions and 20 classes, neighbouring
    clusters overlap a little: the Bayes-optimal accuracy is about 95%.

    Returns
    -------
    X : ndarray of float32, shape (rows, dim)
    y : ndarray of int64, shape (rows,)
    """
    if rows < classes or dim < 1 or classes < 2 or centres_per_class < 1 or separation <= 0:
        raise ValueError(
            "gaussian_embeddings needs rows >= classes >= 2, dim >= 1, centres_per_class >= 1 "
            f"and separation > 0; got rows={rows}, dim={dim}, classes={classes}, "
            f"centres_per_class={centres_per_class}, separation={separation}"
        )
    rng = np.random.default_rng(random_state)
    centres = rng.normal(0.0, separation, size=(classes * centres_per_class, dim))
    y = rng.permutation(np.arange(rows) % classes)
    centre = y * centres_per_class + rng.integers(0, centres_per_class, size=rows)
    X = centres[centre] + rng.normal(0.0, 1.0, size=(rows, dim))
    return X.astype(np.float32), y.astype(np.int64)


# Pseudo-words from syllables, so the generated text needs no word list; a few carry accents
# and non-Latin scripts to exercise Unicode tokenisation.
_SYLLABLES = ("ka", "lo", "mi", "nu", "re", "sa", "ti", "vo", "ze", "pa", "du", "fe", "gi", "ho")
_UNICODE_WORDS = ("café", "naïve", "über", "東京", "привет", "ñandú", "straße", "日本語")


def generated_text(
    rows: int,
    classes: int,
    topic_words: int = 25,
    shared_words: int = 300,
    topic_share: float = 0.25,
    length: tuple[int, int] = (6, 24),
    random_state: int = 0,
) -> tuple[np.ndarray, np.ndarray]:
    """Short texts of ``classes`` topics: each word is one of the topic's ``topic_words`` words
    with probability ``topic_share``, else a shared word (neighbouring topics share half their
    words, so classes overlap and short texts are ambiguous).

    Returns
    -------
    texts : ndarray of object (str), shape (rows,)
    y : ndarray of int64, shape (rows,), balanced classes
    """
    if rows < classes or classes < 2 or topic_words < 2 or not 0 < topic_share <= 1:
        raise ValueError(
            "generated_text needs rows >= classes >= 2, topic_words >= 2 and topic_share in "
            f"(0, 1]; got rows={rows}, classes={classes}, topic_words={topic_words}, "
            f"topic_share={topic_share}"
        )
    rng = np.random.default_rng(random_state)
    vocabulary: list[str] = list(_UNICODE_WORDS)
    seen = set(vocabulary)
    while len(vocabulary) < shared_words + classes * topic_words:
        word = "".join(rng.choice(_SYLLABLES, size=int(rng.integers(2, 4))))
        if word not in seen:
            seen.add(word)
            vocabulary.append(word)
    order = rng.permutation(len(vocabulary))
    words = np.array(vocabulary, dtype=object)[order]
    shared, topical = words[:shared_words], words[shared_words:]
    topics = [list(topical[c * topic_words : (c + 1) * topic_words]) for c in range(classes)]
    half = topic_words // 2
    for c in range(classes):  # share half of each topic with the next one
        topics[c] = topics[c][:half] + topics[(c + 1) % classes][:half]
    y = rng.permutation(np.arange(rows) % classes).astype(np.int64)
    texts = np.empty(rows, dtype=object)
    for i, c in enumerate(y):
        n = int(rng.integers(length[0], length[1] + 1))
        from_topic = rng.random(n) < topic_share
        picked = np.where(from_topic, rng.choice(topics[c], size=n), rng.choice(shared, size=n))
        texts[i] = " ".join(picked)
    return texts, y


PNG_SOURCES = ("digits",)


def png_images(name: str = "digits", side: int = 16) -> tuple[np.ndarray, np.ndarray]:
    """A bundled scikit-learn image set rendered to PNG bytes, as image columns are stored.

    ``digits``: the 1,797 8x8 grey digits (values 0-16), scaled to 0-255 and upscaled to
    ``side`` x ``side`` with Pillow's bilinear filter. Rendering is deterministic: the same
    Pillow and zlib give the same bytes.

    Returns
    -------
    images : ndarray of object (bytes), shape (rows,)
    y : ndarray of int64, shape (rows,)
    """
    import io

    from PIL import Image
    from sklearn import datasets

    if name not in PNG_SOURCES or not 8 <= side <= 256:
        raise ValueError(
            f"png_images renders {', '.join(PNG_SOURCES)} at a side in [8, 256]; got "
            f"name={name!r}, side={side}"
        )
    bunch = datasets.load_digits()
    pixels = np.round(bunch.images * (255 / 16)).clip(0, 255).astype(np.uint8)
    images = np.empty(len(pixels), dtype=object)
    for i, grid in enumerate(pixels):
        buffer = io.BytesIO()
        image = Image.fromarray(grid).resize((side, side), Image.Resampling.BILINEAR)
        image.save(buffer, format="PNG")
        images[i] = buffer.getvalue()
    return images, bunch.target.astype(np.int64)


def png_pixels(images: np.ndarray) -> np.ndarray:
    """The grey pixels ``(N, H * W)`` float32 of PNG bytes ``(N,)`` (for the noise model)."""
    import io

    from PIL import Image

    return np.stack(
        [np.asarray(Image.open(io.BytesIO(b)).convert("L"), np.float32).reshape(-1) for b in images]
    )
