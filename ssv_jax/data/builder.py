"""The TFDS builder behind ``writer.write_dataset``: split generators of record dicts (or
``Skip``) -> one complete dataset version directory.

``_build`` writes TFDS's files and, beside them, ``index/``, ``trials/``, ``layout.json``,
``prep_summary.json`` and the completion mark (all described in ``records``), and returns
the ``BuildSummary`` of what was written and skipped. A split without a usable record, or
a trial list with no trial left, raises ``DatasetBuildError``.

Shards target 100-200 MB (TFDS picks a power of two between those sizes).
"""

from __future__ import annotations

import collections
import json
import logging
import time
import types
from dataclasses import dataclass, field
from typing import Callable, Iterable, Mapping

import numpy as np
from etils import epath

from ssv_jax.data.records import COMPLETE_MARK, LAYOUT_FILE, VERSION, _tfds, features
from ssv_jax.errors import UserError

log = logging.getLogger("ssv_jax.data")


class DatasetBuildError(UserError):
    """A build produced nothing usable (a split without records, a trial list with no trial
    left); the old dataset, if any, is unchanged."""


@dataclass
class Skip:
    """A source item that could not be turned into a record (counted, warned)."""

    key: str
    reason: str


@dataclass
class BuildSummary:
    """What a build wrote and skipped, per split."""

    name: str
    path: str = ""
    written: dict = field(default_factory=dict)  # split -> records
    hours: dict = field(default_factory=dict)  # split -> audio hours
    skipped: dict = field(default_factory=dict)  # split -> [(key, reason)]
    seconds: float = 0.0

    def total_hours(self) -> float:
        return float(sum(self.hours.values()))

    def reasons(self, splits=None) -> collections.Counter:
        """Skipped items per reason ("unreadable", "empty", ...), over ``splits`` (default all)."""
        return collections.Counter(
            r.split(" (")[0]
            for split, sk in self.skipped.items()
            if splits is None or split in splits
            for _, r in sk
        )

    def report(self) -> str:
        lines = [f"dataset {self.name} at {self.path}"]
        for split, n in self.written.items():
            sk = self.skipped.get(split, [])
            lines.append(
                f"  {split}: {n} records, {self.hours.get(split, 0.0):.3f} h, {len(sk)} skipped"
            )
        reasons = self.reasons()
        if reasons:
            lines.append(
                "  skipped by reason: " + ", ".join(f"{k}: {v}" for k, v in reasons.items())
            )
            for split, sk in self.skipped.items():
                for key, why in sk[:10]:
                    lines.append(f"    [{split}] {key}: {why}")
                if len(sk) > 10:
                    lines.append(
                        f"    [{split}] ... and {len(sk) - 10} more (see prep_summary.json)"
                    )
        minutes = self.seconds / 60
        lines.append(
            f"  built in {self.seconds:.1f} s ({self.total_hours() / max(minutes, 1e-9):.2f} "
            "audio hours per minute)"
        )
        return "\n".join(lines)


def _make_builder_class(
    name: str,
    description: str,
    splits: Mapping[str, Callable[[], Iterable]],
    summary: BuildSummary,
    index: dict,
    sample_rate: int,
):
    """A GeneratorBasedBuilder subclass named ``name`` (not registered globally)."""
    tfds = _tfds()

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=description,
            features=features(),
            disable_shuffling=True,  # record order = generator order (our pipeline shuffles)
            metadata=tfds.core.MetadataDict(sample_rate=sample_rate),
        )

    def _split_generators(self, dl_manager):
        del dl_manager
        return {split: self._generate_examples(split) for split in splits}

    def _generate_examples(self, split):
        rows = index.setdefault(split, [])
        skipped = summary.skipped.setdefault(split, [])
        seen = set()
        samples = 0
        for item in splits[split]():
            if isinstance(item, Skip):
                log.warning("skipping %s: %s", item.key, item.reason)
                skipped.append((item.key, item.reason))
                continue
            utt = item["utterance"]
            if utt in seen:
                raise ValueError(f"duplicate utterance id {utt!r} in split {split!r}")
            seen.add(utt)
            audio = np.asarray(item["audio"], np.int16)
            samples += audio.size
            rows.append((utt, item.get("speaker", ""), item.get("session", ""), int(audio.size)))
            yield (
                utt,
                {
                    "audio": audio,
                    "speaker": item.get("speaker", ""),
                    "session": item.get("session", ""),
                    "utterance": utt,
                    "category": item.get("category", ""),
                    "duration": np.float32(audio.size / sample_rate),
                },
            )
        summary.written[split] = len(rows)
        summary.hours[split] = samples / sample_rate / 3600.0

    body = {
        "name": name,
        "VERSION": tfds.core.Version(VERSION),
        "_info": _info,
        "_split_generators": _split_generators,
        "_generate_examples": _generate_examples,
        "__module__": __name__,
        # Built at run time, not from a dataset package: no code path, no checksums file.
        "code_path": None,
    }
    cls_name = "".join(p.capitalize() for p in name.split("_")) + "Builder"
    return types.new_class(
        cls_name,
        (tfds.core.GeneratorBasedBuilder,),
        {"skip_registration": True},
        lambda ns: ns.update(body),
    )


def _unchanged(existing: epath.Path | None) -> str:
    return f"the dataset at {existing} is unchanged" if existing else "nothing was written"


