"""clenv.Evaluation: probe mechanisms (with a counting stub agent), isolation from the main run, every metric."""

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch

import clenv
from clenv.evaluation import probe_gamma
from clenv.metrics import adaptation_metrics, forgetting_metrics

SMALL = dict(num_tasks=3, samples_per_task=64, epochs_per_task=1, batch_size=16)  # 4 steps per task


def small_env(**kw):
    return gym.make("RandomLabelDigits-v0", **{**SMALL, **kw})


class CountingAgent:
    """Predicts class (number of learn() calls) mod C: its accuracy after b probe batches is the share of labels
    equal to (n0 + b) mod C, which the test can compute from the env alone."""

    def __init__(self, num_classes, n=0, origin="main", log=None):
        self.C, self.n, self.origin = num_classes, n, origin
        self.log = [] if log is None else log
        self.task = None

    def act(self, obs, info):
        return np.full(len(obs), self.n % self.C, dtype=np.int64)

    def observe(self, obs, action, reward, next_obs, terminated, truncated, info):
        self.learn(self.preprocess(obs), torch.as_tensor(info["labels"]))

    def preprocess(self, obs):
        return torch.as_tensor(np.asarray(obs)).float()

    def learn(self, x, y):
        self.n += 1
        self.log.append((self.origin, self.task, y.tolist()))

    def predict(self, x):
        logits = torch.zeros(len(x), self.C)
        logits[:, self.n % self.C] = 1.0
        return logits

    def on_task_switch(self, task_id):
        self.task = task_id

    def clone(self):
        c = copy.copy(self)
        c.origin = ("clone", self.n)
        return c

    def fresh(self):
        return CountingAgent(self.C, 0, "fresh", self.log)

    def trace(self):
        # "step" collides with the loop's step and arrays are not per-step scalars: both are skipped.
        return {"n": float(self.n), "step": -1, "hist": np.zeros(3)}

    def diagnostics(self):
        return {"n_at_task_end": self.n}


def share(env, task, cls, n=256, split="train"):
    y = torch.cat([b[1] for b in env.unwrapped.test_batches(task, split=split, max_samples=n)])
    return float((y == cls).double().mean())


def test_adaptation_probes_train_the_right_snapshot_on_the_right_batches():
    env = small_env()
    agent = CountingAgent(10)
    ev = clenv.Evaluation(adaptation=True, gamma=3, probe_samples=40, agent_traces=False)
    r = clenv.run(env, agent, seed=3, progress=False, evaluation=ev)
    spt, T, C = 4, 3, 10
    b = r.records["probe_b"]
    assert list(b) == [0, 1, 2, 3]
    fwd, bwd, scr = r.records["probe_forward"], r.records["probe_backward"], r.records["probe_scratch"]
    for k in range(1, T):  # snapshot after task k-1 has n0 = k * spt updates
        np.testing.assert_allclose(fwd[k - 1], [share(env, k, (k * spt + bb) % C, 40) for bb in b])
    for k in range(T - 1):  # the final model has n0 = T * spt
        np.testing.assert_allclose(bwd[k], [share(env, k, (T * spt + bb) % C, 40) for bb in b])
    for k in range(T):  # a fresh model starts from 0
        np.testing.assert_allclose(scr[k], [share(env, k, bb % C, 40) for bb in b])
    # The forward probe of task k trains on the same batches the stream served first for task k (no augmentation).
    main = [(task, y) for origin, task, y in agent.log if origin == "main"]
    for k in range(1, T):
        probe = [y for origin, task, y in agent.log if origin == ("clone", k * spt) and task == k]
        assert probe == [y for task, y in main if task == k][:3]
    # Scratch probes are told their task before training; each probe trains exactly gamma batches.
    assert sum(1 for o, _, _ in agent.log if o == "fresh") == 3 * T
    m = r.metrics
    assert m["lca_f"] == pytest.approx(m["lca_0"] + m["fkt"], abs=1e-12)
    assert m["lca_b"] == pytest.approx(m["lca_0_b"] + m["bkt"], abs=1e-12)
    assert m["gamma"] == 3


