"""``edge-lfr demo``: the appliance end to end on composed footage, in about half a minute.

1. Cast: Grace Hopper (matplotlib, public domain) is on the watchlist, the NASA astronaut
   (scikit-image, public domain) is not; with ../shared/faces present, a few LFW identities of
   each kind too (listed ones are enrolled from one photo and appear in the video from another).
2. Build a scene video (``<out>/demo-scene.avi``) by pasting their heads, moving, at several
   sizes, over a background (../shared/faces/video/vtest.avi when present, else a gradient).
3. Make throwaway issuer and device keys, enrol the listed people and sign a demo watchlist
   bundle; verify and load it into a temporary state folder, as a unit does.
4. Start a throwaway TLS mosquitto on 127.0.0.1 (deploy/ configuration and certificates).
5. Replay the video in real time through the live pipeline (capture thread, bounded queue,
   inference workers, tracker, matcher, outbox, MQTT publisher) while an MQTT subscriber prints
   each alert as it arrives and saves its two images in ``<out>/alerts/``.
6. Print expected vs got for every pass.

Everything temporary (keys, bundle, broker, outbox) is deleted at the end.
"""
from __future__ import annotations

import json
import tempfile
import threading
import time
from pathlib import Path

from edge.alerts import message as alerts
from edge.alerts import schema as message_schema
from edge.alerts.display import format_alert
from edge.alerts.localbroker import LOOPBACK, BrokerError, Mosquitto, make_certs
from edge.alerts.subscriber import Subscriber
from edge.appliance.builder import build_appliance, build_recognizers
from edge.appliance.capture import FileSource
from edge.config import load_config
from edge.paths import shared_faces_or_none
from edge.tools.composer import Actor, Scene, cast
from edge.tools.rig import ThrowawayUnit

UNIT = "demo-van"
OBSERVER = "demo-observer"


def _schedule(people, *, lanes: int, pass_seconds: float, sizes, size=(1280, 720)):
    """Each person walks across once; lanes staggered; returns actors."""
    actors = []
    ys = [0.34, 0.56, 0.76][:lanes] if lanes <= 3 else [0.3 + 0.45 * i / (lanes - 1) for i in range(lanes)]
    lane_t = [0.4 + i * pass_seconds / max(lanes, 1) for i in range(lanes)]
    for i, p in enumerate(people):
        lane = i % lanes
        t = lane_t[lane]
        left = i % 2 == 0
        x0, x1 = (0.07, 0.93) if left else (0.93, 0.07)
        actors.append(Actor(p.label, f"h{i}", p.subject_id, round(t, 3), round(t + pass_seconds, 3),
                            ((x0, ys[lane]), (x1, ys[lane] + (0.03 if left else -0.03))), int(sizes[i % len(sizes)])))
        lane_t[lane] = t + pass_seconds + 0.5
    return actors


def attribute(scene, ev):
    """The actor whose face was at the alert's box when the alert's frame was captured."""
    cx, cy = (ev.box[0] + ev.box[2]) / 2, (ev.box[1] + ev.box[3]) / 2
    best = None
    for actor, b in scene.truth_at(ev.t):
        w = b[2] - b[0]
        d = ((cx - (b[0] + b[2]) / 2) ** 2 + (cy - (b[1] + b[3]) / 2) ** 2) ** 0.5
        if d <= 0.6 * w and (best is None or d < best[0]):
            best = (d, actor)
    return None if best is None else best[1]


def _say(*parts, flush: bool = True, **kw) -> None:
    """print(), each line wrapped at 80 columns on word boundaries (continuations indented)."""
    import textwrap
    text = " ".join(str(p) for p in parts)
    out = []
    for line in text.split("\n"):
        if len(line) <= 80:
            out.append(line)
        else:
            indent = " " * min(len(line) - len(line.lstrip()) + 2, 12)
            out += textwrap.wrap(line, 80, subsequent_indent=indent, break_long_words=False,
                                 break_on_hyphens=False) or [line]
    print("\n".join(out), flush=flush, **kw)


