"""Metric functions against hand-computed cases and properties (hypothesis)."""

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from clenv.metrics import (adaptation_metrics, af_chaudhry, af_neumosync, average_accuracy, bwt, continual_eval_metrics,
                           forgetting_measure, forgetting_metrics, fwt, lca, ngm_stability, online_metrics,
                           window_accuracy, window_size)
from clenv.metrics.online import task_online_accuracy
from clenv.metrics.plasticity import (dead_fraction, dormant_ratio, dormant_scores, effective_rank, network_diagnostics,
                                      srank, weight_magnitude)
from clenv.metrics.stability import min_acc_curve

unit = st.floats(0.0, 1.0, allow_nan=False)
settings.register_profile("clenv", max_examples=60, deadline=None)
settings.load_profile("clenv")


def square(max_t=6):
    return st.integers(1, max_t).flatmap(lambda t: arrays(np.float64, (t, t), elements=unit))


# ----------------------------------------------------------------------------------------------- online
def test_window_sizes_match_the_papers_tables():
    # 100 tasks: the last 10, 25, 50, 75, 100; 30 tasks: 3 (not 4 from 0.1 * 30 = 3.0000000000000004).
    assert [window_size(100, f) for f in (0.1, 0.25, 0.5, 0.75, 1.0)] == [10, 25, 50, 75, 100]
    assert window_size(30, 0.1) == 3
    assert window_size(4, 0.1) == 1
    with pytest.raises(ValueError):
        window_size(10, 0.0)


@given(st.lists(unit, min_size=1, max_size=40), st.floats(0.01, 1.0))
def test_window_accuracy_is_mean_of_last_tasks(acc, f):
    n = window_size(len(acc), f)
    assert 1 <= n <= len(acc)
    assert window_accuracy(acc, f) == pytest.approx(sum(acc[len(acc) - n:]) / n)
    assert window_accuracy(acc, 1.0) == pytest.approx(np.mean(acc))


@given(st.lists(st.tuples(st.integers(0, 3), unit), min_size=1, max_size=50))
def test_task_online_accuracy_groups_consecutive_steps(steps):
    task = np.array([t for t, _ in steps])
    reward = np.array([r for _, r in steps])
    ids, means = task_online_accuracy(reward, task)
    # Hand loop: a new entry each time the task id changes.
    exp_ids, groups = [], []
    for t, r in steps:
        if not exp_ids or exp_ids[-1] != t:
            exp_ids.append(t)
            groups.append([])
        groups[-1].append(r)
    assert ids == exp_ids
    np.testing.assert_allclose(means, [np.mean(g) for g in groups])


def test_online_metrics_hand_case():
    m = online_metrics([0.2, 0.4, 0.6, 0.8])
    assert m["avg_online_acc"] == pytest.approx(0.5)
    assert m["online_acc_last25"] == pytest.approx(0.8)  # 1 of 4 tasks
    assert m["online_acc_last50"] == pytest.approx(0.7)
    assert m["online_acc_last75"] == pytest.approx(0.6)
    assert m["final_task_online_acc"] == pytest.approx(0.8)


# ----------------------------------------------------------------------------------------------- forgetting
R3 = np.array([[0.9, 0.1, 0.1],
               [0.5, 0.8, 0.2],
               [0.4, 0.6, 0.7]])


def test_forgetting_hand_case():
    assert average_accuracy(R3) == pytest.approx((0.4 + 0.6 + 0.7) / 3)
    # Task 0's best before the end is 0.9, task 1's 0.8: drops 0.5 and 0.2.
    assert af_chaudhry(R3) == pytest.approx((0.5 + 0.2) / 2)
    assert af_neumosync(R3) == pytest.approx((0.4 + 0.6) / 2)
    assert bwt(R3) == pytest.approx(((0.4 - 0.9) + (0.6 - 0.8)) / 2)
    assert fwt(R3, [0.1, 0.05, 0.3]) == pytest.approx(((0.1 - 0.05) + (0.2 - 0.3)) / 2)
    assert forgetting_measure(R3) == pytest.approx(0.35)


