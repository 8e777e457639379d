"""Evaluation: full-utterance embeddings (jitted, sharded), cosine scores, EER / minDCF.

Utterances are sorted by length and batched; each batch is zero-padded to a multiple of
``eval.bucket_seconds`` (few distinct shapes, few compiles) and the model masks the padding,
so an embedding does not depend on its batch-mates (BatchNorm in eval mode).

Multi-process: the utterances are shared out between the processes (``share_out``); each
decodes only its share, embeds it on its own devices (``local_mesh``, no collective) and the
embeddings are then gathered, so every process holds all of them.
"""

from __future__ import annotations

import json
import logging
import os

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from ssv_jax import checkpoints, metrics, plots, scoring
from ssv_jax import data as data_lib
from ssv_jax.frontend import features
from ssv_jax.losses import l2_normalize
from ssv_jax.sharding import batch_sharding, data_mesh, replicated
from ssv_jax.writers import create_writer

log = logging.getLogger("ssv_jax")


def local_mesh(mesh):
    """A 'data' mesh over this process's devices of ``mesh`` (``mesh`` itself on one process)."""
    return data_mesh(mesh.local_devices)


def make_embed_fn(cfg, graphdef, mesh):
    """jitted (params, batch_stats, waves [B, T], lengths [B]) -> L2-normalised embeddings [B,
    D] on ``local_mesh(mesh)``: parameters replicated there (``local_copy``), batch sharded."""
    local = local_mesh(mesh)

    def embed(params, batch_stats, waves, lengths):
        net = nnx.merge(graphdef, params, batch_stats, copy=True)
        net.eval()
        feats, mask = features(waves, cfg.frontend, lengths=lengths)
        return l2_normalize(net.embed(feats, mask))

    return jax.jit(
        embed,
        in_shardings=(
            replicated(local),
            replicated(local),
            batch_sharding(local),
            batch_sharding(local),
        ),
        out_shardings=replicated(local),
    )


def local_copy(tree, local):
    """``tree`` (e.g. parameters replicated over every process's devices) replicated on the
    ``local`` mesh: each device's own copy is reused where it holds one (no host round trip)."""
    sharding = replicated(local)
    devices = list(local.devices.flat)

    def one(x):
        if isinstance(x, jax.Array):
            if x.sharding.is_equivalent_to(sharding, x.ndim):
                return x
            if x.is_fully_replicated:
                own = {s.device: s.data for s in x.addressable_shards}
                if all(d in own for d in devices):
                    return jax.make_array_from_single_device_arrays(
                        x.shape, sharding, [own[d] for d in devices]
                    )
            if not x.is_fully_addressable:
                x = multihost_utils.process_allgather(x, tiled=True)
        return jax.device_put(x, sharding)

    return jax.tree.map(one, tree)


def share_out(ids, lengths, n: int) -> list[list[str]]:
    """``n`` shares of the utterances ``ids`` (``lengths``: their samples), the same wherever
    computed: longest first (ties by id), dealt in boustrophedon order (0 .. n-1, n-1 .. 0, ...),
    so share sizes differ by at most one, total lengths by at most the longest utterance, and
    each share spans every length (its batches pad no more than the whole set's)."""
    order = sorted(dict(zip(ids, lengths)).items(), key=lambda x: (-x[1], x[0]))
    parts = [[] for _ in range(n)]
    for i, (u, _) in enumerate(order):
        r, j = divmod(i, n)
        parts[j if r % 2 == 0 else n - 1 - j].append(u)
    return parts


def segment_starts(n_samples: int, frame_len: int, num_frames: int) -> np.ndarray:
    """Start offsets of the ``num_frames`` evenly spaced frames of ``frame_len`` samples in an
    utterance of ``n_samples`` (already wrap-padded to at least ``frame_len``)."""
    return np.linspace(0, n_samples - frame_len, num=num_frames).astype(np.int64)


def segments(wave: np.ndarray, frame_len: int, num_frames: int) -> np.ndarray:
    """[num_frames, frame_len] frames of ``wave``, wrap-padded (repeated) when shorter."""
    if wave.size == 0:
        wave = np.zeros(1, np.float32)
    if wave.size < frame_len:
        wave = np.resize(wave, frame_len)
    starts = segment_starts(wave.size, frame_len, num_frames)
    return np.stack([wave[s : s + frame_len] for s in starts])


