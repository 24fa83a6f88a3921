"""Stage 3, training: the MIL classifier on the bag store, and its use on new slides.

``labels`` (slide CSVs), ``data`` (bag sources, padding, samplers), ``instance_weights`` (how
``blast_prob`` enters), ``model`` (pooling heads), ``lightning_module`` (loss, metrics,
optimiser), ``splits`` (patient-grouped folds), ``metrics``, ``crossval`` (``mil.fit``),
``rundir`` (the run folder), ``ensemble`` (loading and running fold models), ``predict``
(``mil.predict``). ``config`` and ``cli`` import no torch.
"""

from mil.train.config import FitConfig

__all__ = ["FitConfig"]
