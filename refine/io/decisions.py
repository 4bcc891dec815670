"""What the run decided for each row: the shape the judge hands the writer.

``Decisions`` holds the ``(N,)`` refined labels, sources and weights and the ``(N, K)`` soft
targets; ``SOURCES`` names the values of the ``label_source`` output column, in the order of
the integer codes below.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SOURCES = ("given", "corrected", "pseudo", "excluded", "unlabelled", "synthetic", "verified")
GIVEN, CORRECTED, PSEUDO, EXCLUDED, UNLABELLED, SYNTHETIC, VERIFIED = range(len(SOURCES))


@dataclass
class Decisions:
    """``refined`` ``(N,)`` class index to train on (-1 = none), ``source`` ``(N,)`` index into
    ``SOURCES``, ``weight`` ``(N,)`` sample weight, ``soft`` ``(N, K)`` soft training target."""

    refined: np.ndarray
    source: np.ndarray
    weight: np.ndarray
    soft: np.ndarray

    def count(self, source: int) -> int:
        return int((self.source == source).sum())
