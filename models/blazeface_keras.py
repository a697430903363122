"""Rebuild a float ``.tflite`` network (MediaPipe's BlazeFace) in Keras from its own weights
(dev only).

:func:`build_keras_from_tflite` walks the operator list read by ``models/tflite_reader.py``
in execution order and creates one Keras layer per operator, wiring tensors by index, with
the weights taken from the file (fp16 constants widened to float32). Nothing about BlazeFace
is hard-coded: any graph made of the operators in :data:`SUPPORTED_OPS` is rebuilt.

Operator mapping (TFLite -> Keras, weights re-laid-out):

* ``CONV_2D`` -> ``Conv2D`` (kernel ``[O, kh, kw, I]`` -> ``[kh, kw, I, O]``);
* ``DEPTHWISE_CONV_2D`` -> ``DepthwiseConv2D`` (``[1, kh, kw, C*M]`` -> ``[kh, kw, C, M]``);
* ``ADD`` -> ``Add``; ``CONCATENATION`` -> ``Concatenate``; ``RESHAPE`` -> ``Reshape``;
* ``RELU`` / ``RELU6`` -> ``ReLU``; ``PRELU`` -> ``PReLU(shared_axes=[1, 2])``;
  a fused activation on any op becomes a following ``ReLU``;
* ``MAX_POOL_2D`` / ``AVERAGE_POOL_2D`` -> ``MaxPooling2D`` / ``AveragePooling2D``;
* ``PAD`` -> :class:`ConstantPad` (zero padding with the file's paddings);
* ``RESIZE_BILINEAR`` -> :func:`upsample2x_bilinear` (the exact Edge TPU-safe decomposition
  below) for 2x ``half_pixel_centers`` resizes when ``edgetpu_safe_resize`` is on, otherwise
  :class:`ResizeBilinear` (``tf.compat.v1.image.resize_bilinear`` with the file's flags).

Why the resize is decomposed: Coral's compiler maps ``RESIZE_BILINEAR`` only for some sizes
and op versions, and TensorFlow 2 writes ``half_pixel_centers=True`` resizes as a newer op
version that compilers 14-16 report as "Operation version not supported"; the first op not
mapped sends the rest of the graph to the CPU. A 2x half-pixel bilinear upsample is, per
axis, ``out[2i] = 0.75 x[i] + 0.25 x[i-1]`` and ``out[2i+1] = 0.75 x[i] + 0.25 x[i+1]``
with the edge row repeated. :func:`upsample2x_bilinear` computes exactly that with
edge-replicating slices + ``CONCATENATION``, two fixed 3-tap ``DEPTHWISE_CONV_2D`` per axis
(even and odd phase, ``VALID``) and a ``CONCATENATION`` + ``RESHAPE`` that interleaves the
phases -- operators on the Edge TPU's list, and identical output in float.
"""
from __future__ import annotations

import os
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from keras import layers as KL  # noqa: E402

try:  # works both as ``models.blazeface_keras`` and with models/ itself on sys.path
    from .tflite_reader import PADDING_NAMES, Graph, activation_name, read_tflite
except ImportError:  # pragma: no cover
    from tflite_reader import PADDING_NAMES, Graph, activation_name, read_tflite  # type: ignore

__all__ = ["SUPPORTED_OPS", "ConstantPad", "ResizeBilinear", "EdgeRepeat",
           "build_keras_from_tflite", "prelu_depthwise", "upsample2x_bilinear"]

SUPPORTED_OPS = ("CONV_2D", "DEPTHWISE_CONV_2D", "ADD", "RELU", "RELU6", "PRELU", "MAX_POOL_2D",
                 "AVERAGE_POOL_2D", "PAD", "RESHAPE", "CONCATENATION", "RESIZE_BILINEAR")


@keras.saving.register_keras_serializable(package="edge_lfr")
class ConstantPad(KL.Layer):
    """Zero padding with explicit ``[[before, after], ...]`` per axis (TFLite ``PAD``)."""

    def __init__(self, paddings, **kwargs):
        super().__init__(**kwargs)
        self.paddings = [[int(a), int(b)] for a, b in paddings]

    def call(self, x):
        return keras.ops.pad(x, self.paddings)

    def compute_output_shape(self, input_shape):
        return tuple(None if d is None else d + a + b for d, (a, b) in zip(input_shape, self.paddings))

    def get_config(self):
        return {**super().get_config(), "paddings": self.paddings}


