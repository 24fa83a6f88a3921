"""``mil.blast predict``: write calibrated ``blast_prob`` beside every slide's features."""

from __future__ import annotations

import logging

import numpy as np

from mil.blast.cohort import standardise_for
from mil.blast.model import blast_probability, load_filter, predict_logits
from mil.errors import CliError
from mil.provenance import check_same_features
from mil.store import BLAST_PROB, open_store
from mil.store.schema import now

log = logging.getLogger("mil.blast")


# -- predict -----------------------------------------------------------------------------------
def predict(store_path: str, filter_path: str, overwrite: bool = False) -> dict[str, int]:
    """Write calibrated ``blast_prob`` for every slide; skip slides done by the same filter."""
    clf, meta = load_filter(filter_path)
    with open_store(store_path, "a") as store:
        check_same_features(meta["provenance"], store.attrs, store_path,
                            owner=f"blast filter {filter_path}")
        mode = standardise_for(clf, meta, store)
        todo, done, other = [], 0, []
        for sid in store.slides():
            if BLAST_PROB in store.annotations(sid):
                if store.annotation_attrs(sid, BLAST_PROB).get("filter_sha256") == meta["sha256"]:
                    done += 1
                    continue
                other.append(sid)
            todo.append(sid)
        if other and not overwrite:
            raise CliError(f"{len(other)} slide(s) of {store_path} (e.g. '{other[0]}') carry "
                           f"{BLAST_PROB} from another filter; pass --overwrite to replace them")
        attrs = {"filter_sha256": meta["sha256"], "filter": str(filter_path),
                 "temperature": float(meta["temperature"]), "standardise": mode,
                 "created": now()}
        log.info("%d slides: %d already done, %d to predict", done + len(todo), done, len(todo))
        step = max(1, len(todo) // 20)
        for i, sid in enumerate(todo, start=1):
            probs = blast_probability(predict_logits(clf, store.features(sid)),
                                      float(meta["temperature"]))  # (N,)
            store.write_annotation(sid, BLAST_PROB, probs.astype(np.float32), attrs)
            if i % step == 0 or i == len(todo):
                log.info("[%d/%d] %s: %d cells", i, len(todo), sid, len(probs))
    return {"done": done, "written": len(todo), "replaced": len(other)}
