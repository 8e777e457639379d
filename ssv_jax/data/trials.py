"""Trial lists in the VoxCeleb format: one ``label utterance_a utterance_b`` per line."""

from __future__ import annotations

import dataclasses

import numpy as np

from ssv_jax.errors import UserError


class TrialListError(UserError, ValueError):
    """A trial list that cannot be used: missing, empty, or a line that is not ``label enroll
    test``."""


@dataclasses.dataclass
class Trials:
    """One trial list: ``labels`` int32 [n] (1 = same speaker), ``enroll`` and ``test`` utterance
    ids."""

    name: str
    labels: np.ndarray
    enroll: list
    test: list

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def utterances(self) -> list:
        """Every utterance named, each once, in first-seen order."""
        return list(dict.fromkeys(self.enroll + self.test))


def parse_trials(text: str, name: str = "trials", source: str = "") -> Trials:
    """Parse VoxCeleb-format lines ``label a b`` (label 0/1); blank lines ignored. A bad line
    raises TrialListError naming the list, its source and the line."""
    labels, enroll, test = [], [], []
    for n, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 3 or parts[0] not in ("0", "1"):
            raise TrialListError(
                f"trial list {name} ({source or 'text'}) line {n}: expected 'label enroll test' "
                f"(label 0 or 1, then two utterance ids), got {line.strip()!r}."
            )
        labels.append(int(parts[0]))
        enroll.append(parts[1])
        test.append(parts[2])
    if not labels:
        raise TrialListError(f"trial list {name} ({source or 'text'}) is empty.")
    return Trials(name=name, labels=np.asarray(labels, np.int32), enroll=enroll, test=test)


def resolve_ids(trials: Trials, known: set, where: str) -> Trials:
    """Map trial ids onto dataset utterance ids (exact, or same path without extension).

    Raises a ValueError naming the first missing utterance if any cannot be found.
    """

    def stem(u):
        head, _, tail = u.rpartition("/")
        return (head + "/" if head else "") + tail.rsplit(".", 1)[0]

    by_stem = {}
    for u in known:
        by_stem.setdefault(stem(u), u)
    out = {}
    missing = []
    for u in trials.utterances:
        if u in known:
            out[u] = u
        elif stem(u) in by_stem:
            out[u] = by_stem[stem(u)]
        else:
            missing.append(u)
    if missing:
        raise ValueError(
            f"trial list {trials.name} names {len(missing)} utterance(s) that are not in {where}, "
            f"e.g. {missing[0]!r}; rebuild the dataset with the audio for them or fix the trial "
            "list."
        )
    return Trials(
        trials.name, trials.labels, [out[u] for u in trials.enroll], [out[u] for u in trials.test]
    )
