"""Stage 2, the blast filter: an instance classifier on the stored embeddings.

``labels`` reads expert cell labels, ``model`` is the classifier and its file format, ``train``
cross-validates and fits it (``mil.blast fit``), ``annotate`` writes ``blast_prob`` into the
store (``mil.blast predict``), ``audit`` samples cells for a blinded expert review (the audit
folder's files: ``folder``; its pictures: ``gallery``), ``score`` turns the raters' answers into
error rates and agreement (``agreement``: kappa, consensus), ``noise`` estimates the label noise
by confident learning (``mil.blast noise``), and ``cohort`` standardises on the annotated
cohort and reports the filter's calibration on its labelled cells.
"""

from mil.blast.config import FilterConfig
from mil.blast.labels import parse_label, read_cell_labels

__all__ = ["FilterConfig", "parse_label", "read_cell_labels"]
