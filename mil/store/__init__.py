"""The bag store: the contract between stages (numpy, h5py, zarr; no torch).

One container per extraction run (``.h5`` or ``.zarr``), one group per slide with its features,
cell ids, image paths, optional coordinates and per-cell annotations such as ``blast_prob``.
"""

from mil.store.bag import Bag, CellId, SlideId
from mil.store.bagstore import BagStore, open_store
from mil.store.keys import decode_key, encode_key, file_name, file_names
from mil.store.schema import BLAST_PROB, CORE_ARRAYS, SCHEMA, backend_of

__all__ = ["BLAST_PROB", "CORE_ARRAYS", "SCHEMA", "Bag", "BagStore", "CellId", "SlideId",
           "backend_of", "decode_key", "encode_key", "file_name", "file_names", "open_store"]