def _empty_split_error(name, summary, split, existing) -> DatasetBuildError:
    skipped = summary.skipped.get(split, [])
    if skipped:
        why = ", ".join(f"{k}: {v}" for k, v in summary.reasons([split]).items())
        key, reason = skipped[0]
        n = len(skipped)
        detail = f"{n} file{'s' * (n != 1)} skipped, none kept ({why}; e.g. {key}: {reason})"
    else:
        detail = "its source yielded no item"
    return DatasetBuildError(
        f"dataset {name!r} was not built: split {split!r} has no usable record: {detail}; "
        f"{_unchanged(existing)}."
    )


def _build(
    name,
    tmp,
    root,
    existing,
    splits,
    *,
    description,
    trials,
    train_split,
    sample_rate,
    min_shard_mb,
    max_shard_mb,
    extra_files,
    t0,
) -> BuildSummary:
    """Build dataset ``name`` under ``tmp`` (TFDS writes ``tmp/name/VERSION``), every file of the
    finished dataset included; the summary's path is where it will be, under ``root``."""
    tfds = _tfds()
    summary = BuildSummary(name=name)
    index: dict = {}
    cls = _make_builder_class(name, description, splits, summary, index, sample_rate)
    builder = cls(data_dir=str(tmp), file_format="array_record")
    cfg = tfds.download.DownloadConfig(
        min_shard_size=min_shard_mb << 20,
        max_shard_size=max_shard_mb << 20,
        compute_stats=tfds.download.ComputeStatsMode.SKIP,
    )
    # tfds 4.9's ShardConfig.calculate_number_shards is a classmethod that reads the CLASS
    # defaults (64 MiB - 1 GiB), ignoring the sizes passed above: set them for this call.
    from tensorflow_datasets.core.utils import shard_utils  # not at import: TFDS (see _tfds)

    saved = (shard_utils.ShardConfig.min_shard_size, shard_utils.ShardConfig.max_shard_size)
    shard_utils.ShardConfig.min_shard_size, shard_utils.ShardConfig.max_shard_size = (
        cfg.min_shard_size,
        cfg.max_shard_size,
    )
    empty = lambda: [s for s in splits if summary.written.get(s) == 0]  # noqa: E731
    try:
        builder.download_and_prepare(download_config=cfg)
    except Exception as err:  # TFDS refuses to write a split without examples
        if empty():
            raise _empty_split_error(name, summary, empty()[0], existing) from err
        raise
    finally:
        shard_utils.ShardConfig.min_shard_size, shard_utils.ShardConfig.max_shard_size = saved
    if empty():
        raise _empty_split_error(name, summary, empty()[0], existing)
    vdir = epath.Path(builder.data_dir)
    final = root / vdir.name
    (vdir / "index").mkdir(exist_ok=True)
    for split, rows in index.items():
        with (vdir / "index" / f"{split}.tsv").open("w") as f:
            f.writelines(f"{u}\t{s}\t{e}\t{n}\n" for u, s, e, n in rows)
    layout = {"train_split": train_split if train_split in index else None, "trials": {}}
    if trials:
        known = {r[0] for rows in index.values() for r in rows}
        split_of = {r[0]: s for s, rows in index.items() for r in rows}
        (vdir / "trials").mkdir(exist_ok=True)
        for tname, rows in trials.items():
            rows = list(rows)
            missing = sorted({u for _, a, b in rows for u in (a, b) if u not in known})
            if missing:
                dropped = sum(1 for _, a, b in rows if a not in known or b not in known)
                if dropped == len(rows):
                    skipped = sum(summary.reasons().values())
                    raise DatasetBuildError(
                        f"dataset {name!r} was not built: every one of the {len(rows)} trials of "
                        f"trial list {tname!r} names an utterance that is not in the data "
                        f"({len(missing)} missing, e.g. {missing[0]!r}"
                        + (f"; {skipped} files were skipped" if skipped else "")
                        + f"); {_unchanged(existing)}."
                    )
                log.warning(
                    "trial list %s: %d trials name utterances not in the data (first: %s); "
                    "dropping them",
                    tname,
                    dropped,
                    missing[0],
                )
                rows = [r for r in rows if r[1] in known and r[2] in known]
                summary.skipped.setdefault(f"trials:{tname}", []).extend(
                    (u, "missing utterance") for u in missing
                )
            with (vdir / "trials" / f"{tname}.txt").open("w") as f:
                f.writelines(f"{int(lab)} {a} {b}\n" for lab, a, b in rows)
            used = {split_of[u] for _, a, b in rows for u in (a, b)}
            layout["trials"][tname] = "+".join(s for s in index if s in used)
    (vdir / LAYOUT_FILE).write_text(json.dumps(layout, indent=1))
    for fname, text in extra_files.items():
        (vdir / fname).write_text(text)
    summary.path = str(final)
    summary.seconds = time.time() - t0
    (vdir / "prep_summary.json").write_text(
        json.dumps(
            {
                "name": name,
                "written": summary.written,
                "hours": summary.hours,
                "skipped": {k: [list(x) for x in v] for k, v in summary.skipped.items()},
                "seconds": summary.seconds,
            },
            indent=1,
        )
    )
    (vdir / COMPLETE_MARK).write_text("ok\n")
    return summary
