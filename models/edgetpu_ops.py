"""Would ``edgetpu_compiler`` map the whole graph? A static check of a full-integer ``.tflite``
against the Edge TPU's published requirements (no compiler, no Coral needed).

Source: Coral, "TensorFlow models on the Edge TPU",
https://coral.ai/docs/edgetpu/models-intro/ -- sections "Model requirements" and
"Supported operations" (Table 1, compiler 16). The compiler maps operators in graph order and
stops at the first one it cannot map: everything after it runs on the CPU, so one unsupported
op anywhere but the very end costs most of the accelerator's benefit.

Checked here (``check_model``):

* every operator is in :data:`EDGETPU_OPS` (builtin names as the TFLite interpreter reports them),
  and none is in :data:`AVOID` (listed by Coral, but mapped only for some sizes / op versions);
* every tensor is int8 or uint8 and quantized, except int32 constants (biases, shapes,
  paddings, axes) -- a float tensor anywhere means the graph is not full-integer;
* no dynamic dimension; no tensor with more than 3 dimensions larger than 1;
* the per-op limitations of Table 1 that can be read from the file: PAD / MEAN / PACK /
  SPLIT not on the batch axis, STRIDED_SLICE strides all 1, a constant CONCATENATION input only
  as an all-zero second operand, and (when the ``tflite`` package is installed, via
  ``models/tflite_reader.py``) no fused activation on pooling and concatenation, conv
  dilation equal in x and y.

Whether the compiler then maps a particular RESHAPE of a large tensor is decided inside the
compiler; its log (kept by ``models/build.py`` when it runs the compiler) is the final word.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List

import numpy as np

# Table 1 of https://coral.ai/docs/edgetpu/models-intro/#supported-operations, with the
# documented limitation of each (TFLite builtin operator names).
EDGETPU_OPS: Dict[str, str] = {
    "ADD": "",
    "AVERAGE_POOL_2D": "no fused activation function",
    "CONCATENATION": "no fused activation function; a compile-time constant input only as one of "
                     "exactly 2 inputs, and all zeros (a zero-padding op)",
    "CONV_2D": "same dilation in x and y",
    "DEPTHWISE_CONV_2D": "same dilation in x and y",
    "EXPAND_DIMS": "",
    "FULLY_CONNECTED": "default weights format only; output tensor one-dimensional",
    "L2_NORMALIZATION": "",
    "LOGISTIC": "",
    "LSTM": "unidirectional only",
    "MAXIMUM": "",
    "MAX_POOL_2D": "no fused activation function",
    "MEAN": "no reduction in the batch dimension; a z-reduction needs z a multiple of 4",
    "MINIMUM": "",
    "MUL": "",
    "PACK": "no packing in the batch dimension",
    "PAD": "no padding in the batch dimension",
    "PRELU": "alpha one-dimensional (only the innermost dimension > 1)",
    "QUANTIZE": "",
    "REDUCE_MAX": "not on the batch dimension",
    "REDUCE_MIN": "not on the batch dimension",
    "RELU": "",
    "RELU6": "",
    "RELU_N1_TO_1": "",
    "RESHAPE": "certain reshapes might not be mapped for large tensor sizes",
    "RESIZE_BILINEAR": "3-D input/output; might not be mapped depending on sizes (precision)",
    "RESIZE_NEAREST_NEIGHBOR": "3-D input/output; might not be mapped depending on sizes (precision)",
    "RSQRT": "",
    "SLICE": "",
    "SOFTMAX": "1-D input, at most 16,000 elements",
    "SPACE_TO_DEPTH": "",
    "SPLIT": "no splitting in the batch dimension",
    "SQUARED_DIFFERENCE": "",
    "SQUEEZE": "",
    "STRIDED_SLICE": "all strides equal to 1",
    "SUB": "",
    "SUM": "not on the batch dimension",
    "TANH": "",
    "TRANSPOSE": "",
    "TRANSPOSE_CONV": "",
}

# Listed above, but this project keeps them out of its int8 models: whether the compiler maps
# them depends on tensor sizes, and TensorFlow 2 writes half-pixel resizes as an op version
# compilers 14-16 report as "Operation version not supported" (google-coral/edgetpu issues
# 45, 396, 420). BlazeFace's 2x upsampling is rebuilt from other ops instead.
AVOID = {
    "RESIZE_BILINEAR": "mapping depends on sizes and op version",
    "RESIZE_NEAREST_NEIGHBOR": "mapping depends on sizes and op version",
}

INTEGER_DTYPES = ("int8", "uint8")


def _interpreter(path):
    from ai_edge_litert.interpreter import Interpreter, OpResolverType
    # without the default XNNPACK delegate, so the op list is the file's, not "DELEGATE"
    it = Interpreter(model_path=str(path),
                     experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    it.allocate_tensors()
    return it


def operator_names(path) -> List[str]:
    """Builtin operator names of the model's (first) subgraph, in execution order."""
    return [op["op_name"] for op in _interpreter(path)._get_ops_details()]


