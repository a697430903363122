"""tf.keras rebuild of dlib's face-recognition ResNet from a parsed ``.dat`` file.

The model takes float32 RGB pixels in 0..255, NHWC ``[batch, 150, 150, 3]``, applies dlib's
input normalisation inside the graph (``(x - mean_rgb) / 256``) and returns the 128-d
descriptor exactly as dlib's ``compute_face_descriptor`` does (not L2-normalised).

Mapping from dlib layers:

* ``con`` + the following ``affine`` (a frozen batch norm) become one ``Conv2D`` with the
  affine folded in: ``W' = W * gamma``, ``b' = b * gamma + beta``;
* symmetric padding of ``k // 2`` at stride 1 is ``padding="same"``; other non-zero padding
  becomes an explicit ``ZeroPadding2D`` before a ``"valid"`` convolution;
* ``add_prev`` adds a tagged earlier output; when the operands differ in size (at the
  downsampling blocks) dlib zero-pads the smaller one at the bottom/right and in the extra
  channels, which :class:`ZeroPadTo` reproduces;
* ``avg_pool`` with a 0x0 window pools the whole plane; ``fc`` without bias is ``Dense``.

Tag numbers are not stored in the file (they are part of dlib's C++ network type). Markers
are interpreted with the pattern of dlib's ResNet templates: ``residual`` is
``tag1, <block>, add_prev1`` and ``residual_down`` is
``tag1, <block>, tag2, skip1, avg_pool, add_prev2``. Anything else raises ValueError.
"""
from __future__ import annotations

import os
from typing import Optional, Union

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402
from keras import layers as KL  # noqa: E402

try:  # works both as ``models.dlib_keras`` and when models/ itself is on sys.path
    from .dlib_dat import (AddPrev, Affine, AvgPool, Conv, DlibNet, FullyConnected,
                           MaxPool, Relu, TagOrSkip, load_dat)
except ImportError:  # pragma: no cover
    from dlib_dat import (AddPrev, Affine, AvgPool, Conv, DlibNet, FullyConnected,  # type: ignore
                          MaxPool, Relu, TagOrSkip, load_dat)

__all__ = ["ZeroPadTo", "build_keras_model", "build_keras_model_from_file"]


@keras.saving.register_keras_serializable(package="edge_lfr")
class ZeroPadTo(KL.Layer):
    """Zero-pad an NHWC tensor at the bottom, right and in extra channels to (h, w, c)."""

    def __init__(self, height: int, width: int, channels: int, **kwargs):
        super().__init__(**kwargs)
        self.height, self.width, self.channels = int(height), int(width), int(channels)

    def call(self, x):
        _, h, w, c = x.shape
        if (h, w, c) == (self.height, self.width, self.channels):
            return x
        return keras.ops.pad(
            x, [[0, 0], [0, self.height - h], [0, self.width - w], [0, self.channels - c]])

    def compute_output_shape(self, input_shape):
        return (input_shape[0], self.height, self.width, self.channels)

    def get_config(self):
        config = super().get_config()
        config.update(height=self.height, width=self.width, channels=self.channels)
        return config


def _add_like_dlib(a, b, name: str):
    """``add_prev``: sum of two NHWC tensors, the smaller zero-padded to the larger."""
    shape = [max(a.shape[i], b.shape[i]) for i in (1, 2, 3)]
    if list(a.shape[1:]) != shape:
        a = ZeroPadTo(*shape, name=f"{name}_pad_a")(a)
    if list(b.shape[1:]) != shape:
        b = ZeroPadTo(*shape, name=f"{name}_pad_b")(b)
    return KL.Add(name=name)([a, b])


