"""The paper's best system: SimCLR + symmetric NT-Xent-AM (s = 30, m = 0.1), Fast ResNet-34,
no projector, global batch 256, 2 s views, MUSAN + RIR, VoxCeleb2-dev; VoxCeleb1-O/E/H.
``:demo`` runs the same recipe on the embedded synthetic corpus on a CPU."""

from ssv_jax.config import recipe


def get_config(arg=None):
    return recipe(arg, name="simclr", loss="nt_xent_am", scale=30.0, margin=0.1, symmetric=True)
