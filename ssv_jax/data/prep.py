"""Converters behind data_prep/: audio files on disk -> TFDS datasets (writer.write_dataset).

Layouts:
  speaker folder   AUDIO_DIR/speaker/session/utterance.{wav,flac,m4a,...}; utterance id
                   "speaker/session/utterance.ext"
  VoxCeleb1        vox1_dev_wav/wav + vox1_test_wav/wav (or dev/wav + test/wav, or one wav/
                   split by speaker: id10270-id10309 are test); splits dev, test; trial lists
                   veri_test2.txt (voxceleb1_o), list_test_all2.txt (_e), list_test_hard2.txt (_h)
  VoxCeleb2        vox2_dev_aac/dev/aac (or dev/aac, aac/, or the speaker root); split dev (m4a)
  MUSAN            MUSAN_DIR/{noise,speech,music}/**.wav -> splits noise, speech, music, each
                   file cut into chunks of chunk_seconds (a tail under a quarter chunk joins
                   the last chunk)
  RIRs (OpenSLR 28) RIRS_NOISES/simulated_rirs/*room/Room*/*.wav -> split train (peak-normalised)

Unreadable, corrupt, empty or too-short files are skipped with a warning and
counted in the summary; files that do not fit the layout are reported too.
Decoding runs in worker subprocesses (ssv_jax.data.workers).
"""

from __future__ import annotations

import logging
import os
import re

from ssv_jax.data import audio, builder, records, writer
from ssv_jax.data.builder import Skip
from ssv_jax.data.pool import WorkerError, ordered_map
from ssv_jax.data.trials import TrialListError, parse_trials
from ssv_jax.progress import track

log = logging.getLogger("ssv_jax.data")


def scan_speaker_folder(root: str, exts=audio.AUDIO_EXTENSIONS):
    """(utterance id, speaker, session, path) for every audio file at speaker/session/file; plus
    misplaced files."""
    root = os.path.abspath(os.path.expanduser(root))
    if not os.path.isdir(root):
        raise FileNotFoundError(
            f"audio directory {root} does not exist (expected speaker/session/utterance files)."
        )
    rows, misplaced = [], []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        rel = os.path.relpath(dirpath, root)
        depth = 0 if rel == "." else rel.count(os.sep) + 1
        for f in sorted(filenames):
            if os.path.splitext(f)[1].lower() not in exts:
                continue
            if depth != 2:
                misplaced.append(os.path.join(rel, f) if rel != "." else f)
                continue
            spk, sess = rel.split(os.sep)
            rows.append((f"{spk}/{sess}/{f}", spk, f"{spk}/{sess}", os.path.join(dirpath, f)))
    return rows, misplaced


def decode_item(args) -> dict | Skip:
    """Worker entry: (utt, speaker, session, path, sample_rate, min_seconds, peak_normalise) ->
    record or Skip."""
    utt, spk, sess, path, sr, min_seconds, peak = args
    pcm, error = audio.decode_file(path, sr, min_seconds, peak_normalise=peak)
    if error:
        return Skip(path, error)
    return {"audio": pcm, "speaker": spk, "session": sess, "utterance": utt}


def _decoded(rows, desc, *, sample_rate, min_seconds, num_workers, peak=False, category=""):
    """Records of the audio files ``rows`` (utterance, speaker, session, path), decoded in
    ``num_workers`` processes, in order; an unreadable file becomes a ``Skip``."""
    audio.check_decoder_for(r[3] for r in rows)
    items = [(u, s, e, p, sample_rate, min_seconds, peak) for u, s, e, p in rows]
    decoded = ordered_map(decode_item, items, num_workers)
    for row, r in zip(rows, track(decoded, desc, len(rows), unit="file")):
        if isinstance(r, WorkerError):
            r = Skip(row[3], f"unreadable ({r.message})")
        if isinstance(r, dict) and category:
            r["category"] = category
        yield r


def _misplaced_skips(misplaced, root):
    return [
        Skip(os.path.join(root, m), "not at speaker/session/utterance depth") for m in misplaced
    ]


