"""Data files on the command line: DATA is an ``.npz`` whose keys are the model's input names (a
single array, e.g. ``np.savez(f, x)``'s ``arr_0`` or an ``.npy``, is accepted for a one-input model);
LABELS is an ``.npy`` of integers. Every refusal names the file, key, shape or dtype.

Files are untrusted: the format is told by its magic bytes (never by unpickling), every array's
``.npy`` header is read first and the array refused, before anything is allocated, when it holds
Python objects (pickles are never loaded), declares more data than the file holds, or more than
the loaders' limit (``HWSIM_MAX_TENSOR_BYTES``, :func:`runtime.graph.max_tensor_bytes`).
Input arrays must be non-empty, real numeric (bool, integer or float) and finite.
"""
from __future__ import annotations

import math
import zipfile
from pathlib import Path
from typing import IO

import numpy as np

from runtime.errors import DataError, ResourceError

_NPY_MAGIC = b"\x93NUMPY"
_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def _read_npy(f: IO[bytes], size: int, what: str) -> np.ndarray:
    """The array of an ``.npy`` stream of ``size`` bytes, after checking its header (see the module
    docstring); ``what`` names the file (and member) in errors."""
    from runtime.graph import max_tensor_bytes

    try:
        version = np.lib.format.read_magic(f)
        reader = _HEADER_READERS.get(version)
        if reader is None:
            raise ValueError(f"unsupported .npy format version {version[0]}.{version[1]}")
        shape, _, dtype = reader(f)
    except Exception as e:  # the header is a Python literal numpy parses: ValueError, tokenize.TokenError, ...
        raise DataError(f"{what}: not a readable .npy array: {type(e).__name__}: {e}") from None
    if dtype.hasobject:
        raise DataError(f"{what}: holds Python objects (dtype {dtype}); pickled data is refused")
    if any(d < 0 for d in shape):
        raise DataError(f"{what}: negative dimension in shape {shape}")
    nbytes = math.prod(shape) * dtype.itemsize
    limit = max_tensor_bytes()
    if nbytes > limit:
        raise ResourceError(f"{what}: shape {shape} of {dtype} declares {nbytes} bytes, more than the limit of "
                            f"{limit} (HWSIM_MAX_TENSOR_BYTES); refusing to read it")
    body = size - f.tell()
    if nbytes > body:
        raise DataError(f"{what}: shape {shape} of {dtype} needs {nbytes} bytes, but the file holds {body} "
                        "(truncated?)")
    f.seek(0)
    try:
        return np.lib.format.read_array(f, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as e:
        raise DataError(f"{what}: not a readable .npy array: {e}") from None


def _read_arrays(path: Path, npz_ok: bool = True) -> dict[str, np.ndarray]:
    """Every array of an ``.npy`` (key ``arr_0``) or ``.npz`` file, told apart by their magic bytes."""
    if not path.is_file():
        raise DataError(f"{path}: data file not found")
    try:
        size = path.stat().st_size
        with open(path, "rb") as f:
            magic = f.read(len(_NPY_MAGIC))
            if magic == _NPY_MAGIC:
                f.seek(0)
                return {"arr_0": _read_npy(f, size, str(path))}
        if not npz_ok or not zipfile.is_zipfile(path):
            kind = ".npy" if not npz_ok else ".npz/.npy"
            raise DataError(f"{path}: not a {kind} file (pickled objects are refused)")
        arrays = {}
        with zipfile.ZipFile(path) as z:
            for info in z.infolist():
                what = f"{path}: member {info.filename!r}"
                if info.is_dir() or not info.filename.endswith(".npy"):
                    raise DataError(f"{what} is not an .npy array (an .npz holds only arrays)")
                with z.open(info) as m:
                    arrays[info.filename[:-4]] = _read_npy(m, info.file_size, what)
        return arrays
    except (OSError, zipfile.BadZipFile, EOFError, ValueError, NotImplementedError, RuntimeError) as e:
        # RuntimeError: an encrypted member; NotImplementedError: an unknown compression method
        raise DataError(f"{path}: not a readable .npz/.npy file: {type(e).__name__}: {e}") from None


def read_inputs(path: str | Path, input_names: list[str]) -> dict[str, np.ndarray]:
    path = Path(path)
    arrays = _read_arrays(path)
    if not arrays:
        raise DataError(f"{path}: contains no arrays")
    if set(input_names) <= set(arrays):
        feeds = {n: arrays[n] for n in input_names}
    elif len(input_names) == 1 and len(arrays) == 1:
        feeds = {input_names[0]: next(iter(arrays.values()))}
    else:
        raise DataError(f"{path}: expected arrays named {input_names} (the model's inputs), found {sorted(arrays)}")
    for k, v in feeds.items():
        if v.dtype.kind not in "biuf":
            raise DataError(f"{path}: array {k!r} has dtype {v.dtype}, expected a real numeric array "
                            "(bool, integer or float)")
        if v.size == 0:
            raise DataError(f"{path}: array {k!r} is empty (shape {v.shape})")
        if v.dtype.kind == "f" and not np.all(np.isfinite(v)):
            raise DataError(f"{path}: array {k!r} has {int(np.count_nonzero(~np.isfinite(v)))} NaN/Inf values")
    return feeds


def read_labels(path: str | Path, n: int | None = None) -> np.ndarray:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: labels file not found")
    y = _read_arrays(path, npz_ok=False)["arr_0"]
    if y.dtype.kind not in "iu" or y.ndim != 1 or y.size == 0:
        raise DataError(f"{path}: expected a non-empty 1-D .npy array of integer labels, found {y.dtype} with "
                        f"shape {y.shape}")
    if n is not None and len(y) != n:
        raise DataError(f"{path}: {len(y)} labels for {n} samples")
    return y