def test_chaudhry_max_ignores_checkpoints_before_the_task_was_trained():
    # Task 1 scored 0.9 before it was trained (row 0, an untrained task's accuracy), 0.5 once learned (row 1) and
    # 0.5 at the end: no forgetting. The literal "max over every earlier checkpoint" would report 0.4 for it.
    R = np.array([[0.8, 0.9, 0.0],
                  [0.8, 0.5, 0.0],
                  [0.8, 0.5, 0.6]])
    assert af_chaudhry(R) == pytest.approx((0.0 + 0.0) / 2)
    assert forgetting_measure(R) == pytest.approx(0.0)
    # Task 0 peaks after task 1 was learned (row 1): that later checkpoint counts.
    R2 = np.array([[0.6, 0.1, 0.1],
                   [0.9, 0.7, 0.1],
                   [0.5, 0.7, 0.8]])
    assert af_chaudhry(R2) == pytest.approx((0.4 + 0.0) / 2)


def test_fm_for_losses_is_the_rise_above_the_lowest_loss():
    mse = np.array([[0.5, 9.0, 9.0],
                    [0.2, 0.3, 9.0],
                    [0.6, 0.4, 0.1]])
    # Task 0: lowest 0.2, final 0.6 (+0.4); task 1: lowest 0.3, final 0.4 (+0.1).
    assert forgetting_measure(mse, higher_is_better=False) == pytest.approx(0.25)


@given(square(), st.floats(-0.5, 0.5))
def test_forgetting_is_shift_invariant_and_acc_shifts(R, c):
    a, b = forgetting_metrics(R, np.zeros(len(R))), forgetting_metrics(R + c, np.full(len(R), c))
    assert b["acc"] == pytest.approx(a["acc"] + c)
    for k in ("af_chaudhry", "bwt", "fm", "fwt"):
        if math.isnan(a[k]):
            assert math.isnan(b[k])
        else:
            assert b[k] == pytest.approx(a[k], abs=1e-9)


@given(arrays(np.float64, st.integers(2, 6), elements=unit), st.floats(0.0, 0.5))
def test_uniform_final_drop(diag, d):
    # Every task keeps its accuracy until the last task, which lowers every earlier task by d.
    T = diag.size
    R = np.tile(diag, (T, 1))
    R[-1, :-1] -= d
    assert bwt(R) == pytest.approx(-d)
    assert af_chaudhry(R) == pytest.approx(d)
    assert forgetting_measure(R) == pytest.approx(d)
    assert af_neumosync(R) == pytest.approx(np.mean(diag[:-1]) - d)
    # FWT against b = the accuracy already reached before training: zero.
    assert fwt(R, np.r_[0.0, diag[1:]]) == pytest.approx(0.0)


@given(square())
def test_af_neumosync_relates_to_acc(R):
    T = len(R)
    if T >= 2:
        assert af_neumosync(R) * (T - 1) + R[-1, -1] == pytest.approx(average_accuracy(R) * T)
        assert af_chaudhry(R) == pytest.approx(forgetting_measure(R), abs=1e-12)  # the same checkpoints l >= j


def test_forgetting_rejects_bad_shapes():
    with pytest.raises(ValueError, match="square"):
        bwt(np.zeros((2, 3)))
    with pytest.raises(ValueError, match="one accuracy per task"):
        fwt(np.zeros((3, 3)), [0.1, 0.2])


# ----------------------------------------------------------------------------------------------- adaptation
def curves(T, P):
    return st.tuples(arrays(np.float64, (T - 1, P), elements=unit), arrays(np.float64, (T - 1, P), elements=unit),
                     arrays(np.float64, (T, P), elements=unit))


@given(st.tuples(st.integers(2, 6), st.integers(1, 8)).flatmap(lambda tp: curves(*tp)))
def test_lca_identities_hold(c):
    f, b, s = c
    m = adaptation_metrics(f, b, s, np.arange(f.shape[1]) * 3)
    assert m["lca_f"] == pytest.approx(m["lca_0"] + m["fkt"], abs=1e-12)
    assert m["lca_b"] == pytest.approx(m["lca_0_b"] + m["bkt"], abs=1e-12)
    # LCA is the mean over b of the mean over tasks.
    assert m["lca_f"] == pytest.approx(np.mean([np.mean(f[:, j]) for j in range(f.shape[1])]))