def _embed_segments(cfg, net, local, bs, items) -> dict[str, np.ndarray]:
    """The segments protocol: each utterance's K frame embeddings (unit vectors), averaged.
    The dot product of two such means is the mean of the K x K cosine matrix of their frames."""
    k = int(cfg.eval.num_frames)
    frame_len = int(round(cfg.eval.frame_seconds * cfg.data.sample_rate))
    rows = [(u, j) for u, _ in items for j in range(k)]
    waves_of = dict(items)
    sums, out = {}, {}
    for start in range(0, len(rows), bs):
        chunk = rows[start : start + bs]
        waves = np.zeros((bs, frame_len), np.float32)
        lengths = np.full((bs,), frame_len, np.int32)
        cache = {}
        for i, (u, j) in enumerate(chunk):
            if u not in cache:
                cache[u] = segments(waves_of[u], frame_len, k)
            waves[i] = cache[u][j]
        emb = _run(net, local, waves, lengths)
        for i, (u, _) in enumerate(chunk):
            sums[u] = sums.get(u, 0.0) + emb[i].astype(np.float64)
    for u, _ in items:
        out[u] = (sums[u] / k).astype(np.float32)
    return out


def _embed_here(cfg, net, local, bs, utterances) -> dict[str, np.ndarray]:
    """``embed_utterances`` of ``utterances`` on this process's ``local`` mesh alone
    (``net``: (embed fn, local params, local batch_stats); ``bs``: the batch size)."""
    items = list(utterances)
    if not items:
        return {}
    if cfg.eval.protocol == "segments":
        return _embed_segments(cfg, net, local, bs, items)
    sr = cfg.data.sample_rate
    max_len = int(cfg.eval.max_seconds * sr) if cfg.eval.max_seconds > 0 else None
    if max_len:
        items = [(u, w[:max_len]) for u, w in items]
    items.sort(key=lambda x: len(x[1]))
    bucket = max(int(cfg.eval.bucket_seconds * sr), 1)
    out = {}
    for start in range(0, len(items), bs):
        chunk = items[start : start + bs]
        longest = max(max(len(w) for _, w in chunk), 1)
        t = -(-longest // bucket) * bucket
        waves = np.zeros((bs, t), np.float32)
        lengths = np.full((bs,), t, np.int32)  # padding rows: full-length silence, discarded
        for i, (_, w) in enumerate(chunk):
            waves[i, : len(w)] = w
            lengths[i] = max(len(w), 1)
        emb = _run(net, local, waves, lengths)
        for i, (u, _) in enumerate(chunk):
            out[u] = emb[i]
    return out


def _embed_shared(cfg, net, local, bs, utterances) -> dict[str, np.ndarray]:
    """``embed_utterances`` over every process: each embeds its ``share_out`` share (decoding
    only that where ``utterances`` is lazily decoded, e.g. ``data.eval_utterances``), then all
    gather every embedding."""
    n_proc = jax.process_count()
    if n_proc == 1:
        return _embed_here(cfg, net, local, bs, utterances)
    if hasattr(utterances, "subset"):  # dataset records: ids and lengths without decoding
        ids, lengths = utterances.ids, utterances.lengths
        parts = share_out(ids, lengths, n_proc)
        mine = utterances.subset(parts[jax.process_index()])
    else:
        items = list(utterances)
        ids, lengths = [u for u, _ in items], [len(w) for _, w in items]
        parts = share_out(ids, lengths, n_proc)
        keep = set(parts[jax.process_index()])
        mine = [(u, w) for u, w in items if u in keep]
    if not ids:
        return {}
    own = _embed_here(cfg, net, local, bs, mine)
    if own:
        dim = len(next(iter(own.values())))
    else:  # fewer utterances than processes
        waves = jax.ShapeDtypeStruct((bs, int(cfg.data.sample_rate)), np.float32)
        dim = jax.eval_shape(net[0], *net[1:], waves, jax.ShapeDtypeStruct((bs,), np.int32))
        dim = dim.shape[-1]
    block = np.zeros((max(len(p) for p in parts), dim), np.float32)
    for i, u in enumerate(parts[jax.process_index()]):
        block[i] = own[u]
    every = np.asarray(multihost_utils.process_allgather(block))  # [processes, rows, dim]
    row = {u: (p, i) for p, part in enumerate(parts) for i, u in enumerate(part)}
    return {u: every[row[u]] for u in dict.fromkeys(ids)}


def embed_utterances(
    cfg, graphdef, params, batch_stats, mesh, utterances, embed_fn=None
) -> dict[str, np.ndarray]:
    """{utterance id: embedding} for an iterable of (id, float32 wave), by ``eval.protocol``:
    "full": one L2-normalised embedding of the whole utterance (cropped to
    ``eval.max_seconds``); "segments": the mean of the unit embeddings of ``eval.num_frames``
    evenly spaced frames of ``eval.frame_seconds`` (the dot product of two is the mean of their
    K x K frame cosines, the reference framework's score).

    ``embed_fn``: a ``make_embed_fn`` result to reuse (its compiled shapes are kept, so
    repeated evaluations during training do not recompile). Multi-process: every process passes
    the same utterances; each embeds its share (``share_out``; with ``data.eval_utterances``
    it decodes only that) on its own devices, and every process gets every embedding back.
    """
    local = local_mesh(mesh)
    fn = embed_fn or make_embed_fn(cfg, graphdef, mesh)
    net = (fn, *local_copy((params, batch_stats), local))
    return _embed_shared(cfg, net, local, _batch_size(cfg, mesh), utterances)


def cache_path_for(workdir: str, cfg, network: str) -> str:
    """WORKDIR/eval/embeddings/<key>.npz: the trial embeddings of one network (e.g.
    "checkpoint 360"), extraction protocol and evaluation dataset."""
    import hashlib

    key = json.dumps(
        {
            "network": network,
            "protocol": cfg.eval.protocol,
            "num_frames": cfg.eval.num_frames,
            "frame_seconds": cfg.eval.frame_seconds,
            "max_seconds": cfg.eval.max_seconds,
            "dataset": [
                os.path.abspath(os.path.expanduser(cfg.data.data_dir)),
                cfg.data.eval_name or cfg.data.name,
            ],
        },
        sort_keys=True,
    )
    name = hashlib.sha1(key.encode()).hexdigest()[:16]
    return os.path.join(workdir, "eval", "embeddings", f"{name}.npz")


def _read_cache(path: str | None) -> dict[str, np.ndarray]:
    """Every {id: embedding} of the cache at ``path`` ({} when there is none)."""
    if not path or not os.path.exists(path):
        return {}
    with np.load(path) as z:
        return dict(zip((str(u) for u in z["ids"]), z["embeddings"]))


def load_cached(path: str | None, wanted) -> dict[str, np.ndarray]:
    """{id: embedding} of the ``wanted`` ids found in the cache at ``path`` (none: {})."""
    wanted = set(wanted)
    return {u: e for u, e in _read_cache(path).items() if u in wanted}


def save_cache(path: str | None, new: dict) -> None:
    """Add ``new`` {id: embedding} to the cache at ``path`` (atomically replaced)."""
    if not path or not new or jax.process_index() != 0:
        return
    merged = _read_cache(path) | new
    os.makedirs(os.path.dirname(path), exist_ok=True)
    tmp = path + ".tmp.npz"
    np.savez(tmp, ids=np.asarray(list(merged)), embeddings=np.stack(list(merged.values())))
    os.replace(tmp, path)


def _batch_size(cfg, mesh) -> int:
    """This process's batch: ``eval.batch_size`` over the devices of ``mesh`` (rounded down, at
    least one each), times its own devices."""
    return max(int(cfg.eval.batch_size) // mesh.size, 1) * len(mesh.local_devices)


def _run(net, local, waves, lengths) -> np.ndarray:
    """The embed fn of ``net`` on one host batch, sharded over ``local``; embeddings on host."""
    fn, params, batch_stats = net
    sharding = batch_sharding(local)
    return np.asarray(fn(params, batch_stats, *jax.device_put((waves, lengths), sharding)))


@jax.jit
def cosine_scores(emb, idx_a, idx_b):
    """Cosine of L2-normalised embeddings for index pairs."""
    return jnp.sum(emb[idx_a] * emb[idx_b], axis=-1)


def trial_rows(pos: dict, trials) -> tuple[np.ndarray, np.ndarray]:
    """Rows (in ``pos``: {id: row}) of each trial's enroll and test utterance; a trial naming an
    utterance with no embedding is refused by name."""
    missing = [u for u in trials.utterances if u not in pos]
    if missing:
        raise ValueError(
            f"trial list {trials.name!r} names {len(missing)} utterance(s) with no embedding, "
            f"e.g. {missing[0]!r}: it is not in the evaluation data."
        )
    a = np.asarray([pos[u] for u in trials.enroll], np.int32)
    b = np.asarray([pos[u] for u in trials.test], np.int32)
    return a, b


def score_trials(embeddings: dict, trials) -> np.ndarray:
    ids = list(embeddings)
    a, b = trial_rows({u: i for i, u in enumerate(ids)}, trials)
    emb = jnp.asarray(np.stack([embeddings[u] for u in ids]))
    return np.asarray(cosine_scores(emb, a, b))


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
    """{trial list name: (Trials, scores)} for the config's trial lists: cosine scores, plus
    ``NAME/<eval.score_norm>`` entries with normalised scores when ``eval.score_norm`` is set
    and ``NAME/neighbours_K`` entries when ``eval.neighbours`` is K > 0, the cosines of the
    embeddings expanded over the union of the lists' utterances (``back_ends``: validations
    during training skip both). ``cache_path``: an embedding cache (``cache_path_for``) read
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
    local = local_mesh(mesh)
    bs = _batch_size(cfg, mesh)
    net = (
        embed_fn or make_embed_fn(cfg, graphdef, mesh),
        *local_copy((params, batch_stats), local),  # once for the trials and the cohort
    )
    if todo:
        fresh = _embed_shared(cfg, net, local, bs, data_lib.eval_utterances(cfg.data, only=todo))
        embeddings.update(fresh)
        save_cache(cache_path, fresh)
    if cache_path and len(todo) < len(needed):
        log.info(
            "%d of %d trial embeddings from %s", len(needed) - len(todo), len(needed), cache_path
        )
    out = {name: (t, score_trials(embeddings, t)) for name, t in wanted.items()}
    method = cfg.eval.score_norm
    if back_ends and method != "none":
        cohort = _embed_shared(
            cfg,
            net,
            local,
            bs,
            data_lib.cohort_utterances(cfg.data, int(cfg.eval.cohort_size), exclude=needed),
        )
        ids = list(embeddings)
        pos = {u: i for i, u in enumerate(ids)}
        stats = scoring.cohort_stats(
            np.stack([embeddings[u] for u in ids]),
            np.stack(list(cohort.values())),
            top_n=min(int(cfg.eval.asnorm_top_n), len(cohort)),
        )
        log.info("score normalisation %s against a cohort of %d utterances", method, len(cohort))
        for name, (t, scores) in list(out.items()):
            normed = scoring.normalize(scores, *trial_rows(pos, t), stats, method)
            out[f"{name}/{method}"] = (t, normed, scores)
    k = int(cfg.eval.neighbours)
    if back_ends and k:
        ids = sorted(needed)
        if k >= len(ids):
            log.warning(
                "eval.neighbours=%d, but the trial lists name only %d utterances: expanding by %d",
                k,
                len(ids),
                len(ids) - 1,
            )
            k = len(ids) - 1
        if k:
            expanded = scoring.expand_neighbours(np.stack([embeddings[u] for u in ids]), k)
            expanded = dict(zip(ids, expanded))
            log.info("neighbour expansion: %d nearest of %d utterances", k, len(ids))
            for name, t in wanted.items():
                out[f"{name}/neighbours_{k}"] = (t, score_trials(expanded, t), out[name][1])
    return out


def trial_metrics(scored: dict) -> dict:
    """results.json from ``score_trial_lists``: per entry ``eer`` (percent), ``min_dcf``
    (p_target 0.01), ``min_dcf_0.05``, ``eer_threshold`` (accept score >= it), ``n_trials``,
    ``n_target``, ``n_nontarget``, the false negatives and false positives at that threshold
    (``fn_at_eer``, ``fp_at_eer``), and the mean cosine of target and of non-target trials
    (``mean_target_cosine``, ``mean_nontarget_cosine``: the raw cosines, also for normalised
    entries)."""
    results = {}
    for name, (t, scores, *raw) in scored.items():
        cos = raw[0] if raw else scores
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
    for name, (t, scores, *_) in scored.items():
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
