"""``python -m mil.store info``: what a store holds, in a few lines."""

from __future__ import annotations

from pathlib import Path

from mil.store.bagstore import open_store
from mil.store.verify import check_store


def info_text(path: str | Path, per_slide: bool = False) -> str:
    """A readable summary: slides, cells, feature dim, backbone, weights, failed cells, and what
    ``verify`` would say from the metadata alone (completion marks, shapes, chunks)."""
    st = open_store(path)
    a = st.attrs
    slides = st.slides()
    counts = [st.slide_attrs(s) for s in slides]
    n_cells = sum(int(c["n_cells"]) for c in counts)
    n_failed = sum(int(c.get("n_failed", 0)) for c in counts)
    weights = a.get("weights", {})
    if isinstance(weights, dict):
        weights = f"{weights.get('source', '?')} (sha256 {str(weights.get('sha256', '?'))[:16]})"
    annots = sorted({n for s in slides for n in st.annotations(s)})
    lines = [
        f"store       {st.path} ({st.kind}, schema {a.get('schema')})",
        f"slides      {len(slides)}",
        f"cells       {n_cells}" + (f" (mean {n_cells / len(slides):.1f} per slide)" if slides else ""),
        f"feature dim {a.get('feature_dim', '?')} ({a.get('dtype', '?')})",
        f"backbone    {a.get('backbone', '?')} @ {a.get('image_size', '?')} px",
        f"weights     {weights}",
        f"annotations {', '.join(annots) or '-'}",
        f"failed      {n_failed} cells",
    ]
    for sid in slides:
        for f, why in zip(st.strings(sid, "failed"), st.strings(sid, "failed_reason"), strict=True):
            lines.append(f"  failed in {sid}: {f} ({why})")
    for sid, why in (a.get("left_out") or {}).items():
        lines.append(f"  left out: {sid} ({why})")
    health = check_store(st, full=False)
    lines.append("health      " + ("ok" if health.ok else f"{len(health.bad)} bad slide(s)")
                 + f" by metadata; python -m mil.store verify {st.path} reads every value")
    lines += [f"  {line}" for line in health.lines()[:-1]]
    if health.unchecked:
        lines.append(f"checksums   none on {health.unchecked} array(s) (written by an older cellmil)")
    if per_slide:
        lines.append("slide_id\tn_cells\tn_failed")
        lines += [f"{s}\t{c['n_cells']}\t{c.get('n_failed', 0)}" for s, c in zip(slides, counts, strict=True)]
    return "\n".join(lines)
