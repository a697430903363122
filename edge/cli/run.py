"""``edge-lfr run``, ``edge-lfr replay``, ``edge-lfr demo`` and ``edge-lfr bench pipeline``.

Wiring (``edge/cli/main.py``): ``add_commands(subparsers)`` registers run, replay and demo;
``add_bench_arguments(parser)`` + ``run_pipeline_bench(args)`` implement ``bench pipeline``.
"""
from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from edge.errors import InputError

RUN_EPILOG = """\
examples:
  edge-lfr run --config /etc/edge-lfr/unit.yaml                   the service (systemd Type=notify)
  edge-lfr run --config unit.yaml --source clip.avi               the same, on a local file instead of the camera

Under systemd: READY=1 after the first frame, WATCHDOG=1 while frames are processed,
STATUS= with fps / queue / dropped frames / outbox / watchlist / CPU temperature, STOPPING=1.
exit codes: 0 stopped (SIGTERM) or the file ended, 65 --source missing, empty, not a video or
corrupt, 69 model missing or altered, 74 camera failed, 78 bad configuration (a network source
included). The --source file is checked before anything else; once a start is in the audit log,
a failure there also records its error and the stop with this exit code.
"""

REPLAY_EPILOG = """\
examples:
  edge-lfr replay --source rig/pass-01.avi --bundle rig/rig.edgewl --expect rig/pass-01.yaml \\
                  --junit out/pass-01.xml --config deploy/config/rig.yaml
  edge-lfr replay --source frames/ --bundle B.edgewl --config rig.yaml       just print the alerts

EXPECTED.yaml:
  expect:
    - {subject: S-0001, from: 2.0, to: 7.5}          # exactly one alert in that window (count: 1)
    - {subject: S-0002, from: 9.0, to: 14.0, count: 1, label: "second pass"}
  allow_unexpected: false                             # any other alert fails the run

exit codes: 0 every expectation met, 1 an expectation failed, 65 bad expectations or footage
(missing, an empty folder, not a video, corrupt), 77 bundle refused, 78 bad configuration
"""


def _say(*parts) -> None:
    print(*parts, flush=True)


def cmd_run(args) -> int:
    from edge.appliance.service import run_service
    from edge.config import load_config
    if not args.verbose:
        logging.getLogger().setLevel(logging.INFO)
        logging.getLogger("edge").setLevel(logging.INFO)
    cfg = load_config(args.config)
    return run_service(cfg, source_path=args.source, max_frames=args.max_frames)


def _print_event(ev) -> None:
    _say(f"  alert  t={ev.t:7.2f} s  {ev.subject_id:12s} {ev.category:10s} score {ev.score:.3f} "
         f"(threshold {ev.threshold:.3f})  track {ev.track_id}  capture->alert {ev.capture_to_alert_s * 1e3:.0f} ms")


def cmd_replay(args) -> int:
    from edge.config import load_config
    from edge.tools.rig import replay
    cfg = load_config(args.config)
    if args.expect and not Path(args.expect).is_file():
        raise InputError(f"{args.expect}: no such expectations file")
    _say(f"replaying {args.source} ({'real time' if args.realtime else 'as fast as possible'})")
    result, report = replay(cfg, source=args.source, bundle=args.bundle, expect=args.expect, junit=args.junit,
                            pace="realtime" if args.realtime else "fast", publish=args.publish,
                            on_alert=_print_event, say=_say, detections=args.detections)
    _say(f"{report['frames_processed']} frames in {report['seconds']:.1f} s ({report['fps']} fps), "
         f"{report['dropped_frames']} dropped, {report['tracks']} tracks, {report['alerts']} alert(s)")
    if args.json:
        out = {k: v for k, v in report.items() if k != "events"}
        from edge.tools.rig import alert_record
        out["lockstep"] = report.get("lockstep")
        out["alerts_raised"] = [alert_record(e) for e in report["events"]]
        Path(args.json).write_text(json.dumps(out, indent=2))
    if result is None:
        return 0
    for c in result.cases:
        _say(f"  {'PASS' if c.ok else 'FAIL'}  {c.name}" + (f": {c.message}" if c.message else ""))
        if not c.ok and c.detail:
            for line in c.detail.splitlines()[:10]:
                _say(f"          {line}")
    if args.junit:
        _say(f"JUnit XML: {args.junit}")
    _say("replay: " + ("all expectations met" if result.ok else f"{result.failures} check(s) failed"))
    return 0 if result.ok else 1


def cmd_demo(args) -> int:
    from edge.tools.demo import run_demo
    return run_demo(args)