def run_demo(args) -> int:
    t_start = time.monotonic()
    cfg = load_config(args.config)
    out = Path(args.out)
    (out / "alerts").mkdir(parents=True, exist_ok=True)
    for old in (out / "alerts").glob("*.jpg"):          # this run's alerts only, not the last run's too
        if old.name.endswith(("-probe.jpg", "-reference.jpg", "-context.jpg")):
            old.unlink()
    shared = Path(args.faces) if args.faces else shared_faces_or_none()
    recs = build_recognizers(cfg, cfg.pipeline.workers)
    rec = recs[0]
    _say(f"models verified and loaded ({len(recs)} inference workers): "
          + "; ".join(f"{k} on {v}" for k, v in rec.delegates.items()), flush=True)

    thr = max(cfg.match.threshold_wanted, cfg.match.threshold_missing, cfg.match.threshold_vulnerable)
    people = cast(rec, shared, listed=3, unlisted=3, seed=5, min_genuine=min(1.0, thr + 0.012),
                  max_impostor=thr - 0.05)
    listed = [p for p in people if p.subject_id]
    lanes = min(3, len(people))
    actors = _schedule(people, lanes=lanes, pass_seconds=3.5, sizes=(110, 80, 140, 95, 70, 125))
    duration = max(a.end for a in actors) + 0.6
    background = None
    if shared and (shared / "video" / "vtest.avi").is_file():
        background = shared / "video" / "vtest.avi"
    scene = Scene({f"h{i}": p.head for i, p in enumerate(people)}, actors, size=(1280, 720), fps=15.0,
                  duration=duration, background=background)
    video = scene.write_video(out / "demo-scene.avi")
    _say(f"scene: {video} ({scene.size[0]}x{scene.size[1]}, {scene.fps:g} fps, {scene.duration:.1f} s, "
          f"background {'vtest.avi' if background else 'plain'}) with {len(people)} people, {len(listed)} of them "
          f"on the watchlist" + ("" if shared else " (../shared/faces not found: public-domain faces only)"), flush=True)
    if shared:
        _say(f"  (LFW people chosen so that the cosine of their two photos is >= {thr + 0.012:.3f} and unlisted "
              f"people < {thr - 0.05:.3f} against the list: the demo shows the pipeline; `edge-lfr eval` "
              "measures the model's error rates)")

    with tempfile.TemporaryDirectory(prefix="edge-lfr-demo-") as tmp:
        tmp = Path(tmp)
        tu = ThrowawayUnit(tmp / "unit", UNIT, base_config=cfg)
        bundle, report = tu.sign(people, rec, hours=1.0, operation_id="DEMO-OP")

        broker = sub = None
        received: list[dict] = []
        lock = threading.Lock()
        try:
            certs = make_certs(tmp / "certs", units=[UNIT], observers=[OBSERVER])
            broker = Mosquitto(tmp / "broker", certs).start()
        except BrokerError as exc:
            _say(f"no MQTT broker for the demo ({exc}); alerts are shown straight from the pipeline")
            broker = None
        events = []

        def on_alert(ev):
            events.append(ev)
            if broker is None:
                who = attribute(scene, ev)
                _say(f"ALERT  t={ev.t:5.2f}s {ev.subject_id} {ev.category} score {ev.score:.3f}\n"
                      f"       (really: {(who.label if who else 'unknown')[:60]})", flush=True)

        if broker is not None:
            ucfg = tu.with_config(mqtt={"host": LOOPBACK, "port": broker.port, "ca_file": str(certs / "ca.crt"),
                                        "cert_file": str(certs / f"{UNIT}.crt"), "key_file": str(certs / f"{UNIT}.key"),
                                        "reconnect_min_seconds": 0.2, "reconnect_max_seconds": 2.0})

            def on_message(topic: str, payload: bytes) -> None:
                try:
                    a = message_schema.validate_alert(json.loads(payload))
                except (ValueError, message_schema.AlertError):
                    return
                with lock:
                    if any(r["event_id"] == a["event_id"] for r in received):
                        return
                    received.append(a)
                probe, ref = alerts.alert_images(a)
                stem = out / "alerts" / f"{a['subject_id']}-{a['event_id'][:8]}"
                (stem.parent / f"{stem.name}-context.jpg").write_bytes(alerts.context_jpeg(a) or b"")
                (stem.parent / f"{stem.name}-probe.jpg").write_bytes(probe)
                (stem.parent / f"{stem.name}-reference.jpg").write_bytes(ref)
                lines = format_alert(a, columns=74).splitlines()      # 80 columns with the prefix
                _say("\n".join(["MQTT  " + lines[0]] + ["      " + ln for ln in lines[1:]]), flush=True)

            sub = Subscriber(LOOPBACK, broker.port, str(certs / "ca.crt"), str(certs / f"{OBSERVER}.crt"),
                             str(certs / f"{OBSERVER}.key"), [f"{ucfg.mqtt.topic_prefix}/{UNIT}/alert"], on_message,
                             client_id=OBSERVER)
            sub.start()
            _say(f"broker: throwaway mosquitto on {LOOPBACK}:{broker.port} (TLS, client certificates); "
                  f"subscribed as {OBSERVER} to {ucfg.mqtt.topic_prefix}/{UNIT}/alert", flush=True)
        else:
            ucfg = tu.config

        pace = "fast" if args.fast else "realtime"
        _say(f"\nlive pipeline on {video.name} ({'as fast as possible' if args.fast else 'in real time'}) ...",
              flush=True)
        app = build_appliance(ucfg, FileSource(video, pace=pace), recognizers=recs, bundle=bundle, device_key=tu.device,
                              publish=broker is not None, on_alert=on_alert, unit_id=UNIT, say=lambda s: None)
        s = app.unit.current().manifest.summary()
        _say(f"watchlist: signed with a throwaway issuer key, verified and loaded: {s['subjects']} subjects "
              f"({', '.join(f'{k} {v}' for k, v in s['by_category'].items() if v)}), valid until {s['valid_until']}",
              flush=True)
        try:
            if app.publisher is not None:
                app.publisher.start().wait_connected(10)
            rep = app.run()
            if app.publisher is not None:
                app.publisher.wait_idle(10.0)
                deadline = time.monotonic() + 5.0
                while time.monotonic() < deadline and len(received) < len(events):
                    time.sleep(0.05)
        finally:
            app.close()
            if sub is not None:
                sub.stop()
            if broker is not None:
                broker.stop()

    # expected vs got
    got: dict[int, list] = {}
    stray = []
    for ev in events:
        who = attribute(scene, ev)
        if who is None:
            stray.append(ev)
        else:
            got.setdefault(id(who), []).append(ev)
    _say(f"\n{'who walked past (ground truth)':28s} {'face':>6s} {'listed as':9s} {'expected':9s} {'got':18s} ok")
    good = 0
    for a in scene.actors:
        evs = got.get(id(a), [])
        exp = "1 alert" if a.subject_id else "no alert"
        txt = ", ".join(f"{e.subject_id} {e.score:.3f}" for e in evs) or "-"
        ok = (len(evs) == 1 and evs[0].subject_id == a.subject_id) if a.subject_id else not evs
        good += ok
        _say(f"{a.label[:28]:28s} {a.face_px:4d}px {(a.subject_id or '-')[:9]:9s} {exp:9s} {txt[:18]:18s} "
              f"{'yes' if ok else 'NO'}")
    for ev in stray:
        _say(f"{'(alert at no pasted face)':28s} {'':6s} {'':9s} {'no alert':9s} "
              f"{(ev.subject_id + ' ' + format(ev.score, '.3f'))[:18]:18s} NO")
    st = rep["stages"]
    c2a = st.get("capture_to_alert", {})
    _say(f"\n{good}/{len(scene.actors)} passes as expected; {len(events)} alert(s) raised"
          + (f", {len(received)} received over MQTT" if broker is not None else "")
          + f"; {rep['frames_processed']} frames at {rep['fps']} fps, {rep['dropped_frames']} dropped; "
          f"capture->alert p50 {c2a.get('p50_ms', 0):.0f} ms")
    _say(f"scene video: {video}\nalert images (context, face, watchlist reference): {out / 'alerts'}")
    _say(f"demo took {time.monotonic() - t_start:.1f} s")
    return 0 if good == len(scene.actors) and not stray else 1
