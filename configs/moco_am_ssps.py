"""MoCo with NT-Xent-AM, then self-supervised positive sampling (SSPS): configs/moco_am.py for
its 100 epochs on VoxCeleb2-dev, then 10 more in which both keys of each anchor are a past pair
of keys of another recording of the anchor's k-means cluster (and those keys are what is
enqueued). ``:demo`` / ``:small``: SSPS for the second half of the steps. The
values: ssv_jax.config.with_ssps; the method: docs/method.md#ssps."""

from ssv_jax.config import sibling_recipe, with_ssps


def get_config(arg=None):
    return with_ssps(sibling_recipe(__file__, "moco_am", arg))
