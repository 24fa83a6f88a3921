"""cellmil: slide-level AML subtype prediction from single-cell images with attention MIL.

Stages (each ``cellmil <stage>`` or ``python -m mil.<stage>``): ``synth`` -> ``extract`` ->
``blast`` -> ``fit`` -> ``predict`` / ``heatmap``. The bag store (:mod:`mil.store`) is the
contract between them; ``ARCHITECTURE.md`` shows the layers.
"""

from mil.errors import CliError

__version__ = "0.1.0"

__all__ = ["CliError", "__version__"]
