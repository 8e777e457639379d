"""What every score back-end shares: the contract, the cosine scoring of trials, and chunked
rows for jitted per-utterance statistics.

A back-end is a module with ``make(cfg, collection) -> BackEnd | None``: given the config and
the trial utterances' embeddings (``Collection``), it returns the entry it adds to each trial
list (``BackEnd``: a name, and a function from a trial list and its plain cosine scores to its
own scores), or None where the config leaves it off. ``ssv_jax.backends.BACK_ENDS`` lists them
in the order their entries appear in results.json.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable

import jax
import jax.numpy as jnp
import numpy as np

EPS = 1e-8  # floor of norms and standard deviations


@dataclasses.dataclass(frozen=True)
class Collection:
    """The trial utterances' unit embeddings ({utterance id: [D]}), and ``embed``, which embeds
    other utterances ((id, wave) pairs) with the same network (e.g. a cohort)."""

    embeddings: dict[str, np.ndarray]
    embed: Callable[[Iterable], dict[str, np.ndarray]]


@dataclasses.dataclass(frozen=True)
class BackEnd:
    """One back-end as configured: results.json's ``LIST/<name>`` entries, scored by
    ``score(trials, cosines)``."""

    name: str
    score: Callable[..., np.ndarray]


@jax.jit
def cosine_scores(emb, idx_a, idx_b):
    """Cosine of L2-normalised embeddings for index pairs."""
    return jnp.sum(emb[idx_a] * emb[idx_b], axis=-1)


def trial_rows(pos: dict, trials) -> tuple[np.ndarray, np.ndarray]:
    """Rows (in ``pos``: {id: row}) of each trial's enroll and test utterance; a trial naming an
    utterance with no embedding is refused by name."""
    missing = [u for u in trials.utterances if u not in pos]
    if missing:
        raise ValueError(
            f"trial list {trials.name!r} names {len(missing)} utterance(s) with no embedding, "
            f"e.g. {missing[0]!r}: it is not in the evaluation data."
        )
    a = np.asarray([pos[u] for u in trials.enroll], np.int32)
    b = np.asarray([pos[u] for u in trials.test], np.int32)
    return a, b


def score_trials(embeddings: dict, trials) -> np.ndarray:
    ids = list(embeddings)
    a, b = trial_rows({u: i for i, u in enumerate(ids)}, trials)
    emb = jnp.asarray(np.stack([embeddings[u] for u in ids]))
    return np.asarray(cosine_scores(emb, a, b))


def row_chunks(x, chunk: int):
    """(start, rows, block) for each block of ``chunk`` rows of ``x`` (fewer when ``x`` has
    fewer), the last padded with zero rows: one compiled shape for every block."""
    size = max(1, min(chunk, x.shape[0]))
    for a in range(0, x.shape[0], size):
        part = x[a : a + size]
        pad = np.zeros((size - part.shape[0],) + x.shape[1:], x.dtype)
        yield a, part.shape[0], np.concatenate([part, pad])
