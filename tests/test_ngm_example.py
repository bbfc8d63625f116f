"""The NGM error bars (delta method on the seed-mean curve, clenv.metrics.stability) and the stability-gap example's
agent-spec syntax."""

import math

import numpy as np
import pytest

from clenv.metrics.stability import ngm_stability, ngm_stability_delta as delta_method
from examples.ngm_stability_gap import parse_agent


def test_delta_method_is_the_scripts_arithmetic_on_the_mean_curve_with_propagated_std():
    block = np.repeat([0, 1, 2], 4)
    base = np.array([0.2, 0.6, 0.9, 0.9, 0.5, 0.7, 0.8, 0.8, 0.6, 0.7, 0.8, 0.85])
    same = delta_method(np.stack([base, base, base]), block)
    ref = ngm_stability(base, block)
    assert same["ngm_avg_sg"] == (pytest.approx(ref["ngm_avg_sg"]), pytest.approx(0.0, abs=1e-12))
    assert same["ngm_avg_acc"][0] == pytest.approx(ref["ngm_avg_acc"]) and same["ngm_wc_acc"][0] == pytest.approx(
        ref["ngm_wc_acc"])
    # Seeds differing only at the end of block 0 (index 3): SG_0->1 = (f - m)/f has d/df = m / f^2.
    up, down = base.copy(), base.copy()
    up[3], down[3] = 0.95, 0.85
    d = delta_method(np.stack([up, down]), block)
    sd = np.std([0.95, 0.85], ddof=1)
    assert d["ngm_avg_sg"][1] == pytest.approx(math.sqrt((0.5 / 0.9 ** 2 * sd) ** 2) / 2)


def test_agent_specs_carry_explicit_hyperparameters():
    assert parse_agent("adam[lr=0.001]") == ("adam", {"lr": 0.001})
    assert parse_agent("ngm_sgd[gain_on='head';eta=0.1]") == ("ngm_sgd", {"gain_on": "head", "eta": 0.1})
    assert parse_agent("ngm_sgd+er") == ("ngm_sgd+er", {})
