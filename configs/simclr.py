"""Baseline: SimCLR with plain symmetric NT-Xent (m = 0), otherwise configs/simclr_am.py."""

from ssv_jax.config import recipe


def get_config(arg=None):
    return recipe(arg, margin=0.0)