@keras.saving.register_keras_serializable(package="edge_lfr")
class ResizeBilinear(KL.Layer):
    """TFLite ``RESIZE_BILINEAR`` with its ``align_corners`` / ``half_pixel_centers`` flags."""

    def __init__(self, height: int, width: int, align_corners: bool = False,
                 half_pixel_centers: bool = False, **kwargs):
        super().__init__(**kwargs)
        self.height, self.width = int(height), int(width)
        self.align_corners, self.half_pixel_centers = bool(align_corners), bool(half_pixel_centers)

    def call(self, x):
        import tensorflow as tf
        return tf.compat.v1.image.resize_bilinear(x, [self.height, self.width],
                                                  align_corners=self.align_corners,
                                                  half_pixel_centers=self.half_pixel_centers)

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, input_shape[3])

    def get_config(self):
        return {**super().get_config(), "height": self.height, "width": self.width,
                "align_corners": self.align_corners, "half_pixel_centers": self.half_pixel_centers}


@keras.saving.register_keras_serializable(package="edge_lfr")
class EdgeRepeat(KL.Layer):
    """Repeat the first and last row (axis 1) or column (axis 2) once: ``[x0, x, x_last]``.
    Written as two slices and a concatenation (``STRIDED_SLICE`` + ``CONCATENATION``)."""

    def __init__(self, axis: int, **kwargs):
        super().__init__(**kwargs)
        if axis not in (1, 2):
            raise ValueError("EdgeRepeat axis must be 1 (rows) or 2 (columns)")
        self.axis = int(axis)

    def call(self, x):
        if self.axis == 1:
            first, last = x[:, :1], x[:, -1:]
        else:
            first, last = x[:, :, :1], x[:, :, -1:]
        return keras.ops.concatenate([first, x, last], axis=self.axis)

    def compute_output_shape(self, input_shape):
        shape = list(input_shape)
        if shape[self.axis] is not None:
            shape[self.axis] += 2
        return tuple(shape)

    def get_config(self):
        return {**super().get_config(), "axis": self.axis}


# 2x half-pixel bilinear taps: even outputs look back, odd outputs look forward
_EVEN_TAPS = (0.25, 0.75, 0.0)
_ODD_TAPS = (0.0, 0.75, 0.25)


def _phase_conv(x, axis: int, taps, channels: int, name: str):
    kernel_size = (3, 1) if axis == 1 else (1, 3)
    layer = KL.DepthwiseConv2D(kernel_size, padding="valid", use_bias=False, name=name)
    y = layer(x)
    w = np.zeros(kernel_size + (channels, 1), np.float32)
    w.reshape(3, channels, 1)[:, :, 0] = np.asarray(taps, np.float32)[:, None]
    layer.set_weights([w])
    return y


def upsample2x_bilinear(x, name: str):
    """Exact ``resize_bilinear(x, 2x, half_pixel_centers=True)`` of an NHWC tensor, from
    slices, concatenations, fixed depthwise convolutions and reshapes (see module doc)."""
    _, h, w, c = (int(d) if d is not None else None for d in x.shape)
    # rows: [x0, x, x_last] -> even/odd phase -> interleave rows via concat(W) + reshape
    xp = EdgeRepeat(1, name=f"{name}_rows_edge")(x)
    even = _phase_conv(xp, 1, _EVEN_TAPS, c, f"{name}_rows_even")
    odd = _phase_conv(xp, 1, _ODD_TAPS, c, f"{name}_rows_odd")
    y = KL.Concatenate(axis=2, name=f"{name}_rows_cat")([even, odd])       # [1, h, 2w, c]
    y = KL.Reshape((2 * h, w, c), name=f"{name}_rows")(y)                   # [1, 2h, w, c]
    # columns: the same along W, interleaved via concat(C) + reshape
    yp = EdgeRepeat(2, name=f"{name}_cols_edge")(y)
    even = _phase_conv(yp, 2, _EVEN_TAPS, c, f"{name}_cols_even")
    odd = _phase_conv(yp, 2, _ODD_TAPS, c, f"{name}_cols_odd")
    z = KL.Concatenate(axis=3, name=f"{name}_cols_cat")([even, odd])       # [1, 2h, w, 2c]
    return KL.Reshape((2 * h, 2 * w, c), name=name)(z)                      # [1, 2h, 2w, c]


def _depthwise_1x1(x, weights: np.ndarray, name: str, relu: bool = False):
    c = int(x.shape[-1])
    layer = KL.DepthwiseConv2D(1, use_bias=False, activation="relu" if relu else None, name=name)
    y = layer(x)
    layer.set_weights([np.asarray(weights, np.float32).reshape(1, 1, c, 1)])
    return y


