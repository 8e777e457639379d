"""MoCo with NT-Xent-AM (s = 30, m = 0.1): EMA key encoder (0.999), one queue per view
(65,536 keys each), Fast ResNet-34, VoxCeleb2-dev; VoxCeleb1-O/E/H."""

from ssv_jax.config import recipe


def get_config(arg=None):
    return recipe(
        arg,
        name="moco",
        loss="nt_xent_am",
        scale=30.0,
        margin=0.1,
        momentum=0.999,
        queue_size=65536,
    )
