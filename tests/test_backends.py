"""Score back-ends: normalisation (z / t / s / AS-norm) and neighbour expansion against float64
numpy references."""

import numpy as np
import pytest

from ssv_jax.backends import neighbours, score_norm


def _unit(x):
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def _reference(emb, cohort, idx_e, idx_t, method, top_n):
    emb, cohort = emb.astype(np.float64), cohort.astype(np.float64)
    out = []
    for a, b in zip(idx_e, idx_t):
        s = emb[a] @ emb[b]
        sides = []
        for u in (a, b):
            c = emb[u] @ cohort.T
            if method == "as-norm":
                c = np.sort(c)[::-1][:top_n]
            sides.append((s - c.mean()) / c.std())
        out.append({"z-norm": sides[0], "t-norm": sides[1]}.get(method, 0.5 * sum(sides)))
    return np.array(out)


@pytest.mark.parametrize("method", ["z-norm", "t-norm", "s-norm", "as-norm"])
def test_matches_float64_reference(method):
    rng = np.random.default_rng(0)
    emb = _unit(rng.normal(size=(50, 16))).astype(np.float32)
    cohort = _unit(rng.normal(size=(40, 16))).astype(np.float32)
    idx_e, idx_t = rng.integers(0, 50, 300), rng.integers(0, 50, 300)
    raw = np.sum(emb[idx_e] * emb[idx_t], 1)
    stats = score_norm.cohort_stats(emb, cohort, top_n=10)
    got = score_norm.normalize(raw, idx_e, idx_t, stats, method)
    np.testing.assert_allclose(
        got, _reference(emb, cohort, idx_e, idx_t, method, 10), rtol=1e-4, atol=1e-4
    )
    # Chunked statistics (several chunks, a padded last one) are the same numbers.
    chunked = score_norm.cohort_stats(emb, cohort, top_n=10, chunk=7)
    for a, b in zip(stats, chunked):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(score_norm.normalize(raw, idx_e, idx_t, stats, "none"), raw)


def test_as_norm_with_the_whole_cohort_is_s_norm():
    rng = np.random.default_rng(1)
    emb = _unit(rng.normal(size=(20, 8))).astype(np.float32)
    cohort = _unit(rng.normal(size=(12, 8))).astype(np.float32)
    idx = np.arange(20)
    raw = np.sum(emb * emb[::-1], 1)
    stats = score_norm.cohort_stats(emb, cohort, top_n=12)
    np.testing.assert_allclose(
        score_norm.normalize(raw, idx, idx[::-1], stats, "as-norm"),
        score_norm.normalize(raw, idx, idx[::-1], stats, "s-norm"),
        rtol=1e-5,
    )


def test_bad_inputs_name_the_problem():
    emb = _unit(np.ones((3, 4))).astype(np.float32)
    with pytest.raises(ValueError, match="top_n"):
        score_norm.cohort_stats(emb, emb, top_n=4)
    with pytest.raises(ValueError, match="cohort must be"):
        score_norm.cohort_stats(emb, np.ones((3, 5), np.float32), top_n=1)
    with pytest.raises(ValueError, match="eval.score_norm"):
        score_norm.normalize(np.zeros(1), [0], [0], score_norm.cohort_stats(emb, emb, top_n=1), "x")


def _expand_reference(emb, k):
    x = emb.astype(np.float64)
    x = _unit(x)
    x = _unit(x - x.mean(0))
    cos = x @ x.T
    np.fill_diagonal(cos, -np.inf)
    out = [x[i] + x[np.argsort(-cos[i])[:k]].sum(0) for i in range(len(x))]
    return _unit(np.array(out))


def test_neighbour_expansion_matches_float64_reference():
    rng = np.random.default_rng(2)
    speakers = rng.normal(size=(6, 16))
    emb = (np.repeat(speakers, 5, 0) + 0.8 * rng.normal(size=(30, 16))).astype(np.float32)
    emb *= rng.uniform(0.5, 3, (30, 1)).astype(np.float32)  # lengths play no part
    got = neighbours.expand_neighbours(emb, 3)
    # (The reference never counts an utterance as its own neighbour.)
    np.testing.assert_allclose(got, _expand_reference(emb, 3), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, rtol=1e-6)
    # Chunked (several chunks, a padded last one): the same neighbours, so the same vectors.
    np.testing.assert_array_equal(neighbours.expand_neighbours(emb, 3, chunk=7), got)
    # On these clusters, expansion widens the gap between same- and other-speaker cosines.
    lab = np.repeat(np.arange(6), 5)
    same, other = (lab[:, None] == lab[None]) & ~np.eye(30, dtype=bool), lab[:, None] != lab[None]

    def gap(x):
        c = x @ x.T
        return c[same].mean() - c[other].mean()

    assert gap(got) > gap(_unit(_unit(emb) - _unit(emb).mean(0))) + 0.1


def test_neighbour_expansion_does_not_depend_on_row_order():
    """Nearly parallel embeddings (an early network: cosines about 0.999): centring cancels
    three of float32's seven digits, so the result must not depend on the order of the rows
    (it is computed in float64 and rounded once)."""
    rng = np.random.default_rng(4)
    common = rng.normal(size=32)
    speakers = rng.normal(size=(6, 32))
    emb = 40 * common + np.repeat(speakers, 6, 0) + 0.5 * rng.normal(size=(36, 32))
    emb = emb.astype(np.float32)
    cos = _unit(emb) @ _unit(emb).T
    assert cos.mean() > 0.99
    perm = rng.permutation(36)
    got = neighbours.expand_neighbours(emb, 3)
    np.testing.assert_allclose(neighbours.expand_neighbours(emb[perm], 3), got[perm], atol=1e-7)
    np.testing.assert_allclose(got, _expand_reference(emb, 3), atol=1e-6)


def test_neighbour_expansion_needs_more_utterances_than_neighbours():
    emb = _unit(np.random.default_rng(3).normal(size=(4, 8))).astype(np.float32)
    with pytest.raises(ValueError, match=r"by 4 neighbours needs k >= 1 and \[N > 4, D\]"):
        neighbours.expand_neighbours(emb, 4)
    with pytest.raises(ValueError, match="by 0 neighbours"):
        neighbours.expand_neighbours(emb, 0)