def prelu_depthwise(x, alpha: np.ndarray, name: str):
    """``PReLU(x) = relu(x) - alpha * relu(-x)`` (per-channel ``alpha``, any sign) from three
    1x1 ``DEPTHWISE_CONV_2D`` (weights 1 and -1 with a fused ReLU, then -alpha) and an ``ADD``:
    operators that both the Edge TPU and LiteRT's XNNPACK delegate run in int8."""
    c = int(x.shape[-1])
    alpha = np.asarray(alpha, np.float32).reshape(-1)
    if alpha.size == 1:
        alpha = np.full(c, alpha[0], np.float32)
    pos = _depthwise_1x1(x, np.ones(c), f"{name}_pos", relu=True)
    neg = _depthwise_1x1(x, -np.ones(c), f"{name}_neg", relu=True)
    neg = _depthwise_1x1(neg, -alpha, f"{name}_neg_alpha")
    return KL.Add(name=name)([pos, neg])


def _activation(x, code: int, name: str):
    act = activation_name(code)
    if act == "NONE":
        return x
    if act == "RELU":
        return KL.ReLU(name=f"{name}_relu")(x)
    if act == "RELU6":
        return KL.ReLU(max_value=6.0, name=f"{name}_relu6")(x)
    if act == "RELU_N1_TO_1":
        return KL.Lambda(lambda t: keras.ops.clip(t, -1.0, 1.0), name=f"{name}_relu_n1_to_1")(x)
    raise ValueError(f"fused activation {act} is not supported")


def _layer_name(graph: Graph, tensor: int, used: Dict[str, int]) -> str:
    base = "".join(ch if ch.isalnum() or ch in "_-." else "_" for ch in graph.tensors[tensor].name)
    base = base.split(";")[0][:60] or f"t{tensor}"
    used[base] = used.get(base, 0) + 1
    return base if used[base] == 1 else f"{base}_{used[base]}"


def _split_chains(graph: Graph, split: Dict[int, Sequence[Tuple[int, int]]]) -> Dict[int, tuple]:
    """Tensors from each split output back to the CONV_2D(s) producing it, through RESHAPE and
    CONCATENATION: {tensor: (groups, depth)}. Raises ValueError for any other pattern."""
    chain: Dict[int, tuple] = {}
    for pos, groups in split.items():
        out = graph.outputs[pos]
        depth = graph.tensors[out].shape[-1]
        edges = [a for a, _ in groups] + [groups[-1][1]]
        if edges[0] != 0 or edges[-1] != depth or any(b != a for (_, b), (a, _) in zip(groups, groups[1:])):
            raise ValueError(f"output {pos}: channel groups {list(groups)} do not tile 0..{depth}")
        stack = [out]
        while stack:
            t = stack.pop()
            op = graph.producer(t)
            chain[t] = (tuple(groups), depth)
            if op is None:
                raise ValueError(f"output {pos}: tensor {t} has no producer")
            if op.name == "RESHAPE":
                stack.append(op.inputs[0])
            elif op.name == "CONCATENATION":
                if op.options.get("axis") in (-1, len(graph.tensors[t].shape) - 1) or \
                        op.options.get("fused_activation_function"):
                    raise ValueError(f"op {op.index}: cannot split a concatenation along the split axis")
                stack.extend(op.inputs)
            elif op.name == "CONV_2D":
                if graph.tensors[t].shape[-1] % depth or op.options.get("fused_activation_function"):
                    raise ValueError(f"op {op.index}: conv output does not split into groups of {depth}")
            else:
                raise ValueError(f"output {pos}: cannot split through {op.name} (op {op.index})")
    for op in graph.compute_ops():
        if op.outputs[0] not in chain and any(t in chain for t in op.inputs):
            raise ValueError(f"op {op.index} {op.name} uses a tensor of a split output")
    return chain


