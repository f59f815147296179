"""Data files on the command line: DATA is an ``.npz`` whose keys are the model's input names (a
single array, e.g. ``np.savez(f, x)``'s ``arr_0`` or an ``.npy``, is accepted for a one-input model);
LABELS is an ``.npy`` of integers. Every refusal names the file, key, shape or dtype."""
from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from runtime.errors import DataError


def read_inputs(path: str | Path, input_names: list[str]) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        if path.suffix == ".npy":
            arrays = {"arr_0": np.load(path, allow_pickle=False)}
        else:
            with np.load(path, allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as e:
        raise DataError(f"{path}: not a readable .npz/.npy file (pickled objects are refused): {e}") from None
    if not arrays:
        raise DataError(f"{path}: contains no arrays")
    if set(input_names) <= set(arrays):
        feeds = {n: arrays[n] for n in input_names}
    elif len(input_names) == 1 and len(arrays) == 1:
        feeds = {input_names[0]: next(iter(arrays.values()))}
    else:
        raise DataError(f"{path}: expected arrays named {input_names} (the model's inputs), found {sorted(arrays)}")
    for k, v in feeds.items():
        if v.dtype == object or not (np.issubdtype(v.dtype, np.number) or v.dtype == bool):
            raise DataError(f"{path}: array {k!r} has dtype {v.dtype}, expected a numeric array")
        if np.issubdtype(v.dtype, np.floating) and not np.all(np.isfinite(v)):
            raise DataError(f"{path}: array {k!r} has {int(np.count_nonzero(~np.isfinite(v)))} NaN/Inf values")
    return feeds


def read_labels(path: str | Path, n: int | None = None) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: labels file not found")
    try:
        y = np.load(path, allow_pickle=False)
    except (ValueError, OSError) as e:
        raise DataError(f"{path}: not a readable .npy file: {e}") from None
    if isinstance(y, np.lib.npyio.NpzFile) or not np.issubdtype(y.dtype, np.integer) or y.ndim != 1:
        raise DataError(f"{path}: expected a 1-D .npy array of integer labels, found "
                        f"{getattr(y, 'dtype', type(y))} with shape {getattr(y, 'shape', '?')}")
    if n is not None and len(y) != n:
        raise DataError(f"{path}: {len(y)} labels for {n} samples")
    return y
