"""Embedding: aligned 150x150 chips -> L2-normalised 128-d float32 descriptors.

Runs the int8 (or float) dlib ResNet TFLite; quantisation of the input and dequantisation
of the output follow the tensors' own (scale, zero_point).
"""
from __future__ import annotations

import numpy as np

from edge.errors import InputError
from edge.recognition.runtime import LoadedModel


class Embedder:
    def __init__(self, model: LoadedModel, mirror_average: bool = False):
        self.model = model
        self.mirror_average = mirror_average
        inp = model.inputs[0]
        self.size = int(inp["shape"][1])
        self.in_dtype = inp["dtype"]
        self.in_scale, self.in_zero = inp["quantization"]
        out = model.outputs[0]
        self.out_scale, self.out_zero = out["quantization"]
        self.out_quantized = out["dtype"] != np.float32
        self.dim = int(out["shape"][-1])

    def _prepare(self, chip: np.ndarray) -> np.ndarray:
        if self.in_dtype == np.float32:
            return chip[None].astype(np.float32)
        if self.in_scale == 1.0 and self.in_zero == 0 and self.in_dtype == np.uint8:
            return chip[None]
        info = np.iinfo(self.in_dtype)
        q = np.round(chip.astype(np.float32) / self.in_scale + self.in_zero)
        return np.clip(q, info.min, info.max).astype(self.in_dtype)[None]

    def _raw(self, chip: np.ndarray) -> np.ndarray:
        y = self.model.run(self._prepare(chip))[0][0]
        if self.out_quantized:
            y = (y.astype(np.float32) - self.out_zero) * self.out_scale
        return y

    def embed(self, chips: np.ndarray) -> np.ndarray:
        """chips: uint8 (150, 150, 3) or (M, 150, 150, 3) RGB -> float32 (M, 128), rows unit-norm.

        With ``mirror_average`` each row is the normalised sum of the chip's and its mirror
        image's descriptors (the mirror of a face is the same identity; averaging the two
        cancels some alignment and lighting noise)."""
        if not isinstance(chips, np.ndarray) or chips.dtype != np.uint8:
            raise InputError(f"chips must be a uint8 numpy array, got "
                             f"{getattr(chips, 'dtype', type(chips).__name__)}")
        if chips.ndim == 3:
            chips = chips[None]
        if chips.ndim != 4 or chips.shape[1:] != (self.size, self.size, 3):
            raise InputError(f"chips must have shape (M, {self.size}, {self.size}, 3), got {chips.shape}")
        out = np.empty((len(chips), self.dim), np.float32)
        for i, chip in enumerate(chips):
            out[i] = self._raw(chip)
            if self.mirror_average:
                out[i] += self._raw(np.ascontiguousarray(chip[:, ::-1]))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)
