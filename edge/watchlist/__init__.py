"""Signed, encrypted, expiring watchlist bundles: issuer and device keys, the envelope, the safe
tar reader, enrolment, and the unit's one live list."""
from edge.lazy import lazy_exports

__all__ = ["UnitWatchlist", "LoadedList", "make_bundle", "open_bundle", "enrol", "BundleError"]

__getattr__, __dir__ = lazy_exports(__name__, {
    "UnitWatchlist": "edge.watchlist.unit",
    "LoadedList": "edge.watchlist.unit",
    "make_bundle": "edge.watchlist.bundle",
    "open_bundle": "edge.watchlist.bundle",
    "enrol": "edge.watchlist.enrol",
    "BundleError": "edge.watchlist.errors",
})
