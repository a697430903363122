"""What the unit keeps and for how long, and the record that shows it: the hash-chained signed
audit log, retention, the deployment report."""
from edge.lazy import lazy_exports

__all__ = ["AuditLog", "verify", "ServiceAudit", "Retention", "build_report"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "AuditLog": "edge.privacy.audit",
    "verify": "edge.privacy.audit",
    "ServiceAudit": "edge.privacy.service_audit",
    "Retention": "edge.privacy.retention",
    "build_report": "edge.privacy.report",
})
