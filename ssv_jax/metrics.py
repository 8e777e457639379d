"""Verification metrics: EER, minDCF and DET points, jitted (docs/method.md#metrics).

Definitions (sslsv's): sort scores ascending; point j (0 <= j <= n) rejects the
j lowest scores, with fnr_j = (#targets among them) / T and
fpr_j = (#non-targets not among them) / NT, so point 0 is (fnr 0, fpr 1).
EER = max(fpr_k, fnr_k) at k = argmin_j |fnr_j - fpr_j| (first on ties), in
percent. minDCF = min_j (C_miss P fnr_j + C_fa (1-P) fpr_j) / min(C_miss P, C_fa (1-P)).

Ties in scores: a threshold cannot separate equal scores, so only points j
that fall between two DIFFERENT scores (plus j = 0 and j = n) are operating
points; points inside a run of tied scores are skipped. The result therefore
does not depend on the order of tied trials (sslsv's argsort-based code does).
Without ties this is exactly the sslsv definition.

Counts are exact 64-bit integers and rates float64 (the jitted functions run
with x64 enabled locally), so results equal a float64 reference; the EER's
choice between the two points around the fnr/fpr crossing is made in exact
integer arithmetic even when both are equally close.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax


def _x64(fn):
    """Run ``fn`` with 64-bit types enabled (exact counts; only inside this call)."""

    @functools.wraps(fn)
    def wrapped(*args, **kwargs):
        with jax.enable_x64(True):
            return fn(*args, **kwargs)

    return wrapped


def _validate(scores, labels):
    """Check inputs on the host side of the call and return jnp arrays."""
    scores = jnp.asarray(scores)
    labels = jnp.asarray(labels)
    if scores.ndim != 1 or labels.ndim != 1:
        raise ValueError(
            f"scores and labels must be 1-D (one entry per trial); got shapes {scores.shape} "
            f"and {labels.shape}."
        )
    if scores.shape[0] != labels.shape[0]:
        raise ValueError(
            f"scores and labels have different lengths ({scores.shape[0]} vs {labels.shape[0]}): "
            "there must be exactly one label per score."
        )
    if scores.shape[0] == 0:
        raise ValueError("scores and labels are empty: no trials to evaluate.")
    if scores.shape[0] >= 2**31 - 1:
        raise ValueError(f"too many trials ({scores.shape[0]}); at most 2**31 - 2 are supported.")
    if scores.dtype != jnp.float64:
        scores = scores.astype(jnp.float32)  # float32 path; bf16/f16/ints promoted
    finite = jnp.isfinite(scores)
    if not bool(jnp.all(finite)):
        bad = int(jnp.sum(~finite))
        raise ValueError(
            f"{bad} score(s) are NaN or infinite; scores must be finite (check the embeddings "
            "for NaN, e.g. from a diverged model or an empty utterance)."
        )
    if labels.dtype == jnp.bool_:
        labels = labels.astype(jnp.int32)
    else:
        ok = (labels == 0) | (labels == 1)
        if not bool(jnp.all(ok)):
            raise ValueError("labels must be 0 (different speakers) or 1 (same speaker).")
        labels = labels.astype(jnp.int32)
    n_target = int(jnp.sum(labels))
    if n_target == 0 or n_target == labels.shape[0]:
        which = "non-target (label 0)" if n_target else "target (label 1)"
        raise ValueError(
            f"only one class is present: there are no {which} trials; EER and minDCF need both."
        )
    return scores, labels


def _sort_key(scores, labels):
    """uint64 keys that sort like the float32 scores, with the label in the lowest bit."""
    scores = jnp.where(scores == 0, jnp.float32(0), scores.astype(jnp.float32))  # -0.0 -> +0.0
    u = lax.bitcast_convert_type(scores, jnp.uint32)
    k = jnp.where(u >> 31 == 1, ~u, u | jnp.uint32(0x80000000))  # order-preserving map
    return (k.astype(jnp.uint64) << 1) | labels.astype(jnp.uint64)


def _key_to_score(k):
    u = k.astype(jnp.uint32)
    u = jnp.where(u >> 31 == 1, u ^ jnp.uint32(0x80000000), ~u)
    return lax.bitcast_convert_type(u, jnp.float32)


@jax.jit
def _sorted_counts(scores, labels):
    """Rejected-target / rejected-non-target counts at every candidate point j = 0..n.

    Float32 scores: one sort of 64-bit keys (score order, label in the low bit),
    several times faster on CPU than a key-value sort. Float64: key-value sort.
    Must run with x64 enabled (see ``_x64``).
    """
    n = scores.shape[0]
    if scores.dtype == jnp.float64:
        s, y = lax.sort((jnp.where(scores == 0, 0.0, scores), labels), num_keys=1)
        y = y.astype(jnp.int64)
    else:
        ks = jnp.sort(_sort_key(scores, labels))
        y = (ks & 1).astype(jnp.int64)
        s = _key_to_score(ks >> 1)
    zero = jnp.zeros((1,), jnp.int64)
    rej_tar = jnp.concatenate([zero, jnp.cumsum(y)])
    rej_non = jnp.arange(n + 1, dtype=jnp.int64) - rej_tar
    true = jnp.ones((1,), bool)
    valid = jnp.concatenate([true, s[:-1] < s[1:], true])
    thresholds = jnp.concatenate([s, jnp.full((1,), jnp.inf, s.dtype)])
    return rej_tar, rej_non, valid, thresholds


def _eer_from_counts(rej_tar, rej_non, valid):
    n_tar, n_non = rej_tar[-1], rej_non[-1]
    a = rej_tar  # targets rejected: fnr = a / T
    b = n_non - rej_non  # non-targets accepted: fpr = b / NT
    ge = a * n_non >= b * n_tar  # fnr >= fpr, exact in int64
    idx = jnp.arange(a.shape[0])
    j2 = jnp.argmax(valid & ge)  # first valid point at/after the crossing
    j1 = jnp.maximum(jnp.max(jnp.where(valid & (idx < j2), idx, -1)), 0)  # last before it
    # Keep j1 iff fpr1 - fnr1 <= fnr2 - fpr2  <=>  (b1 + b2) * T <= (a1 + a2) * NT.
    keep_first = (b[j1] + b[j2]) * n_tar <= (a[j1] + a[j2]) * n_non
    k = jnp.where(keep_first, j1, j2)
    fnr_k = a[k] / n_tar
    fpr_k = b[k] / n_non
    return 100.0 * jnp.maximum(fnr_k, fpr_k), k


def _rates(rej_tar, rej_non):
    fnr = rej_tar / rej_tar[-1]
    fpr = (rej_non[-1] - rej_non) / rej_non[-1]
    return fnr, fpr


def _dcf_from_counts(rej_tar, rej_non, valid, p_target, c_miss, c_fa):
    fnr, fpr = _rates(rej_tar, rej_non)
    dcf = c_miss * p_target * fnr + c_fa * (1.0 - p_target) * fpr
    dcf = dcf / jnp.minimum(c_miss * p_target, c_fa * (1.0 - p_target))
    dcf = jnp.where(valid, dcf, jnp.inf)
    k = jnp.argmin(dcf)
    return dcf[k], k


@jax.jit
def _eer_jit(scores, labels):
    rej_tar, rej_non, valid, thr = _sorted_counts(scores, labels)
    eer, k = _eer_from_counts(rej_tar, rej_non, valid)
    return eer, thr[k]


@jax.jit
def _min_dcf_jit(scores, labels, p_target, c_miss, c_fa):
    rej_tar, rej_non, valid, thr = _sorted_counts(scores, labels)
    dcf, k = _dcf_from_counts(rej_tar, rej_non, valid, p_target, c_miss, c_fa)
    return dcf, thr[k]


@functools.partial(jax.jit, static_argnames=("p_targets",))
def _all_jit(scores, labels, p_targets):
    rej_tar, rej_non, valid, _ = _sorted_counts(scores, labels)
    eer, _ = _eer_from_counts(rej_tar, rej_non, valid)
    dcfs = tuple(_dcf_from_counts(rej_tar, rej_non, valid, p, 1.0, 1.0)[0] for p in p_targets)
    return eer, dcfs


@_x64
def eer(scores, labels) -> float:
    """Equal error rate in percent (docs/method.md#metrics; ties see module doc)."""
    scores, labels = _validate(scores, labels)
    value, _ = _eer_jit(scores, labels)
    return float(value)


@_x64
def eer_threshold(scores, labels) -> float:
    """The score threshold (accept score >= threshold) at the EER point."""
    scores, labels = _validate(scores, labels)
    _, thr = _eer_jit(scores, labels)
    return float(thr)


@_x64
def min_dcf(scores, labels, p_target=0.01, c_miss=1.0, c_fa=1.0) -> float:
    """Normalised minimum detection cost (docs/method.md#metrics)."""
    if not 0.0 < p_target < 1.0:
        raise ValueError(f"p_target must be in (0, 1); got {p_target}.")
    if c_miss <= 0 or c_fa <= 0:
        raise ValueError(f"c_miss and c_fa must be positive; got {c_miss} and {c_fa}.")
    scores, labels = _validate(scores, labels)
    value, _ = _min_dcf_jit(scores, labels, p_target, c_miss, c_fa)
    return float(value)


@_x64
def verification_metrics(scores, labels, p_targets=(0.01, 0.05)) -> dict:
    """EER (percent) and minDCF at each p_target (C_miss = C_fa = 1) from one sort.

    Returns {"eer": float, "min_dcf": {p_target: float}, "n_trials", "n_target"}.
    """
    p_targets = tuple(float(p) for p in p_targets)
    for p in p_targets:
        if not 0.0 < p < 1.0:
            raise ValueError(f"p_target must be in (0, 1); got {p}.")
    scores, labels = _validate(scores, labels)
    value, dcfs = _all_jit(scores, labels, p_targets)
    return {
        "eer": float(value),
        "min_dcf": {p: float(d) for p, d in zip(p_targets, dcfs)},
        "n_trials": int(scores.shape[0]),
        "n_target": int(jnp.sum(labels)),
    }


@_x64
def det_curve(scores, labels):
    """DET / ROC operating points at distinct score thresholds.

    Returns numpy arrays (fpr, fnr, thresholds), ordered by increasing
    threshold, starting at (fpr 1, fnr 0, lowest score) and ending at
    (fpr 0, fnr 1, +inf). A trial is accepted when score >= threshold.
    """
    scores, labels = _validate(scores, labels)
    rej_tar, rej_non, valid, thr = _sorted_counts(scores, labels)
    fnr, fpr = _rates(rej_tar, rej_non)
    valid = np.asarray(valid)
    return np.asarray(fpr)[valid], np.asarray(fnr)[valid], np.asarray(thr)[valid]
