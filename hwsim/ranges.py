"""Range setting for calibration: observers that stream batches and turn them into a float range.

The simulator attaches one :class:`Observer` per quantized tensor, feeds it every calibration batch
with :meth:`Observer.update`, then asks :meth:`Observer.compute` for ``(min, max)`` (0-d arrays per
tensor, ``(C,)`` arrays per channel) and builds the encoding with
``runtime.encoding.encoding_from_range(min, max, qtype, scheme, granularity)``
(:meth:`Observer.encoding` does exactly that).

Schemes (:data:`SCHEMES`):

- ``minmax``: the running minimum and maximum, exact.
- ``percentile``: from the streaming histogram, numpy's ``linear`` percentile
  (``h = (n - 1) * p / 100``, interpolate between order statistics ``floor(h)`` and ``floor(h) + 1``):
  for ``asymmetric`` the low tail ``100 - p`` and the high tail ``p`` separately, for the symmetric
  schemes the ``p`` percentile ``a`` of ``|x|``. Each order statistic is placed inside the bin that
  holds it (uniform spread within the bin), so the result is **within one bin width** of
  ``numpy.percentile`` on all the data seen; ``p = 100`` is the exact maximum.
- ``mse``: the range whose target grid minimizes the expected squared error (rounding + clipping)
  of the histogram, searched over clipped ranges (below).
- ``tf_enhanced``: AIMET's TF-enhanced (SQNR) analyzer: AIMET's candidate set, cost
  ``rounding noise + gamma * clipping noise`` with ``gamma = 3`` (:data:`TF_ENHANCED_GAMMA`).

Returned ranges, by the target's scheme (``symmetric_scheme``):

- ``asymmetric``: ``(lo, hi)`` as found (``encoding_from_range`` widens it to include 0).
- ``symmetric`` / ``strict_symmetric``: ``(-a, a)``, always symmetric.
- ``unsigned_symmetric``: ``(0, a)`` when every channel's minimum is ``>= 0`` (the unsigned grid; the
  same test ``encoding_from_range`` makes over the whole array), else ``(-a, a)``.

Expected-error model (``mse`` with ``gamma = 1``, ``tf_enhanced`` with ``gamma = 3``)
--------------------------------------------------------------------------------------
Every candidate range is turned into *the target's own grid* with ``encoding_from_range`` (stored
float32 scale ``s``, zero point ``z``, usable ``[qmin, qmax]``): grid points ``s * (q - z)``, ends
``L = s * (qmin - z)`` and ``H = s * (qmax - z)``. The ``c_i`` values of bin ``[e_i, e_i + w)`` are
taken as spread uniformly over the bin (the first and last non-empty bins: over their part inside
the exact ``[min, max]``), and the error is integrated exactly::

    cost = sum_i (c_i / w) * integral_{e_i}^{e_i + w} phi(x) dx
    phi(x) = (x - s * round(x / s))^2     for L <= x <= H     (rounding noise)
           = gamma * (x - L)^2            for x < L           (clipping noise)
           = gamma * (x - H)^2            for x > H

With ``t = x / s``, ``tc = clip(t, qmin - z, qmax - z)``, ``u = t - tc`` and
``G(t) = round(t) / 12 + (t - round(t))^3 / 3`` (``G' = (t - round t)^2``, one period integrates to
1/12), an antiderivative of ``phi`` is ``s^3 * (G(tc) + gamma * u^3 / 3)``, so each candidate costs
one evaluation per bin edge and a dot product with ``c_{j-1} - c_j``. Unlike AIMET, which evaluates
each bin at its midpoint, the integral stays right when a bin is not small against the step (int16,
coarse streamed bins). The model's mean over the data, :meth:`Observer.expected_error`, is exact
for data spread uniformly within bins; the tests compare it with measured fake-quantization error.

``mse`` search: fractions ``f`` of the observed range, ``f`` in ``(0, 1]`` (``f = 1`` is the min-max
range, so the model cost never exceeds min-max's). Symmetric schemes and one-sided data: one
dimension, ``a = f * max|x|`` (or ``(f * lo, f * hi)``), 64 values ``k / 64`` then two zooms of 9
values over ``best +- spacing`` (spacing 1/64 -> 1/256 -> 1/1024). Asymmetric data with both signs:
two dimensions ``(f_lo * lo, f_hi * hi)``, a 12 x 12 grid then three zooms of 5 x 5.

``tf_enhanced`` (facts from AIMET's ``TfEnhancedEncodingAnalyzer.cpp`` and the v2
``SqnrEncodingAnalyzer``; ``N = 2^bits - 1`` steps, one less for strict symmetric):

- symmetric: ``delta_max = 2 * max|x| / N``, offset ``floor(-N / 2)``, the 101 deltas
  ``delta_max * k / 100``, ``k = 1 .. 101`` (one beyond the observed range, as AIMET does). A delta
  is the grid ``delta * (offset .. offset + N)``, i.e. the positive end ``a = qpos * delta`` with
  ``qpos = 2^(bits-1) - 1``, so the candidate range is ``(-a, a)``. Unsigned (``unsigned_symmetric``
  with data >= 0): ``delta_max = max / N``, offset 0, candidate ``(0, N * delta)``.
- asymmetric: observed ``[min(lo, 0), max(hi, 0)]`` (at least ``MIN_RANGE`` wide) snapped to the
  grid of ``delta_o = range / N``, ``offset_o = round(min / delta_o)`` (rounding half to even, as the
  v2 analyzer's ``torch.round``; the C++ ``round`` goes away from zero); 17 deltas
  ``delta_o * k / 16`` (``k = 1 .. 17``) times 21 offsets ``trunc(-N + N * i / 20)`` (``i = 0 .. 20``);
  each is clamped to the observed range (``min' = max(obs_min, delta * offset)``,
  ``max' = min(obs_max, min + N * delta)``, ``delta' = (max' - min') / N``,
  ``offset' = round(min' / delta')``), plus the observed candidate. (AIMET's C++ drops a candidate
  wider on both sides, which would clamp to the observed one anyway, and its loop reuses the clamped
  delta for the next offset; we clamp each pair independently, as the v2 analyzer does.) A clamped
  range narrower than ``MIN_RANGE`` (possible only at offset ``-N`` with data >= 0) is dropped.
- differences, on purpose: the observed range is the exact min/max (AIMET takes the left edges of
  the first and last non-empty bins), each candidate's grid is the target's (float32 scale, zero
  point nudging, strict ranges), and the cost is the exact integral above rather than bin midpoints.

Streaming histogram with bounded memory
---------------------------------------
Each channel keeps ``bins`` counts over a window of a lattice: bin edges are the integer multiples
``k * w`` of the bin width ``w``, the window is the ``bins`` consecutive lattice cells starting at
``k = m``. The first batch with a spread sets ``w = (max - min) / (bins - 1)`` (a batch of one value
is kept as a point mass until a spread arrives). When a batch falls outside the window, the window
moves (if everything still fits at width ``w``) or the width grows by the smallest integer factor
``k`` that fits the occupied cells and the batch (cells ``j`` of width ``w`` become cell
``floor(j / k)`` of width ``k * w``). The new cells are unions of old cells, so **no count is ever
redistributed or estimated**: every value is counted in the bin of the current lattice that
contains it, exactly as one histogram over all the data on the final edges would count it (the
cell is ``floor(x / w)`` in float64: a value within rounding of an edge may land on either side). The
price is resolution: the final width is at most ``2 * (max - min) / (bins - 3)`` (at most about
twice the ``(max - min) / (bins - 1)`` of one histogram over all the data at once). Memory is
``bins`` int64 counts plus a few scalars per channel, whatever the number of batches.

Device: the state lives on the CPU (numpy int64 counts, float64 lattice parameters). Each batch is
reduced on its own device (finiteness, min/max, bin counts; float64 where the device has it, else
the batch is moved to the CPU for binning) and only the ``C * bins`` counts cross to the CPU.

>>> import torch
>>> obs = make_observer("minmax", "uint8", "asymmetric", name="relu1")
>>> obs.update(torch.tensor([0.0, 1.5, 3.0])); obs.update(torch.tensor([-1.0, 2.0]))
>>> [float(v) for v in obs.compute()], obs.n_batches, obs.n_values
([-1.0, 3.0], 2, 5)
>>> int(obs.encoding().zero_point)   # scale 4/255: 0 - round(-1 / (4/255)) = round(63.75) = 64
64
"""
from __future__ import annotations

