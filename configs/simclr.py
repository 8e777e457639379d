"""Baseline: SimCLR with plain symmetric NT-Xent (m = 0, s = 30), otherwise as simclr_am."""

from ssv_jax.config import recipe


def get_config(arg=None):
    return recipe(arg, name="simclr", loss="nt_xent_am", scale=30.0, margin=0.0, symmetric=True)
