#!/usr/bin/env python
"""Build the embedded synthetic corpus ("synthetic", "synthetic_noise", "synthetic_rirs") now.

    python data_prep/synthetic.py [--data_dir=OUT] [--train_speakers=200 ...]

Training builds it automatically on first use; this command does it explicitly
(e.g. to time it, or to make a bigger one: pass the same sizes as
--config.data.synthetic.* when training).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
from data_prep import _cli  # noqa: E402
from ssv_jax.data import datasets  # noqa: E402
from ssv_jax.data.config import default_data_config  # noqa: E402


def main(argv=None):
    p = _cli.parser(__doc__)
    defaults = default_data_config().synthetic
    for k, v in defaults.items():
        if k != "num_workers":
            p.add_argument(f"--{k}", type=type(v), default=v)
    a = p.parse_args(argv)
    _cli.setup_logging()
    cfg = default_data_config()
    for k in defaults:
        if k != "num_workers":
            cfg.synthetic[k] = getattr(a, k)
    s = datasets.build_synthetic(
        a.data_dir, datasets.size_from_config(cfg), num_workers=a.num_workers, overwrite=True
    )
    _cli.report(s)
    return s


if __name__ == "__main__":
    _cli.run(main)
