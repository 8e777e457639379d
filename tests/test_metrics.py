"""EER / minDCF / DET points against docs/method.md#metrics and independent float64 references."""

import numpy as np
import pytest
from sklearn.metrics import roc_curve

from ssv_jax import metrics


# ---------------------------------------------------------------- references
def ref_points(scores, labels):
    """Operating points at every distinct threshold (accept score >= t), exact integer counts.

    Returns (a, b, T, NT): a = targets rejected, b = non-targets accepted, per threshold,
    thresholds ascending from min(score) to +inf.
    """
    scores = np.asarray(scores, np.float64)
    labels = np.asarray(labels).astype(bool)
    thr = np.concatenate([np.unique(scores), [np.inf]])
    tar, non = np.sort(scores[labels]), np.sort(scores[~labels])
    a = np.searchsorted(tar, thr, side="left").astype(np.int64)  # target scores < t
    b = len(non) - np.searchsorted(non, thr, side="left").astype(np.int64)  # non-targets >= t
    return a, b, len(tar), len(non)


def ref_eer(scores, labels):
    a, b, T, NT = ref_points(scores, labels)
    k = int(np.argmin(np.abs(a * NT - b * T)))  # exact |fnr - fpr| * T * NT, first on ties
    return 100.0 * max(a[k] / T, b[k] / NT)


def ref_sslsv_eer(scores, labels):
    """The recipe of docs/method.md#metrics literally (valid without ties)."""
    order = np.argsort(scores, kind="stable")
    y = np.asarray(labels, np.float64)[order]
    fnr = np.concatenate([[0.0], np.cumsum(y) / y.sum()])
    fpr = np.concatenate([[1.0], (np.sum(1 - y) - np.cumsum(1 - y)) / np.sum(1 - y)])
    k = np.argmin(np.abs(fnr - fpr))
    return 100.0 * max(fpr[k], fnr[k])


def ref_min_dcf(scores, labels, p, c_miss=1.0, c_fa=1.0):
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    fnr = 1.0 - tpr
    dcf = (c_miss * p * fnr + c_fa * (1 - p) * fpr) / min(c_miss * p, c_fa * (1 - p))
    return float(dcf.min())


def _cases():
    rng = np.random.default_rng(0)
    out = []
    for n, p_tar, quantize in [
        (10, 0.5, None),
        (1000, 0.5, None),
        (20000, 0.5, None),
        (5000, 0.01, None),  # very unbalanced
        (3000, 0.97, None),  # unbalanced the other way
        (2000, 0.5, 0.1),  # heavy ties
        (4001, 0.3, 0.02),
        (400, 0.5, 1.0),  # integer scores: few distinct values
    ]:
        labels = (rng.random(n) < p_tar).astype(np.int32)
        labels[0], labels[1] = 1, 0
        scores = rng.normal(size=n) + 1.3 * labels
        if quantize:
            scores = np.round(scores / quantize) * quantize
        out.append((scores.astype(np.float32), labels))
    labels = np.zeros(3000, np.int32)
    labels[17] = 1  # a single target trial
    out.append((rng.normal(size=3000).astype(np.float32), labels))
    return out


CASES = _cases()


# ---------------------------------------------------------------- values
def test_method_reference_values():
    s = [0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2]
    y = [1, 1, 0, 1, 0, 1, 0, 0]
    assert metrics.eer(s, y) == pytest.approx(25.0)
    assert metrics.min_dcf(s, y) == pytest.approx(0.5)
    out = metrics.verification_metrics(s, y, p_targets=(0.01,))
    assert out["eer"] == pytest.approx(25.0) and out["min_dcf"][0.01] == pytest.approx(0.5)
    assert out["n_trials"] == 8 and out["n_target"] == 4


@pytest.mark.parametrize("case", range(len(CASES)))
def test_match_float64_references(case):
    scores, labels = CASES[case]
    s64 = scores.astype(np.float64)
    assert metrics.eer(scores, labels) == pytest.approx(ref_eer(s64, labels), abs=1e-9)
    if len(np.unique(scores)) == len(scores):
        assert metrics.eer(scores, labels) == pytest.approx(ref_sslsv_eer(s64, labels), abs=1e-9)
    for p in (0.01, 0.05):
        want = ref_min_dcf(s64, labels, p)
        assert metrics.min_dcf(scores, labels, p_target=p) == pytest.approx(want, rel=1e-9)
        both = metrics.verification_metrics(scores, labels, p_targets=(p,))
        assert both["min_dcf"][p] == pytest.approx(want, rel=1e-9)
    assert metrics.min_dcf(scores, labels, 0.01, c_miss=10.0, c_fa=1.0) == pytest.approx(
        ref_min_dcf(s64, labels, 0.01, 10.0, 1.0), rel=1e-9
    )


