"""One line of text per alert, for technicians' terminals (``edge-lfr alerts``) and the demo."""
from __future__ import annotations


def one_in(rate: float) -> str:
    """'1 in 3,800' for a rate of 0.00026 (two significant figures from 100 on)."""
    if not rate > 0:
        return "none"
    n = 1.0 / rate
    return f"1 in {float(f'{n:.2g}') if n >= 100 else round(n):,.0f}"


def format_alert(a: dict) -> str:
    margin = "n/a" if a["margin"] is None else f"{a['margin']:.3f}"
    cal = a.get("calibrated")
    meaning = ""
    if cal:
        rarer = "" if cal["supported"] else ", extrapolated beyond the calibration"
        meaning = (f" ~{one_in(cal['expected_fpir'])} passers-by{rarer} "
                   f"(alerts set for {one_in(cal['target_fpir'])}, {cal['watchlist_size']} listed)")
    return (f"{a['alerted_at']}  {a['unit_id']}  {a['category'].upper():10s} {a['subject_id']}  "
            f"score {a['score']:.3f} (threshold {a['threshold']:.3f}, margin {margin}){meaning}  "
            f"track {a['track_id']}  bundle {a['bundle_id']}#{a['bundle_serial']}  event {a['event_id']}")
