"""An alert as a few lines of text for technicians' terminals (``edge-lfr alerts``) and the demo:
at most 80 columns (longer ids wrap), what the score means in words, the images it carries."""
from __future__ import annotations

import base64
import textwrap

#: Alert lines fit a terminal of this many columns (continuation lines are indented).
ALERT_COLUMNS = 80


def one_in(rate: float) -> str:
    """'1 in 3,800' for a rate of 0.00026 (two significant figures from 100 on)."""
    if not rate > 0:
        return "none"
    n = 1.0 / rate
    return f"1 in {float(f'{n:.2g}') if n >= 100 else round(n):,.0f}"


def meaning_words(cal: dict | None, category: str = "") -> str:
    """What a calibrated score means, in words: "~1 in 3,800 passers-by not on the list score this
    high (wanted alerts set for 1 in 1,000; 826 listed)"; beyond what the calibration measured no
    number is given ("beyond the calibrated range"), since an extrapolated one invites over-reading."""
    if not cal:
        return ""
    what = f"{category} alerts" if category else "alerts"
    setting = f"({what} set for {one_in(cal['target_fpir'])}; {cal['watchlist_size']} listed)"
    if not cal["supported"]:
        return f"rarer among passers-by than the calibration measured: beyond the calibrated range {setting}"
    return f"~{one_in(cal['expected_fpir'])} passers-by not on the list score this high {setting}"


def _images_line(a: dict) -> str:
    import cv2
    import numpy as np
    sizes = []
    for key, name in (("context_jpeg", "context"), ("probe_jpeg", "face"), ("reference_jpeg", "watchlist")):
        if not a.get(key):
            continue
        raw = base64.b64decode(a[key])
        img = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
        dims = f"{img.shape[1]}x{img.shape[0]}" if img is not None else "?"
        sizes.append(f"{name} {dims} ({len(raw) / 1024:.0f} KB)")
    return "images: " + ", ".join(sizes)


def format_alert(a: dict, columns: int = ALERT_COLUMNS) -> str:
    """One alert as a few lines of at most ``columns`` characters (longer ids wrap): who and when,
    the score, what it means, the images it carries, where it came from."""
    margin = "n/a" if a["margin"] is None else f"{a['margin']:.3f}"
    head = f"{a['alerted_at']}  {a['unit_id']}  {a['category'].upper()}  {a['subject_id']}"
    parts = [f"score {a['score']:.3f} (threshold {a['threshold']:.3f}, margin {margin})  track {a['track_id']}"]
    words = meaning_words(a.get("calibrated"), a["category"])
    if words:
        parts.append(words)
    parts.append(_images_line(a))
    parts.append(f"bundle {a['bundle_id']}#{a['bundle_serial']}  event {a['event_id']}")
    lines = textwrap.wrap(head, columns, subsequent_indent="    ", break_on_hyphens=False)
    for p in parts:
        lines += textwrap.wrap(p, columns, initial_indent="  ", subsequent_indent="    ", break_on_hyphens=False)
    return "\n".join(lines)
