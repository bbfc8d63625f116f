"""Composition of methods: ``agents.make("cbp+er", env)`` builds one class whose bases are the named methods.

Every hook of :class:`agents.base.SupervisedAgent` is cooperative (each override calls ``super()``), so Python's MRO
runs all of them: ER's ``training_batch`` appends replay, CBP's ``after_update`` replaces units, L2Init's and EWC's
``regularizer`` terms add up. Defaults merge with the first-named method winning.
"""

from __future__ import annotations

__all__ = ["compose"]


def compose(name: str, classes: list[type]) -> type:
    try:
        cls = type(name.replace("+", "_plus_"), tuple(classes), {"NAME": name})
    except TypeError as err:  # e.g. an RL agent with a supervised one
        raise ValueError(f"cannot compose {name!r}: {err}") from None
    return cls
