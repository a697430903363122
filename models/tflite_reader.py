"""Read a ``.tflite`` flatbuffer into plain Python: tensors (with constant data), operators
(with their builtin options) and the graph's inputs and outputs (dev only).

Used by ``models/blazeface_keras.py`` to rebuild a network from its weights and by the
Edge TPU op check. Parsing goes through the generated schema classes of the ``tflite`` PyPI
package (``pip install tflite``); nothing here runs the model.

Constants stored as fp16 and expanded at load time by a ``DEQUANTIZE`` op (how MediaPipe ships
BlazeFace) are resolved: :meth:`Graph.constant` returns the float32 values for either tensor,
and :meth:`Graph.compute_ops` leaves those ``DEQUANTIZE`` ops out.
"""
from __future__ import annotations

import inspect
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple, Union

import numpy as np

# tflite TensorType enum value -> numpy dtype (the subset a model file can hold as data)
_NUMPY_TYPES = {
    "FLOAT32": np.float32, "FLOAT16": np.float16, "FLOAT64": np.float64,
    "INT32": np.int32, "UINT8": np.uint8, "INT64": np.int64, "INT16": np.int16,
    "INT8": np.int8, "BOOL": np.bool_, "UINT16": np.uint16, "UINT32": np.uint32,
}
PADDING_NAMES = {0: "SAME", 1: "VALID"}


def _tflite():
    try:
        import tflite
    except ImportError:
        raise ImportError("reading .tflite flatbuffers needs the 'tflite' package "
                          "(pip install tflite)") from None
    return tflite


def _enum_names(enum_cls) -> Dict[int, str]:
    return {v: k for k, v in vars(enum_cls).items() if not k.startswith("_") and isinstance(v, int)}


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


@dataclass
class Tensor:
    index: int
    name: str
    shape: Tuple[int, ...]
    dtype: str                      # "float32", "int8", ... (numpy names)
    buffer: int
    data: Optional[np.ndarray] = field(default=None, repr=False)   # constant data, if any
    scale: Optional[np.ndarray] = None
    zero_point: Optional[np.ndarray] = None
    quantized_dimension: int = 0

    @property
    def quantized(self) -> bool:
        return self.scale is not None and self.scale.size > 0


@dataclass
class Operator:
    index: int
    name: str                       # builtin op name, e.g. "CONV_2D"; custom ops: "CUSTOM:<code>"
    version: int
    inputs: Tuple[int, ...]         # tensor indices; -1 = optional input left out
    outputs: Tuple[int, ...]
    options: Dict[str, Any]         # builtin options, snake_case field -> value


@dataclass
class Graph:
    tensors: List[Tensor]
    operators: List[Operator]
    inputs: Tuple[int, ...]
    outputs: Tuple[int, ...]
    description: str = ""

    def producer(self, tensor: int) -> Optional[Operator]:
        for op in self.operators:
            if tensor in op.outputs:
                return op
        return None

    def is_constant(self, tensor: int) -> bool:
        t = self.tensors[tensor]
        if t.data is not None:
            return True
        op = self.producer(tensor)
        return op is not None and op.name == "DEQUANTIZE" and self.is_constant(op.inputs[0])

    def constant(self, tensor: int) -> np.ndarray:
        """Values of a constant tensor: fp16 widened to float32, int8/uint8 weights with a
        scale dequantized to float32, others as stored; follows a DEQUANTIZE of a constant."""
        t = self.tensors[tensor]
        if t.data is None:
            op = self.producer(tensor)
            if op is None or op.name != "DEQUANTIZE":
                raise ValueError(f"tensor {tensor} ({t.name}) is not a constant")
            return self.constant(op.inputs[0]).astype(np.float32)
        data = t.data
        if data.dtype == np.float16:
            return data.astype(np.float32)
        if t.quantized and data.dtype in (np.int8, np.uint8, np.int16):
            shape = [1] * data.ndim
            if t.scale.size > 1:
                shape[t.quantized_dimension] = -1
            return ((data.astype(np.float32) - t.zero_point.reshape(shape).astype(np.float32))
                    * t.scale.reshape(shape).astype(np.float32))
        return data

    def compute_ops(self) -> List[Operator]:
        """Operators in execution order without the DEQUANTIZE ops that only widen constants."""
        return [op for op in self.operators
                if not (op.name == "DEQUANTIZE" and self.is_constant(op.inputs[0]))]

    def op_names(self) -> List[str]:
        return [op.name for op in self.operators]


def _options(tfl, op, option_names: Dict[int, str]) -> Dict[str, Any]:
    kind = option_names.get(op.BuiltinOptionsType(), "NONE")
    table = op.BuiltinOptions()
    if kind == "NONE" or table is None:
        return {}
    cls = getattr(tfl, kind, None)
    if cls is None:
        return {"_type": kind}
    obj = cls()
    obj.Init(table.Bytes, table.Pos)
    out: Dict[str, Any] = {"_type": kind}
    for name, fn in inspect.getmembers(cls, inspect.isfunction):
        if name.startswith(("GetRoot", "Init")) or name.endswith(("BufferHasIdentifier", "Length", "IsNone")):
            continue
        if len(inspect.signature(fn).parameters) != 1:
            continue
        value = getattr(obj, name)()
        if name.endswith("AsNumpy"):
            name = name[:-len("AsNumpy")]
            value = value.tolist() if isinstance(value, np.ndarray) else []
        out[_snake(name)] = value
    return out


