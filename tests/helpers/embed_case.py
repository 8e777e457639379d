"""A tiny model config and 13 utterances of different lengths for the evaluation tests."""
import numpy as np

from ssv_jax import config as config_lib


def embed_case():
    cfg = config_lib.recipe("demo", name="simclr")
    cfg.model.channels = (8, 16, 16, 16)
    cfg.model.blocks = (1, 1, 1, 1)
    cfg.model.embed_dim = 32
    cfg.eval.batch_size = 8
    rng = np.random.default_rng(3)
    sr = cfg.data.sample_rate
    utterances = [(f"u{i:02d}", (0.1 * rng.standard_normal(int(sr * rng.uniform(0.6, 2.1))))
                   .astype(np.float32)) for i in range(13)]
    return cfg, utterances
