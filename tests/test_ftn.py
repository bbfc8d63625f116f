"""Functional Task Networks: the concept-shift envs, the SmoothKWTA configurer, Theorem 2.1 and FixedMask's zero
forgetting (002_b6d509c9f1140765.txt)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env

import agents
import clenv
from agents.common.masks import SmoothKWTAConfigurer, fixed_block, kwta, mask_overlap, smooth_on_torus
from agents.ftn.network import FTNNetwork
from clenv.envs.supervised import INFO_KEYS

SMALL = dict(num_neurons=64, k=16, depth=3, inner_width=4)  # an 8 x 8 grid, 4 disjoint blocks of 16
SHORT = dict(steps_per_task=12, batch_size=32, test_samples_per_task=128)


def _env(task="classification", **kw):
    return gym.make(f"ConceptShift{task.capitalize()}-v0", **{**SHORT, **kw})


# ------------------------------------------------------------------------------------------------ the streams
@pytest.mark.parametrize("task", ["classification", "regression"])
def test_concept_shift_env_passes_the_env_checker_and_keeps_the_info_contract(task):
    env = _env(task)
    check_env(env.unwrapped, skip_render_check=True)
    obs, info = env.reset(seed=0)
    assert obs.shape == (32, 24) and obs.dtype == np.float32
    assert set(INFO_KEYS) <= set(info)
    action = env.action_space.sample()
    _, reward, _, _, info = env.step(action)
    y = info["labels"]
    if task == "regression":
        assert y.dtype == np.float32 and reward == pytest.approx(-np.mean((action - y) ** 2), rel=1e-6)
        assert info["mse"] == pytest.approx(-reward)
    else:
        assert set(np.unique(y)) <= {0, 1} and reward == pytest.approx(np.mean(action == y))


def test_concept_shift_is_a_pure_function_of_seed_and_task():
    a, b = _env(), _env()
    xa, _ = a.reset(seed=3)
    for _ in range(SHORT["steps_per_task"] + 1):  # task 1's second batch
        xa, *_ = a.step(np.zeros(32, np.int64))
    b.reset(seed=3, options={"task_id": 1})
    xb, *_ = b.step(np.zeros(32, np.int64))
    np.testing.assert_array_equal(xa, xb)  # task 1's second batch, whether or not task 0 ran first
    # Same inputs, other targets: on the same latents, task 1's hidden read-out gives unrelated classes.
    u = a.unwrapped
    (x0, y0), = u.test_batches(0, batch_size=128)
    y1 = np.sin(u.frequency * (x0.numpy() @ u.hidden_mask(1))) > 0
    assert np.array_equal(y0.numpy(), np.sin(u.frequency * (x0.numpy() @ u.hidden_mask(0))) > 0)
    assert 0.3 < float(np.mean(y0.numpy() == y1)) < 0.7
    # The splits are disjoint samples: the support batch a mask is recovered from is not the test set.
    (xs, _), = a.unwrapped.test_batches(0, batch_size=128, split="support")
    assert not torch.equal(xs, x0)


def test_a_bad_action_is_refused_and_the_stream_does_not_move():
    env = _env("regression")
    env.reset(seed=0)
    before = env.unwrapped.state_dict()
    for bad in (np.zeros(31, np.float32), np.full(32, np.nan, np.float32), np.zeros((32, 2), np.float32)):
        with pytest.raises(ValueError, match="prediction|finite"):
            env.step(bad)
    assert env.unwrapped.state_dict() == before
    env = _env()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="logits"):
        env.step(np.zeros((32, 2), np.float32))


# ------------------------------------------------------------------------------------------------ the configurer
def test_kwta_keeps_exactly_k_winners_and_breaks_ties_by_index():
    scores = torch.tensor([0.5, 1.0, 1.0, 0.0, 1.0])
    assert kwta(scores, 2).tolist() == [0.0, 1.0, 1.0, 0.0, 0.0]
    assert kwta(torch.randn(1024), 128).sum() == 128


def test_smoothing_is_a_uniform_kernel_on_the_torus():
    grid = torch.zeros(8, 8)
    grid[0, 0] = 9.0  # a corner: its 3 x 3 neighbourhood wraps to the opposite edges
    out = smooth_on_torus(grid.flatten(), 3, 1).reshape(8, 8)
    expected = torch.zeros(8, 8)
    for r in (-1, 0, 1):
        for c in (-1, 0, 1):
            expected[r % 8, c % 8] = 1.0
    torch.testing.assert_close(out, expected)
    many = smooth_on_torus(torch.rand(64), 3, 15)
    assert many.sum() == pytest.approx(smooth_on_torus(many, 3, 0).sum())  # mass is conserved on a torus
    assert smooth_on_torus(torch.rand(64), 17, 0).shape == (64,)


def test_the_proposal_is_adams_first_step_from_zero():
    # S = 1 from m = 0: m = -eta * g / (|g| + eps), Adam's bias-corrected first step, with g taken at sigmoid(0).
    target = torch.randn(64)
    conf = SmoothKWTAConfigurer(64, 8, smoothing_steps=0, steps=1, lr=0.7)
    logits = conf.propose(lambda m: ((m - target) ** 2).sum())
    g = 2 * (0.5 - target) * 0.25  # d/dm of (sigmoid(m) - t)^2 at m = 0
    torch.testing.assert_close(logits, -0.7 * g / (g.abs() + 1e-8))


def test_the_configurer_finds_a_planted_blob_on_any_masked_model():
    # Any masked model: here the "model" rewards a 4 x 4 blob that wraps around the grid's corner, with noisy
    # evidence. The S = 1 proposal keeps only each slot's sign (Adam's first step), so ~10% of the outside slots look
    # as good as the blob's; KWTA alone takes some of them, the lateral smoothing does not (6 noise draws).
    rows, cols = torch.meshgrid(torch.arange(8), torch.arange(8), indexing="ij")
    blob = (((rows - 6) % 8 < 4) & ((cols - 6) % 8 < 4)).float().flatten()
    for seed in range(6):
        noise = 0.8 * torch.randn(64, generator=torch.Generator().manual_seed(seed))
        loss = lambda m: -(m * (2 * blob - 1 + noise)).sum()
        smooth = SmoothKWTAConfigurer(64, 16, kernel=3, smoothing_steps=2, steps=1, lr=1.0)(loss)
        alone = SmoothKWTAConfigurer(64, 16, kernel=3, smoothing_steps=0, steps=1, lr=1.0)(loss)
        assert smooth.sum() == alone.sum() == 16 and set(smooth.unique().tolist()) == {0.0, 1.0}
        assert float((smooth * blob).sum()) >= 14 > float((alone * blob).sum())


def test_pairwise_overlap_has_table_5s_form():
    masks = torch.stack([fixed_block(0, 64, 16), fixed_block(1, 64, 16), fixed_block(0, 64, 16)])
    np.testing.assert_allclose(mask_overlap(masks).numpy(), [[1, 0, 1], [0, 1, 0], [1, 0, 1]])


# ------------------------------------------------------------------------------------------------ the model
def test_the_per_neuron_mlps_are_independent():
    # Neuron k's output depends on neuron k's parameters only: perturbing neuron 3 changes z[:, 3] and nothing else.
    torch.manual_seed(0)
    net = FTNNetwork(24, 2, num_neurons=16, depth=4, inner_width=4, dropout=0.0)
    x = torch.randn(8, 24)
    z = net.neurons(x)
    with torch.no_grad():
        net.hidden[1, 3] += 0.5
        net.first[3 * 4:(3 + 1) * 4] += 0.5
        net.out_bias[3] += 0.5  # so that the change shows even through a dead ReLU
    z2 = net.neurons(x)
    changed = (z2 != z).any(0)
    assert changed.tolist() == [k == 3 for k in range(16)]
    # ...and equals a plain per-neuron loop over its own weights (the batched product is that MLP).
    k = 5
    h = torch.relu(x @ net.first[k * 4:(k + 1) * 4].T + net.first_bias[k * 4:(k + 1) * 4])
    for layer in range(3):
        h = torch.relu(h @ net.hidden[layer, k].T + net.hidden_bias[layer, k, :, 0])
    torch.testing.assert_close(z2[:, k], (h @ net.out[k].T + net.out_bias[k, 0])[:, 0])


def _train(agent, env, task, steps, seed=0):
    """Train ``agent`` on ``steps`` batches of ``task`` through its own step (act, then observe)."""
    env.reset(seed=seed, options={"task_id": task})
    agent.on_task_switch(task)
    obs, _ = env.reset(seed=seed, options={"task_id": task})
    for _ in range(steps):
        action = agent.act(obs, {})
        nxt, r, term, trunc, info = env.step(action)
        agent.observe(obs, action, r, nxt, term, trunc, info)
        obs = nxt
        if term:
            break


def test_theorem_2_1_disjoint_masks_leave_the_other_tasks_neurons_bit_identical():
    env = _env()
    agent = agents.make("fixed_mask", env, seed=1, **SMALL)
    _train(agent, env, 0, 5)
    block0 = torch.nonzero(agent.stored_mask(0)).flatten()
    before = agent.network.neuron_parameters(block0)
    other = agent.network.neuron_parameters(torch.arange(16, 64))
    _train(agent, env, 1, 5)
    after = agent.network.neuron_parameters(block0)
    for name in before:
        assert torch.equal(before[name], after[name]), name
    moved = agent.network.neuron_parameters(torch.arange(16, 64))
    assert not all(torch.equal(other[n], moved[n]) for n in other)  # task 1's block did train


def _fixed_mask_fm(seed, **hparams):
    env = _env("regression")
    agent = agents.make("fixed_mask", env, seed=seed, **{**SMALL, **hparams})
    result = clenv.run(env, agent, seed=seed, evaluation=clenv.Evaluation(masks=True, eval_samples=128,
                                                                          support_samples=32), progress=False)
    return result.metrics


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fixed_mask_forgets_exactly_nothing(seed):
    m = _fixed_mask_fm(seed)
    assert m["fm_stored"] == 0.0  # exactly: the prior tasks' MSE is the same float after every later task
    assert m["mask_overlap"] == 0.0
    assert m["avg_online_mse"] == -m["avg_online_acc"] > 0  # the reward is -MSE


@pytest.mark.parametrize("breach", [dict(reset_optimizer_on_switch=False),
                                    dict(optimizer="adamw", weight_decay=0.01)])
def test_fixed_mask_forgets_when_adam_moments_cross_a_boundary_or_weight_decay_is_on(breach):
    # Remark 2.2 / Appendix C: carried Adam moments and decoupled decay both move the inactive neurons.
    m = _fixed_mask_fm(0, **breach)
    assert m["fm_stored"] != 0.0  # its sign is the drift's: carried moments keep descending task 0's loss


def test_ftn_protocols_and_mask_diagnostics_land_in_the_result():
    env = _env()
    agent = agents.make("ftn_slow", env, seed=0, **SMALL)
    r = clenv.run(env, agent, seed=0, evaluation=clenv.Evaluation(masks=True, eval_samples=128, support_samples=32),
                  progress=False)
    m, rec = r.metrics, r.records
    for key in ("acc", "fm", "acc_stored", "fm_stored", "acc_prior", "acc_stored_prior", "recall_error",
                "mask_overlap", "mask_recall"):
        assert np.isfinite(m[key]), key
    assert rec["perf_recovered"].shape == rec["perf_stored"].shape == (3, 3)
    assert rec["masks_stored"].shape == (3, 64) and (rec["masks_stored"].sum(1) == 16).all()
    assert int(rec["mask_grid"]) == 8
    np.testing.assert_allclose(m["acc"], rec["perf_recovered"][-1].mean())
    np.testing.assert_allclose(m["recall_error"], m["acc_stored_prior"] - m["acc_prior"])


def test_supsup_trains_only_its_scores_and_cannot_forget():
    env = _env()
    agent = agents.make("supsup", env, seed=0, **SMALL)
    body = {n: p.detach().clone() for n, p in agent.network.named_parameters()}
    r = clenv.run(env, agent, seed=0, evaluation=clenv.Evaluation(masks=True, eval_samples=128, support_samples=32),
                  progress=False)
    assert all(torch.equal(body[n], p) for n, p in agent.network.named_parameters())
    assert r.metrics["fm_stored"] == 0.0


def test_ftn_defaults_are_experiment_1s():
    env = gym.make("ConceptShiftRegression-v0")
    h = agents.make("ftn_slow", env).hparams
    assert (h["num_neurons"], h["depth"], h["inner_width"], h["dropout"], h["k"]) == (1024, 8, 8, 0.2, 128)
    assert (h["optimizer"], h["lr"], h["weight_decay"], h["kernel"], h["smoothing_steps"]) == ("adam", 3e-4, 0.0, 3, 15)
    reg, clf = agents.make("ftn_fast", env), agents.make("ftn_fast", gym.make("ConceptShiftClassification-v0"))
    assert (reg.configurer.steps, reg.configurer.lr, reg.configurer.kernel) == (10, 0.2, 17)
    assert (clf.configurer.steps, clf.configurer.lr, clf.configurer.smoothing_steps) == (1, 1.0, 2)
    assert agents.make("supsup_wide", env).hparams["inner_width"] == 16
    assert agents.make("ftn_ewc", env).hparams["ewc_lambda"] == 400.0


def test_reproduce_and_report_print_ftns_tables_decomposition_overlaps_and_tiling(tmp_path, capsys):
    from clenv.app.report import report_main
    from clenv.app.reproduce import reproduce_main

    small = ["--agent-set", "num_neurons=64", "--agent-set", "k=16", "--agent-set", "depth=2"]
    rc = reproduce_main(["ftn_table2", "--seeds", "0", "--scale", "0.01", "--agents", "fixed_mask,ftn_slow",
                         "--jobs", "1", "--no-progress", "--out", str(tmp_path), *small])
    out = capsys.readouterr().out
    assert rc == 0
    assert "| 1. FixedMask · paper | 0.006 (0.002) | 0.000 (0.000) |" in out  # as printed, not divided by 100
    assert "Table 4 decomposition (MSE excess" in out and "| FTN-Slow |" in out
    assert "steps_per_task 1000 -> 10" in out
    rc = report_main([str(tmp_path / "ftn_table2"), "--out", str(tmp_path / "report")])
    text = (tmp_path / "report" / "report.md").read_text()
    assert rc == 0 and "Pairwise overlap of stored masks" in text and "| 0 | . | 0.00 |" in text
    assert "FTN Table 4: MSE excess against fixed_mask" in text and "| fixed_mask | +0.000 | " in text  # itself
    assert "Forgetting (%) — ConceptShiftRegression" not in text  # no percent tables of negative MSEs
    assert "Average online task accuracy over the last x% of tasks (%) — ConceptShiftRegression" not in text
    assert (tmp_path / "report" / "mask_tiling.png").stat().st_size > 1000


def test_mask_tiling_leaves_out_unrouted_runs(tmp_path):
    """All-ones masks (NoMask, LoRA-Naive) would draw uniformly white tiles: such runs get no row, and a report of
    only such runs gets no figure."""
    from types import SimpleNamespace

    from clenv.app.plots import mask_tiling

    def run(masks, seed=0):
        return SimpleNamespace(seed=seed, records={"masks_stored": np.asarray(masks, np.float32), "mask_grid": 4})

    ones = run(np.ones((3, 16)))
    routed = run(np.eye(3, 16))
    assert mask_tiling({"no_mask": [ones]}, tmp_path / "none.png") is None and not (tmp_path / "none.png").exists()
    path = mask_tiling({"no_mask": [ones], "ftn_slow": [routed]}, tmp_path / "tiles.png")
    assert path is not None and path.stat().st_size > 1000


def test_the_example_runs(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "examples" / "ftn_concept_shift.py"
    spec = importlib.util.spec_from_file_location("ftn_example", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    module.main(["--steps", "3", "--out", str(tmp_path / "masks.png")])
    out = capsys.readouterr().out
    assert "ftn_slow" in out and "fixed_mask" in out and (tmp_path / "masks.png").exists()
