"""Stage 1, extraction: cell images -> frozen timm backbone -> embeddings in a bag store.

``sources`` finds the cells (folder per slide or a CSV manifest), ``backbone`` builds the frozen
model and its weights, ``images`` decodes and resizes batches, ``pipeline`` runs the batches and
``sink`` commits each slide atomically; ``ddp`` spreads the work over processes.
"""

from mil.extract.config import ExtractConfig

__all__ = ["ExtractConfig"]
