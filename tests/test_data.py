"""Tests for mil.train.data (labels, bag sources, collate, samplers) and mil.train.instance_weights."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
import torch

from mil.errors import CliError
from mil.train.data import BagDataset, BagSource, BucketBatchSampler, collate_bags
from mil.train.instance_weights import InstanceWeights, parse_noise_rate, temper
from mil.train.labels import read_labels
from tests.conftest import make_store, write_labels


def test_collate_pads_and_masks():
    items = [{"feats": torch.ones(n, 3, dtype=torch.float16), "prob": torch.full((n,), 0.3),
              "label": i, "index": i} for i, n in enumerate([2, 5, 1])]
    b = collate_bags(items)
    assert b["feats"].shape == (3, 5, 3) and b["feats"].dtype == torch.float16
    assert b["mask"].sum(1).tolist() == [2, 5, 1]
    assert (b["feats"][~b["mask"]] == 0).all()
    assert b["prob"][0, :2].tolist() == pytest.approx([0.3, 0.3]) and b["prob"][0, 2] == 1.0
    assert b["label"].tolist() == [0, 1, 2]
    no_prob = collate_bags([{**it, "prob": None} for it in items])
    assert no_prob["prob"] is None


def test_eval_sampler_covers_all_sorted_and_splits_ranks():
    lengths = [5, 1, 9, 3, 7, 2, 8]
    batches = list(BucketBatchSampler(lengths, 3))
    flat = [i for b in batches for i in b]
    assert sorted(flat) == list(range(7))
    assert [lengths[i] for i in flat] == sorted(lengths)
    ranks = [[i for b in BucketBatchSampler(lengths, 2, rank=r, world=2) for i in b] for r in (0, 1)]
    assert sorted(ranks[0] + ranks[1]) == list(range(7)) and not set(ranks[0]) & set(ranks[1])


def test_train_sampler_balanced_bucketed_deterministic():
    labels = [0] * 18 + [1] * 2
    lengths = list(range(20))
    s = BucketBatchSampler(lengths, 4, labels=labels, balanced=True, seed=3, bucket=2)
    first = list(s)
    assert len(first) == len(s)
    drawn = np.array([labels[i] for b in first for i in b])
    assert 0.2 < drawn.mean() < 0.8  # class 1 is 10% of the data but ~half of the draws
    for b in first:
        assert [lengths[i] for i in b] == sorted(lengths[i] for i in b)
    s2 = BucketBatchSampler(lengths, 4, labels=labels, balanced=True, seed=3, bucket=2)
    assert list(s2) == first  # same seed, same epoch -> same batches
    assert list(s2) != first  # next epoch differs
    ddp = [list(BucketBatchSampler(lengths, 4, labels=labels, balanced=True, seed=3, rank=r,
                                   world=2, bucket=2)) for r in (0, 1)]
    assert len(ddp[0]) == len(ddp[1])  # ranks step alike


def test_source_preload_equals_stream_and_subsampling(tmp_path: Path, store_suffix: str):
    st = make_store(tmp_path / f"s.{store_suffix}", slides=3, cells=(6, 12), dim=4)
    sids = st.slides()
    ram, disk = BagSource(st.path, sids), BagSource(st.path, sids, stream=True)
    assert ram.feats is not None and disk.feats is None
    for sid in sids:
        np.testing.assert_array_equal(ram.get(sid)[0], disk.get(sid)[0])
        pick = np.array([1, 3, 4])
        np.testing.assert_array_equal(ram.get(sid, pick)[0], disk.get(sid, pick)[0])
    ds = BagDataset(disk, sids, [0, 1, 0], max_cells=5, train=True)
    torch.manual_seed(0)
    a = [ds[i]["feats"] for i in range(3)]
    torch.manual_seed(0)
    b = [ds[i]["feats"] for i in range(3)]
    assert all(x.shape[0] == 5 for x in a) and all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
    assert ds.lengths() == [5, 5, 5]
    assert [BagDataset(disk, sids, max_cells=5)[i]["feats"].shape[0] for i in range(3)] == \
        [st.n_cells(s) for s in sids]  # evaluation: all cells


def test_filter_keeps_blasts_and_falls_back_with_warning(tmp_path: Path, caplog):
    st = open_store_with_probs(tmp_path, {"S00": [0.9, 0.1, 0.6], "S01": [0.1, 0.2, 0.3]})
    w = InstanceWeights("filter", threshold=0.5)
    with caplog.at_level(logging.WARNING, logger="mil"):
        src = BagSource(st.path, ["S00", "S01"], w)
    assert src.rows["S00"].tolist() == [0, 2] and src.length["S00"] == 2
    assert src.rows["S01"] is None and src.length["S01"] == 3
    assert "S01" in caplog.text and "S00" not in caplog.text
    np.testing.assert_allclose(src.get("S00")[1], [0.9, 0.6])


def open_store_with_probs(tmp_path: Path, probs: dict[str, list[float]]):
    st = make_store(tmp_path / "p.h5", slides=len(probs), cells=3, dim=4)
    for sid, p in zip(st.slides(), probs.values(), strict=True):
        st.write_annotation(sid, "blast_prob", np.asarray(p, dtype=np.float32))
    return st


def test_missing_blast_prob_names_the_slide(tmp_path: Path):
    st = make_store(tmp_path / "s.h5", slides=2)
    with pytest.raises(CliError, match="slide 'S00' has no 'blast_prob'"):
        BagSource(st.path, st.slides(), InstanceWeights("prior"))
    BagSource(st.path, st.slides(), InstanceWeights("none"))  # not needed, not read


def test_noise_rate_tempering(tmp_path: Path):
    p = np.array([0.0, 0.25, 0.5, 1.0])
    np.testing.assert_allclose(temper(p, 0.0), p)
    np.testing.assert_allclose(temper(p, 0.1), [0.1, 0.3, 0.5, 0.9])  # (1 - 2e) p + e
    np.testing.assert_allclose(temper(p, 0.4999), 0.5, atol=1e-3)
    assert parse_noise_rate("0.2") == 0.2 and parse_noise_rate(None) == 0.0
    audit = tmp_path / "audit.json"
    audit.write_text(json.dumps({"error_rate": 0.15, "n": 40}))
    assert parse_noise_rate(str(audit)) == 0.15
    audit.write_text(json.dumps({"error_rate": 0.3, "filter_error_rate": 0.02}))  # mil.blast noise
    assert parse_noise_rate(str(audit)) == 0.02
    for bad in ("0.5", "-0.1", str(tmp_path / "none.json")):
        with pytest.raises(CliError, match="--noise-rate"):
            parse_noise_rate(bad)
    audit.write_text("{}")
    with pytest.raises(CliError, match="error_rate"):
        parse_noise_rate(str(audit))


def test_read_labels_errors(tmp_path: Path):
    csv = tmp_path / "l.csv"
    csv.write_text("slide,label\nS00,A\n")
    with pytest.raises(CliError, match="missing column.*slide_id"):
        read_labels(csv)
    write_labels(csv, ["S00", "S01", "S02"], classes="ABC")
    with pytest.raises(CliError, match="row 4: class 'C'"):
        read_labels(csv, classes=["A", "B"])
    with pytest.raises(CliError, match="not in the store: S02"):
        read_labels(csv, in_store=["S00", "S01"])
    t = read_labels(csv, classes=["C", "B", "A"])
    assert t.classes == ["C", "B", "A"] and t.labels == [2, 1, 0] and t.patients == ["P0", "P1", "P2"]
    write_labels(csv, ["S00", "S01"], patients=False)
    assert read_labels(csv).patients == ["S00", "S01"]  # slide id stands in for the patient


def test_collate_casts_inside_the_padding_copy():
    g = torch.Generator().manual_seed(0)
    items = [{"feats": torch.randn(n, 4, generator=g).half(), "prob": None, "label": 0,
              "index": i} for i, n in enumerate([3, 6, 2])]
    ref = collate_bags(items)
    b = collate_bags(items, dtype=torch.float32)
    assert b["feats"].dtype == torch.float32 and ref["feats"].dtype == torch.float16
    assert torch.equal(b["feats"], ref["feats"].float())
    assert (b["feats"][~b["mask"]] == 0).all()


def test_collate_copies_with_the_threads_asked_for(monkeypatch):
    """copy_threads=1 runs the per-bag copies on one torch thread, then restores the count."""
    from mil.train import data

    seen = []
    real = data.torch_threads

    def spy(n):
        seen.append(n)
        return real(n)

    monkeypatch.setattr(data, "torch_threads", spy)
    items = [{"feats": torch.ones(n, 2), "prob": None, "label": 0, "index": 0} for n in (1, 3)]
    before = torch.get_num_threads()
    counts = []
    with real(1):
        counts.append(torch.get_num_threads())
    assert counts == [1] and torch.get_num_threads() == before
    assert torch.equal(collate_bags(items, copy_threads=1)["feats"], collate_bags(items)["feats"])
    assert seen == [1, None] and torch.get_num_threads() == before


def test_datamodule_batches_in_the_dtype_the_run_asks_for(tmp_path: Path):
    from mil.train.config import FitConfig
    from mil.train.data import BagDataModule
    from mil.train.trainer import batch_dtype, copy_threads

    st = make_store(tmp_path / "s.h5", slides=4, cells=(2, 5))
    ids = st.slides()
    source = BagSource(tmp_path / "s.h5", ids)
    label_of = {s: i % 2 for i, s in enumerate(ids)}
    on_cpu = batch_dtype(FitConfig(accelerator="cpu"))
    assert on_cpu == torch.float32 and batch_dtype(FitConfig(accelerator="gpu")) is None
    assert copy_threads(FitConfig(accelerator="cpu")) == 1
    assert copy_threads(FitConfig(accelerator="gpu")) is None
    for dtype, want in ((on_cpu, torch.float32), (None, torch.float16)):
        dm = BagDataModule(source, label_of, ids, ids, batch_size=2, feature_dtype=dtype)
        for loader in (dm.train_dataloader(), dm.val_dataloader()):
            assert next(iter(loader))["feats"].dtype == want


def test_streaming_trims_the_heap_every_few_reads(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    import mil.train.data as data

    st = make_store(tmp_path / "s.h5", slides=3, cells=(6, 12), dim=4)
    trims: list[int] = []
    monkeypatch.setattr(data, "trim_freed_memory", lambda: trims.append(1) or True)
    monkeypatch.setattr(data, "TRIM_EVERY", 4)
    ram = BagSource(st.path, st.slides())
    for _ in range(3):
        for sid in st.slides():
            ram.get(sid)
    assert trims == []  # preloaded bags are read once, nothing to give back
    disk = BagSource(st.path, st.slides(), stream=True)
    for _ in range(3):
        for sid in st.slides():
            disk.get(sid)
    assert len(trims) == 9 // 4  # one trim per 4 streamed reads
