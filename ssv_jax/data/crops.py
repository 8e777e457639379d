"""Crops of an utterance: wrap-padding, the two views' offsets, int16 PCM -> float32.

``overlap=True`` draws the two offsets independently (utterances
shorter than one crop are wrap-padded, i.e. repeated cyclically).
``overlap=False`` (paper era) wrap-pads to at least two crops and draws a
pair of non-overlapping crops uniformly over all such pairs, in random order.
"""

from __future__ import annotations

import numpy as np


def wrap_pad(x: np.ndarray, length: int) -> np.ndarray:
    """Repeat ``x`` cyclically up to at least ``length`` samples (unchanged if already long
    enough)."""
    if x.size >= length:
        return x
    if x.size == 0:
        return np.zeros(length, x.dtype)
    return np.resize(x, length)


def crop_pair(n: int, T: int, overlap: bool, rng: np.random.Generator) -> tuple[int, int]:
    """Start offsets of the two views in an utterance of ``n`` samples (already wrap-padded)."""
    if overlap:
        a, b = rng.integers(0, n - T + 1, size=2)
        return int(a), int(b)
    free = n - 2 * T
    u = np.sort(rng.integers(0, free + 1, size=2))
    a, b = int(u[0]), int(u[1]) + T
    return (a, b) if rng.random() < 0.5 else (b, a)


def _pcm(x: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """int16 PCM -> float32 in [-1, 1), into ``out`` if given: x / 32768 exactly (the product
    with 2**-15 only shifts the exponent, and numpy's multiply loop is faster than its divide).
    Elementwise, so converting a crop equals cropping the converted clip, bit for bit."""
    return np.multiply(x, np.float32(2.0**-15), out=out, dtype=np.float32)
