#!/usr/bin/env python
"""Simulated room impulse responses (OpenSLR 28, RIRS_NOISES/simulated_rirs) -> the RIR bank "rirs".

    python data_prep/rirs.py --rirs_dir=RIRS_NOISES --data_dir=OUT

Each RIR is stored peak-normalised; the pipeline trims it to start at its peak
(direct path) and normalises it to unit energy. Use with
--config.data.augment.rir_bank=rirs.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
from data_prep import _cli  # noqa: E402
from ssv_jax.data import prep  # noqa: E402


def main(argv=None):
    p = _cli.parser(__doc__)
    p.add_argument(
        "--rirs_dir", required=True, help="RIRS_NOISES root, its simulated_rirs/, or any RIR folder"
    )
    p.add_argument("--name", default="rirs")
    a = p.parse_args(argv)
    _cli.setup_logging()
    s = prep.build_rirs(
        a.rirs_dir, a.data_dir, name=a.name, num_workers=a.num_workers, overwrite=a.overwrite
    )
    _cli.report(s)
    return s


if __name__ == "__main__":
    _cli.run(main)
