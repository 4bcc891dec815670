"""Deciding about labels from ``(N,)`` labels and ``(N, K)`` out-of-fold probabilities: which
rows look mislabelled (``detect``), what each row trains on next (``relabel``), whether the
corrections can be trusted, with or without verified rows (``trust``, on what the data and the
verified rows show: ``evidence``), the probabilities of the true class (``posterior``), and how
reliable each annotator is when rows come with votes (``annotators``).
"""
