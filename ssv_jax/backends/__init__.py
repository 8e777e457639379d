"""Score back-ends: each adds ``LIST/<name>`` entries to results.json beside the plain cosine
(the contract: ``ssv_jax.backends.base``). Adding one means a module with ``make`` and a line
here; entries appear in this order."""

from ssv_jax.backends import neighbours, score_norm
from ssv_jax.backends.base import BackEnd, Collection, score_trials, trial_rows

BACK_ENDS = (score_norm.make, neighbours.make)

__all__ = ["BACK_ENDS", "BackEnd", "Collection", "score_trials", "trial_rows"]
