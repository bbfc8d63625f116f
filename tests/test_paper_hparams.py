"""agents.paper_hparams: the paper's row per benchmark, applied by agents.make under explicit values."""

import gymnasium as gym
import pytest

import agents
import clenv  # noqa: F401  (registers the ids)
from agents.base import collect_defaults
from agents.paper_hparams import ENV_BENCHMARK, PAPER_HPARAMS, lookup, paper_hparams
from clenv.protocols import BENCHMARKS


@pytest.fixture(scope="module")
def rl_digits():
    # Random-Label family, 320 steps per task (256 samples / 16 x 20 epochs)
    return gym.make("RandomLabelDigits-v0", num_tasks=2)


@pytest.fixture(scope="module")
def perm_digits():
    return gym.make("PermutedDigits-v0", num_tasks=2)


def test_every_row_names_real_hyperparameters():
    """A row key that an agent does not have would make agents.make raise: check them all against DEFAULTS."""
    for family, rows in PAPER_HPARAMS.items():
        for name, (source, values) in rows.items():
            assert source.startswith(("NeuMoSync", "NGM-SGD")), (family, name)  # the paper the row comes from
            valid = collect_defaults(agents.agent_class(name))
            assert set(values) <= set(valid), (family, name, set(values) - set(valid))


def test_env_ids_map_to_known_benchmarks():
    for env_id, family in ENV_BENCHMARK.items():
        assert env_id in clenv.env_ids(), env_id
        assert family in PAPER_HPARAMS
    # The benchmarks clenv reproduces all have rows here (one vocabulary of keys).
    assert set(BENCHMARKS) <= set(PAPER_HPARAMS)


def test_the_envs_row_is_applied(rl_digits, perm_digits):
    # Table 7 (Random-Label MNIST): base SGD 1e-2, NeuMoSync e = 128; Table 8 (Permuted MNIST): base Adam 1e-3.
    base_rl = agents.make("base", rl_digits)
    base_perm = agents.make("base", perm_digits)
    assert (base_rl.hparams["optimizer"], base_rl.hparams["lr"]) == ("sgd", 1e-2)
    assert (base_perm.hparams["optimizer"], base_perm.hparams["lr"]) == ("adam", 1e-3)
    assert base_rl.hparam_source == "NeuMoSync Table 7" and base_perm.hparam_source == "NeuMoSync Table 8"
    ewc = agents.make("ewc", perm_digits)
    assert ewc.hparams["ewc_lambda"] == 1.0 and ewc.hparams["optimizer"] == "sgd"
    # The same agent on another benchmark gets another row: Shuffle CIFAR-10's NeuMoSync has e = 512.
    assert paper_hparams("neumosync", "ShuffleFashionMNIST-v0")["d_ff"] == 512
    assert paper_hparams("neumosync", "RandomLabelFashionMNIST-v0")["d_ff"] == 128
    assert paper_hparams("crelu", "ClassSplitCIFAR100-v0")["lr"] == 1e-5


def test_explicit_values_win(perm_digits):
    a = agents.make("ewc", perm_digits, ewc_lambda=3.0, lr=0.5)
    assert a.hparams["ewc_lambda"] == 3.0 and a.hparams["lr"] == 0.5
    assert a.hparams["optimizer"] == "sgd"  # the row still gives what was not set
    assert a.hparam_source == "NeuMoSync Table 8; explicit: ewc_lambda, lr"


def test_composed_names(perm_digits):
    # The table's own "L2Init + EWC" row (Gamma 1e-1) beats merging EWC's (Gamma 1), in either order.
    for name in ("l2init+ewc", "ewc+l2init"):
        h = agents.make(name, perm_digits).hparams
        assert h["ewc_lambda"] == 1e-1 and h["l2init_lambda"] == 1e-3
    # No composed row: the parts' rows merge; ER has none, so CBP's applies.
    h = agents.make("cbp+er", perm_digits).hparams
    assert (h["optimizer"], h["lr"], h["replacement_rate"]) == ("adam", 1e-3, 1e-3)
    # First-named wins where both rows set a key (CReLU Adam 1e-3 vs L2 SGD 1e-2).
    assert paper_hparams("crelu+l2", perm_digits)["optimizer"] == "adam"
    assert paper_hparams("l2+crelu", perm_digits)["optimizer"] == "sgd"


def test_unknown_env_keeps_class_defaults():
    spec_env = gym.make("ContinualCartPole-v0")  # no tuned row: continual RL
    assert lookup("base", spec_env).source == "class DEFAULTS" and paper_hparams("base", spec_env) == {}
    env = gym.make("RandomLabelDigits-v0", num_tasks=2)
    a = agents.make("base", env, paper_benchmark=False)
    assert a.hparams["optimizer"] == collect_defaults(agents.agent_class("base"))["optimizer"]
    assert a.hparam_source == "class DEFAULTS"
    with pytest.raises(ValueError, match="unknown paper benchmark"):
        agents.make("base", env, paper_benchmark="no_such_benchmark")


def test_forgetting_rows_and_fallback():
    # Table 26 on the Split-CIFAR-10 protocol (SplitFashionMNIST-v0): EWC Adam 1e-3, lambda 1; HAT lambda 0.1.
    env = gym.make("SplitFashionMNIST-v0", num_tasks=2, steps_per_task=4, batch_size=16)
    assert paper_hparams("ewc", env) == {"optimizer": "adam", "lr": 1e-3, "ewc_lambda": 1.0}
    assert paper_hparams("hat", env)["hat_lambda"] == 0.1
    # Table 26 has no CBP row: Permuted MNIST's forgetting setting falls back to Table 8's.
    row = lookup("cbp", "PermutedMNIST-v0", "permuted_mnist_forgetting")
    assert row.hparams["replacement_rate"] == 1e-3 and "Table 8" in row.source and "Table 26" in row.source


def test_an_explicit_benchmark_picks_its_table(rl_digits):
    # A Fashion-MNIST / digits stand-in of Random-Label CIFAR-10 runs Table 10's rows.
    h = agents.make("ewc", rl_digits, paper_benchmark="random_label_cifar10").hparams
    assert h["ewc_lambda"] == 1.0  # Table 10 (Table 7 would give 10)


def test_step_knobs_follow_the_task_budget(rl_digits):
    # ReDo every 30,000 steps = every 2 tasks of 15,000 steps (Table 7); digits tasks have 320 steps.
    steps = rl_digits.unwrapped.steps_per_task(0)
    r = lookup("redo", rl_digits)
    assert r.hparams["reset_period"] == round(30_000 * steps / 15_000) and "rescaled" in r.source
    assert lookup("redo", rl_digits, rescale_steps=False).hparams["reset_period"] == 30_000
    # The paper's own budget: no change.
    full = gym.make("RandomLabelFashionMNIST-v0", num_tasks=2)
    assert full.unwrapped.steps_per_task(0) == 15_000
    assert paper_hparams("redo", full)["reset_period"] == 30_000
