"""Stage 4, explanations: per-slide attention exports of a trained run.

``attention`` (colour scales, percentiles, ranks), ``occlusion`` (leave-one-cell-out), ``render``
(images), ``export`` (one slide's files), ``report`` (the offline HTML index), ``run`` (which
models explain which slide, and the whole export), ``cli`` (``mil.heatmap``, no torch).
"""

__all__: list[str] = []
