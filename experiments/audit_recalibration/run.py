"""Does recalibrating the blast probabilities on the expert audit help the ``prior`` mode?

The blast filter's probabilities are calibrated against the noisy expert labels, so with 20%
label noise a certain blast sits near p = 0.8 and a certain non-blast near 0.2, and the
``prior`` mode's ``log p`` guidance is gentle. The audit gives expert-checked calls for a
stratified sample; a weighted Platt scaling fitted on it (stratum weights = predicted-class
share / audited count, a small ridge toward the identity) maps p to P(true blast | p). This
study refits gated attention with ``--instance-weights prior`` on those probabilities (no
``--noise-rate``: they already describe the truth) and compares with the paper protocol's
tempered prior and filter runs.

    python experiments/paper_protocol/run.py           # first: cohort, stores, audits, runs
    python experiments/audit_recalibration/run.py      # then this (about 1 min per noise level)

Stores are copied into ``work/`` (git-ignored); ``results.json`` and the README table are
rewritten from what ran.
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
PROTOCOL = HERE.parent / "paper_protocol"


def logit(p: np.ndarray) -> np.ndarray:
    p = np.clip(p, 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


def platt(p: np.ndarray, y: np.ndarray, w: np.ndarray, ridge: float = 1e-2) -> tuple[float, float]:
    """Weighted Platt scaling ``sigmoid(a logit(p) + b)``, ridge toward (a, b) = (1, 0)."""
    import torch

    x = torch.tensor(logit(p), dtype=torch.float64)  # (n,)
    yt = torch.tensor(y, dtype=torch.float64)  # (n,)
    wt = torch.tensor(w / w.sum(), dtype=torch.float64)  # (n,)
    ab = torch.tensor([1.0, 0.0], dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([ab], max_iter=200)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        nll = torch.nn.functional.binary_cross_entropy_with_logits(ab[0] * x + ab[1], yt,
                                                                   reduction="none")
        loss = (wt * nll).sum() + ridge * ((ab[0] - 1) ** 2 + ab[1] ** 2)
        loss.backward()
        return loss

    opt.step(closure)
    a, b = ab.detach().tolist()
    return a, b


def recalibrate(level: Path, dst: Path) -> dict:
    """Fit on ``level/audit/review.csv``; write the store copy ``dst`` with the new blast_prob."""
    from mil.store import open_store

    rows = list(csv.DictReader((level / "audit" / "review.csv").open(encoding="utf-8")))
    share = json.loads((level / "noise.json").read_text())["predicted_share"]
    pred = [r["predicted"] for r in rows]
    w = np.array([share[k] / pred.count(k) for k in pred])
    p = np.array([float(r["blast_prob"]) for r in rows])
    y = np.array([r["expert"] == "blast" for r in rows], dtype=float)
    a, b = platt(p, y, w)
    shutil.copyfile(level / "features.h5", dst)
    probs = []
    with open_store(dst, "a") as st:
        for sid in st.slides():
            q = 1 / (1 + np.exp(-(a * logit(st.annotation(sid, "blast_prob")) + b)))
            st.write_annotation(sid, "blast_prob", q.astype(np.float32),
                                {"recalibrated_on_audit": [a, b]})
            probs.append(q)
    q = np.concatenate(probs)
    return {"a": a, "b": b, "audited": len(rows),
            "quantiles_5_25_50_75_95": np.quantile(q, [0.05, 0.25, 0.5, 0.75, 0.95]).round(3).tolist()}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--protocol-work", type=Path, default=PROTOCOL / "work" / "s40_c64_seed0",
                    help="the paper protocol's cohort folder")
    ap.add_argument("--noise", default="20,30,40", help="noise levels in percent")
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--work", type=Path, default=HERE / "work")
    a = ap.parse_args(argv)
    root, out = a.protocol_work, a.work
    if not (root / "cohort" / "slides.csv").is_file():
        raise SystemExit(f"{root}: no paper-protocol cohort; run experiments/paper_protocol/run.py")
    baseline = {r["run"]: r for r in json.loads((PROTOCOL / "results.json").read_text())["mil"]}
    out.mkdir(parents=True, exist_ok=True)
    results = []
    for n in a.noise.split(","):
        level = root / f"noise_{int(n):02d}"
        cal = recalibrate(level, out / f"n{n}.h5")
        run = out / f"prior_recal_n{n}"
        subprocess.run([sys.executable, "-m", "mil.fit", str(out / f"n{n}.h5"), "--labels",
                        str(root / "cohort" / "slides.csv"), "--out", str(run), "--model", "gated",
                        "--instance-weights", "prior", "--epochs", str(a.epochs), "--folds", "5",
                        "--seed", "0", "--threads", "1", "--no-progress"], check=True,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        m = json.loads((run / "metrics.json").read_text())["pooled"]
        row = {"noise": int(n), **cal, "recal_prior_acc": m["accuracy"],
               "recal_prior_auroc": m["macro_auroc"], "recal_prior_ci": m["ci95"]["accuracy"]}
        for mode in ("prior", "filter"):
            b = baseline[f"gated_{mode}_n{int(n):02d}"]
            row[f"protocol_{mode}_acc"], row[f"protocol_{mode}_auroc"] = b["acc_pooled"], b["auroc_pooled"]
        results.append(row)
        print(json.dumps(row), flush=True)
    (HERE / "results.json").write_text(json.dumps(results, indent=1) + "\n", encoding="utf-8")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