def read_trial_rows(path: str) -> list[tuple[int, str, str]]:
    if not os.path.isfile(os.path.expanduser(path)):
        raise TrialListError(f"trial list {path} not found.")
    with open(os.path.expanduser(path)) as f:
        t = parse_trials(f.read(), os.path.basename(path), path)
    return [(int(lab), a, b) for lab, a, b in zip(t.labels, t.enroll, t.test)]


def _trial_name(path: str) -> str:
    stem = re.sub(r"[^a-z0-9_]", "_", os.path.splitext(os.path.basename(path))[0].lower())
    return stem if stem and stem[0].isalpha() else "trials_" + stem


def build_folder(
    audio_dir: str,
    data_dir: str,
    name: str,
    *,
    trials: str | None = None,
    trials_name: str | None = None,
    sample_rate: int = 16000,
    min_seconds: float = 0.1,
    num_workers: int = 2,
    overwrite: bool = False,
) -> builder.BuildSummary:
    """Any speaker/session/utterance folder -> dataset ``name``.

    Without ``trials``: one split "train" with everything. With ``trials``: the
    speakers named by the trial list form split "test" (with the list stored
    as ``trials_name``, default the file's stem), the other speakers "train";
    if no speaker is left for "train", "train" holds every utterance.
    """
    records.check_name(name)
    rows, misplaced = scan_speaker_folder(audio_dir)
    if not rows:
        where = (
            f"; {len(misplaced)} audio files are at another depth (e.g. {misplaced[0]})"
            if misplaced
            else ""
        )
        raise builder.DatasetBuildError(
            f"no audio files found at {audio_dir}/speaker/session/*{where}; expected extensions "
            f"{', '.join(audio.AUDIO_EXTENSIONS)}. Nothing was written."
        )
    splits = {"train": rows}
    trial_lists = None
    if trials:
        trows = read_trial_rows(trials)
        tspk = {u.split("/")[0] for _, a, b in trows for u in (a, b)}
        test = [r for r in rows if r[1] in tspk]
        train = [r for r in rows if r[1] not in tspk]
        if not test:
            raise TrialListError(
                f"trial list {trials} names no speaker found under {audio_dir} (first trial: "
                f"{trows[0][1]}); trial paths must be speaker/session/utterance relative to "
                "--audio_dir."
            )
        if not train:
            log.warning(
                "every speaker is in the trial list: split 'train' holds all utterances (and "
                "overlaps 'test')"
            )
            train = rows
        splits = {"train": train, "test": test}
        known = {r[0] for r in rows}
        stems = {os.path.splitext(u)[0]: u for u in known}
        fixed = [
            (
                lab,
                a if a in known else stems.get(os.path.splitext(a)[0], a),
                b if b in known else stems.get(os.path.splitext(b)[0], b),
            )
            for lab, a, b in trows
        ]
        trial_lists = {trials_name or _trial_name(trials): fixed}
    extra = _misplaced_skips(misplaced, audio_dir)

    def split_fn(split):
        def gen():
            if split == "train":
                yield from extra
            yield from _decoded(
                splits[split],
                f"{name}/{split}",
                sample_rate=sample_rate,
                min_seconds=min_seconds,
                num_workers=num_workers,
            )

        return gen

    return writer.write_dataset(
        name,
        data_dir,
        {s: split_fn(s) for s in splits},
        description=f"Speaker folder {os.path.abspath(audio_dir)}",
        trials=trial_lists,
        sample_rate=sample_rate,
        overwrite=overwrite,
    )


# ----------------------------------------------------------------------------- VoxCeleb

VOX1_TRIALS = {
    "veri_test2.txt": "voxceleb1_o",
    "list_test_all2.txt": "voxceleb1_e",
    "list_test_hard2.txt": "voxceleb1_h",
}


def _first_dir(*cands):
    for c in cands:
        if c and os.path.isdir(c):
            return c
    return None


