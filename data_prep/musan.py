#!/usr/bin/env python
"""MUSAN (noise, speech, music) -> the additive-noise bank "musan" (splits noise, speech, music).

    python data_prep/musan.py --musan_dir=MUSAN --data_dir=OUT

Long files are cut into chunks of --chunk_seconds (a short tail joins the last one) so that a
2 s noise crop reads little. Use with --config.data.augment.noise_bank=musan.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
from data_prep import _cli  # noqa: E402
from ssv_jax.data import prep  # noqa: E402


def main(argv=None):
    p = _cli.parser(__doc__)
    p.add_argument("--musan_dir", required=True)
    p.add_argument("--name", default="musan")
    p.add_argument("--chunk_seconds", type=float, default=6.0)
    a = p.parse_args(argv)
    _cli.setup_logging()
    s = prep.build_musan(
        a.musan_dir,
        a.data_dir,
        name=a.name,
        chunk_seconds=a.chunk_seconds,
        num_workers=a.num_workers,
        overwrite=a.overwrite,
    )
    _cli.report(s)
    return s


if __name__ == "__main__":
    _cli.run(main)
