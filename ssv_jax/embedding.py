"""Embeddings of evaluation utterances (jitted, sharded), by protocol: ``full`` (one embedding
of the whole utterance) or ``segments`` (evenly spaced frames, each embedded), and their cache
in the workdir.

Utterances are sorted by length and batched; each batch is zero-padded to a multiple of
``eval.bucket_seconds`` (few distinct shapes, few compiles) and the model masks the padding,
so an embedding does not depend on its batch-mates (BatchNorm in eval mode).

Multi-process: the utterances are shared out between the processes (``share_out``); each
decodes only its share, embeds it on its own devices (``local_mesh``, no collective) and the
embeddings are then gathered, so every process holds all of them.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from ssv_jax.frontend import features
from ssv_jax.losses import l2_normalize
from ssv_jax.progress import Progress, track
from ssv_jax.sharding import batch_sharding, data_mesh, replicated

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
    progress = Progress("embed", len(rows), unit="frame")
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
        progress.update(len(chunk))
    progress.close()
    for u, _ in items:
        out[u] = (sums[u] / k).astype(np.float32)
    return out


def _embed_here(cfg, net, local, bs, utterances) -> dict[str, np.ndarray]:
    """``embed_utterances`` of ``utterances`` on this process's ``local`` mesh alone
    (``net``: (embed fn, local params, local batch_stats); ``bs``: the batch size)."""
    items = list(track(utterances, "read", unit="utt"))
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
    progress = Progress("embed", len(items), unit="utt")
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
        progress.update(len(chunk))
    progress.close()
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
    return embedder(cfg, graphdef, params, batch_stats, mesh, embed_fn)(utterances)


def embedder(cfg, graphdef, params, batch_stats, mesh, embed_fn=None):
    """``embed_utterances`` as a function of the utterances alone, with the network copied to
    this process's devices once, for several calls (the trials, then a cohort)."""
    local = local_mesh(mesh)
    fn = embed_fn or make_embed_fn(cfg, graphdef, mesh)
    net = (fn, *local_copy((params, batch_stats), local))
    bs = _batch_size(cfg, mesh)
    return lambda utterances: _embed_shared(cfg, net, local, bs, utterances)


def cache_path_for(workdir: str, cfg, network: str) -> str:
    """WORKDIR/eval/embeddings/<key>.npz: the trial embeddings of one network (e.g.
    "checkpoint 360"), extraction protocol and evaluation dataset."""
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
