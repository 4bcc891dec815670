"""Deciding about labels from ``(N,)`` labels and ``(N, K)`` out-of-fold probabilities: which
rows look mislabelled (``detect``), what each row trains on next (``relabel``), and whether the
corrections can be trusted, with or without verified rows (``trust``).
"""
