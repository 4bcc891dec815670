"""Turning columns into features: numbers, categories and embeddings (``features``), free text
(``text``) and images (``image``). In: a pyarrow table; out: an ``(N, D)`` float32 matrix.
"""
