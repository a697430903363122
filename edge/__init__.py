"""edge-lfr: on-device live facial recognition for a standalone police van unit.

The folders follow the data path, and imports point one way along it::

    cli -> tools -> appliance -> privacy -> watchlist -> alerts, matching -> recognition -> base

    recognition/  capture's frames -> detect -> landmarks -> align -> quality gate -> embed
    matching/     probe -> top-k over the watchlist -> calibrated score and threshold
    alerts/       match -> alert message -> durable outbox -> MQTT; officers' adjudications
    watchlist/    signed, encrypted, expiring bundles and the unit's one live list
    privacy/      audit log, retention, deployment report
    appliance/    camera -> pipeline threads -> tracker -> alerts: the running unit (builder.py
                  assembles it; service.py runs it under systemd)
    tools/        rigs, benches, evaluation and the demo (development; never imported by the above)
    cli/          ``edge-lfr``

Frames are RGB ``uint8`` arrays of shape (H, W, 3) everywhere inside the package;
conversion from OpenCV's BGR happens only at the I/O edge (:mod:`edge.recognition.images`).
The public verbs, named here and loaded on first use::

    from edge import Recognizer, load_config
    faces = Recognizer(load_config("unit.yaml")).faces(frame)
"""
from edge.lazy import lazy_exports

__version__ = "0.1.0"

__all__ = ["Recognizer", "Config", "load_config", "EdgeError", "__version__"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "Recognizer": "edge.recognition.api",
    "Config": "edge.config",
    "load_config": "edge.config",
    "EdgeError": "edge.errors",
})
