"""Stable-Baselines3 (2.9) DQN and PPO as clenv agents: ``agents.make("sb3_dqn" | "sb3_ppo", env, **hp)``.

SB3 algorithms own their loop (``model.learn``); here the clenv contract drives them instead, with SB3's own
pieces: ``observe`` adds each transition to the model's ``ReplayBuffer`` / ``RolloutBuffer`` and calls the model's
own ``train`` (DQN: ``gradient_steps`` minibatches every ``train_freq`` env steps once ``learning_starts`` are
stored, the target synced by the model's ``_on_step``; PPO: ``n_epochs`` over every ``n_steps`` rollout, returns and
advantages by the buffer's GAE, truncated episodes bootstrapped from the value of their last observation, as
``collect_rollouts`` does). ``agent.model`` is an ordinary SB3 model: ``agent.model.learn(...)`` on a clenv env
trains the same networks.

The Q network (DQN) and the actor and critic (PPO) are :mod:`agents.backbones` MLPs put in place of SB3's own,
so the plasticity interventions of :mod:`agents.rl.interventions` (``intervention="redo" | "cbp" |
"shrink_perturb"``) run after every optimiser step of either path through one SB3 callback,
:class:`InterventionCallback` (the same objects tianshou's optimiser factory attaches). SB3's DQN is the
Nature DQN (no double Q, Huber loss, gradient norm clipped to 10), unlike ``tianshou_dqn`` (double Q, MSE).

Randomness: exploration uses the agent's own generator; SB3 samples minibatches and PPO actions with the global
numpy and torch generators, which this agent swaps for its own streams around each call, so the same seeds give
the same run regardless of other code. Needs the ``sb3`` extra (``pip install clenv[sb3]``).
"""

from __future__ import annotations

import contextlib
import copy
import types

import numpy as np
import torch
import torch.nn as nn

from agents.base import Agent, resolve_hparams, seeded

__all__ = ["SB3Agent", "SB3DQNAgent", "SB3PPOAgent", "InterventionCallback", "BackboneExtractor"]


def _sb3():
    try:
        import stable_baselines3
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError("the sb3_* agents need Stable-Baselines3: pip install 'clenv[sb3]'") from err
    return stable_baselines3


def BackboneExtractor(observation_space, features_dim: int, hidden=(64, 64), activation="relu", layernorm=False,
                      network=None):
    """An SB3 features extractor whose features are an :mod:`agents.backbones` network's output (its head
    included): with SB3's own head replaced by ``nn.Identity`` the extractor *is* the Q network / actor / critic."""
    from stable_baselines3.common.torch_layers import BaseFeaturesExtractor

    from agents.rl.common import build_rl_backbone

    class _Extractor(BaseFeaturesExtractor):
        def __init__(self):
            super().__init__(observation_space, int(features_dim))
            self.backbone = build_rl_backbone(int(np.prod(observation_space.shape)), int(features_dim),
                                              hidden=hidden, activation=activation, layernorm=layernorm,
                                              network=network)

        def forward(self, obs):
            return self.backbone(obs.float().flatten(1))

    return _Extractor()


class InterventionCallback:
    """The plasticity interventions as a Stable-Baselines3 callback: at training start it attaches the given
    :class:`agents.rl.interventions.Intervention` objects to the model's trained networks (the Q network, not its
    target; PPO's actor and critic) and its optimiser, so they run after every gradient step of ``model.learn``.
    ``attach(model)`` does the same outside ``learn`` (what the clenv agents call). Built lazily as a subclass of
    SB3's ``BaseCallback`` (``InterventionCallback(...)`` returns one)."""

    def __new__(cls, interventions):
        from stable_baselines3.common.callbacks import BaseCallback

        class _InterventionCallback(BaseCallback):
            def __init__(self, ivs):
                super().__init__()
                self.interventions = list(ivs)
                self.attached_to = None

            def attach(self, model) -> None:
                from agents.rl.interventions import attach_interventions

                if self.attached_to is model:
                    return
                if self.attached_to is not None:
                    raise RuntimeError("this InterventionCallback is attached to another model already")
                attach_interventions(self.interventions, _trained_module(model), model.policy.optimizer)
                self.attached_to = model

            def _on_training_start(self) -> None:
                self.attach(self.model)

            def _on_step(self) -> bool:
                return True

        return _InterventionCallback(interventions)


def _trained_module(model) -> nn.Module:
    # The modules the optimiser trains, without DQN's target network (a reset there would be a second reset).
    policy = model.policy
    return policy.q_net if hasattr(policy, "q_net") else policy


