"""Metrics against hand-computed answers and independent brute-force loops (not the code's own output)."""

import math

import numpy as np
import pytest

from vfeat.errors import InputError
from vfeat.evaluate import metrics as m

# 4 captions x 3 videos. caption -> video: c0->v0, c1->v1, c2->v0, c3->v2.
SIM = np.array([
    [0.9, 0.1, 0.3],   # c0: v0 best                          -> rank 1
    [0.2, 0.8, 0.8],   # c1: v1 ties v2 (pessimistic)          -> rank 2
    [0.5, 0.5, 0.1],   # c2: v0 ties v1                        -> rank 2
    [0.1, 0.2, 0.3],   # c3: v2 best                           -> rank 1
])
CAP_VID = np.array([0, 1, 0, 2])
# v2t, by hand: v0 column [.9,.2,.5,.1], own c0/c2, best .9, nobody else >= .9 -> 1
#               v1 column [.1,.8,.5,.2], own c1 .8 -> 1
#               v2 column [.3,.8,.1,.3], own c3 .3; c0 .3 ties, c1 .8 above -> 3


def test_retrieval_metrics_by_hand():
    r = m.retrieval_metrics(SIM, CAP_VID)
    assert r["t2v_r1"] == 50.0 and r["t2v_r5"] == 100.0 and r["t2v_r10"] == 100.0 and r["t2v_r50"] == 100.0
    assert r["t2v_median_rank"] == 1.5 and r["t2v_mean_rank"] == 1.5
    assert r["v2t_r1"] == pytest.approx(200 / 3)
    assert r["v2t_median_rank"] == 1.0 and r["v2t_mean_rank"] == pytest.approx(5 / 3)
    assert (r["num_captions"], r["num_videos"], r["num_v2t_queries"]) == (4, 3, 3)


def _brute_t2v(sim, cv):
    ranks = []
    for i in range(sim.shape[0]):
        target = sim[i, cv[i]]
        ranks.append(1 + sum(1 for j in range(sim.shape[1]) if j != cv[i] and sim[i, j] >= target))
    return ranks


def _brute_v2t(sim, cv):
    ranks = []
    for v in range(sim.shape[1]):
        own = [c for c in range(sim.shape[0]) if cv[c] == v]
        if not own:
            continue
        best = max(sim[c, v] for c in own)
        ranks.append(1 + sum(1 for c in range(sim.shape[0]) if cv[c] != v and sim[c, v] >= best))
    return ranks


