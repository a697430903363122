"""Parser for dlib's DNN serialization of ``dlib_face_recognition_resnet_model_v1.dat``.

Plain Python + numpy; no dlib needed. The file is dlib's ``serialize(net, out)`` of its
metric-learning face ResNet. Format facts this parser relies on (dlib's serialization
conventions):

* integers: one header byte whose low nibble is the number of magnitude bytes that follow
  (at most 8) and whose bit 7 marks a negative value (bits 4-6 are zero), then the magnitude
  in little-endian byte order;
* ``bool``: one ASCII byte, ``'0'`` or ``'1'``;
* strings: an integer length, then the raw bytes;
* ``float``/``double``: an integer mantissa and an integer exponent (value = m * 2**e), with
  exponents 32000/32001/32002 reserved for +inf/-inf/NaN;
* tensors: integer version 2, integers ``n, k, nr, nc``, then ``n*k*nr*nc`` little-endian
  IEEE float32 values;
* alias tensors: integer version 1, then integers ``n, k, nr, nc`` (no data).

The network serializes as: the loss layer (version 1, then ``"loss_metric_2"``, margin and
distance threshold), then each nested layer's version integer from the outermost layer
inwards -- 2 for a computational layer, 1 for a tag or skip layer, 3 for the computational
layer that sits directly on the input layer -- then the input layer
(``"input_rgb_image_sized"``, mean R, G, B, rows, cols), and then, from the innermost layer
outwards, each computational layer's own parameters followed by its wrapper's state (three
bools and three empty tensors, plus the sample expansion factor for the innermost one).
Tag and skip layers carry no state, so their positions are known from the version header
but their tag numbers are not (they are fixed by dlib's C++ network type).

``parse_dat`` returns the layers input-first (the order in which they are computed), with
tag/skip positions kept as :class:`TagOrSkip` markers. It must consume the buffer exactly
and raises :class:`ValueError` naming the byte offset on anything unexpected.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import List, Optional, Tuple, Union

import numpy as np

__all__ = [
    "AddPrev",
    "Affine",
    "AvgPool",
    "Conv",
    "DlibNet",
    "FullyConnected",
    "MaxPool",
    "Relu",
    "TagOrSkip",
    "load_dat",
    "parse_dat",
]

# dlib's float_details: reserved exponents for non-finite values.
_EXP_INF, _EXP_NINF, _EXP_NAN = 32000, 32001, 32002
# Largest tensor we accept (elements); the real file's largest is 256*256*3*3 + 256.
_MAX_TENSOR_ELEMENTS = 64 * 1024 * 1024
_MAX_NAME_LEN = 64


# --------------------------------------------------------------------------- layer types
@dataclass(frozen=True)
class Conv:
    """dlib ``con_`` layer. ``weights`` is (out, in, kh, kw) float32; ``bias`` is (out,)."""

    offset: int
    weights: np.ndarray = field(repr=False)
    bias: np.ndarray = field(repr=False)
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    kind: str = "con"

    @property
    def filters(self) -> int:
        return int(self.weights.shape[0])

    @property
    def kernel(self) -> Tuple[int, int]:
        return int(self.weights.shape[2]), int(self.weights.shape[3])


@dataclass(frozen=True)
class Affine:
    """dlib ``affine_`` layer (frozen batch norm): ``y = gamma * x + beta`` per channel."""

    offset: int
    gamma: np.ndarray = field(repr=False)
    beta: np.ndarray = field(repr=False)
    kind: str = "affine"


@dataclass(frozen=True)
class Relu:
    """dlib ``relu_`` layer."""

    offset: int
    kind: str = "relu"


@dataclass(frozen=True)
class MaxPool:
    """dlib ``max_pool_`` layer."""

    offset: int
    window: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    kind: str = "max_pool"


@dataclass(frozen=True)
class AvgPool:
    """dlib ``avg_pool_`` layer; ``window == (0, 0)`` means pool over the whole plane."""

    offset: int
    window: Tuple[int, int]
    stride: Tuple[int, int]
    padding: Tuple[int, int]
    kind: str = "avg_pool"

    @property
    def is_global(self) -> bool:
        return self.window == (0, 0)


@dataclass(frozen=True)
class AddPrev:
    """dlib ``add_prev_`` layer: adds the output of a tagged earlier layer.

    Operands of different shape are combined as if the smaller were zero-padded at the
    bottom/right and in the extra channels.
    """

    offset: int
    kind: str = "add_prev"


@dataclass(frozen=True)
class FullyConnected:
    """dlib ``fc_`` layer. ``weights`` is (inputs, outputs); ``bias`` is None for fc_no_bias."""

    offset: int
    weights: np.ndarray = field(repr=False)
    bias: Optional[np.ndarray] = field(repr=False)
    kind: str = "fc"

    @property
    def outputs(self) -> int:
        return int(self.weights.shape[1])


@dataclass(frozen=True)
class TagOrSkip:
    """Position of a dlib ``tagN``/``skipN`` layer (no state is serialized for these)."""

    offset: int
    kind: str = "tag_or_skip"


Layer = Union[Conv, Affine, Relu, MaxPool, AvgPool, AddPrev, FullyConnected, TagOrSkip]


@dataclass(frozen=True)
class DlibNet:
    """A parsed dlib network.

    ``layers`` are input-first; ``input_mean_rgb`` is what dlib's ``input_rgb_image_sized``
    subtracts before dividing by 256; ``input_size`` is (rows, cols).
    """

    input_mean_rgb: Tuple[float, float, float]
    input_size: Tuple[int, int]
    loss: str
    margin: float
    distance_threshold: float
    layers: List[Layer]
    total_bytes: int

    def count(self, kind: str) -> int:
        """Number of layers of the given ``kind`` (e.g. ``"con"``)."""
        return sum(1 for layer in self.layers if layer.kind == kind)


# --------------------------------------------------------------------------- primitives
class _Reader:
    """Sequential reader for dlib's serialization primitives over an in-memory buffer."""

    def __init__(self, data: bytes):
        self.data = memoryview(data)
        self.pos = 0

    def fail(self, what: str, at: Optional[int] = None) -> ValueError:
        at = self.pos if at is None else at
        return ValueError(f"dlib .dat parse error at byte offset {at}: {what}")

    def _take(self, n: int, what: str) -> memoryview:
        if n < 0 or self.pos + n > len(self.data):
            raise self.fail(
                f"truncated input: need {n} byte(s) for {what}, "
                f"{len(self.data) - self.pos} left")
        chunk = self.data[self.pos:self.pos + n]
        self.pos += n
        return chunk

    def int(self, what: str = "integer") -> int:
        start = self.pos
        header = self._take(1, what)[0]
        size = header & 0x0F
        if size > 8 or header & 0x70:
            raise self.fail(f"invalid integer header byte 0x{header:02x} for {what}", start)
        value = int.from_bytes(self._take(size, what), "little")
        return -value if header & 0x80 else value

    def uint(self, what: str, maximum: int = 1 << 31) -> int:
        start = self.pos
        value = self.int(what)
        if not 0 <= value <= maximum:
            raise self.fail(f"{what} = {value} out of range 0..{maximum}", start)
        return value

    def expect_int(self, expected: int, what: str) -> None:
        start = self.pos
        value = self.int(what)
        if value != expected:
            raise self.fail(f"{what}: expected {expected}, found {value}", start)

    def bool(self, what: str = "bool") -> bool:
        start = self.pos
        c = self._take(1, what)[0]
        if c not in (0x30, 0x31):
            raise self.fail(f"invalid bool byte 0x{c:02x} for {what} (expected '0' or '1')", start)
        return c == 0x31

    def str(self, what: str = "string") -> str:
        start = self.pos
        n = self.int(f"length of {what}")
        if not 0 <= n <= _MAX_NAME_LEN:
            raise self.fail(f"implausible length {n} for {what}", start)
        raw = bytes(self._take(n, what))
        if not all(0x20 <= b < 0x7F for b in raw):
            raise self.fail(f"non-printable bytes in {what}: {raw!r}", start)
        return raw.decode("ascii")

    def float(self, what: str = "float") -> float:
        start = self.pos
        mantissa = self.int(f"mantissa of {what}")
        exponent = self.int(f"exponent of {what}")
        if exponent == _EXP_INF:
            return float("inf")
        if exponent == _EXP_NINF:
            return float("-inf")
        if exponent == _EXP_NAN:
            return float("nan")
        if not -32768 <= exponent <= 32767 or abs(mantissa) >= 1 << 63:
            raise self.fail(f"invalid float encoding for {what}", start)
        try:
            return float(mantissa) * 2.0 ** exponent
        except OverflowError:
            raise self.fail(f"float {what} overflows", start) from None

    def tensor(self, what: str) -> np.ndarray:
        start = self.pos
        self.expect_int(2, f"tensor version of {what}")
        dims = tuple(self.uint(f"dimension of {what}") for _ in range(4))
        count = dims[0] * dims[1] * dims[2] * dims[3]
        if count > _MAX_TENSOR_ELEMENTS:
            raise self.fail(f"implausible tensor size {dims} for {what}", start)
        raw = self._take(4 * count, f"data of {what} {dims}")
        values = np.frombuffer(raw, dtype="<f4").astype(np.float32).reshape(dims)
        if not np.all(np.isfinite(values)):
            raise self.fail(f"non-finite values in {what}", start)
        return values

    def alias(self, what: str) -> Tuple[int, int, int, int]:
        self.expect_int(1, f"alias tensor version of {what}")
        return tuple(self.uint(f"dimension of {what}") for _ in range(4))  # type: ignore


