"""tianshou 2.0.1 Algorithms as clenv agents: ``agents.make("tianshou_dqn" | "tianshou_ppo", env, **hp)``.

The clenv contract (``act`` / ``observe``) drives the Algorithm directly: ``observe`` adds each transition to a
tianshou ``ReplayBuffer`` and runs the Algorithm's own ``update`` (DQN: one minibatch every ``train_every`` steps
once ``start_steps`` transitions are stored; PPO: ``repeat`` epochs over every ``rollout_steps`` rollout). The same
``agent.algorithm`` also trains inside tianshou's Collector and trainers on clenv envs (see :func:`tianshou_venv`).

Networks are :mod:`agents.backbones` MLPs (``activation`` relu / tanh / prelu / crelu / fourier, ``layernorm``) or
any module from ``network=callable((obs_dim,), num_outputs)``. ``intervention`` adds a per-gradient-step plasticity
hook (``"redo"``, ``"cbp"``, ``"shrink_perturb"``; options in ``intervention_kwargs``) through
:class:`agents.rl.hooks.PlasticityOptimizerFactory`.

Randomness: exploration uses the agent's own generators and tianshou's buffer sampling (global numpy) runs inside a
saved-and-restored numpy state, so the same seeds give the same run regardless of other code.
"""

from __future__ import annotations

import contextlib
import copy
import sys
import types

import numpy as np
import torch

from agents.base import Agent, resolve_hparams, seeded

__all__ = ["TianshouAgent", "TianshouDQNAgent", "TianshouPPOAgent", "tianshou_venv", "progress_wanted",
           "episode_returns"]


def progress_wanted() -> bool:
    """Whether tianshou's progress bars should show: only when they draw on a terminal. tqdm writes to stderr;
    into a file or a pipe every redraw would land as a line of cursor codes."""
    stream = sys.stderr
    return bool(getattr(stream, "isatty", None) and stream.isatty())


def episode_returns(buffer) -> list[tuple[int, float, int]]:
    """``(task_id, return, length)`` of every finished episode in a tianshou replay buffer filled from a clenv
    stream (e.g. the training collector's buffer after ``run_training``), in the order each sub-buffer stored them;
    ``task_id`` is the task of the episode's last reward, as in ``RunResult.records["episodes"]``.

    The buffer must hold the episodes: once it wraps around, the oldest (cut) episode is left out."""
    indices = buffer.sample_indices(0)  # every stored transition, oldest first within each sub-buffer
    if len(indices) == 0:
        return []
    if "labels_task_id" not in buffer.info:
        raise ValueError("the buffer's transitions have no clenv info (labels_task_id); fill it from a clenv stream")
    rew = np.asarray(buffer.rew)[indices]
    done = np.asarray(buffer.done)[indices].astype(bool)
    task = np.asarray(buffer.info["labels_task_id"])[indices]
    # A VectorReplayBuffer keeps one contiguous block per env; a plain ReplayBuffer is one block.
    subs = list(getattr(buffer, "buffers", [buffer]))
    edges = np.asarray(getattr(buffer, "subbuffer_edges", [0, buffer.maxsize]))
    block = np.searchsorted(edges, indices, side="right") - 1
    wrapped = [len(b) >= b.maxsize for b in subs]
    episodes, ret, length, start = [], 0.0, 0, True
    for i in range(len(indices)):
        if i and block[i] != block[i - 1]:
            ret, length, start = 0.0, 0, True  # a new env's block: an unfinished episode does not carry over
        ret += float(rew[i])
        length += 1
        if done[i]:
            if not (start and wrapped[block[i]]):  # the first episode of a wrapped block may have lost its beginning
                episodes.append((int(task[i]), ret, length))
            ret, length, start = 0.0, 0, False
    return episodes


def tianshou_venv(env_fns, subprocess: bool = False):
    """A tianshou vector env over clenv env factories (tianshou rejects gymnasium's vector envs)."""
    from tianshou.env import DummyVectorEnv, SubprocVectorEnv

    return (SubprocVectorEnv if subprocess else DummyVectorEnv)(list(env_fns))


