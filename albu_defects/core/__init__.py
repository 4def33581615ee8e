"""The shared core: the transform base and A/X bridge, BatchCompose, validation, geometry (the box
convention), colour jitter, class weights and the parallel helpers.

Its modules import nothing else of albu-defects (every other layer builds on them). This ``__init__``
imports nothing, so ``albu_defects.core.geometry`` and the others can be used without albumentations.
"""
