"""Evaluation protocols: full utterances and the reference framework's K evenly spaced frames."""

import os

import jax
import numpy as np
import pytest

from ssv_jax import embedding
from ssv_jax.sharding import data_mesh
from tests.helpers.cases import embed_case, embed_network


def test_segment_starts_and_wrap_padding():
    np.testing.assert_array_equal(
        embedding.segment_starts(48000, 16000, 5), [0, 8000, 16000, 24000, 32000]
    )
    w = np.arange(10, dtype=np.float32)
    frames = embedding.segments(w, 4, 3)  # starts 0, 3, 6
    np.testing.assert_array_equal(frames, [[0, 1, 2, 3], [3, 4, 5, 6], [6, 7, 8, 9]])
    short = embedding.segments(w[:3], 8, 2)  # wrap-padded: 0 1 2 0 1 2 0 1, both frames at 0
    np.testing.assert_array_equal(short, [[0, 1, 2, 0, 1, 2, 0, 1]] * 2)


def _segments_case(k=3, seconds=0.5):
    cfg, utterances = embed_case()
    cfg.eval.protocol, cfg.eval.num_frames, cfg.eval.frame_seconds = "segments", k, seconds
    return cfg, utterances


@pytest.mark.slow
def test_segment_score_is_the_mean_of_the_frame_cosine_matrix():
    cfg, utterances = _segments_case()
    mesh = data_mesh()
    net = embed_network(cfg, mesh)
    emb = embedding.embed_utterances(cfg, *net, mesh, utterances)
    # Reference: every frame embedded alone as a whole utterance, then the K x K cosine mean.
    full = cfg.copy_and_resolve_references()
    full.eval.protocol = "full"
    frame_len = int(cfg.eval.frame_seconds * cfg.data.sample_rate)
    frames = {}
    for u, w in utterances[:4]:
        for j, f in enumerate(embedding.segments(w, frame_len, cfg.eval.num_frames)):
            frames[(u, j)] = f
    alone = embedding.embed_utterances(
        full, *net, mesh, [(f"{u}|{j}", f) for (u, j), f in frames.items()]
    )
    ids = [u for u, _ in utterances[:4]]
    for a in ids:
        for b in ids:
            ea = np.stack([alone[f"{a}|{j}"] for j in range(3)]).astype(np.float64)
            eb = np.stack([alone[f"{b}|{j}"] for j in range(3)]).astype(np.float64)
            assert float(emb[a] @ emb[b]) == pytest.approx(float(np.mean(ea @ eb.T)), abs=1e-5)


@pytest.mark.parametrize("protocol", ["full", "segments"])
def test_sharded_extraction_equals_one_device(protocol):
    cfg, utterances = _segments_case()
    cfg.eval.protocol = protocol
    out = []
    for mesh in (data_mesh(), data_mesh(jax.devices()[:1])):
        out.append(embedding.embed_utterances(cfg, *embed_network(cfg, mesh), mesh, utterances))
    assert jax.device_count() == 8 and set(out[0]) == {u for u, _ in utterances}
    for u in out[0]:
        np.testing.assert_allclose(out[0][u], out[1][u], rtol=1e-5, atol=1e-6)


def test_share_out_is_balanced_and_deterministic():
    rng = np.random.default_rng(0)
    lengths = [int(n) for n in rng.integers(16000, 96000, 101)]
    ids = [f"u{i:03d}" for i in range(101)]
    parts = embedding.share_out(ids, lengths, 4)
    assert parts == embedding.share_out(ids[::-1], lengths[::-1], 4)  # not the input order
    assert sorted(u for p in parts for u in p) == ids
    assert {len(p) for p in parts} == {25, 26}
    of = dict(zip(ids, lengths))
    totals = [sum(of[u] for u in p) for p in parts]
    assert max(totals) - min(totals) <= max(lengths)
    assert embedding.share_out(ids[:1], lengths[:1], 2) == [["u000"], []]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    from ssv_jax import data as data_lib
    from tests.helpers.cases import tiny_config

    d = tmp_path_factory.mktemp("tfds")
    data_lib.ensure_dataset(tiny_config(d).data, names=["synthetic"])
    return d


@pytest.mark.slow
def test_two_process_evaluation_equals_one(data_dir, tmp_path):
    """2 processes x 4 devices == 1 process x 8, both protocols, AS-norm included: each process
    decodes and embeds about half the trial and cohort utterances on its own devices, and
    every process gets every embedding, score and EER."""
    from tests.helpers.eval_case import eval_config, evaluations, save_network
    from tests.helpers.multiprocess import launch

    cfg, mesh = eval_config(data_dir), data_mesh()
    net = embed_network(cfg, mesh)
    save_network(net, tmp_path / "network.npz")  # the workers start from it (no init)
    worker = os.path.join(os.path.dirname(__file__), "helpers", "mp_embed_worker.py")
    out = str(tmp_path / "res")
    launch(
        worker,
        [f"--data_dir={data_dir}", f"--network={tmp_path / 'network.npz'}", f"--out={out}"],
        n_proc=2,
        devices_per_proc=4,
    )
    ref = evaluations(cfg, net, mesh)
    res = [dict(np.load(f"{out}.{i}.npz")) for i in range(2)]
    for r in res:
        assert (int(r.pop("devices")), int(r.pop("processes"))) == (8, 2)
        assert set(r) == set(ref)
    for protocol in ("full", "segments"):
        total = ref[f"{protocol}/decoded"]
        shares = [int(r[f"{protocol}/decoded"]) for r in res]
        assert sum(shares) == total > 20 and max(shares) - min(shares) <= 2, shares
    for k, v in ref.items():
        if k.endswith("/eer"):
            assert all(float(r[k]) == pytest.approx(v, abs=1e-6) for r in res), k
        elif not k.endswith("/decoded"):
            for r in res:
                np.testing.assert_allclose(r[k], v, rtol=1e-5, atol=1e-5, err_msg=k)
