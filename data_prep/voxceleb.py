#!/usr/bin/env python
"""VoxCeleb1 (dev/test, wav) and VoxCeleb2 (dev, m4a/AAC) in their released layouts -> datasets.

    python data_prep/voxceleb.py --vox1_dir=VOX1 --vox2_dir=VOX2 --trials_dir=TRIALS --data_dir=OUT

Writes "voxceleb1" (splits dev, test; trial lists voxceleb1_o/e/h from the cleaned
veri_test2.txt, list_test_all2.txt, list_test_hard2.txt found in --trials_dir or
--vox1_dir) and "voxceleb2" (split dev). VoxCeleb2's m4a needs the ffmpeg
command or PyAV (pip install av). Each dataset records its training split (dev) and,
per trial list, the split(s) holding its utterances (O: test; E/H: dev+test).
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
from data_prep import _cli  # noqa: E402
from ssv_jax.data import prep  # noqa: E402


def main(argv=None):
    p = _cli.parser(__doc__)
    p.add_argument(
        "--vox1_dir", default=None, help="VoxCeleb1 root (vox1_dev_wav/, vox1_test_wav/ or wav/)"
    )
    p.add_argument(
        "--vox2_dir", default=None, help="VoxCeleb2 root (vox2_dev_aac/dev/aac, dev/aac or aac/)"
    )
    p.add_argument(
        "--trials_dir",
        default=None,
        help="folder with veri_test2.txt, list_test_all2.txt, list_test_hard2.txt",
    )
    p.add_argument("--min_seconds", type=float, default=0.1)
    a = p.parse_args(argv)
    _cli.setup_logging()
    s = prep.build_voxceleb(
        a.data_dir,
        vox1_dir=a.vox1_dir,
        vox2_dir=a.vox2_dir,
        trials_dir=a.trials_dir,
        min_seconds=a.min_seconds,
        num_workers=a.num_workers,
        overwrite=a.overwrite,
    )
    _cli.report(s)
    return s


if __name__ == "__main__":
    _cli.run(main)
