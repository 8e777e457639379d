"""SimCLR with NT-Xent-AM, then self-supervised positive sampling (SSPS): configs/simclr_am.py
for its 100 epochs on VoxCeleb2-dev, then 10 more in which each anchor's positive is a past
embedding of another recording of the anchor's k-means cluster, instead of its second view.
``:demo`` / ``:small``: SSPS for the second half of the steps. The values:
ssv_jax.config.with_ssps; the method: docs/method.md#ssps."""

from ssv_jax.config import sibling_recipe, with_ssps


def get_config(arg=None):
    return with_ssps(sibling_recipe(__file__, "simclr_am", arg))
