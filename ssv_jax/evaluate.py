"""Evaluation of a trained network on the config's trial lists: embeddings of the trial
utterances (``ssv_jax.embedding``), cosine scores and their back-ends (``ssv_jax.backends``),
EER / minDCF and the files a run writes (results.json, scores, DET curve, histograms)."""

from __future__ import annotations

import dataclasses
import json
import logging
import os

import jax
import numpy as np

from ssv_jax import backends, checkpoints, metrics, plots
from ssv_jax import data as data_lib
from ssv_jax.backends import score_trials
from ssv_jax.data.trials import Trials
from ssv_jax.embedding import cache_path_for, embedder, load_cached, save_cache
from ssv_jax.sharding import data_mesh
from ssv_jax.writers import create_writer

log = logging.getLogger("ssv_jax")


@dataclasses.dataclass(frozen=True)
class Scored:
    """One results entry: a trial list, its scores, and the plain cosine scores of the same
    trials (``cosines``; the scores themselves for the plain entry)."""

    trials: Trials
    scores: np.ndarray
    cosines: np.ndarray


def score_trial_lists(
    cfg,
    graphdef,
    params,
    batch_stats,
    mesh,
    max_trials: int = 0,
    embed_fn=None,
    back_ends: bool = True,
    cache_path: str | None = None,
) -> dict:
    """{entry name: Scored} for the config's trial lists: each list's cosine scores, then the
    ``NAME/<back-end>`` entries of each back-end the config turns on (``ssv_jax.backends``:
    ``eval.score_norm``, ``eval.neighbours``; ``back_ends=False``, as validations during
    training: none). ``cache_path``: an embedding cache (``cache_path_for``) read
    before and extended after extraction."""
    all_trials = data_lib.load_trials(cfg.data)
    wanted = {}
    for name in data_lib.trial_lists(cfg.data):
        if name not in all_trials:
            raise ValueError(
                f"trial list {name!r} is not stored with the evaluation data; "
                f"available: {sorted(all_trials)}."
            )
        t = all_trials[name]
        if max_trials and len(t) > max_trials:
            t = type(t)(
                name=t.name,
                labels=t.labels[:max_trials],
                enroll=t.enroll[:max_trials],
                test=t.test[:max_trials],
            )
        wanted[name] = t
    needed = set()
    for t in wanted.values():
        needed.update(t.utterances)
    embeddings = load_cached(cache_path, needed)
    todo = needed - set(embeddings)
    embed = embedder(cfg, graphdef, params, batch_stats, mesh, embed_fn)  # trials and cohort
    if todo:
        fresh = embed(data_lib.eval_utterances(cfg.data, only=todo))
        embeddings.update(fresh)
        save_cache(cache_path, fresh)
    if cache_path and len(todo) < len(needed):
        log.info(
            "%d of %d trial embeddings from %s", len(needed) - len(todo), len(needed), cache_path
        )
    out = {}
    for name, t in wanted.items():
        cosines = score_trials(embeddings, t)
        out[name] = Scored(t, cosines, cosines)
    if not back_ends:
        return out
    collection = backends.Collection(embeddings, embed)
    for make in backends.BACK_ENDS:
        back_end = make(cfg, collection)
        if back_end is None:
            continue
        for name, t in wanted.items():
            cosines = out[name].cosines
            out[f"{name}/{back_end.name}"] = Scored(t, back_end.score(t, cosines), cosines)
    return out


def trial_metrics(scored: dict) -> dict:
    """results.json from ``score_trial_lists``: per entry ``eer`` (percent), ``min_dcf``
    (p_target 0.01), ``min_dcf_0.05``, ``eer_threshold`` (accept score >= it), ``n_trials``,
    ``n_target``, ``n_nontarget``, the false negatives and false positives at that threshold
    (``fn_at_eer``, ``fp_at_eer``), and the mean cosine of target and of non-target trials
    (``mean_target_cosine``, ``mean_nontarget_cosine``: the raw cosines, also for normalised
    entries)."""
    results = {}
    for name, entry in scored.items():
        t, scores, cos = entry.trials, entry.scores, entry.cosines
        labels = np.asarray(t.labels).astype(bool)
        m = metrics.verification_metrics(scores, t.labels, p_targets=(0.01, 0.05))
        thr = metrics.eer_threshold(scores, t.labels)
        accept = np.asarray(scores) >= thr
        results[name] = {
            "eer": m["eer"],
            "min_dcf": m["min_dcf"][0.01],
            "min_dcf_0.05": m["min_dcf"][0.05],
            "eer_threshold": float(thr),
            "n_trials": len(t),
            "n_target": int(labels.sum()),
            "n_nontarget": int((~labels).sum()),
            "fn_at_eer": int(np.sum(labels & ~accept)),
            "fp_at_eer": int(np.sum(~labels & accept)),
            "mean_target_cosine": float(np.mean(np.asarray(cos)[labels])),
            "mean_nontarget_cosine": float(np.mean(np.asarray(cos)[~labels])),
        }
    return results


