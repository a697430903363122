"""edge-lfr: on-device live facial recognition for a standalone police van unit.

The data path, one module per stage::

    capture -> detect -> align/quality -> embed -> match -> (outbox -> mqtt)

Frames are RGB ``uint8`` arrays of shape (H, W, 3) everywhere inside the package;
conversion from OpenCV's BGR happens only at the I/O edge (:mod:`edge.recognition.images`).
The public verbs live in :mod:`edge.recognition.api`.
"""

__version__ = "0.1.0"