# --------------------------------------------------------------------------- layers
def _pair(r: _Reader, what: str) -> Tuple[int, int]:
    return r.uint(f"{what} y", 4096), r.uint(f"{what} x", 4096)


def _learning_multipliers(r: _Reader, layer: str) -> None:
    # learning-rate / weight-decay multipliers: training-only, not needed for inference.
    for i in range(4):
        r.float(f"{layer} multiplier {i}")


def _read_con(r: _Reader, offset: int, name: str) -> Conv:
    params = r.tensor(f"{name} params").ravel()
    filters = r.uint(f"{name} num_filters", 65536)
    kernel = _pair(r, f"{name} kernel size")
    stride = _pair(r, f"{name} stride")
    padding = _pair(r, f"{name} padding")
    at = r.pos
    w_alias = r.alias(f"{name} filters")
    b_alias = r.alias(f"{name} biases")
    _learning_multipliers(r, name)
    n, k, kh, kw = w_alias
    if n != filters or (kh, kw) != kernel or k == 0 or min(stride) < 1:
        raise r.fail(f"{name}: filter alias {w_alias} inconsistent with {filters} filters "
                     f"of size {kernel}, stride {stride}", at)
    if b_alias != (1, filters, 1, 1):
        raise r.fail(f"{name}: bias alias {b_alias}, expected (1, {filters}, 1, 1)", at)
    if params.size != n * k * kh * kw + filters:
        raise r.fail(f"{name}: {params.size} parameters, expected {n * k * kh * kw + filters}", at)
    weights = params[:n * k * kh * kw].reshape(n, k, kh, kw)
    return Conv(offset, weights, params[n * k * kh * kw:].copy(), stride, padding)


