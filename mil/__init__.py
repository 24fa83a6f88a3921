"""cellmil: slide-level AML subtype prediction from single-cell images with attention MIL.

Stages (each a ``python -m mil.<stage>`` entry point): ``synth`` -> ``extract`` -> ``blast`` ->
``fit`` -> ``predict`` / ``heatmap``. The bag store (:mod:`mil.store`) is the contract between them.
"""

from mil.types import Bag, CliError, SlideId

__version__ = "0.1.0"

__all__ = ["Bag", "CliError", "SlideId", "__version__"]