def _speaker_rows(root):
    rows, misplaced = scan_speaker_folder(root)
    return rows, _misplaced_skips(misplaced, root)


def voxceleb1_splits(vox1_dir: str) -> tuple[dict, list]:
    d = os.path.expanduser(vox1_dir)
    dev = _first_dir(os.path.join(d, "vox1_dev_wav", "wav"), os.path.join(d, "dev", "wav"))
    test = _first_dir(os.path.join(d, "vox1_test_wav", "wav"), os.path.join(d, "test", "wav"))
    if dev and test:
        (a, sa), (b, sb) = _speaker_rows(dev), _speaker_rows(test)
        return {"dev": a, "test": b}, sa + sb
    one = _first_dir(os.path.join(d, "wav"), d)
    if one is None:
        raise FileNotFoundError(
            f"VoxCeleb1 not found at {d}: expected vox1_dev_wav/wav and vox1_test_wav/wav, "
            "dev/wav and test/wav, or wav/idXXXXX/..."
        )
    rows, skips = _speaker_rows(one)
    is_test = lambda s: s.startswith("id1") and 10270 <= int(s[2:] or 0) <= 10309  # noqa: E731
    return {
        "dev": [r for r in rows if not is_test(r[1])],
        "test": [r for r in rows if is_test(r[1])],
    }, skips


def voxceleb2_splits(vox2_dir: str) -> tuple[dict, list]:
    d = os.path.expanduser(vox2_dir)
    out, skips = {}, []
    dev = _first_dir(
        os.path.join(d, "vox2_dev_aac", "dev", "aac"),
        os.path.join(d, "dev", "aac"),
        os.path.join(d, "aac"),
    )
    test = _first_dir(
        os.path.join(d, "vox2_test_aac", "test", "aac"), os.path.join(d, "test", "aac")
    )
    if dev is None:
        if not os.path.isdir(d):
            raise FileNotFoundError(
                f"VoxCeleb2 not found at {d}: expected vox2_dev_aac/dev/aac, dev/aac or aac/."
            )
        dev = d
    out["dev"], s = _speaker_rows(dev)
    skips += s
    if test:
        out["test"], s = _speaker_rows(test)
        skips += s
    return out, skips


def build_voxceleb(
    data_dir: str,
    *,
    vox1_dir: str | None = None,
    vox2_dir: str | None = None,
    trials_dir: str | None = None,
    sample_rate: int = 16000,
    min_seconds: float = 0.1,
    num_workers: int = 2,
    overwrite: bool = False,
) -> list[builder.BuildSummary]:
    """Build "voxceleb1" (dev, test + cleaned O/E/H trial lists) and/or "voxceleb2" (dev [,
    test])."""
    out = []
    for name, src, fn in (
        ("voxceleb1", vox1_dir, voxceleb1_splits),
        ("voxceleb2", vox2_dir, voxceleb2_splits),
    ):
        if not src:
            continue
        splits, skips = fn(src)
        trial_lists = {}
        if name == "voxceleb1":
            for fname, tname in VOX1_TRIALS.items():
                for d in (trials_dir, src):
                    if d and os.path.isfile(os.path.join(os.path.expanduser(d), fname)):
                        trial_lists[tname] = read_trial_rows(
                            os.path.join(os.path.expanduser(d), fname)
                        )
                        break
                else:
                    log.warning(
                        "VoxCeleb1 trial list %s not found in %s; %s will not be available",
                        fname,
                        trials_dir or src,
                        tname,
                    )

        def split_fn(split, splits=splits, skips=skips, name=name):
            def gen():
                if split == next(iter(splits)):
                    yield from skips
                yield from _decoded(
                    splits[split],
                    f"{name}/{split}",
                    sample_rate=sample_rate,
                    min_seconds=min_seconds,
                    num_workers=num_workers,
                )

            return gen

        out.append(
            writer.write_dataset(
                name,
                data_dir,
                {s: split_fn(s) for s in splits},
                description=f"{name} from {os.path.abspath(os.path.expanduser(src))}",
                trials=trial_lists or None,
                train_split="dev",
                sample_rate=sample_rate,
                overwrite=overwrite,
            )
        )
    if not out:
        raise ValueError("nothing to build: pass --vox1_dir and/or --vox2_dir.")
    return out