class TianshouAgent(Agent):
    """Shared machinery: hyperparameters, env reading, the network builder, seeded numpy state for tianshou."""

    NAME = "tianshou"
    DEFAULTS = dict(hidden=(64, 64), activation="relu", layernorm=False, network=None, lr=1e-3, gamma=0.99,
                    intervention=None, intervention_kwargs=None, seed=0, device="cpu")

    def __init__(self, env, **hparams):
        from agents.rl.common import check_rl_spaces

        self.hparams = resolve_hparams(type(self), hparams)
        self.seed_explicit = "seed" in hparams
        obs_space, act_space = check_rl_spaces(self.NAME, env)
        self.observation_space, self.action_space = obs_space, act_space
        self.obs_dim, self.num_actions = int(obs_space.shape[0]), int(act_space.n)
        self.device = torch.device(self.hparams["device"])
        seed = int(self.hparams["seed"])
        self.rng = np.random.default_rng(seed)
        self._np_state = np.random.RandomState(seed).get_state()
        self.task_id = None
        self.num_env_steps = 0
        self.num_updates = 0
        self.intervention = None
        if self.hparams["intervention"] is not None:
            from agents.rl.hooks import make_intervention

            self.intervention = make_intervention(self.hparams["intervention"], seed=seed + 1,
                                                  **(self.hparams["intervention_kwargs"] or {}))
        with seeded(seed):
            self.build()

    def construction_env(self):
        # The constructor reads only the two spaces.
        return types.SimpleNamespace(observation_space=self.observation_space, action_space=self.action_space)

    def backbone(self, num_outputs: int):
        from agents.rl.networks import build_rl_backbone

        h = self.hparams
        return build_rl_backbone(self.obs_dim, num_outputs, hidden=h["hidden"], activation=h["activation"],
                                 layernorm=h["layernorm"], network=h["network"]).to(self.device)

    def optimizer_factory(self):
        from agents.rl.hooks import PlasticityOptimizerFactory

        return PlasticityOptimizerFactory([self.intervention] if self.intervention else [], lr=self.hparams["lr"])

    def build(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @contextlib.contextmanager
    def _numpy_rng(self):
        # tianshou samples minibatches with np.random; give it this agent's own stream.
        outer = np.random.get_state()
        np.random.set_state(self._np_state)
        try:
            yield
        finally:
            self._np_state = np.random.get_state()
            np.random.set_state(outer)

    def _obs(self, obs) -> torch.Tensor:
        return torch.as_tensor(np.asarray(obs, np.float32)[None], device=self.device)

    def _transition(self, obs, action, reward, next_obs, terminated, truncated):
        from tianshou.data import Batch

        return Batch(obs=np.asarray(obs, np.float32), act=int(action), rew=float(reward),
                     terminated=bool(terminated), truncated=bool(truncated),
                     obs_next=np.asarray(next_obs, np.float32), info={})

    def _update(self, **kw):
        from tianshou.utils.torch_utils import policy_within_training_step

        with self._numpy_rng(), policy_within_training_step(self.algorithm.policy):
            stats = self.algorithm.update(buffer=self.buffer, **kw)
        self.num_updates += 1
        return stats

    def on_task_switch(self, task_id) -> None:
        self.task_id = task_id

    def trainer_params(self, training_collector, *, max_epochs: int, epoch_num_steps: int, **overrides):
        """tianshou trainer parameters that train ``self.algorithm`` the way ``clenv.run`` trains this agent (see
        the subclasses), with ``test_collector=None`` and progress bars only on a terminal
        (:func:`progress_wanted`). ``overrides`` are any other ``*TrainerParams`` fields and win."""
        self._check_collector(training_collector)
        kw = dict(training_collector=training_collector, max_epochs=int(max_epochs),
                  epoch_num_steps=int(epoch_num_steps), test_collector=None, show_progress=progress_wanted(),
                  **self._trainer_defaults())
        # The collector steps every env at once: a collection of n steps should be a multiple of the env count.
        n_envs = int(getattr(training_collector, "env_num", 1))
        kw["collection_step_num_env_steps"] = -(-kw["collection_step_num_env_steps"] // n_envs) * n_envs
        kw.update(overrides)
        return self._trainer_params_class()(**kw)

    def _trainer_defaults(self) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    def _check_collector(self, collector) -> None:
        if getattr(collector, "policy", None) not in (self.algorithm, self.policy):
            raise ValueError("the training collector collects with another policy; build it as "
                             "Collector(agent.algorithm, venv, buffer, exploration_noise=True)")

    def _trainer_params_class(self):  # pragma: no cover - interface
        raise NotImplementedError

    def recent_observations(self, n: int) -> np.ndarray:
        """The newest ``n`` (at most) observations in the agent's buffer, oldest first."""
        idx = self.buffer.sample_indices(0)[-int(n):] if len(self.buffer) else np.zeros(0, int)
        return np.asarray(self.buffer.obs)[idx]

    def run_callbacks(self) -> list:
        """Callbacks every ``clenv run`` / ``compare`` / ``sweep`` of this agent gets: the networks' plasticity
        diagnostics at each task end (:class:`agents.rl.diagnostics.RLDiagnostics`), which ``clenv report`` shows."""
        from agents.rl.diagnostics import RLDiagnostics

        return [RLDiagnostics()]

    @property
    def intervention_stats(self) -> dict[str, float]:
        return dict(self.intervention.stats) if self.intervention is not None else {}

    def state_dict(self) -> dict:
        """Algorithm (networks, optimisers), replay buffer, counters, the numpy state tianshou samples with, the
        intervention's state and (through the base) every generator the agent owns."""
        return {**super().state_dict(), "algorithm": self.algorithm.state_dict(), "num_env_steps": self.num_env_steps,
                "num_updates": self.num_updates, "task_id": self.task_id, "buffer": copy.deepcopy(self.buffer),
                "numpy_state": self._np_state, "algorithm_iter": getattr(self.algorithm, "_iter", None),
                "intervention": None if self.intervention is None else self.intervention.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.matching_streams(state)  # refuse a foreign state before anything changes
        # A copy: the optimisers would keep (and update in place) the given tensors, another agent's in a round trip.
        self.algorithm.load_state_dict(copy.deepcopy(state["algorithm"]))
        if state.get("algorithm_iter") is not None and hasattr(self.algorithm, "_iter"):
            self.algorithm._iter = int(state["algorithm_iter"])  # DQN's target-sync counter, not in its state_dict
        self.num_env_steps, self.num_updates = state["num_env_steps"], state["num_updates"]
        self.task_id = state.get("task_id")
        if "buffer" in state:
            self.buffer = copy.deepcopy(state["buffer"])
            self._np_state = state["numpy_state"]
        if self.intervention is not None and state.get("intervention") is not None:
            self.intervention.load_state_dict(state["intervention"])
        super().load_state_dict(state)  # the generators (the buffer's included), last


class TianshouDQNAgent(TianshouAgent):
    """tianshou's DQN (double Q by default) with epsilon-greedy exploration decayed linearly over
    ``eps_decay_steps`` env steps (``eps_reset_on_task``: decay again after each task switch)."""

    NAME = "tianshou_dqn"
    DEFAULTS = dict(buffer_size=20_000, batch_size=64, start_steps=500, train_every=1, target_update_freq=200,
                    eps_start=1.0, eps_end=0.05, eps_decay_steps=5_000, eps_reset_on_task=False, n_step=1,
                    is_double=True, huber_loss_delta=None)

    def build(self) -> None:
        from tianshou.algorithm import DQN
        from tianshou.algorithm.modelfree.dqn import DiscreteQLearningPolicy
        from tianshou.data import ReplayBuffer

        from agents.rl.networks import QNet

        h = self.hparams
        self.network = self.backbone(self.num_actions)
        self.policy = DiscreteQLearningPolicy(model=QNet(self.network), action_space=self.action_space,
                                              observation_space=self.observation_space, eps_training=0.0)
        self.algorithm = DQN(policy=self.policy, optim=self.optimizer_factory(), gamma=h["gamma"],
                             n_step_return_horizon=h["n_step"], target_update_freq=h["target_update_freq"],
                             is_double=h["is_double"], huber_loss_delta=h["huber_loss_delta"])
        self.buffer = ReplayBuffer(int(h["buffer_size"]))
        self._eps_origin = 0

    @property
    def epsilon(self) -> float:
        return self.epsilon_at(self.num_env_steps - self._eps_origin)

    def epsilon_at(self, steps: int) -> float:
        """The exploration rate ``steps`` env steps into the linear decay."""
        h = self.hparams
        frac = min(1.0, max(0, int(steps)) / max(1, h["eps_decay_steps"]))
        return float(h["eps_start"] + frac * (h["eps_end"] - h["eps_start"]))

    def _check_collector(self, collector) -> None:
        super()._check_collector(collector)
        if not getattr(collector, "exploration_noise", False):
            # Measured: without it, 4 x 2,000 steps of ContinualCartPole ended at returns of 7-12 (no learning).
            raise ValueError("the training collector adds no exploration, so tianshou's DQN policy acts greedily "
                             "and never explores; build it with Collector(..., exploration_noise=True)")

    def _trainer_params_class(self):
        from tianshou.trainer import OffPolicyTrainerParams

        return OffPolicyTrainerParams

    def _trainer_defaults(self) -> dict:
        """The agent's batch size, one gradient step per ``train_every`` env steps (collected 10 at a time), and a
        ``training_fn`` that sets the policy's epsilon from the agent's decay at the trainer's env step (tianshou's
        policy explores only through ``eps_training``, 0 otherwise). ``start_steps`` and ``eps_reset_on_task`` have
        no trainer counterpart: the trainer updates from its first collection and does not see task switches."""
        def training_fn(epoch: int, env_step: int) -> None:
            self.policy.set_eps_training(self.epsilon_at(env_step))

        h = self.hparams
        return dict(batch_size=int(h["batch_size"]), collection_step_num_env_steps=10,
                    update_step_num_gradient_steps_per_sample=1.0 / int(h["train_every"]), training_fn=training_fn)

    @torch.no_grad()
    def q_values(self, obs) -> np.ndarray:
        self.network.eval()
        try:
            return self.network(self._obs(obs))[0].cpu().numpy()
        finally:
            self.network.train()

    def act(self, obs, info):
        if self.rng.random() < self.epsilon:
            return int(self.rng.integers(self.num_actions))
        return int(np.argmax(self.q_values(obs)))

    def observe(self, obs, action, reward, next_obs, terminated, truncated, info) -> None:
        self.buffer.add(self._transition(obs, action, reward, next_obs, terminated, truncated))
        self.num_env_steps += 1
        h = self.hparams
        if len(self.buffer) >= h["start_steps"] and self.num_env_steps % h["train_every"] == 0:
            self._update(sample_size=int(h["batch_size"]))

    def on_task_switch(self, task_id) -> None:
        super().on_task_switch(task_id)
        if self.hparams["eps_reset_on_task"]:
            self._eps_origin = self.num_env_steps

    def state_dict(self) -> dict:
        return {**super().state_dict(), "eps_origin": self._eps_origin}

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        self._eps_origin = int(state.get("eps_origin", 0))


class TianshouPPOAgent(TianshouAgent):
    """tianshou's PPO with separate actor and critic backbones; updates after every ``rollout_steps`` steps."""

    NAME = "tianshou_ppo"
    DEFAULTS = dict(lr=3e-4, rollout_steps=512, batch_size=64, repeat=4, eps_clip=0.2, vf_coef=0.5, ent_coef=0.01,
                    gae_lambda=0.95, max_grad_norm=0.5, advantage_normalization=True)

    def build(self) -> None:
        from tianshou.algorithm import PPO
        from tianshou.algorithm.modelfree.reinforce import DiscreteActorPolicy
        from tianshou.data import ReplayBuffer

        from agents.rl.networks import CriticNet, DiscreteActorNet

        h = self.hparams
        self.network = self.backbone(self.num_actions)  # the actor's backbone
        self.critic_network = self.backbone(1)
        self.policy = DiscreteActorPolicy(actor=DiscreteActorNet(self.network, self.num_actions),
                                          action_space=self.action_space, observation_space=self.observation_space)
        self.algorithm = PPO(policy=self.policy, critic=CriticNet(self.critic_network), optim=self.optimizer_factory(),
                             eps_clip=h["eps_clip"], vf_coef=h["vf_coef"], ent_coef=h["ent_coef"],
                             max_grad_norm=h["max_grad_norm"], gae_lambda=h["gae_lambda"], gamma=h["gamma"],
                             advantage_normalization=h["advantage_normalization"])
        self.buffer = ReplayBuffer(int(h["rollout_steps"]))
        self._gen = torch.Generator().manual_seed(int(h["seed"]) + 2)

    def _trainer_params_class(self):
        from tianshou.trainer import OnPolicyTrainerParams

        return OnPolicyTrainerParams

    def _trainer_defaults(self) -> dict:
        """One update of ``repeat`` epochs over every ``rollout_steps`` collected steps, minibatches of ``batch_size``
        (the on-policy trainer empties the buffer after each update, as ``observe`` does)."""
        h = self.hparams
        return dict(batch_size=int(h["batch_size"]), collection_step_num_env_steps=int(h["rollout_steps"]),
                    update_step_num_repetitions=int(h["repeat"]))

    @torch.no_grad()
    def action_logits(self, obs) -> torch.Tensor:
        self.network.eval()
        try:
            return self.network(self._obs(obs))[0].cpu()
        finally:
            self.network.train()

    def act(self, obs, info):
        probs = torch.softmax(self.action_logits(obs).double(), 0)
        return int(torch.multinomial(probs, 1, generator=self._gen))

    def observe(self, obs, action, reward, next_obs, terminated, truncated, info) -> None:
        self.buffer.add(self._transition(obs, action, reward, next_obs, terminated, truncated))
        self.num_env_steps += 1
        h = self.hparams
        if len(self.buffer) >= h["rollout_steps"]:
            self._update(batch_size=int(h["batch_size"]), repeat=int(h["repeat"]))
            self.buffer.reset()
