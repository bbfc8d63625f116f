"""Environments: supervised task streams (and continual RL streams), plus wrappers."""

from clenv.envs.supervised import INFO_KEYS, SupervisedStreamEnv

__all__ = ["SupervisedStreamEnv", "INFO_KEYS"]
