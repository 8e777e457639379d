"""``ssv-jax``: console commands for a trained workdir (one written by ``main.py``).

    ssv-jax embed  --workdir=DIR --out=emb.npz [--neighbours=K] PATH [PATH ...]  # files, folders
    ssv-jax verify --workdir=DIR ENROLL.wav TEST.wav [--threshold=T]
    ssv-jax export --workdir=DIR --out=FOLDER    # jax.export artifact + TF SavedModel

All load DIR/config.json and the network evaluation uses (the average of the last
``train.average_last`` checkpoints, else the latest); none opens a training dataset. ``embed``
and ``verify`` embed utterances exactly as evaluation does (``eval.protocol``; 16 kHz mono,
eval-mode BatchNorm). ``export``: see ``ssv_jax/export.py``. ``embed`` writes an .npz
with ``ids`` (the paths as given, or relative to a folder given) and ``embeddings`` [N, D]
(with ``--neighbours=K``, expanded over the files embedded together:
``ssv_jax.backends.neighbours``);
unreadable files are skipped with a warning and counted. ``verify`` prints the cosine score and
the decision at ``--threshold``, by default the EER threshold of the first trial list that
evaluation stored in DIR/eval/thresholds.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from ssv_jax.progress import track  # no jax: the CPU flags are set first

log = logging.getLogger("ssv_jax")


def load_workdir(workdir: str):
    """(cfg, embed) for a trained workdir; ``embed([(id, wave), ...])`` -> {id: embedding}."""
    from ssv_jax import checkpoints, embedding
    from ssv_jax import workdir as workdir_lib
    from ssv_jax.errors import UserError
    from ssv_jax.sharding import data_mesh

    try:
        cfg = workdir_lib.read_config(workdir)
    except FileNotFoundError as err:
        raise SystemExit(f"ssv-jax: {err} Point --workdir at one.") from None
    mesh = data_mesh()
    try:
        graphdef, params, batch_stats, what = checkpoints.load_network(cfg, workdir, mesh)
    except UserError as err:
        raise SystemExit(f"ssv-jax: {err}") from None
    log.info("using %s of %s", what, workdir)
    fn = embedding.make_embed_fn(cfg, graphdef, mesh)

    def embed(items):
        return embedding.embed_utterances(
            cfg, graphdef, params, batch_stats, mesh, items, embed_fn=fn
        )

    return cfg, embed


def _audio_files(paths):
    """(id, path) for audio files given directly or found (recursively, sorted) in folders."""
    from ssv_jax.data.audio import AUDIO_EXTENSIONS

    out = []
    for p in paths:
        if os.path.isdir(p):
            found = []
            for root, _, files in os.walk(p):
                found += [
                    os.path.join(root, f)
                    for f in files
                    if os.path.splitext(f)[1].lower() in AUDIO_EXTENSIONS
                ]
            if not found:
                raise SystemExit(
                    f"ssv-jax: no audio files ({', '.join(AUDIO_EXTENSIONS)}) under {p}."
                )
            out += [(os.path.relpath(f, p), f) for f in sorted(found)]
        elif os.path.isfile(p):
            out.append((p, p))
        else:
            raise SystemExit(f"ssv-jax: {p} is neither an audio file nor a folder.")
    return out


def _read(path: str, sample_rate: int):
    from ssv_jax.data.audio import read_audio

    wave = read_audio(path, sample_rate)
    if wave.size < sample_rate // 10:
        raise RuntimeError(f"only {wave.size / sample_rate:.3f} s of audio (0.1 s at least)")
    return wave


def cmd_embed(args) -> int:
    import numpy as np

    files = _audio_files(args.paths)
    cfg, embed = load_workdir(args.workdir)
    sr = int(cfg.data.sample_rate)
    items, skipped = [], 0
    for uid, path in track(files, "read", unit="file"):
        try:
            items.append((uid, _read(path, sr)))
        except Exception as err:  # noqa: BLE001  (any decoder failure: skip, warn, count)
            skipped += 1
            log.warning("skipping %s: %s", path, err)
    if not items:
        raise SystemExit(f"ssv-jax: none of the {len(files)} file(s) could be read.")
    emb = embed(items)
    ids = [uid for uid, _ in items]
    vectors = np.stack([emb[u] for u in ids])
    if args.neighbours:
        from ssv_jax.backends.neighbours import expand_neighbours

        if not 0 < args.neighbours < len(ids):
            raise SystemExit(
                f"ssv-jax: --neighbours={args.neighbours} needs more than that many files "
                f"embedded together and at least 1; {len(ids)} were read."
            )
        vectors = expand_neighbours(vectors, args.neighbours)
    np.savez(args.out, ids=np.asarray(ids), embeddings=vectors)
    print(
        f"{len(ids)} embedding(s) of size {vectors.shape[1]} written to {args.out}"
        + (f", each expanded by its {args.neighbours} nearest" if args.neighbours else "")
        + (f"; {skipped} unreadable file(s) skipped" if skipped else "")
    )
    return 0


def cmd_verify(args) -> int:
    import numpy as np

    for p in (args.enroll, args.test):
        if not os.path.isfile(p):
            raise SystemExit(f"ssv-jax: {p} is not a file.")
    threshold, source = args.threshold, "--threshold"
    if threshold is None:
        path = os.path.join(args.workdir, "eval", "thresholds.json")
        if os.path.isfile(path):
            with open(path) as f:
                stored = list(json.load(f).items())
            if stored:
                name, entry = stored[0]
                threshold, source = float(entry["eer_threshold"]), f"EER threshold of {name}"
    cfg, embed = load_workdir(args.workdir)
    sr = int(cfg.data.sample_rate)
    waves = []
    for p in (args.enroll, args.test):
        try:
            waves.append(_read(p, sr))
        except Exception as err:  # noqa: BLE001
            raise SystemExit(f"ssv-jax: cannot read {p}: {err}") from None
    emb = embed([("enroll", waves[0]), ("test", waves[1])])
    score = float(np.dot(emb["enroll"], emb["test"]))
    if threshold is None:
        print(f"score {score:.4f} (no threshold: evaluate the workdir first or pass --threshold)")
        return 0
    same = score >= threshold
    print(
        f"score {score:.4f} {'>=' if same else '<'} threshold {threshold:.4f} ({source}): "
        f"{'same speaker' if same else 'different speakers'}"
    )
    return 0


def cmd_export(args) -> int:
    from ssv_jax import export
    from ssv_jax.errors import UserError

    try:
        info = export.export(args.workdir, args.out)
    except (FileNotFoundError, UserError) as err:
        raise SystemExit(f"ssv-jax: {err}") from None
    print(f"exported {info['network']} to {args.out}: {info['input']} -> {info['output']}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="ssv-jax", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    e = sub.add_parser("embed", help="speaker embeddings of audio files or folders -> .npz")
    e.add_argument("--workdir", required=True)
    e.add_argument("--out", required=True, help="output .npz (ids, embeddings)")
    e.add_argument(
        "--neighbours",
        type=int,
        default=0,
        help="K > 0: replace each embedding by its mean with its K nearest among the files "
        "embedded together (as evaluation's eval.neighbours; 0: the network's own)",
    )
    e.add_argument("paths", nargs="+", help="audio files and/or folders (searched recursively)")
    v = sub.add_parser("verify", help="same speaker or not: cosine score of two recordings")
    v.add_argument("--workdir", required=True)
    v.add_argument(
        "--threshold",
        type=float,
        default=None,
        help="accept when score >= this (default: the workdir's EER threshold)",
    )
    v.add_argument("enroll")
    v.add_argument("test")
    x = sub.add_parser(
        "export", help="the embedding extractor as a jax.export artifact and a TF SavedModel"
    )
    x.add_argument("--workdir", required=True)
    x.add_argument("--out", required=True, help="output folder")
    args = parser.parse_args(argv)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    from ssv_jax import cpu  # before jax starts its backend, as main.py

    if argv is None:  # the console command: may re-execute itself (huge-page malloc)
        cpu.configure()
    else:  # called from Python: never replace the caller's process
        cpu.use_cpu_xla_flags()
    from ssv_jax.writers import setup_console_logging

    setup_console_logging()
    return {"embed": cmd_embed, "verify": cmd_verify, "export": cmd_export}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
