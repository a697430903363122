"""Child process for the SIGKILL test: a unit that makes alerts and publishes them from its outbox.

    python tests/support/alert_producer.py CONFIG.json produce   # make an alert every 10 ms, forever;
                                                         # prints "ENQ <event_id>" after each commit
    python tests/support/alert_producer.py CONFIG.json drain     # make none; exit 0 once the outbox is empty

The parent kills it with SIGKILL at random moments and checks that nothing is lost.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]

from edge.config import validate  # noqa: E402
from edge.alerts.publisher import AlertPublisher
from tests.support.brokers import make_alert  # noqa: E402


def main() -> int:
    cfg = validate(json.loads(Path(sys.argv[1]).read_text()))
    mode = sys.argv[2]
    pub = AlertPublisher(cfg).start()
    if mode == "drain":
        ok = pub.wait_idle(60.0)
        pub.stop()
        print("DRAINED" if ok else "NOT-DRAINED", flush=True)
        return 0 if ok else 1
    n = 0
    while True:
        a = make_alert(cfg.unit.id, n)
        pub.submit(a)
        print("ENQ", a["event_id"], flush=True)
        n += 1
        time.sleep(0.01)


if __name__ == "__main__":
    sys.exit(main())
