"""The efficacy benchmark: does each augmentation help on real data, by how much, at what cost.

Run it as ``python benchmarks/efficacy/run.py`` (see ``runner.py``); the modules here are not part
of the library.
"""