def _summary(ranks, prefix):
    ranks = sorted(ranks)
    n = len(ranks)
    med = ranks[n // 2] if n % 2 else (ranks[n // 2 - 1] + ranks[n // 2]) / 2
    out = {f"{prefix}r{k}": 100.0 * sum(r <= k for r in ranks) / n for k in (1, 5, 10, 50)}
    out[f"{prefix}median_rank"] = med
    out[f"{prefix}mean_rank"] = sum(ranks) / n
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_retrieval_matches_brute_force_with_ties_and_captionless_videos(seed):
    rng = np.random.default_rng(seed)
    n_vid, n_cap = 60, 150
    sim = rng.integers(0, 6, size=(n_cap, n_vid)).astype(float)  # many exact ties on purpose
    cv = rng.integers(0, n_vid - 5, size=n_cap)                   # the last videos have no captions
    got = m.retrieval_metrics(sim, cv)
    want = {**_summary(_brute_t2v(sim, cv), "t2v_"), **_summary(_brute_v2t(sim, cv), "v2t_")}
    for k, v in want.items():
        assert got[k] == pytest.approx(v), k
    assert got["num_v2t_queries"] == len(set(cv.tolist()))


def test_constant_scores_rank_last():
    r = m.retrieval_metrics(np.zeros((3, 3)), [0, 1, 2])
    assert r["t2v_r1"] == 0.0 and r["t2v_median_rank"] == 3.0 and r["v2t_mean_rank"] == 3.0


def test_classification_by_hand():
    scores = np.array([
        [0.9, 0.05, 0.05],  # y=0 -> rank 1
        [0.6, 0.3, 0.1],    # y=1 -> rank 2
        [0.2, 0.2, 0.6],    # y=0 -> rank 3 (class 2 above, class 1 ties: pessimistic)
        [0.1, 0.1, 0.8],    # y=2 -> rank 1
    ])
    r = m.classification_metrics(scores, [0, 1, 0, 2], ks=(1, 2, 5))
    assert r["top1"] == 50.0
    assert r["top2"] == 75.0
    assert r["top5"] == 100.0  # k > number of classes: every video counts
    # per class: class0 1/2, class1 0/1, class2 1/1 -> mean (50 + 0 + 100) / 3
    assert r["per_class_accuracy"] == [50.0, 0.0, 100.0]
    assert r["mean_class_accuracy"] == pytest.approx(50.0)
    assert r["num_samples"] == 4


def test_classification_absent_class_is_nan_and_not_averaged():
    scores = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    r = m.classification_metrics(scores, [0, 1, 1])
    assert r["per_class_accuracy"][0] == 100.0 and r["per_class_accuracy"][1] == 50.0
    assert math.isnan(r["per_class_accuracy"][2])
    assert r["mean_class_accuracy"] == 75.0
    assert r["top1"] == pytest.approx(200 / 3)


def test_classification_brute_force_topk():
    rng = np.random.default_rng(3)
    scores = rng.integers(0, 4, size=(200, 7)).astype(float)
    y = rng.integers(0, 7, size=200)
    r = m.classification_metrics(scores, y, ks=(1, 3, 5))
    for k in (1, 3, 5):
        hits = 0
        for i in range(200):
            better_or_equal = sum(1 for c in range(7) if c != y[i] and scores[i, c] >= scores[i, y[i]])
            hits += (1 + better_or_equal) <= k
        assert r[f"top{k}"] == pytest.approx(100.0 * hits / 200)


def test_classification_errors_are_for_people():
    with pytest.raises(InputError, match=r"labels\[1\] = -1 is not a valid class index"):
        m.classification_metrics(np.zeros((2, 3)), [0, -1])
    with pytest.raises(InputError, match="contains NaN"):
        m.classification_metrics(np.array([[np.nan, 1.0]]), [0])
    with pytest.raises(InputError, match="one entry per row"):
        m.classification_metrics(np.zeros((2, 3)), [0])
    with pytest.raises(InputError, match="2-D score matrix"):
        m.classification_metrics(np.zeros(3), [0])


def test_dsl_against_direct_formula():
    rng = np.random.default_rng(0)
    sim = rng.uniform(-0.3, 0.5, size=(5, 4))
    want = np.empty_like(sim)
    for v in range(4):  # each video's column: softmax over the texts
        e = [math.exp(100 * sim[t, v]) for t in range(5)]
        for t in range(5):
            want[t, v] = sim[t, v] * e[t] / sum(e)
    np.testing.assert_allclose(m.dsl(sim), want, rtol=1e-12)


def test_multiple_choice_accuracy():
    scores = np.array([[0.1, 0.9, 0.0], [0.5, 0.5, 0.1], [0.2, 0.1, -np.inf], [0.0, 0.3, 0.7]])
    # q0 right; q1 tie -> wrong (pessimistic); q2 right (padded candidate); q3 answer 1 -> wrong
    r = m.multiple_choice_accuracy(scores, [1, 0, 0, 1])
    assert r == {"accuracy": 50.0, "num_questions": 4}
    with pytest.raises(InputError, match="padded candidate"):
        m.multiple_choice_accuracy(scores, [1, 0, 2, 1])
    with pytest.raises(InputError, match="not a valid candidate index"):
        m.multiple_choice_accuracy(scores, [1, 0, 0, 3])


def _int_feats(rng, n, d=8):
    return rng.integers(-3, 4, size=(n, d)).astype(np.float32)  # exact float32 products, many ties


@pytest.mark.parametrize("block", [1, 7, 4096])
def test_blockwise_ranks_equal_dense(block):
    rng = np.random.default_rng(5)
    texts, videos = _int_feats(rng, 50), _int_feats(rng, 20)
    cv = rng.integers(0, 20, size=50)
    sim = texts.astype(np.float64) @ videos.T.astype(np.float64)
    np.testing.assert_array_equal(m.blockwise_ranks(texts, videos, cv, block=block), _brute_t2v(sim, cv))
    q = np.unique(cv)
    v2t = m.blockwise_ranks(videos[q], texts, q, block=block, key_groups=cv)
    np.testing.assert_array_equal(v2t, _brute_v2t(sim, cv))


@pytest.mark.parametrize("block", [3, 4096])
def test_blockwise_dsl_equals_dense_dsl(block):
    rng = np.random.default_rng(6)
    texts = rng.normal(size=(40, 16)).astype(np.float32)
    videos = rng.normal(size=(25, 16)).astype(np.float32)
    texts /= np.linalg.norm(texts, axis=1, keepdims=True)
    videos /= np.linalg.norm(videos, axis=1, keepdims=True)
    cv = rng.integers(0, 25, size=40)
    dense = m.dsl((texts @ videos.T).astype(np.float64))
    np.testing.assert_array_equal(m.blockwise_ranks(texts, videos, cv, block=block, dsl_over="queries"),
                                  m.ranks_of_targets(dense, cv))
    q = np.unique(cv)
    np.testing.assert_array_equal(
        m.blockwise_ranks(videos[q], texts, q, block=block, key_groups=cv, dsl_over="keys"),
        m.ranks_of_targets(dense.T[q], q, key_groups=cv))


def test_blockwise_topk_stable_and_clipped():
    q = np.array([[1.0, 0.0], [0.0, 1.0]], dtype=np.float32)
    k = np.array([[1.0, 0.0], [1.0, 0.0], [0.0, 2.0]], dtype=np.float32)
    idx, val = m.blockwise_topk(q, k, 5, block=1)
    np.testing.assert_array_equal(idx, [[0, 1, 2], [2, 0, 1]])  # ties keep the lower index first
    np.testing.assert_array_equal(val, [[1, 1, 0], [2, 0, 0]])
    with pytest.raises(InputError, match=r"Invalid block \(0\)"):
        m.blockwise_ranks(q, k, [0, 1], block=0)
    with pytest.raises(InputError, match="must share D"):
        m.blockwise_topk(q, k[:, :1], 1)


def test_metrics_import_no_torch():
    import subprocess
    import sys
    code = "import sys, vfeat.evaluate.metrics, vfeat.evaluate.tasks, vfeat.evaluate.annotations; " \
           "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