def check_model(path, strict: bool = True) -> Dict[str, object]:
    """Static Edge TPU check of the ``.tflite`` at ``path``.

    Returns ``{"ops": {name: count}, "problems": [...], "notes": [...], "options_checked": bool}``;
    the model passes when ``problems`` is empty. ``strict`` also refuses the :data:`AVOID` ops.
    """
    it = _interpreter(path)
    ops = it._get_ops_details()
    tensors = {t["index"]: t for t in it.get_tensor_details()}
    produced = {int(o) for op in ops for o in op["outputs"]}
    graph_inputs = {d["index"] for d in it.get_input_details()}
    problems: List[str] = []
    notes: List[str] = []
    counts: Dict[str, int] = {}

    def const(index: int):
        return None if index in produced or index in graph_inputs or index < 0 else it.get_tensor(index)

    for op in ops:
        name = op["op_name"]
        counts[name] = counts.get(name, 0) + 1
        where = f"op {op['index']} {name}"
        if name not in EDGETPU_OPS:
            problems.append(f"{where}: not an Edge TPU operation")
            continue
        if strict and name in AVOID:
            problems.append(f"{where}: {AVOID[name]}")
        ins = [int(i) for i in op["inputs"]]
        if name in ("PAD", "MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN", "PACK", "SPLIT"):
            if name == "PAD":
                pads = const(ins[1])
                if pads is None or np.any(np.asarray(pads)[0] != 0):
                    problems.append(f"{where}: pads the batch dimension (or paddings not constant)")
            elif name in ("MEAN", "SUM", "REDUCE_MAX", "REDUCE_MIN"):
                axes = const(ins[1])
                rank = len(tensors[ins[0]]["shape"])
                axes = None if axes is None else [int(a) % rank for a in np.ravel(axes)]
                if axes is None or 0 in axes:
                    problems.append(f"{where}: reduces over the batch dimension (or axes not constant)")
                elif name == "MEAN" and rank - 1 in axes and tensors[ins[0]]["shape"][-1] % 4:
                    problems.append(f"{where}: z-reduction of a depth that is not a multiple of 4")
            elif name == "SPLIT":
                axis = const(ins[0])
                if axis is None or int(np.ravel(axis)[0]) == 0:
                    problems.append(f"{where}: splits the batch dimension")
        if name == "STRIDED_SLICE":
            strides = const(ins[3]) if len(ins) > 3 else None
            if strides is None or np.any(np.asarray(strides) != 1):
                problems.append(f"{where}: strides other than 1")
        if name == "CONCATENATION":
            consts = [i for i in ins if const(i) is not None]
            if consts and (len(ins) != 2 or any(np.any(np.asarray(const(i)) != 0) for i in consts)):
                problems.append(f"{where}: constant input that is not the all-zero second of two")

    in_model = graph_inputs | produced | {int(i) for op in ops for i in op["inputs"] if i >= 0} \
        | {d["index"] for d in it.get_output_details()}
    for idx, t in tensors.items():
        if idx not in in_model:  # the interpreter's own scratch tensors (im2col etc.)
            continue
        dtype = np.dtype(t["dtype"]).name
        shape = [int(d) for d in t["shape"]]
        sig = [int(d) for d in t.get("shape_signature", t["shape"])]
        label = f"tensor {idx} {t['name'][:60]!r} {dtype} {shape}"
        if dtype == "int32":
            if idx in produced or idx in graph_inputs:
                problems.append(f"{label}: int32 activation (only constants such as biases may be int32)")
        elif dtype not in INTEGER_DTYPES:
            problems.append(f"{label}: not an 8-bit integer tensor")
        elif not t["quantization_parameters"]["scales"].size:
            problems.append(f"{label}: 8-bit tensor without quantization parameters")
        if any(d < 0 for d in sig):
            problems.append(f"{label}: dynamic dimension")
        if (idx in produced or idx in graph_inputs) and len(shape) > 3 and \
                sum(1 for d in shape[:-3] if d > 1):
            problems.append(f"{label}: more than 3 dimensions larger than 1")

    options_checked = False
    try:
        try:
            from .tflite_reader import activation_name, read_tflite
        except ImportError:
            from tflite_reader import activation_name, read_tflite  # type: ignore
        graph = read_tflite(path)
        options_checked = True
    except ImportError:
        notes.append("per-op options (fused activations, dilation) not checked: "
                     "pip install tflite")
    if options_checked:
        for op in graph.operators:
            o = op.options
            where = f"op {op.index} {op.name}"
            act = o.get("fused_activation_function")
            if op.name in ("MAX_POOL_2D", "AVERAGE_POOL_2D", "CONCATENATION") and act:
                problems.append(f"{where}: fused activation {activation_name(act)}")
            if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D") and \
                    o.get("dilation_h_factor", 1) != o.get("dilation_w_factor", 1):
                problems.append(f"{where}: different dilation in x and y")
            if op.name == "STRIDED_SLICE" and (o.get("ellipsis_mask") or o.get("new_axis_mask")):
                problems.append(f"{where}: ellipsis or new-axis mask")
        for name in sorted(set(counts) & {"RESHAPE"}):
            notes.append(f"{name}: {EDGETPU_OPS[name]}; the compiler log is the final word")
    return {"ops": dict(sorted(counts.items())), "problems": problems, "notes": notes,
            "options_checked": options_checked}


def summary(path) -> str:
    r = check_model(path)
    ops = ", ".join(f"{k} x{v}" for k, v in r["ops"].items())
    verdict = "PASS" if not r["problems"] else f"FAIL ({len(r['problems'])} problems)"
    return f"{Path(path).name}: {verdict}; {ops}"
