#!/usr/bin/env python
"""Any speaker/session/utterance folder -> a TFDS dataset configs can name.

    python data_prep/folder.py --audio_dir=DIR --data_dir=OUT --name=NAME [--trials=FILE]

Then train/evaluate with --config.data.name=NAME --config.data.data_dir=OUT: the
dataset records its training split and its trial list (stored under the trial file's
name without extension, or --trials_name), so nothing else is needed.
Audio in any format soundfile reads (wav, flac, ogg, ...; m4a/aac need ffmpeg or PyAV)
at any sample rate (resampled to 16 kHz), channels averaged to mono. Unreadable/corrupt/empty
files are skipped with a warning and counted in the summary printed at the end (and in
prep_summary.json). A build with nothing usable, or a malformed trial list, stops with a
message and exit status 2; an existing dataset (--overwrite) is replaced only by a finished build.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the repository
from data_prep import _cli  # noqa: E402
from ssv_jax.data import prep  # noqa: E402


def main(argv=None):
    p = _cli.parser(__doc__)
    p.add_argument("--audio_dir", required=True, help="root holding speaker/session/utterance.ext")
    p.add_argument("--name", required=True, help="dataset name (lower case, digits, _)")
    p.add_argument(
        "--trials",
        default=None,
        help="optional trial list, lines 'label spk/sess/utt spk/sess/utt'",
    )
    p.add_argument(
        "--trials_name",
        default=None,
        help="name to store the trial list under (default: file stem)",
    )
    p.add_argument(
        "--min_seconds", type=float, default=0.1, help="shorter files are skipped (counted)"
    )
    p.add_argument("--sample_rate", type=int, default=16000)
    a = p.parse_args(argv)
    _cli.setup_logging()
    s = prep.build_folder(
        a.audio_dir,
        a.data_dir,
        a.name,
        trials=a.trials,
        trials_name=a.trials_name,
        sample_rate=a.sample_rate,
        min_seconds=a.min_seconds,
        num_workers=a.num_workers,
        overwrite=a.overwrite,
    )
    _cli.report(s)
    return s


if __name__ == "__main__":
    _cli.run(main)
