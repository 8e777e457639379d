"""Baseline: MoCo without margin (m = 0), otherwise configs/moco_am.py."""

from ssv_jax.config import recipe


def get_config(arg=None):
    return recipe(arg, name="moco", momentum=0.999, queue_size=65536, margin=0.0)