def test_adaptation_hand_case():
    # T = 3 tasks, grid b = 0, 1, 2 (gamma = 2, gamma/2 = 1).
    scratch = np.array([[0.0, 0.2, 0.4], [0.1, 0.3, 0.5], [0.0, 0.0, 0.3]])
    forward = np.array([[0.1, 0.5, 0.6],     # A^0_{., 1}: snapshot after task 0 on task 1
                        [0.3, 0.3, 0.3]])    # A^1_{., 2}
    backward = np.array([[0.5, 0.6, 0.7],    # final model on task 0
                         [0.2, 0.4, 0.5]])   # final model on task 1
    m = adaptation_metrics(forward, backward, scratch, [0, 1, 2])
    assert m["gamma"] == 2
    assert m["lca_f"] == pytest.approx((0.1 + 0.5 + 0.6 + 0.3 * 3) / 6)
    assert m["lca_0"] == pytest.approx((0.1 + 0.3 + 0.5 + 0.0 + 0.0 + 0.3) / 6)
    assert m["lca_0_b"] == pytest.approx((0.0 + 0.2 + 0.4 + 0.1 + 0.3 + 0.5) / 6)
    # FKT_b = mean over tasks 1, 2 of forward - scratch: b=1 -> (0.2 + 0.3) / 2, b=2 -> (0.1 + 0.0) / 2.
    assert m["fkt_gamma_half"] == pytest.approx(0.25)
    assert m["fkt_gamma"] == pytest.approx(0.05)
    # BKT_b over tasks 0, 1: b=1 -> (0.4 + 0.1) / 2, b=2 -> (0.3 + 0.0) / 2.
    assert m["bkt_gamma_half"] == pytest.approx(0.25)
    assert m["bkt_gamma"] == pytest.approx(0.15)


def test_gamma_half_is_the_largest_grid_point_not_above_it():
    s = np.zeros((2, 3))
    f = np.array([[0.1, 0.2, 0.3]])
    # gamma = 5, gamma // 2 = 2: the grid point 0 (index 0) is the largest <= 2.
    assert adaptation_metrics(f, None, s, [0, 3, 5])["fkt_gamma_half"] == pytest.approx(0.1)
    assert adaptation_metrics(f, None, s, [0, 2, 4])["fkt_gamma_half"] == pytest.approx(0.2)


def test_adaptation_rejects_mismatched_curves():
    with pytest.raises(ValueError):
        adaptation_metrics(np.zeros((2, 3)), None, np.zeros((2, 3)))  # 2 scratch tasks need 1 forward task
    with pytest.raises(ValueError):
        adaptation_metrics(np.zeros((1, 3)), None, np.zeros((2, 4)))
    with pytest.raises(ValueError):
        lca(np.zeros((0, 3)))


# ----------------------------------------------------------------------------------------------- stability
def test_continual_eval_hand_case():
    n = np.nan
    acc = np.array([[0.5, n],      # before training (block 0)
                    [0.9, n],      # end of task 0: fin_0 = 0.9
                    [0.3, 0.2],    # during task 1: task 0 dips to 0.3
                    [0.6, 0.8]])   # end of task 1
    m = continual_eval_metrics(acc, [0, 0, 1, 1])
    assert m["min_acc"] == pytest.approx(0.3)
    assert m["wc_acc"] == pytest.approx(0.8 / 2 + 0.5 * 0.3)
    assert m["sg_0to1"] == pytest.approx((0.9 - 0.3) / 0.9)
    assert m["avg_sg"] == pytest.approx(m["sg_0to1"])


