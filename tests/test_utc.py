"""edge.utc: the two textual UTC forms (seconds for signed files, milliseconds for messages and the audit log)."""
from datetime import datetime, timedelta, timezone

import pytest

from edge.alerts.schema import AlertError
from edge.errors import InputError
from edge.utc import format_utc, format_utc_ms, parse_canonical, parse_utc, parse_utc_ms


def test_millisecond_form_from_seconds_and_aware_datetimes():
    assert format_utc_ms(0) == "1970-01-01T00:00:00.000Z"
    t = datetime(2025, 5, 1, 12, 0, 0, 123456, tzinfo=timezone(timedelta(hours=2)))
    assert format_utc_ms(t) == "2025-05-01T10:00:00.123Z"
    assert parse_utc_ms("2025-05-01T10:00:00.123Z") == pytest.approx(t.timestamp(), abs=1e-3)


@pytest.mark.parametrize("bad", [datetime(2025, 1, 1), float("nan"), float("inf"), "now", True, None])
def test_millisecond_form_refuses_what_is_not_an_instant(bad):
    with pytest.raises(InputError):
        format_utc_ms(bad)
    with pytest.raises(AlertError):  # the caller chooses the error its users see
        format_utc_ms(bad, AlertError)


def test_second_form_round_trips_and_refuses_naive_or_impossible_times():
    assert parse_canonical(format_utc(1748764800), "t") == 1748764800
    with pytest.raises(InputError, match="not a valid date"):
        parse_canonical("2026-02-30T00:00:00Z", "t")
    with pytest.raises(InputError, match="no timezone"):
        parse_utc("2025-06-01T08:00:00", "t")
