"""fp32 vs int8 features on the real Matek cells: feature cosine and the blast filter's accuracy.

    /work/venv/bin/python experiments/int8_features_matek/run.py

The 1,150 cells of ``experiments/blast_filter_matek`` (same manifest, pseudo-slides and splits)
are extracted twice with OpenVINO: fp32 and ``--precision int8`` (NNCF post-training, calibrated
on 300 cells drawn evenly from this cohort). Per cell: the cosine of the int8 feature to the
fp32 one. Then that study's easy (MYO vs NGS, 80/20) and hard (fifteen-class, 2-fold) protocols
with the linear ce filter, once per feature set. Outputs: ``work/results.json``.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
WORK = HERE / "work"
spec = importlib.util.spec_from_file_location(
    "blast_filter_matek", HERE.parent / "blast_filter_matek" / "run.py")
bfm = importlib.util.module_from_spec(spec)
spec.loader.exec_module(bfm)  # read_cells, write_manifest, split, fit_eval, metrics


def features(store: Path, rows: list[dict]) -> np.ndarray:
    from mil.store import open_store

    with open_store(store) as st:
        index = {sid: st.strings(sid, "cell_ids") for sid in st.slides()}
        feats = {sid: st.features(sid).astype(np.float32) for sid in st.slides()}
    return np.stack([feats[r["slide_id"]][index[r["slide_id"]].index(r["cell_id"])] for r in rows])


def protocols(rows: list[dict]) -> dict:
    easy = [r for r in rows if not r["hard"]]
    hard = [r for r in rows if r["hard"]]
    fold = bfm.split(easy, 5, seed=0)
    e_train = [r for r, f in zip(easy, fold, strict=True) if f != 0]
    e_test = [r for r, f in zip(easy, fold, strict=True) if f == 0]
    res = {"easy": bfm.metrics(np.array([r["y"] for r in e_test]),
                               bfm.fit_eval("easy", e_train, e_test, "linear", "ce"))}
    oof = bfm.hard_predictions(easy, hard, "linear", "ce")
    res["hard"] = bfm.metrics(np.array([r["y"] for r in hard]), oof)
    return res


def main() -> None:
    WORK.mkdir(exist_ok=True)
    bfm.WORK = WORK  # the shared helpers write labels, filters and the manifest here
    rows = bfm.read_cells()
    bfm.write_manifest(rows)
    res: dict = {}
    stores = {p: WORK / f"features_{p}.h5" for p in ("32", "int8")}
    for precision, store in stores.items():
        bfm.mil("extract", str(WORK / "manifest.csv"), str(store), "-q", "--engine", "openvino",
                "--precision", precision)
    for precision, store in stores.items():
        bfm.STORE = store
        (WORK / "filters").mkdir(exist_ok=True)
        for old in (WORK / "filters").glob("*.pt"):
            old.unlink()  # filters are per feature set
        res[precision] = protocols(rows)
        print(precision, json.dumps(res[precision]), flush=True)
    a, b = features(stores["32"], rows), features(stores["int8"], rows)
    cos = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    res["cosine_int8_fp32"] = {"min": float(cos.min()), "p01": float(np.quantile(cos, 0.01)),
                               "median": float(np.median(cos)), "mean": float(cos.mean()),
                               "n": int(len(cos))}
    print("cosine", json.dumps(res["cosine_int8_fp32"]))
    (WORK / "results.json").write_text(json.dumps(res, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