@st.composite
def streams(draw):
    T = draw(st.integers(1, 4))
    per = draw(st.lists(st.integers(1, 4), min_size=T, max_size=T))
    block = np.repeat(np.arange(T), per)
    acc = draw(arrays(np.float64, (block.size, T), elements=st.floats(0.01, 1.0)))
    acc[np.arange(T)[None, :] > block[:, None]] = np.nan  # unseen tasks are not evaluated
    return acc, block


@given(streams())
def test_min_acc_only_uses_evaluations_after_a_task_ended(s):
    acc, block = s
    base = continual_eval_metrics(acc, block)["min_acc"]
    changed = acc.copy()
    for i in range(acc.shape[1]):
        changed[block <= i, i] = 0.0  # evaluations up to and including task i's own block
    assert continual_eval_metrics(changed, block)["min_acc"] == pytest.approx(base, nan_ok=True)
    # Hand formula at the last evaluation.
    k = block[-1]
    if k > 0:
        exp = np.mean([acc[block > i, i].min() for i in range(k)])
        assert base == pytest.approx(exp)
    mins, wc = min_acc_curve(acc, block)
    assert wc[-1] == pytest.approx(acc[-1, k] / (k + 1) + (1 - 1 / (k + 1)) * (mins[-1] if k else 0.0))


@given(streams())
def test_no_dip_means_no_gap(s):
    acc, block = s
    # Each task keeps the accuracy it ended with: the gap is zero and min-ACC is the mean final accuracy.
    flat = acc.copy()
    T = acc.shape[1]
    for i in range(T):
        if np.any(block == i):
            fin = acc[np.flatnonzero(block == i)[-1], i]
            flat[block > i, i] = fin
    m = continual_eval_metrics(flat, block)
    for k in range(int(block.max())):
        assert m[f"sg_{k}to{k + 1}"] == pytest.approx(0.0)


def test_ngm_arithmetic_and_its_off_by_one():
    acc = np.array([0.1, 0.9, 0.4, 0.8, 0.2, 0.7])  # blocks 0, 0, 1, 1, 2, 2
    block = [0, 0, 1, 1, 2, 2]
    m = ngm_stability(acc, block)
    assert m["ngm_avg_acc"] == pytest.approx((0.9 + 0.8 + 0.7) / 3)
    assert m["ngm_avg_min_acc"] == pytest.approx((0.1 + 0.4) / 2)  # blocks 0..K-2, untrained start included
    assert m["ngm_wc_acc"] == pytest.approx(0.7 / 3 + (2 / 3) * 0.25)
    assert m["ngm_sg_0to1"] == pytest.approx((0.9 - 0.4) / 0.9)
    assert m["ngm_sg_1to2"] == pytest.approx((0.8 - 0.2) / 0.8)
    # The last block's minimum enters SG but not avg-min-ACC.
    acc2 = acc.copy()
    acc2[4] = 0.05
    m2 = ngm_stability(acc2, block)
    assert m2["ngm_avg_min_acc"] == m["ngm_avg_min_acc"]
    assert m2["ngm_sg_1to2"] > m["ngm_sg_1to2"]


def test_stability_rejects_bad_blocks():
    with pytest.raises(ValueError, match="non-decreasing"):
        continual_eval_metrics(np.zeros((3, 2)), [1, 0, 1])
    with pytest.raises(ValueError):
        continual_eval_metrics(np.zeros((3, 2)), [0, 1])


# ----------------------------------------------------------------------------------------------- plasticity
def test_dormant_ratio_hand_case():
    activity = np.array([[0.0, 1.0, 2.0], [0.0, 1.0, 2.0]])  # unit means 0, 1, 2; layer mean 1
    np.testing.assert_allclose(dormant_scores(activity), [0.0, 1.0, 2.0], atol=1e-8)
    assert dormant_ratio(activity, tau=0.0) == pytest.approx(1 / 3)
    assert dormant_ratio(activity, tau=1.0) == pytest.approx(2 / 3)  # <=, not <
    assert dead_fraction(activity) == pytest.approx(1 / 3)