@pytest.mark.slow
def test_equidistant_crossing_picks_first_point_exactly():
    # T = 2, NT = 4, ascending labels 0 0 0 1 0 1: point 3 is (fnr 0, fpr 1/4) and point 4
    # is (fnr 1/2, fpr 1/4), both at distance 1/4: the first (EER 25%, not 50%) is taken.
    scores = np.arange(1, 7, dtype=np.float32)
    labels = np.array([0, 0, 0, 1, 0, 1])
    assert ref_eer(scores, labels) == pytest.approx(25.0)
    assert metrics.eer(scores, labels) == pytest.approx(25.0, abs=1e-9)
    rng = np.random.default_rng(1)
    for _ in range(30):  # many small balanced sets: exact ties in |fnr - fpr| are common
        n = int(rng.choice([6, 13, 24, 39]))  # few shapes, few compiles
        labels = np.arange(n) % 2
        scores = rng.integers(0, 6, size=n).astype(np.float32)
        assert metrics.eer(scores, labels) == pytest.approx(ref_eer(scores, labels), abs=1e-9)


def test_ties_do_not_depend_on_trial_order():
    scores, labels = CASES[5]
    rng = np.random.default_rng(2)
    perm = rng.permutation(len(scores))
    assert metrics.eer(scores[perm], labels[perm]) == metrics.eer(scores, labels)
    assert metrics.min_dcf(scores[perm], labels[perm]) == metrics.min_dcf(scores, labels)


def test_det_curve_matches_sklearn_points():
    scores, labels = CASES[6]
    fpr, fnr, thr = metrics.det_curve(scores, labels)
    sk_fpr, sk_tpr, sk_thr = roc_curve(labels, scores.astype(np.float64), drop_intermediate=False)
    np.testing.assert_allclose(fpr, sk_fpr[::-1], atol=1e-6)
    np.testing.assert_allclose(fnr, 1 - sk_tpr[::-1], atol=1e-6)
    np.testing.assert_array_equal(thr[:-1], sk_thr[::-1][:-1].astype(np.float32))
    assert fpr[0] == 1 and fnr[0] == 0 and fpr[-1] == 0 and fnr[-1] == 1 and np.isinf(thr[-1])
    t = metrics.eer_threshold(scores, labels)
    assert np.isin(t, thr)


# ---------------------------------------------------------------- bad input
def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="different lengths"):
        metrics.eer([0.1, 0.2, 0.3], [0, 1])
    with pytest.raises(ValueError, match="only one class"):
        metrics.eer([0.1, 0.2], [1, 1])
    with pytest.raises(ValueError, match="only one class"):
        metrics.min_dcf([0.1, 0.2], [0, 0])
    with pytest.raises(ValueError, match="NaN or infinite"):
        metrics.eer([0.1, np.nan, 0.3], [0, 1, 1])
    with pytest.raises(ValueError, match="NaN or infinite"):
        metrics.min_dcf([0.1, np.inf, 0.3], [0, 1, 1])
    with pytest.raises(ValueError, match="empty"):
        metrics.eer([], [])
    with pytest.raises(ValueError, match="0 .* or 1"):
        metrics.eer([0.1, 0.2, 0.3], [0, 1, 2])
    with pytest.raises(ValueError, match="1-D"):
        metrics.eer(np.zeros((2, 2)), np.zeros((2, 2)))
    with pytest.raises(ValueError, match="p_target"):
        metrics.min_dcf([0.1, 0.2], [0, 1], p_target=1.5)


def test_float64_and_low_precision_inputs():
    scores, labels = CASES[6]
    s64 = scores.astype(np.float64) + 1e-12 * np.arange(len(scores))  # distinct only in float64
    assert metrics.eer(s64, labels) == pytest.approx(ref_eer(s64, labels), abs=1e-9)
    assert metrics.min_dcf(s64, labels) == pytest.approx(ref_min_dcf(s64, labels, 0.01), rel=1e-9)
    import jax.numpy as jnp

    s16 = jnp.asarray(scores, jnp.bfloat16)
    want = ref_eer(np.asarray(s16, np.float64), labels)
    assert metrics.eer(s16, labels) == pytest.approx(want, abs=1e-9)
    assert metrics.eer(scores, labels.astype(bool)) == metrics.eer(scores, labels)
