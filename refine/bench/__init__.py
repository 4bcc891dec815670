"""Measuring refine: the dataset recipes and their noise (``recipes``, ``noise``), the
cleanlab baselines (``baselines``), the suite that runs and scores them side by side
(``suite``), its Markdown and JSON summary (``summary``), and ``refine demo`` (``demo``).
"""