def read_tflite(source: Union[str, Path, bytes], subgraph: int = 0) -> Graph:
    """Parse ``source`` (a path or the file's bytes) into a :class:`Graph`."""
    tfl = _tflite()
    buf = source if isinstance(source, (bytes, bytearray)) else Path(source).read_bytes()
    model = tfl.Model.GetRootAsModel(buf, 0)
    if model.SubgraphsLength() <= subgraph:
        raise ValueError(f"model has {model.SubgraphsLength()} subgraph(s), not {subgraph + 1}")
    op_names = _enum_names(tfl.BuiltinOperator)
    type_names = _enum_names(tfl.TensorType)
    option_names = _enum_names(tfl.BuiltinOptions)
    g = model.Subgraphs(subgraph)

    tensors = []
    for i in range(g.TensorsLength()):
        t = g.Tensors(i)
        type_name = type_names.get(t.Type(), str(t.Type()))
        np_type = _NUMPY_TYPES.get(type_name)
        shape = tuple(int(v) for v in t.ShapeAsNumpy()) if t.ShapeLength() else ()
        data = None
        b = model.Buffers(t.Buffer())
        if b is not None and b.DataLength() and np_type is not None:
            raw = b.DataAsNumpy().tobytes()
            data = np.frombuffer(raw, dtype=np_type).reshape(shape).copy()
        scale = zero_point = None
        qdim = 0
        q = t.Quantization()
        if q is not None and q.ScaleLength():
            scale = q.ScaleAsNumpy().astype(np.float32)
            zero_point = (q.ZeroPointAsNumpy().astype(np.int64) if q.ZeroPointLength()
                          else np.zeros_like(scale, np.int64))
            qdim = q.QuantizedDimension()
        name = t.Name().decode("utf-8", "replace") if t.Name() else f"tensor_{i}"
        tensors.append(Tensor(i, name, shape, np.dtype(np_type).name if np_type else type_name.lower(),
                              t.Buffer(), data, scale, zero_point, qdim))

    operators = []
    for i in range(g.OperatorsLength()):
        op = g.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        builtin = max(code.BuiltinCode(), code.DeprecatedBuiltinCode())
        name = op_names.get(builtin, f"BUILTIN_{builtin}")
        if name == "CUSTOM":
            name = "CUSTOM:" + (code.CustomCode() or b"").decode("utf-8", "replace")
        operators.append(Operator(
            i, name, code.Version(),
            tuple(int(v) for v in op.InputsAsNumpy()) if op.InputsLength() else (),
            tuple(int(v) for v in op.OutputsAsNumpy()) if op.OutputsLength() else (),
            _options(tfl, op, option_names)))
    desc = model.Description()
    return Graph(tensors, operators,
                 tuple(int(v) for v in g.InputsAsNumpy()), tuple(int(v) for v in g.OutputsAsNumpy()),
                 desc.decode("utf-8", "replace") if desc else "")


def activation_name(code: int) -> str:
    """Name of a fused activation function code ("NONE", "RELU", "RELU6", ...)."""
    return _enum_names(_tflite().ActivationFunctionType).get(int(code), str(code))


def set_tensor_ranges(model: bytes, ranges: Dict[int, Tuple[float, float]], subgraph: int = 0) -> bytes:
    """Copy of a *calibrated* float model (``TFLiteConverter`` with calibration only) with the
    recorded min/max of the given tensors replaced, in place in the flatbuffer (every listed
    tensor must already carry a one-element min and max)."""
    tfl = _tflite()
    buf = bytearray(model)
    g = tfl.Model.GetRootAsModel(buf, 0).Subgraphs(subgraph)
    for index, (lo, hi) in ranges.items():
        if not lo < hi:
            raise ValueError(f"tensor {index}: empty range [{lo}, {hi}]")
        q = g.Tensors(int(index)).Quantization()
        if q is None or q.MinLength() != 1 or q.MaxLength() != 1:
            raise ValueError(f"tensor {index} has no calibrated min/max to replace")
        mn, mx = q.MinAsNumpy(), q.MaxAsNumpy()       # views into ``buf``
        mn[0], mx[0] = lo, hi
    return bytes(buf)


def tensor_ranges(model: bytes, subgraph: int = 0) -> Dict[int, Tuple[float, float]]:
    """The calibrated (min, max) recorded for each tensor of a calibrated float model."""
    tfl = _tflite()
    g = tfl.Model.GetRootAsModel(model, 0).Subgraphs(subgraph)
    out = {}
    for i in range(g.TensorsLength()):
        q = g.Tensors(i).Quantization()
        if q is not None and q.MinLength() == 1 and q.MaxLength() == 1:
            out[i] = (float(q.MinAsNumpy()[0]), float(q.MaxAsNumpy()[0]))
    return out
