"""Turning columns into features: one encoder per column, chosen and gathered by
``features``; numbers, categories and embedding vectors (``columns``), free text (``text``,
or a pretrained model: ``pretrained``) and images (``image``, ``vision``). In: a pyarrow table;
out: an ``(N, D)`` float32 matrix.
"""
