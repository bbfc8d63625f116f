"""clenv's runnable examples (``python examples/<name>.py``); the tests import some of them as ``examples.<name>``.

A regular package on purpose: an installed distribution that ships its own top-level ``examples`` package
(Avalanche 0.6, the ``bench`` extra, does) would otherwise shadow this directory's modules.
"""