def _read_affine(r: _Reader, offset: int, name: str) -> Affine:
    params = r.tensor(f"{name} params").ravel()
    at = r.pos
    g_alias = r.alias(f"{name} gamma")
    b_alias = r.alias(f"{name} beta")
    mode = r.int(f"{name} mode")
    if mode != 0:  # 0 = CONV_MODE (per channel); FC_MODE is not used by this network
        raise r.fail(f"{name}: unsupported mode {mode} (only per-channel mode 0)", at)
    channels = g_alias[1]
    if g_alias != (1, channels, 1, 1) or b_alias != g_alias or params.size != 2 * channels:
        raise r.fail(f"{name}: aliases {g_alias}/{b_alias} inconsistent with "
                     f"{params.size} parameters", at)
    return Affine(offset, params[:channels].copy(), params[channels:].copy())


def _read_pool(r: _Reader, offset: int, name: str) -> Union[MaxPool, AvgPool]:
    window = _pair(r, f"{name} window")
    stride = _pair(r, f"{name} stride")
    padding = _pair(r, f"{name} padding")
    if min(stride) < 1:
        raise r.fail(f"{name}: invalid stride {stride}", offset)
    cls = MaxPool if name.startswith("max_pool") else AvgPool
    return cls(offset, window, stride, padding)


def _read_fc(r: _Reader, offset: int, name: str) -> FullyConnected:
    outputs = r.uint(f"{name} num_outputs", 1 << 20)
    inputs = r.uint(f"{name} num_inputs", 1 << 20)
    params = r.tensor(f"{name} params")
    at = r.pos
    w_alias = r.alias(f"{name} weights")
    b_alias = r.alias(f"{name} biases")
    bias_mode = r.int(f"{name} bias_mode")
    _learning_multipliers(r, name)
    if bias_mode not in (0, 1):  # 0 = FC_HAS_BIAS, 1 = FC_NO_BIAS
        raise r.fail(f"{name}: invalid bias_mode {bias_mode}", at)
    rows = inputs + (1 if bias_mode == 0 else 0)
    if params.shape != (rows, outputs, 1, 1) or w_alias != (inputs, outputs, 1, 1):
        raise r.fail(f"{name}: params {params.shape} / weight alias {w_alias} inconsistent "
                     f"with {inputs} inputs, {outputs} outputs", at)
    if bias_mode == 0 and b_alias != (1, outputs, 1, 1):
        raise r.fail(f"{name}: bias alias {b_alias}, expected (1, {outputs}, 1, 1)", at)
    flat = params.reshape(rows, outputs)
    bias = flat[inputs].copy() if bias_mode == 0 else None
    return FullyConnected(offset, flat[:inputs].copy(), bias)