def test_probes_do_not_change_the_main_run():
    import agents

    env = small_env()
    plain = clenv.run(env, agents.make("base", env, optimizer="adam", lr=1e-3), seed=5, progress=False)
    probed = clenv.run(env, agents.make("base", env, optimizer="adam", lr=1e-3), seed=5, progress=False,
                       evaluation=clenv.Evaluation.all(gamma=3, stability_every=2, eval_samples=64,
                                                       probe_samples=64, plasticity_samples=64))
    np.testing.assert_array_equal(plain.step_reward, probed.step_reward)
    assert plain.task_accuracy == probed.task_accuracy
    assert probed.metrics["probe_time_s"] > 0


EXPECTED = {"avg_online_acc", "online_acc_last10", "online_acc_last25", "online_acc_last50", "online_acc_last75",
            "online_acc_last100", "final_task_online_acc", "test_acc", "acc", "af_chaudhry", "af_neumosync", "bwt",
            "fwt", "fm", "lca_f", "lca_b", "lca_0", "lca_0_b", "fkt", "bkt", "fkt_gamma_half", "fkt_gamma",
            "bkt_gamma_half", "bkt_gamma", "gamma", "min_acc", "wc_acc", "avg_sg", "sg_0to1", "sg_1to2",
            "ngm_avg_acc", "ngm_avg_min_acc", "ngm_wc_acc", "ngm_avg_sg", "dormant_ratio", "dead_fraction",
            "feature_rank", "weight_magnitude", "zero_grad_fraction", "probe_time_s"}


def check_every_metric(r):
    missing = EXPECTED - set(r.metrics)
    assert not missing, f"missing metrics {sorted(missing)}"
    bad = {k: v for k, v in r.metrics.items() if not isinstance(v, float)}
    assert not bad
    # The metrics are exactly what the pure functions give on the recorded arrays.
    R, b0 = r.records["accuracy_matrix"], r.records["random_init_accuracy"]
    for k, v in forgetting_metrics(R, b0).items():
        assert r.metrics[k] == v
    ad = adaptation_metrics(r.records["probe_forward"], r.records["probe_backward"], r.records["probe_scratch"],
                            r.records["probe_b"])
    for k, v in ad.items():
        assert r.metrics[k] == v
    assert r.metrics["lca_f"] == pytest.approx(r.metrics["lca_0"] + r.metrics["fkt"], abs=1e-12)
    assert r.metrics["lca_b"] == pytest.approx(r.metrics["lca_0_b"] + r.metrics["bkt"], abs=1e-12)
    np.testing.assert_array_equal(r.records["test_accuracy"], np.diag(R))
    T = len(r.task_accuracy)
    assert len(r.records["diagnostics"]) == T and "fc0/srank" in r.records["diagnostics"][0]


def test_all_probes_produce_every_metric_on_digits():
    import agents

    env = small_env()
    r = clenv.run(env, agents.make("base", env, optimizer="adam", lr=1e-3), seed=0, progress=False,
                  evaluation=clenv.Evaluation.all(stability_every=2, eval_samples=64, probe_samples=64))
    check_every_metric(r)
    assert r.metrics["gamma"] == round(0.2 * 4)  # budget differs from Table 5's: 20% of the task's steps


def test_all_probes_on_random_label_fashion_mnist():
    import agents

    try:
        env = gym.make("RandomLabelFashionMNIST-v0", num_tasks=4, samples_per_task=256, epochs_per_task=2)
    except (FileNotFoundError, RuntimeError) as e:  # the dataset is not on this machine
        pytest.skip(f"Fashion-MNIST unavailable: {e}")
    r = clenv.run(env, agents.make("base", env, optimizer="adam", lr=1e-3), seed=0, progress=False,
                  evaluation=clenv.Evaluation.all(stability_every=4))
    check_every_metric(r)
    assert {"sg_2to3", "ngm_sg_2to3"} <= set(r.metrics)
    assert r.records["accuracy_matrix"].shape == (4, 4)


