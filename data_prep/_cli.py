"""Shared bits of the data_prep command-line tools."""

from __future__ import annotations

import argparse
import logging
import os
import sys

# Run from a checkout without installing: make the repository importable.
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _ROOT not in sys.path:
    sys.path.insert(0, _ROOT)

from ssv_jax.data.config import DEFAULT_DATA_DIR  # noqa: E402
from ssv_jax.errors import UserError  # noqa: E402


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter
    )
    p.add_argument(
        "--data_dir",
        default=os.environ.get("SSV_JAX_DATA_DIR", DEFAULT_DATA_DIR),
        help="TFDS data_dir to write to (a local path or gs://...)",
    )
    p.add_argument(
        "--num_workers",
        type=int,
        default=max(1, min(8, os.cpu_count() or 1)),
        help="decoding worker processes",
    )
    p.add_argument(
        "--overwrite",
        action="store_true",
        help="rebuild if the dataset already exists (replaced only once the new build succeeds)",
    )
    return p


def setup_logging():
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("ssv_jax.progress").setLevel(logging.INFO)  # where the build stands
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


def report(summaries) -> None:
    for s in summaries if isinstance(summaries, list) else [summaries]:
        print(s.report(), flush=True)


def run(main) -> None:
    """Run ``main()``; input problems (missing folders or decoder, existing dataset, bad names or
    trial lists, a build with nothing usable) exit 2 with the message; a dataset that was there is
    unchanged."""
    try:
        main()
    except (UserError, FileNotFoundError, FileExistsError, ValueError, RuntimeError) as err:
        print(f"error: {err}", file=sys.stderr)
        sys.exit(2)
