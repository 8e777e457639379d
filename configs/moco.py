"""MoCo baseline without margin (m = 0, s = 30), otherwise as moco_am."""

from ssv_jax.config import recipe


def get_config(arg=None):
    return recipe(
        arg,
        name="moco",
        loss="nt_xent_am",
        scale=30.0,
        margin=0.0,
        momentum=0.999,
        queue_size=65536,
    )