# ----------------------------------------------------------------------------- banks


def _all_audio(root):
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        dirnames.sort()
        for f in sorted(filenames):
            if os.path.splitext(f)[1].lower() in audio.AUDIO_EXTENSIONS:
                yield os.path.join(dirpath, f)


def build_musan(
    musan_dir: str,
    data_dir: str,
    *,
    name: str = "musan",
    chunk_seconds: float = 6.0,
    sample_rate: int = 16000,
    num_workers: int = 2,
    overwrite: bool = False,
) -> builder.BuildSummary:
    """MUSAN -> splits noise, speech, music; long files cut into chunks of at most
    ``chunk_seconds``."""
    d = os.path.expanduser(musan_dir)
    cats = [c for c in ("noise", "speech", "music") if os.path.isdir(os.path.join(d, c))]
    if not cats:
        raise FileNotFoundError(
            f"MUSAN not found at {d}: expected folders noise/, speech/, music/."
        )
    chunk = int(chunk_seconds * sample_rate)

    def split_fn(cat):
        def gen():
            root = os.path.join(d, cat)
            rows = [
                (os.path.relpath(p, d).replace(os.sep, "/"), cat, cat, p) for p in _all_audio(root)
            ]
            for r in _decoded(
                rows,
                f"{name}/{cat}",
                sample_rate=sample_rate,
                min_seconds=0.1,
                num_workers=num_workers,
                category=cat,
            ):
                if isinstance(r, Skip):
                    yield r
                    continue
                x = r["audio"]
                bounds = list(range(0, x.size, chunk)) + [x.size]
                if len(bounds) > 2 and bounds[-1] - bounds[-2] < chunk // 4:
                    del bounds[-2]  # a short tail joins the previous chunk (nothing is dropped)
                for k, (a, b) in enumerate(zip(bounds[:-1], bounds[1:])):
                    yield dict(r, audio=x[a:b], utterance=f"{r['utterance']}#{k:03d}")

        return gen

    return writer.write_dataset(
        name,
        data_dir,
        {c: split_fn(c) for c in cats},
        description=f"MUSAN noise bank from {os.path.abspath(d)}",
        train_split=None,
        sample_rate=sample_rate,
        overwrite=overwrite,
    )


def build_rirs(
    rirs_dir: str,
    data_dir: str,
    *,
    name: str = "rirs",
    sample_rate: int = 16000,
    num_workers: int = 2,
    overwrite: bool = False,
) -> builder.BuildSummary:
    """OpenSLR 28 simulated RIRs (RIRS_NOISES/simulated_rirs or any folder of RIR files) -> split
    train."""
    d = os.path.expanduser(rirs_dir)
    root = _first_dir(
        os.path.join(d, "simulated_rirs"), os.path.join(d, "RIRS_NOISES", "simulated_rirs"), d
    )
    if root is None:
        raise FileNotFoundError(
            f"RIRs not found at {d}: expected RIRS_NOISES/simulated_rirs/*room/Room*/*.wav."
        )
    rows = []
    for p in _all_audio(root):
        rel = os.path.relpath(p, root).replace(os.sep, "/")
        rows.append((rel, rel.split("/")[0], os.path.dirname(rel), p))
    if not rows:
        raise FileNotFoundError(f"no RIR audio files under {root}.")

    def gen():
        return _decoded(
            rows,
            f"{name}/train",
            sample_rate=sample_rate,
            min_seconds=0.0,
            num_workers=num_workers,  # noqa: E731
            peak=True,
            category="rir",
        )

    return writer.write_dataset(
        name,
        data_dir,
        {"train": gen},
        description=f"RIRs from {os.path.abspath(root)}",
        train_split=None,
        sample_rate=sample_rate,
        overwrite=overwrite,
    )