def summary_table(results: dict) -> str:
    """results.json as a console table, one row per trial list and normalisation."""
    rows = [("trial list", "EER %", "minDCF 0.01", "minDCF 0.05", "trials", "tgt cos", "non cos")]
    for name, r in results.items():
        rows.append(
            (
                name,
                f"{r['eer']:.2f}",
                f"{r['min_dcf']:.4f}",
                f"{r['min_dcf_0.05']:.4f}",
                str(r["n_trials"]),
                f"{r['mean_target_cosine']:.3f}",
                f"{r['mean_nontarget_cosine']:.3f}",
            )
        )
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = [
        "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
        for row in rows
    ]
    return "\n".join([lines[0], "-" * len(lines[0]), *lines[1:]])


def evaluate_trials(
    cfg, graphdef, params, batch_stats, mesh, max_trials: int = 0, embed_fn=None
) -> dict:
    """{trial list name: {"eer", "min_dcf", "n_trials"}} on the config's trial lists."""
    return trial_metrics(
        score_trial_lists(
            cfg, graphdef, params, batch_stats, mesh, max_trials, embed_fn, back_ends=False
        )
    )


def write_results(workdir: str, results: dict) -> str:
    path = os.path.join(workdir, "results.json")
    if jax.process_index() == 0:
        with open(path, "w") as f:
            json.dump(results, f, indent=2)
    return path


def write_scores(workdir: str, scored: dict, results: dict) -> str:
    """Per trial list, under ``workdir/eval/``: ``NAME_scores.txt`` (``label enroll test score``
    per trial, the trial list's order), ``NAME_hist.png`` (target / non-target score
    histograms), one ``det.png`` with every list's DET curve, and ``thresholds.json``
    ({name: {"eer_threshold": t}}: accept score >= t; ``ssv-jax verify`` reads it).
    ``results``: ``trial_metrics(scored)`` (its EER thresholds and EERs are used)."""
    out = os.path.join(workdir, "eval")
    if jax.process_index() != 0:
        return out
    os.makedirs(out, exist_ok=True)
    thresholds, curves = {}, {}
    for name, entry in scored.items():
        t, scores = entry.trials, entry.scores
        stem = name.replace("/", "_")
        with open(os.path.join(out, f"{stem}_scores.txt"), "w") as f:
            for lab, a, b, sc in zip(t.labels, t.enroll, t.test, scores):
                f.write(f"{int(lab)} {a} {b} {float(sc):.6f}\n")
        thr = results[name]["eer_threshold"]
        thresholds[name] = {"eer_threshold": thr}
        fpr, fnr, _ = metrics.det_curve(scores, t.labels)
        curves[name] = (fpr, fnr, results[name]["eer"])
        plots.score_histogram(
            scores, t.labels, thr, os.path.join(out, f"{stem}_hist.png"), title=name
        )
    plots.det_plot(curves, os.path.join(out, "det.png"))
    with open(os.path.join(out, "thresholds.json"), "w") as f:
        json.dump(thresholds, f, indent=2)
    return out


def evaluate_workdir(cfg, workdir: str, *, mesh=None, graphdef=None, state=None) -> dict:
    """Evaluate the trained network (see ``load_network``) on the config's trial lists; write
    ``workdir/results.json`` and the scores, DET curve and score histograms under
    ``workdir/eval/`` (``write_scores``)."""
    mesh = mesh or data_mesh()
    data_lib.ensure_eval_dataset(cfg.data)
    g, params, batch_stats, what = checkpoints.load_network(cfg, workdir, mesh, state)
    graphdef = graphdef or g
    log.info("evaluating %s", what)
    cache = cache_path_for(workdir, cfg, what)
    scored = score_trial_lists(cfg, graphdef, params, batch_stats, mesh, cache_path=cache)
    results = trial_metrics(scored)
    path = write_results(workdir, results)
    write_scores(workdir, scored, results)
    writer = create_writer(workdir)
    step = int(checkpoints.manager(workdir, cfg).latest_step() or 0)
    writer.write_scalars(
        step,
        {f"eer/{k}": v["eer"] for k, v in results.items()}
        | {f"min_dcf/{k}": v["min_dcf"] for k, v in results.items()},
    )
    writer.flush()
    log.info("results written to %s", path)
    return results