import numbers

import numpy as np
import torch

from runtime.dtypes import QType, qtype as _qtype
from runtime.encoding import MIN_RANGE, SCHEMES as ENCODING_SCHEMES, Encoding, PerAxis, PerTensor, encoding_from_range
from runtime.errors import DataError, EncodingError, HwsimError

__all__ = ["SCHEMES", "TF_ENHANCED_GAMMA", "Observer", "make_observer"]

SCHEMES = ("minmax", "percentile", "mse", "tf_enhanced")
TF_ENHANCED_GAMMA = 3.0  # AIMET's weight on clipping noise (TfEnhancedEncodingAnalyzer GAMMA, v2 gamma=3.0)

_MSE_1D = (64, 9, 2)  # coarse values, zoom values, zooms (1-D search)
_MSE_2D = (12, 5, 3)  # per dimension (2-D search)
_CHUNK = 1 << 14  # float64 elements per cost-evaluation block (keeps temporaries in cache)
_BIN_CHUNK = 1 << 22  # batch elements binned at a time


def make_observer(scheme: str, qtype: QType | str, symmetric_scheme: str, *, axis: int | None = None,
                  percentile: float = 99.99, bins: int = 2048, name: str = "") -> "Observer":
    """An observer of range-setting ``scheme`` (one of :data:`SCHEMES`) for a tensor quantized to
    ``qtype`` with the target's encoding scheme ``symmetric_scheme`` (asymmetric | symmetric |
    strict_symmetric | unsigned_symmetric). ``axis`` set: one range per index along it (per-channel
    weights). ``percentile`` in [50, 100] is used by ``percentile``; ``bins`` (>= 8) is the histogram
    size of every scheme except ``minmax``. ``name`` (the tensor) appears in every error message.

    >>> import torch
    >>> obs = make_observer("percentile", "int8", "symmetric", percentile=100.0, name="w")
    >>> obs.update(torch.tensor([-3.0, 0.5, 2.0]))
    >>> [float(v) for v in obs.compute()]   # symmetric schemes give (-a, a)
    [-3.0, 3.0]
    >>> make_observer("kl", "int8", "symmetric")
    Traceback (most recent call last):
    ...
    runtime.errors.HwsimError: unknown range-setting scheme 'kl'; expected one of ['minmax', 'percentile', 'mse', 'tf_enhanced']
    """
    return Observer(scheme, qtype, symmetric_scheme, axis=axis, percentile=percentile, bins=bins, name=name)


