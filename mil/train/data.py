"""Bags for training: bag sources (RAM or streamed), padding collate, samplers, the data module.

    source = BagSource("features/cohort.h5", slide_ids, weights=InstanceWeights("prior"))
    ds = BagDataset(source, slide_ids, labels, max_cells=512, train=True)
    batch = collate_bags([ds[0], ds[1]])   # feats (B, N_max, D), mask (B, N_max), prob, label

A :class:`BagSource` is built once per run and shared by the folds. It preloads the features of
the kept cells into RAM as float16 when they fit in half of the available memory, and otherwise
(or with ``stream=True``) reads each bag from the store inside the DataLoader worker (HDF5 is
opened lazily once per worker by the store), so memory is bounded by the batch, not the cohort.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from mil.allocator import trim_freed_memory
from mil.store import BLAST_PROB, SlideId, open_store
from mil.train.instance_weights import InstanceWeights, check_one_filter

TRIM_EVERY = 160  # streamed bag reads between heap trims (10 steps of 16 bags)
log = logging.getLogger("mil")


# -- bag sources ------------------------------------------------------------------------------
def available_memory() -> int:
    """Bytes of memory available now (MemAvailable), or 4 GiB when unknown."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 << 30


class BagSource:
    """The bags of a cohort after instance weighting: kept rows, tempered blast_prob, features.

    ``stream=False`` preloads the kept features as float16 when they take less than half of the
    available memory (else it streams, with a warning).
    """

    def __init__(self, store: str | Path, slide_ids: Sequence[SlideId],
                 weights: InstanceWeights | None = None, stream: bool = False) -> None:
        self.store_path = Path(store)
        self.store = open_store(self.store_path)
        self.weights = weights = weights or InstanceWeights()
        self.feature_dim = int(self.store.attrs.get("feature_dim") or 0)
        self.rows: dict[SlideId, np.ndarray | None] = {}
        self.prob: dict[SlideId, np.ndarray | None] = {}
        self.length: dict[SlideId, int] = {}
        if weights.needs_prob:
            check_one_filter(self.store, slide_ids)
        for sid in slide_ids:
            n = self.store.n_cells(sid)
            raw = self.store.annotation(sid, BLAST_PROB) if weights.needs_prob else None
            rows, prob = weights.select(sid, raw, n)
            self.rows[sid], self.prob[sid] = rows, prob
            self.length[sid] = n if rows is None else int(rows.size)
        self.feats: dict[SlideId, np.ndarray] | None = None
        self.reads = 0
        need = sum(self.length.values()) * max(self.feature_dim, 1) * 2
        if not stream and need > available_memory() // 2:
            log.warning("features need %.1f GiB as float16, more than half the available "
                        "memory: streaming from the store", need / 2**30)
            stream = True
        self.streaming = stream
        if not stream:
            self.feats = {sid: self._read(sid, None) for sid in slide_ids}

    def _read(self, sid: SlideId, pick: np.ndarray | None) -> np.ndarray:
        """float16 features (n, D) of the kept rows, or of ``pick`` (indices into them).
        Streaming, every :data:`TRIM_EVERY` reads give the heap's freed pages back
        (:func:`mil.allocator.trim_freed_memory`), so RSS does not grow with the cohort."""
        if self.streaming:
            self.reads += 1
            if self.reads % TRIM_EVERY == 0:
                trim_freed_memory()
        rows = self.rows[sid]
        if pick is not None:
            rows = pick if rows is None else rows[pick]
        return np.asarray(self.store.features(sid, rows), dtype=np.float16)

    def get(self, sid: SlideId, pick: np.ndarray | None = None
            ) -> tuple[np.ndarray, np.ndarray | None]:
        """(features (n, D), tempered blast_prob (n,) or None) of the kept cells [``pick``]."""
        prob = self.prob[sid]
        if pick is not None and prob is not None:
            prob = prob[pick]
        if self.feats is None:
            return self._read(sid, pick), prob
        feats = self.feats[sid]
        return (feats if pick is None else feats[pick]), prob