def test_stability_evaluates_seen_tasks_every_k_steps_and_at_task_ends():
    env = small_env(num_tasks=3)
    r = clenv.run(env, CountingAgent(10), seed=1, progress=False,
                  evaluation=clenv.Evaluation(stability_every=3, stability_samples=32, ngm_compat=True))
    steps = list(r.records["stability_step"])
    assert steps == [0, 3, 4, 6, 8, 9, 12]  # multiples of 3 and the task ends 4, 8, 12
    assert list(r.records["stability_block"]) == [0, 0, 0, 1, 1, 2, 2]
    acc = r.records["stability_acc"]
    seen = np.isfinite(acc)
    assert seen.tolist() == [[True, False, False], [True, False, False], [True, False, False],
                             [True, True, False], [True, True, False], [True, True, True], [True, True, True]]
    # Each value is the held-out share of the class the counting agent predicts after `step` updates.
    for e, s in enumerate(steps):
        for j in np.flatnonzero(seen[e]):
            assert acc[e, j] == pytest.approx(share(env, j, s % 10, 32, split="test"))
    assert r.metrics["ngm_avg_acc"] == pytest.approx(np.mean([acc[2, 0], acc[4, 0], acc[6, 0]]))


def test_agent_diagnostics_and_traces_are_recorded():
    env = small_env()
    r = clenv.run(env, CountingAgent(10), seed=0, progress=False, evaluation=clenv.Evaluation(trace_every=2))
    d = r.records["agent_diagnostics"]
    np.testing.assert_array_equal(d["step"], [2, 4, 6, 8, 10, 12])
    np.testing.assert_array_equal(d["n"], d["step"])  # read after the step's update
    assert set(d) == {"step", "n"}
    assert r.metrics["agent/n"] == 12.0
    assert [t["n_at_task_end"] for t in r.records["agent_trace"]] == [4, 8, 12]
    assert [t["task"] for t in r.records["agent_trace"]] == [0, 1, 2]


def test_online_only_evaluation_is_free_of_probes():
    env = small_env()
    r = clenv.run(env, CountingAgent(10), seed=0, progress=False, evaluation=clenv.Evaluation(agent_traces=False))
    assert r.metrics["avg_online_acc"] == pytest.approx(np.mean(r.task_accuracy))
    assert r.metrics["probe_time_s"] == 0.0
    assert not any(k.startswith(("lca", "min_acc", "acc")) for k in r.metrics)


def test_clear_errors_for_missing_requirements():
    class NoClone(CountingAgent):
        clone = None

    env = small_env()
    with pytest.raises(TypeError, match="clone"):
        clenv.run(env, NoClone(10), seed=0, progress=False, evaluation=clenv.Evaluation(adaptation=True, gamma=2))
    with pytest.raises(ValueError, match="stability_every"):
        clenv.Evaluation(ngm_compat=True)
    with pytest.raises(ValueError):
        clenv.Evaluation(stability_every=0)


def test_probe_gamma_follows_table5_only_with_the_table_budget():
    assert probe_gamma(gym.make("RandomLabelDigits-v0")) == (64, "table5")
    env = gym.make("RandomLabelDigits-v0", samples_per_task=128, epochs_per_task=5)  # 8 x 5 = 40 steps per task
    assert probe_gamma(env) == (8, "20% of steps per task")


def test_joint_streams_are_evaluated_per_context():
    """On a joint stream task k is the union of contexts 0..k; the per-task probes measure context k alone (old code:
    the union's first samples, all context 0's, in every column)."""
    env = gym.make("JointSplitFashionMNIST-v0", steps_per_task=4, batch_size=32)  # 5 contexts of 2 classes
    env.reset(seed=0)
    u = env.unwrapped
    union = torch.cat([y for _, y in u.test_batches(1, max_samples=200)])
    own = torch.cat([y for _, y in u.test_batches(1, max_samples=200, context=True)])
    assert {0, 1} <= set(union.tolist())  # the union begins with context 0's classes
    assert set(own.tolist()) == {2, 3}
    import agents

    agent = agents.make("momentum_sgd", env)
    result = clenv.run(env, agent, seed=0, progress=False,
                       callbacks=[clenv.ContinualEvaluation(2, samples=64), clenv.HeldOutAccuracy(samples=64)])
    final = result.records["stability_acc"][-1]
    data = lambda k: list(u.test_batches(k, max_samples=64, context=True))  # noqa: E731
    from clenv.probes import accuracy

    assert [final[k] for k in range(5)] == [accuracy(agent, data(k)) for k in range(5)]
    assert result.records["test_accuracy"][-1] == accuracy(agent, data(4))