class Observer:
    """Streams calibration batches of one tensor and computes its range (see the module docstring).

    Build with :func:`make_observer`. ``update`` refuses NaN/Inf and empty batches with a
    :class:`~runtime.errors.DataError` naming the tensor, the batch and the count, and leaves the
    state unchanged.
    """

    def __init__(self, scheme: str, qtype: QType | str, symmetric_scheme: str, *, axis: int | None = None,
                 percentile: float = 99.99, bins: int = 2048, name: str = ""):
        who = f"observer {name!r}" if name else "observer"
        if scheme not in SCHEMES:
            raise HwsimError(f"unknown range-setting scheme {scheme!r}; expected one of {list(SCHEMES)}")
        if symmetric_scheme not in ENCODING_SCHEMES:
            raise EncodingError(f"{who}: unknown encoding scheme {symmetric_scheme!r}; expected one of "
                                f"{list(ENCODING_SCHEMES)}")
        try:
            t = _qtype(qtype)
        except HwsimError as e:
            raise EncodingError(f"{who}: {e}") from None
        try:  # 4/8/16/32-bit types only: fail now, not after calibration
            encoding_from_range(0.0, 1.0, t, symmetric_scheme)
        except EncodingError as e:
            raise EncodingError(f"{who}: {e}") from None
        if axis is not None and (not isinstance(axis, (int, np.integer)) or isinstance(axis, bool)):
            raise HwsimError(f"{who}: axis must be an int or None, found {axis!r}")
        if isinstance(percentile, bool) or not isinstance(percentile, numbers.Real) \
                or not 50.0 <= float(percentile) <= 100.0:
            raise HwsimError(f"{who}: percentile must be a number in [50, 100], found {percentile!r}")
        if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 8:
            raise HwsimError(f"{who}: bins must be an int >= 8, found {bins!r}")
        self.scheme = scheme
        self.qtype = t
        self.encoding_scheme = symmetric_scheme
        self.axis = None if axis is None else int(axis)
        self.percentile = float(percentile)
        self.bins = int(bins)
        self.name = name
        self._who = who
        self.reset()

    # -- state ------------------------------------------------------------------------------------
    def reset(self) -> None:
        """Forget every batch (the configuration stays)."""
        self._n_batches = 0
        self._channels: int | None = None
        self._min: np.ndarray | None = None
        self._max: np.ndarray | None = None
        self._count: np.ndarray | None = None
        self._hist: _Histograms | None = None

    @property
    def n_batches(self) -> int:
        """Batches accepted since construction or the last :meth:`reset`."""
        return self._n_batches

    @property
    def n_values(self) -> int:
        """Values seen (all channels) since construction or the last :meth:`reset`."""
        return 0 if self._count is None else int(self._count.sum())

    @property
    def state_nbytes(self) -> int:
        """Bytes of state (arrays); does not grow with the number of batches."""
        arrays = [a for a in (self._min, self._max, self._count) if a is not None]
        return sum(a.nbytes for a in arrays) + (self._hist.nbytes if self._hist is not None else 0)

    def histogram(self, channel: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """``(counts, edges)`` of one channel's histogram: ``bins`` counts of the values seen in
        ``[edges[i], edges[i+1])``, ``bins + 1`` edges (see the module docstring). A channel whose
        values were all equal has no histogram yet: one bin of width 0 holding them all."""
        h = self._need_hist("histogram")
        if not 0 <= channel < h.channels:
            raise HwsimError(f"{self._who}: channel {channel} out of range (0 <= channel < {h.channels})")
        if h.w[channel] == 0:
            return np.array([h.n[channel]], np.int64), np.array([h.mn[channel], h.mx[channel]])
        return h.counts[channel].copy(), (h.m[channel] + np.arange(self.bins + 1)) * h.w[channel]

    # -- streaming --------------------------------------------------------------------------------
    def update(self, x) -> None:
        """Add one batch (a ``torch.Tensor``; numpy arrays are accepted too)."""
        with torch.no_grad():
            x2d = self._validate(x)
            bmin, bmax = (v.to(torch.float64).cpu().numpy() for v in torch.aminmax(x2d, dim=1))
            if self._min is None:
                self._channels = x2d.shape[0]
                self._min, self._max = bmin, bmax
                self._count = np.zeros(x2d.shape[0], np.int64)
                if self.scheme != "minmax":
                    self._hist = _Histograms(x2d.shape[0], self.bins)
            else:
                self._min, self._max = np.minimum(self._min, bmin), np.maximum(self._max, bmax)
            if self._hist is not None:
                self._hist.add(x2d, bmin, bmax)
            self._count += x2d.shape[1]
            self._n_batches += 1

    def _validate(self, x) -> torch.Tensor:
        where = f"{self._who}: calibration batch {self._n_batches} (counting from 0)"
        if not isinstance(x, torch.Tensor):
            try:
                x = torch.as_tensor(np.asarray(x))
            except (TypeError, ValueError, RuntimeError) as e:
                raise DataError(f"{where} is not a tensor or numeric array: {e}") from None
        x = x.detach()
        if x.dtype == torch.bool or x.is_complex():
            raise DataError(f"{where} has dtype {x.dtype}; expected real numbers")
        if x.numel() == 0:
            raise DataError(f"{where} is empty (shape {tuple(x.shape)}); every batch needs values")
        if x.is_floating_point():
            bad = int((~torch.isfinite(x)).sum())
            if bad:
                raise DataError(f"{where} has {bad} NaN/Inf value(s) out of {x.numel()} (shape {tuple(x.shape)}); "
                                "a range needs finite values: check the model and the calibration data")
        if self.axis is None:
            return x.reshape(1, -1)
        if not -x.dim() <= self.axis < x.dim():
            raise DataError(f"{where}: axis {self.axis} is out of range for a tensor of shape {tuple(x.shape)}")
        c = x.shape[self.axis]
        if self._channels is not None and c != self._channels:
            raise DataError(f"{where} has {c} channels along axis {self.axis} (shape {tuple(x.shape)}); "
                            f"earlier batches had {self._channels}")
        return x.movedim(self.axis, 0).reshape(c, -1)

    # -- results ----------------------------------------------------------------------------------
    def compute(self) -> tuple[np.ndarray, np.ndarray]:
        """``(min, max)`` float64 arrays: shape ``()`` per tensor, ``(C,)`` with an axis."""
        if self._min is None:
            raise DataError(f"{self._who} has seen no calibration batch; call update() before compute()")
        family = self._family()
        if self.scheme == "minmax":
            lo, hi = _from_magnitude(family, self._min, self._max, np.maximum(np.abs(self._min), np.abs(self._max)))
        elif self.scheme == "percentile":
            lo, hi = _percentile_range(self._hist, self.percentile, family)
        elif self.scheme == "mse":
            lo, hi = _mse_range(self._hist, family, self.qtype, self.encoding_scheme)
        else:
            lo, hi = _tf_enhanced_range(self._hist, family, self.qtype, self.encoding_scheme)
        if self.axis is None:
            return np.asarray(lo[0], np.float64), np.asarray(hi[0], np.float64)
        return np.asarray(lo, np.float64), np.asarray(hi, np.float64)

    def encoding(self, granularity=None) -> Encoding:
        """``encoding_from_range(*compute(), qtype, symmetric_scheme, granularity)``; the default
        granularity is per tensor, or ``PerAxis(axis)`` for a per-channel observer."""
        if granularity is None:
            granularity = PerTensor() if self.axis is None else PerAxis(self.axis)
        lo, hi = self.compute()
        return encoding_from_range(lo, hi, self.qtype, self.encoding_scheme, granularity)

    def expected_error(self, min_val, max_val, gamma: float = 1.0) -> np.ndarray:
        """The histogram model's mean squared error per value (see the module docstring) of the grid
        ``encoding_from_range(min_val, max_val, ...)`` gives, clipping weighted by ``gamma``; shape
        ``()`` per tensor, ``(C,)`` per channel. Channels whose values were all equal get the exact
        error of that value."""
        h = self._need_hist("expected_error")
        try:
            lo, hi = (np.broadcast_to(np.asarray(v, np.float64), (h.channels,)).reshape(h.channels, 1)
                      for v in (min_val, max_val))
        except ValueError:
            raise HwsimError(f"{self._who}: expected_error takes a min and max per tensor or one per channel "
                             f"({h.channels}); found shapes {np.shape(min_val)} and {np.shape(max_val)}") from None
        cost = _expected_costs(h, lo, hi, self.qtype, self.encoding_scheme, float(gamma))[:, 0]
        return cost[0] if self.axis is None else cost

    def _need_hist(self, what: str) -> "_Histograms":
        if self.scheme == "minmax":
            raise HwsimError(f"{self._who}: {what} needs a histogram; scheme 'minmax' keeps only min and max")
        if self._hist is None:
            raise DataError(f"{self._who} has seen no calibration batch; call update() before {what}()")
        return self._hist

    def _family(self) -> str:
        """'asymmetric', 'unsigned' (the unsigned grid: unsigned_symmetric with every min >= 0) or
        'symmetric'."""
        if self.encoding_scheme == "asymmetric":
            return "asymmetric"
        if self.encoding_scheme == "unsigned_symmetric" and np.all(self._min >= 0):
            return "unsigned"
        return "symmetric"

    def __repr__(self) -> str:
        where = "per tensor" if self.axis is None else f"axis {self.axis}"
        return (f"Observer({self.scheme}, {self.qtype} {self.encoding_scheme}, {where}, name={self.name!r}, "
                f"batches={self._n_batches})")


def _from_magnitude(family: str, lo, hi, mag):
    """The returned range: ``(lo, hi)`` for asymmetric, ``(0, mag)`` unsigned, ``(-mag, mag)`` symmetric."""
    if family == "asymmetric":
        return lo, hi
    if family == "unsigned":
        return np.zeros_like(mag), mag
    return -mag, mag


# ---------------------------------------------------------------------------------------------
# streaming lattice histograms, one per channel
# ---------------------------------------------------------------------------------------------
class _Histograms:
    """``counts[c, i]`` counts the values of channel ``c`` in ``[(m[c] + i) * w[c], (m[c] + i + 1) * w[c])``.
    ``w[c] == 0``: no lattice yet; ``n[c]`` values all equal to ``mn[c]`` (a point mass)."""

    def __init__(self, channels: int, bins: int):
        self.channels, self.bins = channels, bins
        self.counts = np.zeros((channels, bins), np.int64)
        self.m = np.zeros(channels)  # integer-valued float64 lattice offsets (exact below 2^53)
        self.w = np.zeros(channels)
        self.mn = np.full(channels, np.inf)
        self.mx = np.full(channels, -np.inf)
        self.n = np.zeros(channels, np.int64)

    @property
    def nbytes(self) -> int:
        return sum(a.nbytes for a in (self.counts, self.m, self.w, self.mn, self.mx, self.n))

    def add(self, x2d: torch.Tensor, bmin: np.ndarray, bmax: np.ndarray) -> None:
        B = self.bins
        had = self.w > 0
        if had.any():
            self._regrid(np.flatnonzero(had), bmin[had], bmax[had])
        new_mn, new_mx = np.minimum(self.mn, bmin), np.maximum(self.mx, bmax)
        init = ~had & (new_mx > new_mn)
        if init.any():
            idx = np.flatnonzero(init)
            lo, hi = new_mn[idx], new_mx[idx]
            w = np.maximum.reduce([(hi - lo) / (B - 1), np.maximum(np.abs(lo), np.abs(hi)) * 2.0**-40,
                                   np.full(len(idx), 1e-300)])
            m = np.floor(lo / w)
            for _ in range(64):  # float rounding can leave the top value one cell too far: widen a hair
                over = np.floor(hi / w) - m + 1 > B
                if not over.any():
                    break
                w = np.where(over, w * (1 + 2.0**-20), w)
                m = np.floor(lo / w)
            self.w[idx], self.m[idx] = w, m
            point = self.n[idx] > 0  # an earlier point mass joins its bin
            if point.any():
                c = idx[point]
                cell = np.clip(np.floor(self.mn[c] / self.w[c]) - self.m[c], 0, B - 1).astype(np.int64)
                self.counts[c, cell] += self.n[c]
        self.mn, self.mx = new_mn, new_mx
        self.n += x2d.shape[1]
        rows = np.flatnonzero(self.w > 0)
        if len(rows):
            self.counts[rows] += _bin_counts(x2d, rows, self.w[rows], self.m[rows], B)

    def _regrid(self, rows: np.ndarray, bmin: np.ndarray, bmax: np.ndarray) -> None:
        """Move/coarsen the windows of ``rows`` so that they hold their occupied cells and the batch."""
        B = self.bins
        counts, m, w = self.counts[rows], self.m[rows], self.w[rows]
        nz = counts > 0
        first = np.argmax(nz, axis=1)
        last = B - 1 - np.argmax(nz[:, ::-1], axis=1)
        a = np.minimum(m + first, np.floor(bmin / w))
        b = np.maximum(m + last, np.floor(bmax / w))
        inside = (a >= m) & (b <= m + B - 1)
        if inside.all():
            return
        k = np.maximum(1.0, np.ceil((b - a + 1) / B))
        for _ in range(64):
            bad = np.floor(b / k) - np.floor(a / k) + 1 > B
            if not bad.any():
                break
            k = np.where(bad, k + 1, k)
        k = np.where(inside, 1.0, k)
        new_m = np.where(inside, m, np.floor(a / k))
        cell = np.floor((m[:, None] + np.arange(B)) / k[:, None]) - new_m[:, None]
        cell = np.clip(cell, 0, B - 1).astype(np.int64) + (np.arange(len(rows)) * B)[:, None]
        moved = np.bincount(cell.ravel(), weights=counts.ravel(), minlength=len(rows) * B)
        self.counts[rows] = np.rint(moved).astype(np.int64).reshape(len(rows), B)
        self.m[rows], self.w[rows] = new_m, w * k

    def folded(self, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Histograms of ``|x|`` for ``rows`` (all with a lattice): ``(counts, m_abs)`` on the same
        width; lattice cell ``j < 0`` holds ``|x|`` in ``[(-j - 1) w, -j w]``, i.e. cell ``-j - 1``."""
        B = self.bins
        m = self.m[rows]
        j = m[:, None] + np.arange(B)
        fj = np.where(j >= 0, j, -j - 1)
        m_abs = fj.min(axis=1)
        cell = (fj - m_abs[:, None]).astype(np.int64) + (np.arange(len(rows)) * B)[:, None]
        out = np.bincount(cell.ravel(), weights=self.counts[rows].ravel(), minlength=len(rows) * B)
        return np.rint(out).astype(np.int64).reshape(len(rows), B), m_abs


def _float64(x: torch.Tensor) -> torch.Tensor:
    """``x`` as float64 on its device, or on the CPU when the device has no float64 (e.g. MPS)."""
    try:
        return x.to(torch.float64)
    except (TypeError, RuntimeError):
        return x.to(torch.device("cpu")).to(torch.float64)


def _bin_counts(x2d: torch.Tensor, rows: np.ndarray, w: np.ndarray, m: np.ndarray, bins: int) -> np.ndarray:
    """Counts of ``x2d[rows]`` in cells ``floor(x / w) - m`` (clamped into ``[0, bins)``: values are
    inside the window by construction; the clamp only guards float rounding at the very ends)."""
    sel = x2d if len(rows) == x2d.shape[0] else x2d[torch.as_tensor(rows, device=x2d.device)]
    out = None
    step = max(1, _BIN_CHUNK // len(rows))
    for j in range(0, sel.shape[1], step):
        xs = _float64(sel[:, j:j + step])
        dev = xs.device
        wt = torch.as_tensor(w, dtype=torch.float64, device=dev)[:, None]
        mt = torch.as_tensor(m, dtype=torch.float64, device=dev)[:, None]
        cell = torch.floor(xs / wt).sub_(mt).clamp_(0, bins - 1).to(torch.int64)
        cell += torch.arange(len(rows), device=dev, dtype=torch.int64)[:, None] * bins
        c = torch.bincount(cell.reshape(-1), minlength=len(rows) * bins)
        out = c if out is None else out + c.to(out.device)
    return out.to(torch.device("cpu")).numpy().astype(np.int64).reshape(len(rows), bins)


# ---------------------------------------------------------------------------------------------
# percentile
# ---------------------------------------------------------------------------------------------
def _order_stat(counts, m, w, k, lo, hi, lo_exact):
    """Estimate of the ``k``-th smallest value (0-based, per row) inside the bin that holds it:
    ``(m + i + (k - before + 0.5) / c_i) * w``, clamped to ``[lo, hi]``; ``k = n - 1`` is ``hi``
    and, where ``lo_exact``, ``k = 0`` is ``lo``."""
    cum = np.cumsum(counts, axis=1)
    r = np.arange(len(counts))
    i = np.argmax(cum > k[:, None], axis=1)
    c = counts[r, i]
    before = cum[r, i] - c
    pos = np.clip((m + i + (k - before + 0.5) / c) * w, lo, hi)
    n = cum[:, -1]
    pos = np.where(k >= n - 1, hi, pos)
    return np.where((k == 0) & lo_exact, lo, pos)


def _quantile(counts, m, w, q, lo, hi, lo_exact):
    """numpy's ``linear`` quantile ``q`` in [0, 1] per row, from the histogram."""
    n = counts.sum(axis=1)
    h = (n - 1) * q
    k1 = np.floor(h)
    k2 = np.minimum(k1 + 1, n - 1)
    v1 = _order_stat(counts, m, w, k1, lo, hi, lo_exact)
    v2 = _order_stat(counts, m, w, k2, lo, hi, lo_exact)
    return v1 + (h - k1) * (v2 - v1)


def _percentile_range(h: _Histograms, p: float, family: str):
    mn, mx = h.mn.copy(), h.mx.copy()
    mag = np.maximum(np.abs(mn), np.abs(mx))
    rows = np.flatnonzero(h.w > 0)  # the others are point masses: their percentile is the value
    if family == "asymmetric":
        lo, hi = mn.copy(), mx.copy()
        if len(rows):
            c, m, w = h.counts[rows], h.m[rows], h.w[rows]
            true = np.ones(len(rows), bool)
            lo[rows] = _quantile(c, m, w, (100.0 - p) / 100.0, mn[rows], mx[rows], true)
            hi[rows] = _quantile(c, m, w, p / 100.0, mn[rows], mx[rows], true)
        return lo, hi
    a = mag.copy()
    if len(rows):
        c, m_abs = h.folded(rows)
        mn_r, mx_r = mn[rows], mx[rows]
        one_sided = (mn_r >= 0) | (mx_r <= 0)
        abs_lo = np.where(mn_r >= 0, mn_r, np.where(mx_r <= 0, -mx_r, 0.0))
        a[rows] = _quantile(c, m_abs, h.w[rows], p / 100.0, abs_lo, mag[rows], one_sided)
    return _from_magnitude(family, mn, mx, a)


# ---------------------------------------------------------------------------------------------
# expected squared error of a grid over a histogram
# ---------------------------------------------------------------------------------------------
def _grids(cmin: np.ndarray, cmax: np.ndarray, t: QType, scheme: str):
    """The target's grid for each candidate range: float64 ``s``, ``tl = qmin - z``, ``th = qmax - z``."""
    enc = encoding_from_range(cmin.ravel(), cmax.ravel(), t, scheme, PerAxis(0))
    s = enc.scale.astype(np.float64).reshape(cmin.shape)
    z = enc.zero_point.reshape(cmin.shape).astype(np.float64)
    return s, enc.qmin - z, enc.qmax - z


def _psi(tt: np.ndarray, lo, hi, gamma: float) -> np.ndarray:
    """``12 * (G(tc) + gamma * u^3 / 3)`` at ``tt = x / s`` (overwritten): the antiderivative of
    ``12 * phi / s^2`` in steps, ``tc = clip(tt, lo, hi)``, ``u = tt - tc`` (module docstring)."""
    tc = np.maximum(tt, lo)
    np.minimum(tc, hi, out=tc)
    tt -= tc  # u: how far beyond the grid's ends, in steps
    n = tc + 0.5
    np.floor(n, out=n)
    tc -= n  # t - round(t)
    psi = tc * tc
    psi *= tc
    tc = tt * tt
    tc *= tt
    if gamma != 1.0:
        tc *= gamma
    psi += tc
    psi *= 4.0
    psi += n
    return psi


def _psi_slope(tt: np.ndarray, lo, hi, gamma: float) -> np.ndarray:
    """``12 * phi / s^2`` at ``tt = x / s``: the derivative of :func:`_psi`."""
    tc = np.clip(tt, lo, hi)
    r = tc - np.floor(tc + 0.5)
    return 12.0 * (r * r + gamma * (tt - tc) ** 2)


def _expected_costs(h: _Histograms, cmin, cmax, t: QType, scheme: str, gamma: float) -> np.ndarray:
    """Mean squared error per value, shape ``(C, K)``, of the grids of candidate ranges
    ``(cmin, cmax)`` (``(C, K)``) over every channel's histogram (module docstring). The first and
    last non-empty bins spread their values over the part of the bin inside ``[min, max]`` only."""
    s, tl, th = _grids(np.asarray(cmin, np.float64), np.asarray(cmax, np.float64), t, scheme)
    C, K = s.shape
    out = np.empty((C, K))
    grid = h.w > 0
    for c in np.flatnonzero(~grid):  # point masses: the exact error of quantizing that one value
        out[c] = s[c] ** 2 * _psi_slope(h.mn[c] / s[c], tl[c], th[c], gamma) / 12.0
    rows = np.flatnonzero(grid)
    if len(rows) == 0:
        return out
    B = h.bins
    j = np.arange(B + 1, dtype=np.float64)
    counts = h.counts[rows]
    padded = np.zeros((len(rows), B + 2))
    padded[:, 1:-1] = counts
    d = padded[:, :-1] - padded[:, 1:]  # d_j = c_{j-1} - c_j
    # one row per (channel, candidate); blocks of a few rows keep the temporaries in cache
    ch = np.repeat(np.arange(len(rows)), K)
    ratio = (h.w[rows, None] / s[rows]).ravel()  # bin width in steps
    m = h.m[rows][ch]
    lo, hi = tl[rows].ravel(), th[rows].ravel()
    acc = np.empty(len(ch))
    step = max(1, _CHUNK // (B + 1))
    for r0 in range(0, len(ch), step):
        sl = slice(r0, r0 + step)
        tt = np.multiply.outer(ratio[sl], j)
        tt += (m[sl] * ratio[sl])[:, None]  # edges / s
        acc[sl] = np.einsum("kj,kj->k", _psi(tt, lo[sl, None], hi[sl, None], gamma), d[ch[sl]])
    # end bins: values lie in [min, max], not over the whole first/last bin
    nz = counts > 0
    first = np.argmax(nz, axis=1)
    last = B - 1 - np.argmax(nz[:, ::-1], axis=1)
    sr = s[rows].ravel()
    for i, a, b, use in ((first, h.mn[rows], np.where(first == last, h.mx[rows], (h.m[rows] + first + 1) * h.w[rows]),
                          np.ones(len(rows), bool)),
                         (last, (h.m[rows] + last) * h.w[rows], h.mx[rows], first != last)):
        i, a, b, use = i[ch], a[ch], b[ch], use[ch]
        cell = (m + i) * ratio
        regular = _psi(cell + ratio, lo, hi, gamma) - _psi(cell.copy(), lo, hi, gamma)
        ta, tb = a / sr, b / sr
        wide = tb - ta > 1e-6
        span = np.where(wide, tb - ta, 1.0)
        exact = np.where(wide, (_psi(tb.copy(), lo, hi, gamma) - _psi(ta.copy(), lo, hi, gamma)) / span,
                         _psi_slope((ta + tb) / 2, lo, hi, gamma)) * ratio
        acc += np.where(use, counts[ch, i] * (exact - regular), 0.0)
    acc = acc.reshape(len(rows), K)
    out[rows] = acc * s[rows] ** 2 / (12.0 * ratio.reshape(len(rows), K)) / h.n[rows, None]
    return np.maximum(out, 0.0)


# ---------------------------------------------------------------------------------------------
# mse: zoom search over fractions of the observed range
# ---------------------------------------------------------------------------------------------
def _zoom_search(cost, C: int, dims: int, n1: int, n2: int, zooms: int) -> np.ndarray:
    """Fractions ``f`` in ``(0, 1]^dims`` (``(C, dims)``) minimizing ``cost(F)`` (``F`` of shape
    ``(C, K, dims)`` -> ``(C, K)``): an ``n1``-per-dimension grid ``k / n1``, then ``zooms`` grids of
    ``n2`` per dimension over ``best +- spacing``; ties keep the earlier (larger-range first) value."""
    axes = [np.arange(n1, 0, -1) / n1] * dims  # 1 first: ties prefer the unclipped range
    F = np.stack(np.meshgrid(*axes, indexing="ij"), -1).reshape(1, -1, dims).repeat(C, 0)
    costs = cost(F)
    i = np.argmin(costs, axis=1)
    best, best_cost = F[np.arange(C), i], costs[np.arange(C), i]
    spacing = 1.0 / n1
    for _ in range(zooms):
        off = np.linspace(-spacing, spacing, n2)
        grid = np.stack(np.meshgrid(*[off] * dims, indexing="ij"), -1).reshape(1, -1, dims)
        F = np.clip(best[:, None, :] + grid, spacing / 4, 1.0)
        costs = cost(F)
        i = np.argmin(costs, axis=1)
        c = costs[np.arange(C), i]
        better = c < best_cost
        best = np.where(better[:, None], F[np.arange(C), i], best)
        best_cost = np.where(better, c, best_cost)
        spacing = 2 * spacing / (n2 - 1)
    return best


def _mse_range(h: _Histograms, family: str, t: QType, scheme: str):
    mn, mx = h.mn.copy(), h.mx.copy()
    mag = np.maximum(np.abs(mn), np.abs(mx))
    C = h.channels
    point = h.w == 0  # a constant channel: its min/max range is exact already
    if family != "asymmetric":
        top = mx if family == "unsigned" else mag
        bottom = np.zeros(C) if family == "unsigned" else -top

        def cost(F):
            return _expected_costs(h, bottom[:, None] * F[..., 0], top[:, None] * F[..., 0], t, scheme, 1.0)

        f = _zoom_search(cost, C, 1, *_MSE_1D)[:, 0]
        return _from_magnitude(family, mn, mx, np.where(point, top, f * top))
    lo0, hi0 = np.minimum(mn, 0.0), np.maximum(mx, 0.0)
    if np.any((lo0 < 0) & (hi0 > 0)):
        def cost(F):
            return _expected_costs(h, lo0[:, None] * F[..., 0], hi0[:, None] * F[..., 1], t, scheme, 1.0)

        f = _zoom_search(cost, C, 2, *_MSE_2D)
        lo, hi = lo0 * f[:, 0], hi0 * f[:, 1]
    else:  # one-sided data: only the non-zero end moves
        def cost(F):
            return _expected_costs(h, lo0[:, None] * F[..., 0], hi0[:, None] * F[..., 0], t, scheme, 1.0)

        f = _zoom_search(cost, C, 1, *_MSE_1D)[:, 0]
        lo, hi = lo0 * f, hi0 * f
    return np.where(point, mn, lo), np.where(point, mx, hi)


# ---------------------------------------------------------------------------------------------
# tf_enhanced: AIMET's candidates, cost = rounding + gamma * clipping
# ---------------------------------------------------------------------------------------------
def _tf_enhanced_candidates(family: str, mn, mx, t: QType, scheme: str):
    """AIMET's candidate ranges ``(cmin, cmax)``, ``(C, K)`` (module docstring)."""
    N = (1 << t.bits) - 1 - (1 if scheme == "strict_symmetric" else 0)
    if family == "unsigned":
        top = mx[:, None] * (np.arange(1, 102) / 100.0)  # a = N * delta, delta = (k / 100) * max / N
        return np.zeros_like(top), top
    if family == "symmetric":
        qpos = (1 << (t.bits - 1)) - 1
        delta_max = 2.0 * np.maximum(np.abs(mn), np.abs(mx)) / N
        a = qpos * delta_max[:, None] * (np.arange(1, 102) / 100.0)
        return -a, a
    obs_lo = np.minimum(mn, 0.0)
    obs_hi = np.maximum(np.maximum(mx, 0.0), obs_lo + MIN_RANGE)
    delta_o = (obs_hi - obs_lo) / N
    off_o = np.round(obs_lo / delta_o)
    obs_lo = delta_o * off_o
    obs_hi = obs_lo + delta_o * N
    deltas = delta_o[:, None, None] * (np.arange(1, 18) / 16.0)[None, :, None]  # (C, 17, 1)
    offsets = np.trunc(-N + N / 20.0 * np.arange(21))[None, None, :]  # (1, 1, 21)
    tmin = deltas * offsets
    tmax = tmin + deltas * N
    lo_c, hi_c = obs_lo[:, None, None], obs_hi[:, None, None]
    tmin, tmax = np.maximum(lo_c, tmin), np.minimum(hi_c, tmax)
    dropped = tmax - tmin < MIN_RANGE  # (wider on both sides clamps to the observed candidate: kept as such)
    d2 = np.where(dropped, 1.0, (tmax - tmin) / N)
    o2 = np.round(tmin / d2)
    cmin = np.where(dropped, lo_c, d2 * o2).reshape(len(mn), -1)
    cmax = np.where(dropped, hi_c, d2 * o2 + d2 * N).reshape(len(mn), -1)
    return np.concatenate([obs_lo[:, None], cmin], 1), np.concatenate([obs_hi[:, None], cmax], 1)


def _tf_enhanced_range(h: _Histograms, family: str, t: QType, scheme: str):
    mn, mx = h.mn.copy(), h.mx.copy()
    cmin, cmax = _tf_enhanced_candidates(family, mn, mx, t, scheme)
    costs = _expected_costs(h, cmin, cmax, t, scheme, TF_ENHANCED_GAMMA)
    i = np.argmin(costs, axis=1)
    r = np.arange(h.channels)
    lo, hi = cmin[r, i], cmax[r, i]
    point = h.w == 0
    if family == "asymmetric":
        return np.where(point, mn, lo), np.where(point, mx, hi)
    mag = np.where(point, np.maximum(np.abs(mn), np.abs(mx)), hi)
    return _from_magnitude(family, mn, mx, mag)

