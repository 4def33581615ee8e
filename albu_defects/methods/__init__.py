"""The augmentation methods, one folder each: ``functional.py`` (pure functions) and ``transform.py``
(the thin albumentations transform that draws parameters and calls them).

- :mod:`~albu_defects.methods.contextmix`: ContextMix (numpy transform; the torch batch op is in
  :mod:`albu_defects.pytorch`);
- :mod:`~albu_defects.methods.injection`: :class:`~albu_defects.InjectDefect` and
  :class:`~albu_defects.DynamicLabelInjection` on the shared injection functions;
- :mod:`~albu_defects.methods.guided_crop`: Guided-Crop (transform and offline synthesis);
- :mod:`~albu_defects.methods.cropliq`, :mod:`~albu_defects.methods.cutpaste`: pseudo-anomalies;
- :mod:`~albu_defects.methods.poisson_paste`: :class:`~albu_defects.PoissonPaste`, copy-paste of
  user-supplied objects with exact Poisson blending;
- :mod:`~albu_defects.methods.anomaly`: the pseudo-anomaly keys and :class:`~albu_defects.AnomalySynthesis`.
"""
