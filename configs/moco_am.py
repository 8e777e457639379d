"""MoCo with NT-Xent-AM (s = 30, m = 0.1): a key encoder following the trained one as an EMA of
momentum 0.999, one queue of 65,536 keys per view, negatives from the queues only; data, encoder,
optimisation and evaluation as in configs/simclr_am.py."""

from ssv_jax.config import recipe


def get_config(arg=None):
    return recipe(arg, name="moco", momentum=0.999, queue_size=65536)
