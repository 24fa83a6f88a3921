"""What ``mil.fit`` checks before its first epoch, so that no mistake surfaces after training.

- the run folder can be written;
- every class of ``--classes`` has at least one labelled slide;
- an external cohort (``--test-labels`` / ``--test-store``) has the training store's features
  and only known classes;
- a resumed run has the inputs it started with: the labels CSV, the split file and the
  labelled slides of the store are fingerprinted in ``RUN/inputs.json``, and a re-run whose
  inputs differ is refused (finished folds would otherwise be reused with other labels).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from mil.errors import CliError
from mil.outputs import require_writable
from mil.provenance import check_same_features, feature_provenance, file_sha256
from mil.store import BLAST_PROB, BagStore, open_store
from mil.train.config import FitConfig
from mil.train.labels import LabelTable, read_labels

INPUTS = "inputs.json"


def store_fingerprint(store: BagStore, slides: list[str], with_prob: bool) -> str:
    """sha256 of the labelled slides' write stamps (and their blast_prob's, when used)."""
    h = hashlib.sha256(json.dumps(feature_provenance(store.attrs), sort_keys=True,
                                  default=str).encode())
    for sid in sorted(slides):
        a = store.slide_attrs(sid)
        stamp = [sid, a.get("n_cells"), a.get("written"), a.get("inputs_sha256")]
        if with_prob and BLAST_PROB in store.annotations(sid):
            p = store.annotation_attrs(sid, BLAST_PROB)
            stamp += [p.get("filter_sha256"), p.get("written")]
        h.update(json.dumps(stamp, default=str).encode())
    return h.hexdigest()


def fingerprints(cfg: FitConfig, table: LabelTable, store: BagStore) -> dict[str, dict[str, str]]:
    """What the run is trained on: input -> {path, sha256}."""
    out = {"labels": {"path": str(Path(cfg.labels).resolve()),  # type: ignore[arg-type]
                      "sha256": file_sha256(cfg.labels)}}  # type: ignore[arg-type]
    if cfg.split_file:
        out["split_file"] = {"path": str(Path(cfg.split_file).resolve()),
                             "sha256": file_sha256(cfg.split_file)}
    out["store"] = {"path": str(store.path.resolve()),
                    "sha256": store_fingerprint(store, table.slide_ids,
                                                cfg.instance_weights != "none")}
    return out


WHAT = {"labels": "labels file", "split_file": "split file", "store": "labelled slides of the store"}


def check_resumed_inputs(run_dir: Path, now: dict[str, dict[str, str]]) -> None:
    """Refuse to resume ``run_dir`` when an input differs from the one it started with."""
    path = run_dir / INPUTS
    if not path.is_file():
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))
    except ValueError:
        raise CliError(f"{path}: not readable JSON; delete the run folder or choose another --out") from None
    for key, old in before.items():
        new = now.get(key)
        if new is not None and old.get("sha256") != new["sha256"]:
            raise CliError(f"{run_dir} was started with other inputs: the {WHAT.get(key, key)} "
                           f"{new['path']} changed since (sha256 {old.get('sha256', '?')[:12]} -> "
                           f"{new['sha256'][:12]}); choose another --out or delete it")


def save_inputs(run_dir: Path, now: dict[str, dict[str, str]]) -> None:
    (run_dir / INPUTS).write_text(json.dumps(now, indent=1) + "\n", encoding="utf-8")


def preflight(cfg: FitConfig, table: LabelTable, store: BagStore) -> dict[str, dict[str, str]]:
    """Every check that can fail before training; returns the inputs' fingerprints."""
    run_dir = Path(cfg.out)  # type: ignore[arg-type]
    require_writable(run_dir, "run folder")
    used = set(table.labels)
    empty = [c for i, c in enumerate(table.classes) if i not in used]
    if empty:
        raise CliError(f"{cfg.labels}: no slide has class(es) {', '.join(empty)} of --classes; "
                       "drop them from --classes or label slides with them")
    if cfg.test_store and not cfg.test_labels:
        raise CliError("--test-store needs --test-labels (the external cohort's slide labels)")
    if cfg.test_labels:
        test_store = cfg.test_store or cfg.store
        ext = open_store(test_store)  # type: ignore[arg-type]
        check_same_features(feature_provenance(store.attrs), ext.attrs, test_store,  # type: ignore[arg-type]
                            owner=f"the training store {cfg.store}")
        read_labels(cfg.test_labels, table.classes, ext.slides())
    now = fingerprints(cfg, table, store)
    check_resumed_inputs(run_dir, now)
    return now
