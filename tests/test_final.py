"""The final models: every labelled slide, the folds' chosen epochs, resume, and their use by
mil.predict and mil.heatmap."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from mil.fit import main as fit_main
from mil.predict import main as predict_main
from mil.store import open_store
from mil.train.ensemble import load_system
from mil.train.final import chosen_epochs, trained_epochs
from mil.train.predict import predict_cohort

pytestmark = pytest.mark.usefixtures("one_thread")


def test_chosen_epochs_is_the_median_rounded_half_up():
    assert chosen_epochs([3, 5, 8]) == 5
    assert chosen_epochs([2, 3]) == 3 and chosen_epochs([2, 2, 3, 9]) == 3
    assert chosen_epochs([1]) == 1


def test_final_models_train_on_every_labelled_slide_for_the_chosen_epochs(fit_run):
    out = fit_run["out"]
    doc = json.loads((out / "final" / "final.json").read_text())
    with fit_run["labels"].open() as fh:
        labelled = sorted(r["slide_id"] for r in csv.DictReader(fh))
    assert sorted(doc["slide_ids"]) == labelled and doc["n_slides"] == 12
    best = [trained_epochs(out / f"fold_{k}" / "best.ckpt") for k in range(3)]
    assert doc["fold_best_epochs"] == best and doc["epochs"] == chosen_epochs(best)
    st = open_store(fit_run["store"])
    cells = np.concatenate([st.features(s).astype(np.float64) for s in labelled])
    for k in range(2):
        ckpt = out / "final" / f"seed_{k}" / "model.ckpt"
        state = torch.load(ckpt, weights_only=True)
        # 12 slides in batches of 4, class-balanced draws: 3 steps per epoch
        assert trained_epochs(ckpt, after_fit=True) == doc["epochs"]
        assert state["global_step"] == 3 * doc["epochs"]
        norm = load_system(ckpt).model.norm  # standardised by every labelled slide's cells
        assert np.allclose(norm.mean.numpy(), cells.mean(0), atol=1e-5)
    w0, w1 = (load_system(out / "final" / f"seed_{k}" / "model.ckpt").model.project[0].weight
              for k in range(2))
    assert not torch.equal(w0, w1)  # two seeds, two models
    m = json.loads((out / "metrics.json").read_text())
    assert m["final"]["epochs"] == doc["epochs"] and len(m["final"]["seeds"]) == 2


@pytest.mark.filterwarnings("ignore:.*LeafSpec")
def test_final_training_stops_at_the_chosen_epoch_of_the_folds_schedule(fit_run, tmp_path):
    """Stopped after 2 of --epochs 5: the learning rate is where the folds' schedule had it
    after 2 epochs, not annealed to 0 over a 2-epoch schedule."""
    from mil.train.config import FitConfig
    from mil.train.data import BagDataModule, BagSource
    from mil.train.final import StopAfter
    from mil.train.lightning_module import warmup_cosine
    from mil.train.trainer import build_system, build_trainer

    cfg = FitConfig(store=fit_run["store"], epochs=5, batch_size=4, hidden=8, attn_hidden=4,
                    progress=False)
    slides = open_store(fit_run["store"]).slides()
    source = BagSource(fit_run["store"], slides)
    ctx = {"source": source, "classes": ["A", "B"], "provenance": {}}
    label_of = {s: i % 2 for i, s in enumerate(slides)}
    trainer = build_trainer(cfg, tmp_path, cfg.epochs, [StopAfter(2)], validate=False)
    trainer.fit(build_system(cfg, ctx, slides),
                BagDataModule(source, label_of, slides, [], [], batch_size=4))
    assert trainer.current_epoch == 2 and trainer.global_step == 6  # 3 steps per epoch
    lr = trainer.optimizers[0].param_groups[0]["lr"]
    assert lr == pytest.approx(cfg.lr * warmup_cosine(6, 15, 1), rel=1e-6) and lr > 0.5 * cfg.lr


def test_a_finished_final_model_is_not_retrained(fit_run, tmp_path: Path):
    out = tmp_path / "run"
    shutil.copytree(fit_run["out"], out)
    argv = [*fit_run["argv"][:3], "--out", str(out), *fit_run["argv"][5:]]
    seed = [out / "final" / f"seed_{k}" / "model.ckpt" for k in range(2)]
    stamp = seed[0].stat().st_mtime_ns
    seed[1].unlink()  # seed 1 "crashed"
    (out / "final" / "final.json").unlink()
    assert fit_main(argv) == 0
    assert seed[0].stat().st_mtime_ns == stamp and seed[1].is_file()
    assert (out / "final" / "final.json").is_file()


def test_predict_uses_the_final_ensemble_and_says_so(fit_run, tmp_path: Path, capsys):
    capsys.readouterr()
    assert predict_main([str(fit_run["out"]), "--out", str(tmp_path / "p.csv")]) == 0
    assert "models: final ensemble of 2 seed(s), trained on all 12" in capsys.readouterr().out
    pred = predict_cohort(fit_run["out"], slides=["S00"], models="final")
    bag = open_store(fit_run["store"]).read("S00")
    feats = torch.from_numpy(bag.features.astype(np.float32))[None]
    from mil.train.model import blast_log_prior

    lp = blast_log_prior(torch.from_numpy(0.8 * bag.annotations["blast_prob"] + 0.1)[None])
    mask = torch.ones(1, len(bag), dtype=torch.bool)
    with torch.no_grad():
        raw = torch.stack([load_system(fit_run["out"] / "final" / f"seed_{k}" / "model.ckpt")
                           .model(feats, mask, lp).logits.softmax(-1)[0] for k in range(2)]).mean(0)
    from mil.train.calibration import DecisionRule

    rule = DecisionRule.load(fit_run["out"])
    assert np.allclose(pred.slides[0].probs, rule.calibrate(raw.numpy()[None])[0], atol=1e-5)
    run = tmp_path / "run"
    shutil.copytree(fit_run["out"], run)
    shutil.rmtree(run / "final")
    assert predict_main([str(run), "--out", str(tmp_path / "q.csv")]) == 0
    assert "fold ensemble, mean of the 3 fold models (the run has no final" in capsys.readouterr().out
    assert predict_main([str(run), "--out", str(tmp_path / "q.csv"), "--models", "final"]) == 2
    assert "has no final models" in capsys.readouterr().err


def test_heatmap_explains_new_slides_with_the_final_ensemble(fit_run, tmp_path: Path):
    from mil.explain.run import model_groups
    from mil.train.rundir import RunDir

    other = tmp_path / "copy.h5"
    shutil.copy(fit_run["store"], other)
    run = RunDir(fit_run["out"])
    own = model_groups(run, fit_run["store"], ["S00", "S01"])
    assert all("fold" in g.label and len(g.ckpts) == 1 for g in own)  # out-of-fold
    (new,) = model_groups(run, other, ["S00", "S01"])
    assert new.label.startswith("models: final ensemble") and len(new.ckpts) == 2
    assert all(c.parent.parent.name == "final" for c in new.ckpts)
