"""An integer program: the planned steps of a model, executed on integer tensors.

The plan step (``runtime.plan``) computes every multiplier, shift, offset and clamp bound once;
a step's ``run`` only moves integer arrays through kernels. Floats appear only where the model's
interface has them: quantizing float inputs and dequantizing float outputs.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .encoding import Encoding
from .errors import DataError, HwsimError
from .numba_config import threads_for
from .target import Target


@dataclass
class LayerStats:
    """What a person needs to know about one step of one run."""

    op_type: str
    overflow: int = 0  # accumulator elements outside the accumulator width (before the policy)
    saturation: int = 0  # output elements clamped to the dtype range (fused activation clamps excluded)
    elements: int = 0
    seconds: float = 0.0


@dataclass
class Step:
    """One integer operation. Subclasses set the precomputed parameters and implement ``compute``."""

    name: str  # the ONNX node name (or a synthesized one)
    op_type: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]

    def compute(self, *arrays: np.ndarray, stats: LayerStats) -> tuple[np.ndarray, ...]:
        raise NotImplementedError

    def describe(self) -> str:
        return f"{self.op_type} {self.name!r}"


@dataclass
class TensorSpec:
    name: str
    dtype: np.dtype
    encoding: Encoding | None = None  # integer tensors that have one


@dataclass
class RunResult:
    outputs: dict[str, np.ndarray]
    tensors: dict[str, np.ndarray]  # every intermediate integer tensor, by name (when requested)
    stats: dict[str, LayerStats]
    seconds: float


@dataclass
class Program:
    source: str
    target: Target
    steps: list[Step]
    inputs: list[TensorSpec]
    outputs: list[TensorSpec]
    constants: dict[str, np.ndarray] = field(default_factory=dict)
    encodings: dict[str, Encoding] = field(default_factory=dict)  # integer tensor name -> encoding

    def run(self, feeds: dict[str, Any]) -> dict[str, np.ndarray]:
        """Outputs by name, with the graph outputs' ONNX dtypes."""
        return self.run_with_details(feeds).outputs

    def run_with_details(self, feeds: dict[str, Any], keep_tensors: bool = False) -> RunResult:
        env: dict[str, np.ndarray] = dict(self.constants)
        for spec in self.inputs:
            if spec.name not in feeds:
                raise DataError(f"{self.source}: missing input {spec.name!r}; the model's inputs are "
                                f"{[s.name for s in self.inputs]}")
            arr = np.asarray(feeds[spec.name])
            if arr.dtype.name in ("int4", "uint4"):
                arr = arr.astype(spec.dtype)
            if arr.dtype != spec.dtype:
                if np.issubdtype(spec.dtype, np.floating) and np.issubdtype(arr.dtype, np.number):
                    arr = arr.astype(spec.dtype)
                elif np.issubdtype(spec.dtype, np.integer) and np.issubdtype(arr.dtype, np.integer) \
                        and np.can_cast(arr.dtype, spec.dtype, "safe"):
                    arr = arr.astype(spec.dtype)
                else:
                    raise DataError(f"{self.source}: input {spec.name!r} must be {spec.dtype}, found {arr.dtype}")
            env[spec.name] = arr
        unknown = sorted(set(feeds) - {s.name for s in self.inputs})
        if unknown:
            raise DataError(f"{self.source}: unknown input names {unknown}; expected {[s.name for s in self.inputs]}")
        stats: dict[str, LayerStats] = {}
        t_all = time.perf_counter()
        for step in self.steps:
            st = LayerStats(step.op_type)
            t0 = time.perf_counter()
            args = [env[i] if i else None for i in step.inputs]
            try:
                with threads_for(sum(a.size for a in args if a is not None)):
                    results = step.compute(*args, stats=st)
            except HwsimError as e:
                raise type(e)(f"{self.source}: {step.describe()}: {e}") from None
            st.seconds = time.perf_counter() - t0
            for name, value in zip(step.outputs, results):
                env[name] = value
                st.elements += int(value.size)
            stats[step.name] = st
        outputs = {s.name: env[s.name] for s in self.outputs}
        tensors = {}
        if keep_tensors:
            tensors = {k: v for k, v in env.items() if k not in self.constants and np.issubdtype(v.dtype, np.integer)}
        return RunResult(outputs, tensors, stats, time.perf_counter() - t_all)

    def summary(self) -> str:
        lines = [f"integer program for {self.source} on target {self.target.name}: {len(self.steps)} steps"]
        for s in self.steps:
            lines.append(f"  {s.op_type:<20} {s.name}  {list(s.inputs)} -> {list(s.outputs)}")
        return "\n".join(lines)
