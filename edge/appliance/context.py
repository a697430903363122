"""The context image of an alert: the camera's view around the matched person, every other face
blurred on the unit before it is encoded.

An officer has to find the person in a crowd and judge them: head, shoulders and clothing, not
only the 150x150 aligned face chip. :func:`context_region` is the part of the frame around the
matched face, :data:`WIDTH_FACES` face sizes wide and :data:`HEIGHT_FACES` tall (from half a face
above the head down over the shoulders and chest), clipped to the frame. :func:`context_image`
cuts it out and obscures **every other face** in it with the operator preview's blur
(:func:`edge.appliance.preview.redact`: each box grown by half its size on each side, reduced to
a 4x4 mosaic and blurred; ``tests/appliance/test_preview.py`` and ``tests/appliance/test_context.py``
measured that the unit's own matcher no longer recognises a face blurred so).

Which faces are "other": every box the pipeline knows of in that frame (each detection and each
live track's box, :func:`edge.appliance.preview.preview_boxes`) that is not the matched face
itself; optionally (``detect``) also every face a detector finds in the region itself, which
covers a face the frame's detection pass had not looked for yet. The matched face is recognised
by overlap with its own detection box, and the pixels inside that box are kept as they were (a
stale track box of the same person, or a bystander's grown box, must not hide the face the alert
is about).

The image is made in memory from the embedding job's patch of the frame (which is cut large
enough for it, :func:`edge.appliance.pipeline.embed_job`), only for a match, and handed to the
alert builder; the unblurred region is dropped with the job. Nothing about a bystander leaves the
unit: their face is obscured before the first encoding.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import numpy as np

__all__ = ["WIDTH_FACES", "HEIGHT_FACES", "ABOVE_FACES", "context_region", "context_image", "is_same_face"]

#: The region is this many face sizes wide (centred on the face) ...
WIDTH_FACES = 3.0
#: ... and this many tall,
HEIGHT_FACES = 4.0
#: starting this many face sizes above the top of the face box (hair, hat).
ABOVE_FACES = 0.5
#: a box overlapping the matched face's box by this IoU or more is the matched face itself.
SAME_FACE_IOU = 0.3

Box = Sequence[float]


def context_region(box: Box, width: int, height: int) -> tuple[int, int, int, int]:
    """(x0, y0, x1, y1) in frame pixels of the context around face ``box``, clipped to a
    ``width`` x ``height`` frame (x1, y1 exclusive)."""
    x0, y0, x1, y1 = (float(v) for v in box)
    s = max(x1 - x0, y1 - y0, 1.0)
    cx = (x0 + x1) / 2.0
    top = y0 - ABOVE_FACES * s
    rx0 = int(np.floor(cx - WIDTH_FACES * s / 2.0))
    rx1 = int(np.ceil(cx + WIDTH_FACES * s / 2.0))
    ry0 = int(np.floor(top))
    ry1 = int(np.ceil(top + HEIGHT_FACES * s))
    return max(0, rx0), max(0, ry0), min(int(width), rx1), min(int(height), ry1)


def _iou(a: Box, b: Box) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = ix * iy
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


def is_same_face(box: Box, matched: Box) -> bool:
    """Whether ``box`` is the matched face (its detection or its track's box): overlap of at least
    :data:`SAME_FACE_IOU`, or the centre of either box inside the other (two faces cannot be seen
    so much on top of each other)."""
    b = [float(v) for v in box]
    m = [float(v) for v in matched]
    if _iou(b, m) >= SAME_FACE_IOU:
        return True
    def centre_in(p, q):
        cx, cy = (p[0] + p[2]) / 2, (p[1] + p[3]) / 2
        return q[0] <= cx <= q[2] and q[1] <= cy <= q[3]
    return centre_in(b, m) or centre_in(m, b)


def context_image(patch: np.ndarray, offset: tuple[int, int], face_box: Box, other_boxes: Iterable[Box],
                  frame_size: tuple[int, int] | None = None,
                  detect: Callable[[np.ndarray], Iterable[Box]] | None = None) -> np.ndarray:
    """The context image (RGB uint8, a new array) for the matched face ``face_box``.

    ``patch`` is a part of the frame whose top-left corner is ``offset`` (x, y) in the frame (the
    whole frame with offset (0, 0)); ``face_box`` and ``other_boxes`` are in frame pixels;
    ``frame_size`` (width, height) clips the region (default: the patch's extent). Every box of
    ``other_boxes`` that is not the matched face, and every face ``detect(region)`` returns (boxes
    in region pixels) that is not it, is obscured with the preview's blur."""
    from edge.appliance.preview import redact

    if not isinstance(patch, np.ndarray) or patch.ndim != 3 or patch.dtype != np.uint8:
        raise ValueError("patch must be an RGB uint8 array")
    ox, oy = int(offset[0]), int(offset[1])
    ph, pw = patch.shape[:2]
    fw, fh = frame_size if frame_size is not None else (ox + pw, oy + ph)
    x0, y0, x1, y1 = context_region(face_box, fw, fh)
    x0, y0 = max(x0, ox), max(y0, oy)                  # what the patch holds of the region
    x1, y1 = min(x1, ox + pw), min(y1, oy + ph)
    if x1 - x0 < 2 or y1 - y0 < 2:
        raise ValueError("the context region lies outside the patch")
    region = patch[y0 - oy:y1 - oy, x0 - ox:x1 - ox]
    others = [tuple(float(v) for v in b) for b in other_boxes if not is_same_face(b, face_box)]
    shifted = [(b[0] - x0, b[1] - y0, b[2] - x0, b[3] - y0) for b in others]
    if detect is not None:
        local_face = (face_box[0] - x0, face_box[1] - y0, face_box[2] - x0, face_box[3] - y0)
        for b in detect(np.ascontiguousarray(region)):
            b = tuple(float(v) for v in b)
            if not is_same_face(b, local_face):
                shifted.append(b)
    w, h = x1 - x0, y1 - y0
    inside = [b for b in shifted if b[2] > 0 and b[3] > 0 and b[0] < w and b[1] < h]
    out = redact(np.ascontiguousarray(region), [(b, False) for b in inside], mode="faces", max_width=None,
                 draw_matches=False)
    # the matched face itself stays as the camera saw it: a grown box of a bystander beside it, or a
    # stale track of the same person (a box predicted where the face was), must not hide it. The
    # pixels inside the matched face's own detection box are that face's (the chip shows it too).
    fx0, fy0 = max(0, int(np.floor(face_box[0] - x0))), max(0, int(np.floor(face_box[1] - y0)))
    fx1, fy1 = min(w, int(np.ceil(face_box[2] - x0))), min(h, int(np.ceil(face_box[3] - y0)))
    if fx1 > fx0 and fy1 > fy0:
        out[fy0:fy1, fx0:fx1] = region[fy0:fy1, fx0:fx1]
    return out