_READERS = {
    "con_4": _read_con,
    "affine_": _read_affine,
    "relu_": lambda r, offset, name: Relu(offset),
    "add_prev_": lambda r, offset, name: AddPrev(offset),
    "max_pool_2": _read_pool,
    "avg_pool_2": _read_pool,
    "fc_2": _read_fc,
}


# --------------------------------------------------------------------------- network
def parse_dat(data: bytes) -> DlibNet:
    """Parse a serialized dlib metric-learning network (``loss_metric``) from ``data``.

    Raises ValueError with the byte offset if the data is truncated, corrupt, contains
    trailing bytes, or uses a layer type this parser does not know.
    """
    r = _Reader(data)
    r.expect_int(1, "loss layer version")
    loss = r.str("loss layer name")
    if loss != "loss_metric_2":
        raise r.fail(f"unsupported loss layer {loss!r} (expected 'loss_metric_2')", 0)
    margin = r.float("loss margin")
    distance_threshold = r.float("loss distance threshold")

    # Version header, outermost layer first: 2 = computational, 1 = tag/skip, 3 = innermost.
    header: List[Tuple[int, int]] = []  # (version, byte offset)
    while True:
        at = r.pos
        version = r.int("layer version")
        if version not in (1, 2, 3):
            raise r.fail(f"unexpected layer version {version} in the network header", at)
        header.append((version, at))
        if version == 3:
            break
        if len(header) > 100000:
            raise r.fail("network header does not terminate", at)

    at = r.pos
    name = r.str("input layer name")
    if name != "input_rgb_image_sized":
        raise r.fail(f"unsupported input layer {name!r}", at)
    mean = (r.float("input mean red"), r.float("input mean green"), r.float("input mean blue"))
    size = (r.uint("input rows", 65536), r.uint("input cols", 65536))

    layers: List[Layer] = []
    # Walk the header innermost-first; each computational layer's details follow in order.
    # TagOrSkip markers get the offset of their version integer in the header.
    for version, header_offset in reversed(header):
        if version == 1:
            layers.append(TagOrSkip(header_offset))
            continue
        at = r.pos
        name = r.str("layer name")
        reader = _READERS.get(name)
        if reader is None:
            raise r.fail(f"unknown layer type {name!r}", at)
        layers.append(reader(r, at, name))
        for flag in ("this_layer_setup_called", "gradient_input_is_stale",
                     "get_output_and_gradient_input_disabled"):
            r.bool(f"{name} {flag}")
        for what in ("x_grad", "cached_output", "params_grad"):
            t_at = r.pos
            if r.tensor(f"{name} {what}").size:
                raise r.fail(f"{name} {what}: expected an empty tensor", t_at)
        if version == 3:
            r.expect_int(1, "sample_expansion_factor")

    if r.pos != len(r.data):
        raise r.fail(f"{len(r.data) - r.pos} unexpected trailing byte(s) after the network")
    return DlibNet(mean, size, loss, margin, distance_threshold, layers, len(r.data))


def load_dat(path: Union[str, os.PathLike]) -> DlibNet:
    """Read and parse a dlib ``.dat`` network file (see :func:`parse_dat`)."""
    with open(path, "rb") as f:
        data = f.read()
    return parse_dat(data)


if __name__ == "__main__":  # pragma: no cover - manual inspection helper
    import sys
    from collections import Counter

    if len(sys.argv) > 1:
        src = sys.argv[1]
    else:
        import face_recognition_models
        src = face_recognition_models.face_recognition_model_location()
    net = load_dat(src)
    print(f"{src}: {net.total_bytes} bytes, input {net.input_size} mean {net.input_mean_rgb}, "
          f"{net.loss} margin {net.margin} threshold {net.distance_threshold}")
    print(dict(Counter(layer.kind for layer in net.layers)))
    for layer in net.layers:
        print(layer)
