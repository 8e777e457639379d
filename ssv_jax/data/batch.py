"""The training batch: every field's name, shape and dtype, defined once.

Shapes are in terms of B (utterances of this process), T (samples per view:
``crop_seconds * sample_rate``) and L (RIR samples: ``augment.rir_seconds * sample_rate``,
1 without an RIR bank). ``DEVICE_FIELDS`` are what the jitted train step consumes
(``ssv_jax.augment``, which converts the int16 audio to float32 there: half the bytes of
float32 cross to the device); the others are host-side bookkeeping, kept for tests and inspection.
"""

from __future__ import annotations

import dataclasses

import numpy as np


@dataclasses.dataclass(frozen=True)
class Field:
    dims: tuple  # symbolic: "B", "T", "L" or ints
    dtype: type
    device: bool
    doc: str


SPEC: dict[str, Field] = {
    "views": Field(("B", 2, "T"), np.int16, True, "the two crops of each utterance, int16 PCM"),
    "noise": Field(
        ("B", 2, "T"), np.int16, True, "noise crop per view, any level (zeros where off)"
    ),
    "snr_db": Field(("B", 2), np.float32, True, "SNR at which to add it"),
    "noise_on": Field(("B", 2), np.bool_, True, "whether the view gets noise"),
    "rir": Field(
        ("B", 2, "L"),
        np.int16,
        True,
        "RIR from its peak (the direct path) at index 0, any level (a delta where off)",
    ),
    "rir_on": Field(("B", 2), np.bool_, True, "whether the view is reverberated"),
    "noise_category": Field(
        ("B", 2), np.int32, False, "0 noise, 1 speech (babble), 2 music, -1 none"
    ),
    "crop_start": Field(
        ("B", 2), np.int32, False, "offset of each view in the (wrap-padded) utterance"
    ),
    "index": Field(("B",), np.int32, True, "record index of the utterance in the train split"),
}

FIELDS = tuple(SPEC)
DEVICE_FIELDS = tuple(k for k, f in SPEC.items() if f.device)


def shapes(B: int, T: int, L: int) -> dict[str, tuple[int, ...]]:
    """{field: concrete shape}."""
    size = {"B": int(B), "T": int(T), "L": int(L)}
    return {k: tuple(size.get(d, d) for d in f.dims) for k, f in SPEC.items()}


def empty(B: int, T: int, L: int) -> dict[str, np.ndarray]:
    """A batch of zeros, except ``rir`` (a delta per view) and ``noise_category`` (-1)."""
    out = {k: np.zeros(s, SPEC[k].dtype) for k, s in shapes(B, T, L).items()}
    out["rir"][..., 0] = 1.0
    out["noise_category"][:] = -1
    return out


def device_part(batch: dict) -> dict:
    """The fields the train step consumes."""
    return {k: batch[k] for k in DEVICE_FIELDS}
