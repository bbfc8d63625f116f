"""Reinforcement-learning agents for clenv's continual RL streams, built on tianshou 2.0.1 (an optional extra).

Nothing here imports tianshou at package import; the submodules do, when an agent is made:
``agents.rl.tianshou_agents`` (``tianshou_dqn`` / ``tianshou_ppo``), ``agents.rl.hooks`` (CBP / ReDo / Shrink &
Perturb as per-gradient-step optimiser hooks) and ``agents.rl.networks`` (backbone-based Q / actor / critic modules).
"""