class BagDataset(Dataset):
    """One item per slide: ``{"feats" (n, D), "prob" (n,) | None, "label", "index"}``.

    With ``train=True`` and ``max_cells``, a bag larger than ``max_cells`` is randomly
    subsampled on every access (torch's RNG: deterministic under ``seed_everything``); at
    evaluation every kept cell is used.
    """

    def __init__(self, source: BagSource, slide_ids: Sequence[SlideId],
                 labels: Sequence[int] | None = None, max_cells: int | None = None,
                 train: bool = False) -> None:
        self.source = source
        self.slide_ids = list(slide_ids)
        self.labels = list(labels) if labels is not None else [-1] * len(self.slide_ids)
        self.max_cells = max_cells
        self.train = train

    def __len__(self) -> int:
        return len(self.slide_ids)

    def lengths(self) -> list[int]:
        """Cells each item will have (after subsampling), for length bucketing."""
        cap = self.max_cells if self.train and self.max_cells else None
        out = [self.source.length[s] for s in self.slide_ids]
        return [min(n, cap) for n in out] if cap else out

    def __getitem__(self, i: int) -> dict[str, Any]:
        sid = self.slide_ids[i]
        n = self.source.length[sid]
        pick = None
        if self.train and self.max_cells and n > self.max_cells:
            pick = torch.randperm(n)[: self.max_cells].sort().values.numpy()
        feats, prob = self.source.get(sid, pick)
        return {"feats": torch.from_numpy(np.ascontiguousarray(feats)),
                "prob": None if prob is None else torch.from_numpy(np.asarray(prob, np.float32)),
                "label": self.labels[i], "index": i}


@contextmanager
def torch_threads(n: int | None) -> Iterator[None]:
    """Run the block with ``n`` torch threads (None: as they are), then restore the count."""
    before = torch.get_num_threads()
    if n is None or n == before:
        yield
        return
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def collate_bags(items: Sequence[dict[str, Any]], dtype: torch.dtype | None = None,
                 copy_threads: int | None = None) -> dict[str, torch.Tensor | None]:
    """Pad bags to ``feats (B, N_max, D)`` with ``mask (B, N_max)`` True on real cells;
    ``prob (B, N_max)`` (1.0 on padding) when the bags carry blast_prob, else None.

    ``dtype`` (default: the bags' own) casts the features inside the padding copy, so float16
    bags become a float32 batch in one pass instead of a copy and a separate cast; only the
    padding is zeroed. ``copy_threads`` runs the per-bag copies with that many torch threads:
    each copy is its own parallel region, and on a CPU shared with other processes every
    region waits for its slowest thread (16 bags of 500 x 1,280 on the 2-core machine at load
    8: 189 ms with 2 threads, 5.7 ms with 1).
    """
    lengths = [it["feats"].shape[0] for it in items]
    b, n_max, d = len(items), max(lengths), items[0]["feats"].shape[1]
    feats = torch.empty(b, n_max, d, dtype=dtype or items[0]["feats"].dtype)  # (B, N, D)
    mask = torch.arange(n_max)[None, :] < torch.tensor(lengths)[:, None]  # (B, N)
    has_prob = items[0]["prob"] is not None
    prob = torch.ones(b, n_max) if has_prob else None  # (B, N)
    with torch_threads(copy_threads):
        for j, it in enumerate(items):
            feats[j, : lengths[j]] = it["feats"]  # the cast, if any, happens in this copy
            feats[j, lengths[j]:] = 0
            if prob is not None:
                prob[j, : lengths[j]] = it["prob"]
    labels = [it["label"] for it in items]
    label = (torch.from_numpy(np.stack(labels).astype(np.float32))  # (B, T) multilabel, NaN unknown
             if isinstance(labels[0], np.ndarray) else torch.tensor(labels, dtype=torch.long))  # (B,)
    return {"feats": feats, "mask": mask, "prob": prob, "label": label,
            "index": torch.tensor([it["index"] for it in items], dtype=torch.long)}  # (B,)