def add_commands(subparsers) -> None:
    """Register ``demo``, ``run`` and ``replay``."""
    fmt = argparse.RawDescriptionHelpFormatter
    s = subparsers.add_parser("demo", help="composed footage of real faces through the live pipeline, alerts over MQTT",
                              description="Builds a scene video by pasting real faces (public-domain ones from "
                              "matplotlib and scikit-image; LFW identities from ../shared/faces when present) "
                              "moving over a background, signs a small demo watchlist with throwaway keys, starts "
                              "a throwaway TLS mosquitto on loopback, runs the live pipeline on the video and "
                              "prints each alert as an MQTT subscriber receives it, then expected vs got.")
    s.add_argument("--config", help="YAML configuration file (see `edge-lfr config`)")
    s.add_argument("--out", default="demo-out", help="folder for the scene video and the alert images (default: %(default)s)")
    s.add_argument("--faces", default=None, help="folder of shared faces (default: ../shared/faces if present)")
    s.add_argument("--fast", action="store_true", help="replay as fast as possible instead of in real time")
    s.set_defaults(func=cmd_demo)

    s = subparsers.add_parser("run", help="the unit's service: camera -> recognition -> alerts (systemd Type=notify)",
                              description="Runs the live pipeline on the configured camera with the watchlist "
                              "loaded on this unit, publishing match alerts over MQTT. Speaks systemd's notify "
                              "protocol (READY, WATCHDOG, STATUS, STOPPING) when $NOTIFY_SOCKET is set.",
                              epilog=RUN_EPILOG, formatter_class=fmt)
    s.add_argument("--config", required=True, help="YAML configuration file (see `edge-lfr config`)")
    s.add_argument("--source", help="replay this local video file or image folder instead of the camera")
    s.add_argument("--max-frames", type=int, default=0, help="stop after this many frames (0 = run until stopped)")
    s.set_defaults(func=cmd_run)

    s = subparsers.add_parser("replay", help="rig mode: replay footage through the pipeline and check who alerts",
                              description="Runs the whole pipeline on a local video file or image folder with a "
                              "signed watchlist bundle (verified with --config's device key and trust file, loaded "
                              "into a temporary state folder), prints each alert, checks the expectations and "
                              "writes JUnit XML for rig CI.", epilog=REPLAY_EPILOG, formatter_class=fmt)
    s.add_argument("--source", required=True, help="local video file or image folder")
    s.add_argument("--bundle", help="signed watchlist bundle (.edgewl) for the rig unit")
    s.add_argument("--expect", help="EXPECTED.yaml: who must alert, and when")
    s.add_argument("--junit", help="write the checks as JUnit XML here")
    s.add_argument("--config", help="YAML configuration (unit section: the rig unit's id, device key, trust file)")
    s.add_argument("--realtime", action="store_true", help="pace frames in real time (late frames are dropped, "
                   "as from a camera); default: as fast as possible, nothing dropped")
    s.add_argument("--publish", action="store_true", help="also publish the alerts to the configured MQTT broker")
    s.add_argument("--json", help="write the pipeline report and the alerts (no images) as JSON here: each alert's "
                   "frame index, media time, subject, score, threshold, box, track id and track start")
    s.add_argument("--detections", help="write every frame's detections (box, score, track id) here, one JSON line "
                   "per frame")
    s.set_defaults(func=cmd_replay)



# --- bench pipeline -------------------------------------------------------------------------

def _add(parser, *flags, **kw) -> None:
    if not any(f in parser._option_string_actions for f in flags):
        parser.add_argument(*flags, **kw)


def add_bench_arguments(parser) -> None:
    """Options of ``edge-lfr bench pipeline`` (options the parser already has are left alone)."""
    g = parser.add_argument_group("bench pipeline")
    _add(g, "--seconds", type=float, default=20.0, help="pipeline: length of the composed 1080p clip (default: %(default)s)")
    _add(g, "--frames", type=int, default=0, help="pipeline: process this many frames, looping the clip (soak; "
         "0 = the clip once)")
    _add(g, "--faces-per-frame", type=int, default=5, help="pipeline: faces on screen at once (default: %(default)s)")
    _add(g, "--reference-frames", type=int, default=30,
         help="pipeline: frames (evenly spaced over the clip) the face_recognition reference runs on (default: %(default)s)")
    _add(g, "--no-reference", action="store_true", help="pipeline: skip the face_recognition reference")
    _add(g, "--realtime", action="store_true", help="pipeline: deliver frames at 30 fps like a camera (latency, "
         "dropped frames) instead of as fast as they are taken (throughput)")
    _add(g, "--rss-csv", help="pipeline: write (frames, seconds, RSS MB) samples here")
    _add(g, "--plot", help="pipeline: PNG of the latency histograms (or, with --frames, RSS against frames)")
    _add(g, "--faces", help="pipeline: folder of shared faces (default: ../shared/faces if present)")


def add_scenes_arguments(parser) -> None:
    """Options of ``edge-lfr bench scenes`` (options the parser already has are left alone)."""
    g = parser.add_argument_group("bench scenes")
    add = _add
    add(g, "--lfw", help="scenes: LFW-layout folder (default: ../shared/faces/lfw-dev)")
    add(g, "--fps", type=float, nargs="+", default=[15.0, 30.0], help="scenes: frame rates (default: 15 30)")
    add(g, "--lists", nargs="+", default=["12", "1000", "all"], help="scenes: list sizes, 'all' = every distractor")
    add(g, "--photos", type=int, nargs="+", default=[1, 2], help="scenes: enrolment photos per subject (default: 1 2)")
    add(g, "--scenes", type=int, default=3, help="scenes: scenes per frame rate (default: %(default)s)")
    add(g, "--listed", type=int, default=12, help="scenes: listed walkers per scene (default: %(default)s)")
    add(g, "--unlisted", type=int, default=24, help="scenes: unlisted walkers per scene (default: %(default)s)")
    add(g, "--size", default="1920x1080", help="scenes: frame size (default: %(default)s)")
    add(g, "--seed", type=int, default=15, help="scenes: seed of the identity split and the scenes")
    add(g, "--cache", help="scenes: .npz cache of enrolment embeddings")
    add(g, "--no-detector-reference", action="store_true", help="scenes: skip the detector-on-every-view pass")


def run_pipeline_bench(args) -> int:
    from edge.tools.bench_pipeline import run_bench
    return run_bench(args)

