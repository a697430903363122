"""The running unit: capture -> work board -> inference workers -> tracker -> match -> alert;
assembled in one place (builder) and run as a systemd service."""
from edge.lazy import lazy_exports

__all__ = ["build_appliance", "build_recognizers", "Pipeline", "Tracker", "open_source", "run_service"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "build_appliance": "edge.appliance.builder",
    "build_recognizers": "edge.appliance.builder",
    "Pipeline": "edge.appliance.pipeline",
    "Tracker": "edge.appliance.track",
    "open_source": "edge.appliance.capture",
    "run_service": "edge.appliance.service",
})