# -- samplers ---------------------------------------------------------------------------------
class BucketBatchSampler(Sampler[list[int]]):
    """Batches of similar-length bags (less padding), optionally class-balanced, DDP-aware.

    Training (``shuffle`` or ``balanced``): draw ``len(lengths)`` indices (with replacement,
    weight 1 / class count when ``balanced``), cut them into pools of ``bucket`` batches, sort
    each pool by length, batch it and shuffle the batches; every rank draws the same batches
    (same seed and epoch) and takes every ``world``-th, the list padded so all ranks step alike.
    Evaluation: indices sorted by length, dealt to ranks without duplicates, then batched.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, *,
                 labels: Sequence[int] | None = None, balanced: bool = False,
                 shuffle: bool = False, seed: int = 0, rank: int = 0, world: int = 1,
                 bucket: int = 8) -> None:
        self.lengths = torch.as_tensor(list(lengths))
        self.batch_size, self.bucket, self.seed = batch_size, bucket, seed
        self.balanced, self.shuffle = balanced, shuffle or balanced
        self.rank, self.world, self.epoch = rank, world, 0
        self.labels = torch.as_tensor(list(labels)) if labels is not None else None

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self, g: torch.Generator) -> torch.Tensor:
        n = len(self.lengths)
        if self.balanced and self.labels is not None:
            counts = torch.bincount(self.labels).float()  # (C,)
            w = 1.0 / counts[self.labels]  # (n,)
            return torch.multinomial(w, n, replacement=True, generator=g)
        return torch.randperm(n, generator=g)

    def _batches(self) -> list[list[int]]:
        bs = self.batch_size
        if not self.shuffle:
            order = torch.sort(self.lengths, stable=True).indices[self.rank :: self.world]
            return [order[i : i + bs].tolist() for i in range(0, len(order), bs)]
        g = torch.Generator().manual_seed(self.seed * 100_003 + self.epoch)
        idx = self._order(g)
        pool = bs * self.bucket
        batches = []
        for i in range(0, len(idx), pool):
            chunk = idx[i : i + pool]
            chunk = chunk[torch.sort(self.lengths[chunk], stable=True).indices]
            batches += [chunk[j : j + bs].tolist() for j in range(0, len(chunk), bs)]
        batches = [batches[i] for i in torch.randperm(len(batches), generator=g).tolist()]
        if self.world > 1:
            batches += batches[: (-len(batches)) % self.world]
            batches = batches[self.rank :: self.world]
        return batches

    def __iter__(self) -> Iterator[list[int]]:
        batches = self._batches()
        self.epoch += 1  # next epoch differs even when nobody calls set_epoch
        return iter(batches)

    def __len__(self) -> int:
        n = len(self.lengths)
        if not self.shuffle:
            mine = len(range(self.rank, n, self.world))
            return (mine + self.batch_size - 1) // self.batch_size
        pool = self.batch_size * self.bucket
        total = sum((min(pool, n - i) + self.batch_size - 1) // self.batch_size
                    for i in range(0, n, pool))
        return (total + self.world - 1) // self.world


# -- the DataModule of one fold ---------------------------------------------------------------
class BagDataModule(pl.LightningDataModule):
    """Train / val / test (or predict) loaders of one fold over a shared :class:`BagSource`;
    ``feature_dtype`` is the dtype of the batches' features (default: the source's float16),
    ``copy_threads`` the torch threads of their copies (:func:`collate_bags`)."""

    def __init__(self, source: BagSource, label_of: dict[SlideId, int],
                 train: Sequence[SlideId], val: Sequence[SlideId],
                 test: Sequence[SlideId] = (), batch_size: int = 16,
                 max_cells: int | None = None, workers: int = 0, seed: int = 0,
                 feature_dtype: torch.dtype | None = None, copy_threads: int | None = None
                 ) -> None:
        super().__init__()
        self.source, self.label_of = source, label_of
        # on the CPU: float32 batches cast in the padding copy, one thread for the copies
        # (mil.train.trainer.batch_dtype / copy_threads)
        self.collate = partial(collate_bags, dtype=feature_dtype, copy_threads=copy_threads)
        self.batch_size, self.workers, self.seed = batch_size, workers, seed
        self.sets = {
            "train": BagDataset(source, train, [label_of[s] for s in train], max_cells, True),
            "val": BagDataset(source, val, [label_of[s] for s in val]),
            "test": BagDataset(source, test, [label_of.get(s, -1) for s in test]),
        }

    def _rank_world(self) -> tuple[int, int]:
        t = self.trainer
        return (t.global_rank, t.world_size) if t is not None else (0, 1)

    def _loader(self, part: str, train: bool = False) -> DataLoader:
        ds = self.sets[part]
        rank, world = self._rank_world() if part != "test" else (0, 1)
        # class-balanced batches for one label per slide; multilabel rows shuffle plainly
        # (their loss weights the positives instead)
        single = not ds.labels or not isinstance(ds.labels[0], np.ndarray)
        sampler = BucketBatchSampler(ds.lengths(), self.batch_size,
                                     labels=ds.labels if single else None,
                                     balanced=train and single, shuffle=train, seed=self.seed,
                                     rank=rank, world=world)
        return DataLoader(ds, batch_sampler=sampler, collate_fn=self.collate,
                          num_workers=self.workers, persistent_workers=False,
                          multiprocessing_context="fork" if self.workers and os.name == "posix"
                          else None)

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", train=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val")

    def test_dataloader(self) -> DataLoader:
        return self._loader("test")

    def predict_dataloader(self) -> DataLoader:
        return self._loader("test")
