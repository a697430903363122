"""Match events off the unit: message schemas, the durable outbox, the MQTT publisher and
subscriber, officers' adjudications, how long match records live."""
from edge.lazy import lazy_exports

__all__ = ["AlertPublisher", "Subscriber", "Outbox", "AdjudicationRecords", "build_alert", "validate_alert", "purge_match_records"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "AlertPublisher": "edge.alerts.publisher",
    "Subscriber": "edge.alerts.subscriber",
    "Outbox": "edge.alerts.outbox",
    "AdjudicationRecords": "edge.alerts.adjudication",
    "build_alert": "edge.alerts.message",
    "validate_alert": "edge.alerts.schema",
    "purge_match_records": "edge.alerts.expiry",
})
