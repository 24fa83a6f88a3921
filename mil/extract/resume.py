"""Resuming an extraction: which slides are done, which changed, what the run left out.

A re-run trusts contents, not names. A slide of the store is done when its fingerprint
(:mod:`mil.extract.fingerprint`) matches its images on disk now; a slide whose images were
added, removed or modified since is deleted and extracted again, and the log names it. A slide
without a fingerprint (written by an older cellmil) is kept as it is, with a warning. A store
extracted from another source folder is refused: its ``paths`` are relative to its recorded
``source_root``, so one store holds one cohort; ``--overwrite`` replaces its slides.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

from mil.errors import CliError
from mil.extract.fingerprint import FINGERPRINT, SlideInputs
from mil.extract.sink import Summary, plural
from mil.extract.sources import Cohort
from mil.store import BagStore

log = logging.getLogger("mil.extract")


@dataclass
class ResumePlan:
    """The slides to extract now, and why the others are not."""

    pending: list[str]
    done: int = 0  # complete, with the same inputs
    changed: list[str] = field(default_factory=list)  # re-extracted: their images changed
    unverified: list[str] = field(default_factory=list)  # no fingerprint: kept as they are


def _shown(ids: list[str], n: int = 5) -> str:
    return ", ".join(ids[:n]) + (f" (+{len(ids) - n} more)" if len(ids) > n else "")


def plan_resume(store: BagStore, cohort: Cohort, inputs: dict[str, SlideInputs],
                overwrite: bool = False) -> ResumePlan:
    """Check the store's source folder, record it, and plan which slides to (re-)extract."""
    root, old = str(cohort.root), store.attrs.get("source_root")
    if old and old != root and store.slides():
        if not overwrite:
            raise CliError(f"{store.path} holds slides extracted from {old}, this run reads "
                           f"{root}; a store holds one cohort: use --overwrite to replace its "
                           "slides, or choose another output")
        for sid in store.slides():
            store.delete_slide(sid)
    store.update_attrs({"source_root": root})
    plan = ResumePlan(pending=[])
    for sid in cohort.slides:
        if sid not in store:
            plan.pending.append(sid)
            continue
        stored = store.slide_attrs(sid).get(FINGERPRINT)
        if stored is None:
            plan.unverified.append(sid)
        elif stored == inputs[sid].sha256:
            plan.done += 1
        else:
            plan.changed.append(sid)
            plan.pending.append(sid)
            store.delete_slide(sid)  # stale: a crash from here on leaves it to do, not old
    if plan.unverified:
        log.warning("warning: %s of %s carry no input fingerprint (extracted by an older "
                    "cellmil); kept without checking their images: %s",
                    plural(len(plan.unverified), "slide"), store.path, _shown(plan.unverified))
    if plan.changed:
        log.warning("re-extracting %s whose images changed since they were extracted: %s",
                    plural(len(plan.changed), "slide"), _shown(plan.changed))
    log.info("%s: %d slides, %d cells; %d slides already complete, %d to do", cohort.root,
             len(cohort.slides), cohort.n_cells(), plan.done + len(plan.unverified),
             len(plan.pending))
    return plan


def finish(store: BagStore, summary: Summary, cohort: Cohort, plan: ResumePlan,
           source: str | Path) -> None:
    """Record what the run left out (root attribute ``left_out``: slide -> reason) and what it
    noticed in the summary; a run after which no slide of the cohort is in the store fails."""
    summary.skipped = plan.done + len(plan.unverified)
    summary.changed = list(plan.changed)
    summary.empty = list(cohort.empty)
    summary.other_files = list(cohort.other_files)
    left = {s: why for s, why in (store.attrs.get("left_out") or {}).items() if s not in store}
    left.update({s: "no cell images in its folder" for s in cohort.empty})
    left.update(summary.left_out)
    store.update_attrs({"left_out": left})
    if not any(s in store for s in cohort.slides):
        example = next(iter(summary.examples.values()), "")
        raise CliError(f"{source}: nothing could be extracted: {summary.missing} image file(s) "
                       f"missing, {summary.unreadable} unreadable (e.g. {example})")