def _conv(x, conv: Conv, affine: Optional[Affine], index: int):
    out_ch, in_ch, kh, kw = conv.weights.shape
    if x.shape[-1] != in_ch:
        raise ValueError(f"con at byte offset {conv.offset}: expects {in_ch} input channels, "
                         f"gets {x.shape[-1]}")
    kernel = conv.weights.transpose(2, 3, 1, 0).astype(np.float64)  # -> (kh, kw, in, out)
    bias = conv.bias.astype(np.float64)
    if affine is not None:
        if affine.gamma.shape != (out_ch,):
            raise ValueError(f"affine at byte offset {affine.offset}: {affine.gamma.shape[0]} "
                             f"channels after a con with {out_ch} filters")
        kernel = kernel * affine.gamma.astype(np.float64)
        bias = bias * affine.gamma + affine.beta
    py, px = conv.padding
    if conv.stride == (1, 1) and kh % 2 == 1 and kw % 2 == 1 and (py, px) == (kh // 2, kw // 2):
        padding = "same"
    else:
        padding = "valid"
        if py or px:
            x = KL.ZeroPadding2D((py, px), name=f"conv{index}_pad")(x)
    layer = KL.Conv2D(out_ch, (kh, kw), strides=conv.stride, padding=padding,
                      name=f"conv{index}")
    x = layer(x)
    layer.set_weights([kernel.astype(np.float32), bias.astype(np.float32)])
    return x


def build_keras_model(net: DlibNet, batch_size: Optional[int] = 1,
                      name: str = "dlib_resnet_v1") -> keras.Model:
    """Build the Keras model for a parsed dlib network (see module docstring).

    ``batch_size`` fixes the batch dimension (1 for TFLite export; None for a free batch).
    """
    rows, cols = net.input_size
    inp = keras.Input((rows, cols, 3), batch_size=batch_size, name="rgb", dtype="float32")
    mean = np.asarray(net.input_mean_rgb, np.float32)
    x = KL.Rescaling(scale=1.0 / 256.0, offset=(-mean / 256.0).tolist(),
                     name="dlib_input_norm")(inp)

    layers = net.layers
    state, tag1, tag2 = "idle", None, None
    n_conv = n_add = n_pool = 0
    i = 0
    while i < len(layers):
        layer = layers[i]
        if isinstance(layer, Conv):
            affine = layers[i + 1] if i + 1 < len(layers) and isinstance(layers[i + 1], Affine) else None
            x = _conv(x, layer, affine, n_conv)
            n_conv += 1
            i += 2 if affine is not None else 1
            continue
        if isinstance(layer, Affine):
            raise ValueError(f"affine at byte offset {layer.offset} does not follow a con "
                             "layer; this builder only supports folding it into a convolution")
        if isinstance(layer, Relu):
            x = KL.ReLU(name=f"relu{i}")(x)
        elif isinstance(layer, MaxPool):
            if layer.padding != (0, 0):
                raise ValueError(f"max_pool at byte offset {layer.offset}: padding "
                                 f"{layer.padding} is not supported")
            x = KL.MaxPool2D(layer.window, layer.stride, "valid", name=f"max_pool{n_pool}")(x)
            n_pool += 1
        elif isinstance(layer, AvgPool):
            if layer.padding != (0, 0):
                raise ValueError(f"avg_pool at byte offset {layer.offset}: padding "
                                 f"{layer.padding} is not supported")
            if layer.is_global:
                x = KL.GlobalAveragePooling2D(name="global_avg_pool")(x)
            else:
                x = KL.AveragePooling2D(layer.window, layer.stride, "valid",
                                        name=f"avg_pool{n_pool}")(x)
                n_pool += 1
        elif isinstance(layer, TagOrSkip):
            if state == "idle":          # tag1: block input
                tag1, state = x, "block"
            elif state == "block":       # tag2: block output (downsampling block)
                tag2, state = x, "tagged_output"
            elif state == "tagged_output":  # skip1: continue from the block input
                x, state = tag1, "shortcut"
            else:
                raise ValueError(f"tag/skip marker at header byte offset {layer.offset} does "
                                 "not fit dlib's residual block pattern")
        elif isinstance(layer, AddPrev):
            if state == "block":
                x = _add_like_dlib(tag1, x, name=f"add{n_add}")
            elif state == "shortcut":
                x = _add_like_dlib(x, tag2, name=f"add{n_add}")
            else:
                raise ValueError(f"add_prev at byte offset {layer.offset} has no matching tag")
            n_add += 1
            state, tag1, tag2 = "idle", None, None
        elif isinstance(layer, FullyConnected):
            if len(x.shape) != 2:
                raise ValueError(f"fc at byte offset {layer.offset}: only supported after a "
                                 f"global average pool (input shape {x.shape})")
            if x.shape[-1] != layer.weights.shape[0]:
                raise ValueError(f"fc at byte offset {layer.offset}: expects "
                                 f"{layer.weights.shape[0]} inputs, gets {x.shape[-1]}")
            dense = KL.Dense(layer.outputs, use_bias=layer.bias is not None, name="fc")
            x = dense(x)
            dense.set_weights([layer.weights] + ([layer.bias] if layer.bias is not None else []))
        else:  # pragma: no cover - parse_dat only yields the types above
            raise ValueError(f"unsupported layer {layer!r}")
        i += 1
    if state != "idle":
        raise ValueError("network ends inside an unfinished residual block")
    if len(x.shape) != 2:
        raise ValueError(f"network output has shape {x.shape}, expected a descriptor vector")
    return keras.Model(inp, x, name=name)


def build_keras_model_from_file(path: Union[str, os.PathLike],
                                batch_size: Optional[int] = 1) -> keras.Model:
    """Parse ``path`` (a dlib ``.dat``) and build the Keras model."""
    return build_keras_model(load_dat(path), batch_size=batch_size)
