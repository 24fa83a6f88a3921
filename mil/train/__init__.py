"""Stage 3, training: the MIL classifier on the bag store, and its use on new slides.

``labels`` (slide CSVs), ``data`` (bag sources, padding, samplers), ``instance_weights`` (how
``blast_prob`` enters), ``standardise`` (feature standardisation inside the model), ``model``
(pooling heads), ``lightning_module`` (loss, metrics, optimiser), ``trainer`` (the recipe the
fold and final models share), ``splits`` (patient-grouped folds), ``metrics``, ``crossval``
(``mil.fit``), ``final`` (models on every labelled slide), ``calibration`` (the decision rule),
``prevalence`` (EM adaptation), ``baselines`` (mean-pooled logistic regressions), ``rundir``
(the run folder), ``ensemble`` (loading and running models), ``predict`` (``mil.predict``).
``config`` and ``cli`` import no torch.
"""

from mil.train.config import FitConfig

__all__ = ["FitConfig"]