def build_keras_from_tflite(source, output_names: Optional[List[str]] = None,
                            edgetpu_safe_resize: bool = True,
                            split_outputs: Optional[Dict[int, Sequence[Tuple[int, int]]]] = None,
                            prelu_as_depthwise: bool = False) -> keras.Model:
    """Keras functional model equal (in float) to the ``.tflite`` graph at ``source``.

    ``source``: a path, the file's bytes or a :class:`tflite_reader.Graph`. Batch size is
    fixed at 1 as in the file. ``output_names`` names the model outputs in the graph's output
    order. Raises ValueError on an operator or option this walker does not know.

    ``split_outputs`` = ``{output position: [(start, stop), ...]}`` makes that output several
    outputs, one per channel range of its last axis, named ``<name>_<start>_<stop>``: the
    final CONV_2D(s) are split by output channel and the RESHAPE / CONCATENATION after them
    are done per range. Same values in float; in int8 each range gets its own quantization
    scale (BlazeFace's box centre offsets span a few pixels, its sizes and keypoints a hundred).

    ``prelu_as_depthwise`` writes each ``PRELU`` as :func:`prelu_depthwise` (same values in
    float): LiteRT's XNNPACK delegate does not take int8 ``PRELU``, so a full-integer model
    with many of them runs on the CPU's slow reference kernel, split into as many delegate
    partitions (the int8 face mesh: 5x slower than float; docs/coral.md).
    """
    graph = source if isinstance(source, Graph) else read_tflite(source)
    split_outputs = {int(k): [tuple(g) for g in v] for k, v in (split_outputs or {}).items()}
    chain = _split_chains(graph, split_outputs) if split_outputs else {}
    if len(graph.inputs) != 1:
        raise ValueError(f"expected one graph input, found {len(graph.inputs)}")
    tin = graph.tensors[graph.inputs[0]]
    if tin.dtype != "float32" or len(tin.shape) != 4 or tin.shape[0] != 1:
        raise ValueError(f"expected a float32 [1, H, W, C] input, found {tin.dtype} {list(tin.shape)}")
    inp = keras.Input(shape=tin.shape[1:], batch_size=1, name="input")
    values: Dict[int, object] = {graph.inputs[0]: inp}
    used: Dict[str, int] = {n: 1 for n in (output_names or [])}  # reserved for the outputs

    for op in graph.compute_ops():
        o = op.options
        name = _layer_name(graph, op.outputs[0], used)
        out_shape = graph.tensors[op.outputs[0]].shape

        def arg(k: int):
            t = op.inputs[k]
            if t not in values:
                raise ValueError(f"op {op.index} {op.name}: input tensor {t} "
                                 f"({graph.tensors[t].name}) is not computed yet")
            return values[t]

        if op.outputs[0] in chain:
            values[op.outputs[0]] = _split_op(graph, op, chain[op.outputs[0]], values, name)
            continue
        if op.name in ("CONV_2D", "DEPTHWISE_CONV_2D"):
            w = graph.constant(op.inputs[1])
            b = graph.constant(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
            padding = PADDING_NAMES[o["padding"]].lower()
            strides = (o["stride_h"], o["stride_w"])
            dilation = (o.get("dilation_h_factor", 1), o.get("dilation_w_factor", 1))
            if op.name == "CONV_2D":
                layer = KL.Conv2D(w.shape[0], w.shape[1:3], strides, padding, dilation_rate=dilation,
                                  use_bias=b is not None, name=name)
                y = layer(arg(0))
                weights = [np.transpose(w, (1, 2, 3, 0))]
            else:
                mult = int(o.get("depth_multiplier", 1)) or 1
                c_in = int(arg(0).shape[-1])
                if w.shape[3] != c_in * mult:  # TFLite may store multiplier 0/1 ambiguously
                    mult = w.shape[3] // c_in
                layer = KL.DepthwiseConv2D(w.shape[1:3], strides, padding, depth_multiplier=mult,
                                           dilation_rate=dilation, use_bias=b is not None, name=name)
                y = layer(arg(0))
                weights = [w.reshape(w.shape[1], w.shape[2], c_in, mult)]
            if b is not None:
                weights.append(b.astype(np.float32))
            layer.set_weights(weights)
            y = _activation(y, o["fused_activation_function"], name)
        elif op.name == "ADD":
            if graph.is_constant(op.inputs[1]) or graph.is_constant(op.inputs[0]):
                raise ValueError(f"op {op.index} ADD with a constant operand is not supported")
            y = KL.Add(name=name)([arg(0), arg(1)])
            y = _activation(y, o.get("fused_activation_function", 0), name)
        elif op.name == "RELU":
            y = KL.ReLU(name=name)(arg(0))
        elif op.name == "RELU6":
            y = KL.ReLU(max_value=6.0, name=name)(arg(0))
        elif op.name == "PRELU":
            alpha = graph.constant(op.inputs[1]).reshape(-1)
            if prelu_as_depthwise:
                y = prelu_depthwise(arg(0), alpha, name)
            else:
                layer = KL.PReLU(shared_axes=[1, 2], name=name)
                y = layer(arg(0))
                layer.set_weights([alpha.reshape(1, 1, -1)])
        elif op.name in ("MAX_POOL_2D", "AVERAGE_POOL_2D"):
            cls = KL.MaxPooling2D if op.name == "MAX_POOL_2D" else KL.AveragePooling2D
            y = cls((o["filter_height"], o["filter_width"]), (o["stride_h"], o["stride_w"]),
                    PADDING_NAMES[o["padding"]].lower(), name=name)(arg(0))
            y = _activation(y, o["fused_activation_function"], name)
        elif op.name == "PAD":
            paddings = graph.constant(op.inputs[1]).astype(int).tolist()
            if paddings[0] != [0, 0]:
                raise ValueError(f"op {op.index} PAD pads the batch dimension")
            y = ConstantPad(paddings, name=name)(arg(0))
        elif op.name == "RESHAPE":
            y = KL.Reshape(tuple(int(d) for d in out_shape[1:]), name=name)(arg(0))
        elif op.name == "CONCATENATION":
            axis = int(o["axis"])
            y = KL.Concatenate(axis=axis, name=name)([arg(k) for k in range(len(op.inputs))])
            y = _activation(y, o.get("fused_activation_function", 0), name)
        elif op.name == "RESIZE_BILINEAR":
            x = arg(0)
            h, w_ = int(out_shape[1]), int(out_shape[2])
            in_h, in_w = int(x.shape[1]), int(x.shape[2])
            exact_2x = (h, w_) == (2 * in_h, 2 * in_w) and o.get("half_pixel_centers") \
                and not o.get("align_corners")
            if edgetpu_safe_resize and exact_2x:
                y = upsample2x_bilinear(x, name)
            else:
                y = ResizeBilinear(h, w_, o.get("align_corners", False), o.get("half_pixel_centers", False),
                                   name=name)(x)
        else:
            raise ValueError(f"op {op.index}: {op.name} is not supported by this rebuild "
                             f"(supported: {', '.join(SUPPORTED_OPS)})")
        if tuple(int(d) for d in y.shape) != tuple(out_shape):
            raise ValueError(f"op {op.index} {op.name}: rebuilt shape {tuple(y.shape)} != file {out_shape}")
        values[op.outputs[0]] = y

    if output_names and len(output_names) != len(graph.outputs):
        raise ValueError(f"{len(output_names)} output names for {len(graph.outputs)} outputs")
    outputs = []
    for pos, t in enumerate(graph.outputs):
        base = output_names[pos] if output_names else f"output_{pos}"
        if pos in split_outputs:
            for (a, b), v in zip(split_outputs[pos], values[t]):
                outputs.append(KL.Identity(name=f"{base}_{a}_{b}")(v))
        else:
            outputs.append(KL.Identity(name=base)(values[t]) if output_names else values[t])
    return keras.Model(inp, outputs, name="rebuilt")


def _split_op(graph: Graph, op, spec: tuple, values: Dict[int, object], name: str) -> list:
    """One op of a split output chain, done once per channel group (see ``split_outputs``)."""
    groups, depth = spec
    out_shape = graph.tensors[op.outputs[0]].shape
    if op.name == "CONV_2D":
        o = op.options
        w = graph.constant(op.inputs[1])
        b = graph.constant(op.inputs[2]) if len(op.inputs) > 2 and op.inputs[2] >= 0 else None
        x = values[op.inputs[0]]
        out = []
        for a, e in groups:
            idx = [c for c in range(w.shape[0]) if a <= c % depth < e]
            layer = KL.Conv2D(len(idx), w.shape[1:3], (o["stride_h"], o["stride_w"]),
                              PADDING_NAMES[o["padding"]].lower(),
                              dilation_rate=(o.get("dilation_h_factor", 1), o.get("dilation_w_factor", 1)),
                              use_bias=b is not None, name=f"{name}_{a}_{e}")
            y = layer(x)
            weights = [np.transpose(w[idx], (1, 2, 3, 0))]
            if b is not None:
                weights.append(b[idx].astype(np.float32))
            layer.set_weights(weights)
            out.append(y)
        return out
    if op.name == "RESHAPE":
        if out_shape[-1] != depth:
            raise ValueError(f"op {op.index}: reshape in a split chain must end in {depth} channels")
        return [KL.Reshape(tuple(int(d) for d in out_shape[1:-1]) + (e - a,), name=f"{name}_{a}_{e}")(x)
                for (a, e), x in zip(groups, values[op.inputs[0]])]
    if op.name == "CONCATENATION":
        axis = int(op.options["axis"])
        return [KL.Concatenate(axis=axis, name=f"{name}_{a}_{e}")([values[t][k] for t in op.inputs])
                for k, (a, e) in enumerate(groups)]
    raise ValueError(f"op {op.index}: {op.name} cannot be split")  # pragma: no cover