class _SpacesEnv:
    """The two spaces SB3's constructor reads, as a gymnasium env that cannot be stepped (the clenv loop steps
    the real one)."""

    def __new__(cls, observation_space, action_space):
        import gymnasium as gym

        class _Env(gym.Env):
            metadata = {"render_modes": []}

            def __init__(self):
                self.observation_space, self.action_space = observation_space, action_space

            def reset(self, *, seed=None, options=None):
                super().reset(seed=seed)
                return observation_space.sample(), {}

            def step(self, action):
                raise RuntimeError("this env only carries spaces; step the clenv env (or pass one to learn())")

        return _Env()


class SB3Agent(Agent):
    """Shared machinery: hyperparameters, spaces, the SB3 model with backbone networks, own RNG streams."""

    NAME = "sb3"
    DEFAULTS = dict(hidden=(64, 64), activation="relu", layernorm=False, network=None, lr=1e-3, gamma=0.99,
                    intervention=None, intervention_kwargs=None, seed=0, device="cpu")

    def __init__(self, env, **hparams):
        from agents.rl.common import check_rl_spaces

        _sb3()
        self.hparams = resolve_hparams(type(self), hparams)
        self.seed_explicit = "seed" in hparams
        obs_space, act_space = check_rl_spaces(self.NAME, env)
        self.observation_space, self.action_space = obs_space, act_space
        self.num_actions = int(act_space.n)
        seed = int(self.hparams["seed"])
        self.rng = np.random.default_rng(seed)
        self._np_state = np.random.RandomState(seed).get_state()
        self._torch_gen = torch.Generator().manual_seed(seed + 2)
        self.task_id = None
        self.num_env_steps = 0
        self.num_updates = 0
        self.interventions = []
        if self.hparams["intervention"] is not None:
            from agents.rl.interventions import make_intervention

            self.interventions = [make_intervention(self.hparams["intervention"], seed=seed + 1,
                                                    **(self.hparams["intervention_kwargs"] or {}))]
        with seeded(seed):
            self.build()
        self.callback = InterventionCallback(self.interventions)
        if self.interventions:
            self.callback.attach(self.model)

    def construction_env(self):
        return types.SimpleNamespace(observation_space=self.observation_space, action_space=self.action_space)

    def _policy_kwargs(self, features_dim: int) -> dict:
        h = self.hparams
        return dict(features_extractor_class=_extractor_factory, features_extractor_kwargs=dict(
            features_dim=int(features_dim), hidden=tuple(h["hidden"]), activation=h["activation"],
            layernorm=h["layernorm"], network=h["network"]))

    def _rebuild_optimizer(self, params) -> None:
        policy = self.model.policy
        policy.optimizer = policy.optimizer_class(params, lr=self.model.lr_schedule(1), **policy.optimizer_kwargs)

    def build(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError

    @contextlib.contextmanager
    def _own_rngs(self):
        # SB3 samples with np.random and torch's default generator: give it this agent's own streams.
        outer_np, outer_torch = np.random.get_state(), torch.random.get_rng_state()
        np.random.set_state(self._np_state)
        torch.random.set_rng_state(self._torch_gen.get_state())
        try:
            yield
        finally:
            self._np_state = np.random.get_state()
            self._torch_gen.set_state(torch.random.get_rng_state())
            np.random.set_state(outer_np)
            torch.random.set_rng_state(outer_torch)

    def _obs(self, obs) -> torch.Tensor:
        return torch.as_tensor(np.asarray(obs, np.float32)[None], device=self.model.device)

    def on_task_switch(self, task_id) -> None:
        self.task_id = task_id

    def recent_observations(self, n: int) -> np.ndarray:
        """The newest ``n`` (at most) observations in the model's replay / rollout buffer, oldest first."""
        buf = self._buffer()
        size = buf.buffer_size if buf.full else buf.pos
        order = (np.arange(size) + (buf.pos if buf.full else 0)) % max(buf.buffer_size, 1)
        return buf.observations[order[-int(n):], 0]

    def run_callbacks(self) -> list:
        """The networks' diagnostics at each task end (:class:`agents.rl.diagnostics.RLDiagnostics`)."""
        from agents.rl.diagnostics import RLDiagnostics

        return [RLDiagnostics()]

    @property
    def network(self) -> nn.Module:
        """The Q network's (DQN) or actor's (PPO) backbone."""
        return self._backbones()[0]

    @property
    def intervention_stats(self) -> dict[str, float]:
        return {k: v for iv in self.interventions for k, v in iv.stats.items()}

    def state_dict(self) -> dict:
        """The model's networks and optimiser, its buffer and counters, this agent's RNG streams and the
        interventions' state (their generators through the base)."""
        m = self.model
        return {**super().state_dict(), "policy": copy.deepcopy(m.policy.state_dict()),
                "optimizer": copy.deepcopy(m.policy.optimizer.state_dict()), "buffer": copy.deepcopy(self._buffer()),
                "counters": self._counters(), "num_env_steps": self.num_env_steps, "num_updates": self.num_updates,
                "task_id": self.task_id, "numpy_state": self._np_state, "torch_state": self._torch_gen.get_state(),
                "interventions": [iv.state_dict() for iv in self.interventions]}

    def load_state_dict(self, state: dict) -> None:
        self.matching_streams(state)
        m = self.model
        m.policy.load_state_dict(copy.deepcopy(state["policy"]))
        m.policy.optimizer.load_state_dict(copy.deepcopy(state["optimizer"]))
        self._set_buffer(copy.deepcopy(state["buffer"]))
        self._set_counters(state["counters"])
        self.num_env_steps, self.num_updates = int(state["num_env_steps"]), int(state["num_updates"])
        self.task_id = state.get("task_id")
        self._np_state = state["numpy_state"]
        self._torch_gen.set_state(state["torch_state"])
        for iv, s in zip(self.interventions, state["interventions"]):
            iv.load_state_dict(s)
        super().load_state_dict(state)


def _extractor_factory(observation_space, **kwargs):
    return BackboneExtractor(observation_space, **kwargs)


class SB3DQNAgent(SB3Agent):
    """Stable-Baselines3's DQN with epsilon-greedy exploration decayed linearly over ``eps_decay_steps`` env
    steps (the agent's own schedule, as ``tianshou_dqn``'s; SB3's ``exploration_fraction`` is not used)."""

    NAME = "sb3_dqn"
    DEFAULTS = dict(buffer_size=20_000, batch_size=64, learning_starts=500, train_freq=1, gradient_steps=1,
                    target_update_interval=200, eps_start=1.0, eps_end=0.05, eps_decay_steps=5_000,
                    max_grad_norm=10.0)

    def build(self) -> None:
        from stable_baselines3 import DQN
        from stable_baselines3.common.logger import configure

        h = self.hparams
        self.model = DQN("MlpPolicy", _SpacesEnv(self.observation_space, self.action_space), learning_rate=h["lr"],
                         buffer_size=int(h["buffer_size"]), learning_starts=int(h["learning_starts"]),
                         batch_size=int(h["batch_size"]), gamma=h["gamma"], train_freq=int(h["train_freq"]),
                         gradient_steps=int(h["gradient_steps"]),
                         target_update_interval=int(h["target_update_interval"]),
                         max_grad_norm=h["max_grad_norm"], device=h["device"], seed=None,
                         policy_kwargs=dict(net_arch=[], **self._policy_kwargs(self.num_actions)))
        policy = self.model.policy
        # The backbone's own head gives the Q values: SB3's extra linear layer goes.
        policy.q_net.q_net = nn.Identity()
        policy.q_net_target.q_net = nn.Identity()
        policy.q_net_target.load_state_dict(policy.q_net.state_dict())
        self._rebuild_optimizer(policy.q_net.parameters())
        self.model.q_net, self.model.q_net_target = policy.q_net, policy.q_net_target
        self.model._create_aliases()
        self.model.set_logger(configure(None, []))  # train() logs; no output wanted

    def _backbones(self):
        return [self.model.policy.q_net.features_extractor.backbone]

    @property
    def epsilon(self) -> float:
        h = self.hparams
        frac = min(1.0, self.num_env_steps / max(1, h["eps_decay_steps"]))
        return float(h["eps_start"] + frac * (h["eps_end"] - h["eps_start"]))

    @torch.no_grad()
    def q_values(self, obs) -> np.ndarray:
        q = self.model.policy.q_net
        q.set_training_mode(False)
        try:
            return q(self._obs(obs))[0].cpu().numpy()
        finally:
            q.set_training_mode(True)

    def act(self, obs, info):
        if self.rng.random() < self.epsilon:
            return int(self.rng.integers(self.num_actions))
        return int(np.argmax(self.q_values(obs)))

    def observe(self, obs, action, reward, next_obs, terminated, truncated, info) -> None:
        m, h = self.model, self.hparams
        timeout = bool(truncated) and not bool(terminated)
        # SB3's buffer stores done * (1 - timeout): a truncated episode still bootstraps from next_obs.
        m.replay_buffer.add(np.asarray(obs, np.float32)[None], np.asarray(next_obs, np.float32)[None],
                            np.array([[int(action)]]), np.array([float(reward)], np.float32),
                            np.array([bool(terminated) or bool(truncated)]), [{"TimeLimit.truncated": timeout}])
        self.num_env_steps += 1
        m.num_timesteps = self.num_env_steps
        m._on_step()  # the target sync every target_update_interval steps
        if m.replay_buffer.size() >= h["learning_starts"] and self.num_env_steps % h["train_freq"] == 0:
            with self._own_rngs():
                m.train(gradient_steps=int(h["gradient_steps"]), batch_size=int(h["batch_size"]))
            self.num_updates += int(h["gradient_steps"])

    def _buffer(self):
        return self.model.replay_buffer

    def _set_buffer(self, buffer) -> None:
        self.model.replay_buffer = buffer

    def _counters(self) -> dict:
        m = self.model
        return {"n_calls": m._n_calls, "n_updates": m._n_updates, "num_timesteps": m.num_timesteps}

    def _set_counters(self, c: dict) -> None:
        m = self.model
        m._n_calls, m._n_updates, m.num_timesteps = int(c["n_calls"]), int(c["n_updates"]), int(c["num_timesteps"])


class SB3PPOAgent(SB3Agent):
    """Stable-Baselines3's PPO with separate backbone actor and critic; one update of ``n_epochs`` after every
    ``n_steps`` env steps."""

    NAME = "sb3_ppo"
    DEFAULTS = dict(lr=3e-4, n_steps=512, batch_size=64, n_epochs=4, clip_range=0.2, vf_coef=0.5, ent_coef=0.01,
                    gae_lambda=0.95, max_grad_norm=0.5)

    def build(self) -> None:
        from stable_baselines3 import PPO
        from stable_baselines3.common.logger import configure

        h = self.hparams
        self.model = PPO("MlpPolicy", _SpacesEnv(self.observation_space, self.action_space), learning_rate=h["lr"],
                         n_steps=int(h["n_steps"]), batch_size=int(h["batch_size"]), n_epochs=int(h["n_epochs"]),
                         gamma=h["gamma"], gae_lambda=h["gae_lambda"], clip_range=h["clip_range"],
                         ent_coef=h["ent_coef"], vf_coef=h["vf_coef"], max_grad_norm=h["max_grad_norm"],
                         device=h["device"], seed=None,
                         policy_kwargs=dict(net_arch=dict(pi=[], vf=[]), share_features_extractor=False,
                                            ortho_init=False, **self._policy_kwargs(self.num_actions)))
        policy = self.model.policy
        # The actor's backbone gives the logits, a critic backbone of one output the value: SB3's heads go.
        policy.vf_features_extractor = BackboneExtractor(self.observation_space, 1, **{
            k: v for k, v in self._policy_kwargs(1)["features_extractor_kwargs"].items() if k != "features_dim"})
        policy.action_net, policy.value_net = nn.Identity(), nn.Identity()
        self._rebuild_optimizer(policy.parameters())
        self.model.set_logger(configure(None, []))
        self._pending_start = True

    def _backbones(self):
        p = self.model.policy
        return [p.pi_features_extractor.backbone, p.vf_features_extractor.backbone]

    @property
    def critic_network(self) -> nn.Module:
        return self._backbones()[1]

    def act(self, obs, info):
        with torch.no_grad(), self._own_rngs():
            self.model.policy.set_training_mode(False)
            action, value, log_prob = self.model.policy(self._obs(obs))
        self._last = (value, log_prob)
        return int(action[0])

    def observe(self, obs, action, reward, next_obs, terminated, truncated, info) -> None:
        m, buf = self.model, self.model.rollout_buffer
        value, log_prob = self._last
        reward = float(reward)
        if truncated and not terminated:
            # collect_rollouts' timeout rule: bootstrap a cut episode from its last observation's value.
            with torch.no_grad():
                reward += self.hparams["gamma"] * float(m.policy.predict_values(self._obs(next_obs))[0, 0])
        buf.add(np.asarray(obs, np.float32)[None], np.array([[int(action)]]), np.array([reward], np.float32),
                np.array([self._pending_start]), value, log_prob)
        self._pending_start = bool(terminated) or bool(truncated)
        self.num_env_steps += 1
        m.num_timesteps = self.num_env_steps
        if buf.full:
            with torch.no_grad():
                last_value = m.policy.predict_values(self._obs(next_obs))
            buf.compute_returns_and_advantage(last_values=last_value, dones=np.array([self._pending_start]))
            with self._own_rngs():
                m.train()
            buf.reset()
            self.num_updates += 1

    def _buffer(self):
        return self.model.rollout_buffer

    def _set_buffer(self, buffer) -> None:
        self.model.rollout_buffer = buffer

    def _counters(self) -> dict:
        m = self.model
        return {"n_updates": m._n_updates, "num_timesteps": m.num_timesteps, "pending_start": self._pending_start,
                "last": copy.deepcopy(getattr(self, "_last", None))}

    def _set_counters(self, c: dict) -> None:
        m = self.model
        m._n_updates, m.num_timesteps = int(c["n_updates"]), int(c["num_timesteps"])
        self._pending_start = bool(c["pending_start"])
        if c.get("last") is not None:
            self._last = copy.deepcopy(c["last"])