@given(arrays(np.float64, (5, 4), elements=st.floats(0, 10)), st.floats(0.01, 100))
def test_dormant_scores_average_one_and_are_scale_invariant(a, c):
    if float(a.mean()) > 1e-3:  # the 1e-9 guard in the denominator is then below 1e-5 relative
        s = dormant_scores(a)
        assert float(s.mean()) == pytest.approx(1.0, rel=1e-5)
        np.testing.assert_allclose(dormant_scores(a * c), s, rtol=1e-4, atol=1e-6)  # 1e-9 guard aside


@given(st.integers(1, 6), st.integers(0, 2**31 - 1))
def test_ranks_of_k_equal_singular_values(k, seed):
    g = np.random.default_rng(seed)
    q1, _ = np.linalg.qr(g.normal(size=(12, 12)))
    q2, _ = np.linalg.qr(g.normal(size=(8, 8)))
    s = np.zeros((12, 8))
    s[np.arange(k), np.arange(k)] = 3.0
    f = q1 @ s @ q2.T
    assert srank(f, delta=0.01) == k
    assert effective_rank(f) == pytest.approx(k, rel=1e-6)


def test_srank_hand_case():
    # Singular values 10, 0.05, 0.05: the top one holds 10/10.1 = 0.990099 >= 0.99 -> 1; with delta 0.001 -> 3.
    f = np.diag([10.0, 0.05, 0.05])
    assert srank(f, 0.01) == 1
    assert srank(f, 0.001) == 3
    assert srank(np.zeros((3, 3))) == 0


def test_weight_magnitude():
    assert weight_magnitude([torch.tensor([1.0, -3.0]), torch.tensor([[2.0]])]) == pytest.approx(2.0)


def test_network_diagnostics_on_a_backbone():
    from agents.backbones import build_backbone

    torch.manual_seed(0)
    net = build_backbone("mlp", (1, 4, 4), 3, hidden=(8, 6))
    with torch.no_grad():
        net.unit_layers[1].incoming.bias.fill_(-1e3)  # every fc1 unit is dead
    x = torch.rand(32, 1, 4, 4)
    y = torch.randint(0, 3, (32,))
    d = network_diagnostics(net, x, y, tau=0.1)
    assert d["fc1/dormant_ratio"] == 1.0 and d["fc1/dead_fraction"] == 1.0
    assert d["fc1/zero_grad_fraction"] == 1.0  # no gradient passes a dead ReLU
    assert d["fc0/zero_grad_fraction"] == 1.0  # ... nor reaches the layer below it
    assert d["fc0/dormant_ratio"] < 1.0
    assert d["feature_rank"] == 0.0  # the penultimate features are all zero
    assert d["dormant_ratio"] == pytest.approx((d["fc0/dormant_ratio"] * 8 + 6) / 14)
    assert all(p.grad is None for p in net.parameters())  # nothing written into .grad
    assert net.training  # mode restored
    assert d["weight_magnitude"] == pytest.approx(weight_magnitude(net.parameters()))


def test_windowed_forgetting_hand_case_and_window_limit():
    from clenv.metrics.stability import windowed_forgetting

    series = [0.9, 0.5, 0.8, 0.2, 0.6]
    # largest drop within 2 evaluations: 0.8 -> 0.2 (0.6); within 5: 0.9 -> 0.2 (0.7); rise: 0.2 -> 0.6 or 0.5->0.8
    assert windowed_forgetting(series, 2) == pytest.approx((0.6, 0.4))
    assert windowed_forgetting(series, 5) == pytest.approx((0.7, 0.4))
    assert np.isnan(windowed_forgetting([0.3], 10)[0])


@given(st.lists(st.floats(0, 1), min_size=2, max_size=30), st.integers(2, 40))
def test_windowed_forgetting_matches_brute_force(series, w):
    from clenv.metrics.stability import windowed_forgetting

    pairs = [(series[i], series[j]) for i in range(len(series)) for j in range(i + 1, len(series)) if j - i < w]
    wf, wp = windowed_forgetting(series, w)
    assert wf == pytest.approx(max(a - b for a, b in pairs))
    assert wp == pytest.approx(max(b - a for a, b in pairs))
