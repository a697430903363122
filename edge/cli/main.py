"""``edge-lfr``: the one command-line entry point.

Exit codes: 0 success; 1 unexpected failure; 2 bad command-line usage; 65 bad input data
(image, watchlist, dataset); 69 model missing or altered; 78 bad configuration.
"""
from __future__ import annotations

import argparse
import errno
import json
import logging
import sys

from edge import __version__
from edge.cli.alerts import add_bench_arguments
from edge.cli.alerts import add_commands as add_alert_commands
from edge.cli.audit import add_commands as add_audit_commands
from edge.cli.eval import add_commands as add_eval_commands
from edge.cli.run import add_bench_arguments as add_pipeline_bench_arguments
from edge.cli.run import add_scenes_arguments
from edge.cli.run import add_commands as add_run_commands
from edge.cli.watchlist import add_commands as add_watchlist_commands
from edge.errors import EdgeError

#: errno values of an output that cannot be created (exit 73, EX_CANTCREAT)
_CANT_CREATE = {errno.ENOENT, errno.EACCES, errno.EPERM, errno.EROFS, errno.EISDIR, errno.ENOTDIR, errno.EEXIST}

EPILOG = """\
examples:
  edge-lfr demo                               composed footage of real faces through the live pipeline, alerts over MQTT
  edge-lfr run --config /etc/edge-lfr/unit.yaml     the unit's service (camera -> recognition -> alerts; systemd notify)
  edge-lfr replay --source V.avi --bundle B.edgewl --expect E.yaml --junit out.xml --config rig.yaml   rig check
  edge-lfr bench pipeline                     1080p, 5 faces: fps, stage latencies, RSS; face_recognition as reference
  edge-lfr bench scenes                       recall of listed walkers at list sizes 12 / 1,000 / all, why passes were missed
  edge-lfr eval lfw --images ../shared/faces/lfw-dev --pairs ../shared/faces/lfw-dev/pairs.txt \\
                    --out report.json --plot det.png --reference dlib
  edge-lfr bench                              latency of detect, embed and match (dlib as reference)
  edge-lfr bench alerts                       match -> outbox -> MQTT PUBACK latency on a loopback broker
  edge-lfr alerts --config unit.yaml          print alerts as they arrive (technicians, test rigs)
  edge-lfr keys issuer --name hq --out keys/  make an issuer signing key (then: keys device, keys trust add)
  edge-lfr watchlist build --images enrol/ --manifest list.csv --issuer-key keys/hq.issuer.key \
                    --unit van-01.unit.yaml --operation-id OP-1 --authorising-officer REF --valid-until ...
  edge-lfr watchlist load B.edgewl            verify a signed bundle on this unit and swap it in
  edge-lfr models                             verify every model against its manifest sha256
  edge-lfr config                             every configuration option with its default and range

exit codes: 0 ok, 1 failure, 2 usage, 65 bad input data, 66 key file missing, 69 model missing or
altered, 73 output cannot be created, 74 unit state damaged or I/O error, 75 bundle not valid yet,
77 refused by trust policy, 78 bad config
"""


def _cmd_config(args) -> int:
    from edge.config import describe, load_config
    if args.check:
        cfg = load_config(args.check)
        print(json.dumps(cfg.as_dict(), indent=2))
        return 0
    print(describe())
    return 0


def _cmd_models(args) -> int:
    from edge.recognition.runtime import find_models_dir, load_manifest, open_model
    directory = find_models_dir(args.models_dir)
    manifest = load_manifest(directory)
    print(f"models folder: {directory}")
    for name, entry in sorted(manifest["models"].items()):
        m = open_model(name, directory, threads=1)
        ins = ", ".join(f"{d['dtype'].__name__}{[int(v) for v in d['shape']]}" for d in m.inputs)
        outs = ", ".join(f"{d['dtype'].__name__}{[int(v) for v in d['shape']]}" for d in m.outputs)
        print(f"  {name:24s} ok  sha256 {m.sha256[:16]}…  {entry.get('precision', '?'):22s} "
              f"in {ins} out {outs}  on {m.delegate} [{m.backend}]  licence {entry.get('licence', '?')}")
    return 0


def _cmd_bench(args) -> int:
    if args.target == "alerts":
        from edge.tools.bench_alerts import run_alert_bench
        return run_alert_bench(args)
    if args.target == "pipeline":
        from edge.cli.run import run_pipeline_bench
        return run_pipeline_bench(args)
    if args.target == "scenes":
        from edge.tools.bench_scenes import run as run_scenes
        return run_scenes(args)
    from edge.tools.bench import run_bench
    return run_bench(args)


class _Parser(argparse.ArgumentParser):
    """A parser whose subcommands report an unknown flag with their own usage line (argparse
    leaves extras to the top-level parser, which would print ``edge-lfr``'s usage)."""

    top_level = False

    def parse_known_args(self, args=None, namespace=None):
        ns, extras = super().parse_known_args(args, namespace)
        if extras and not self.top_level:
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return ns, extras


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="edge-lfr", description="On-device live facial recognition for a standalone van unit: "
        "quantized detection and embedding, signed watchlists, match-only alerts.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.top_level = True
    p.add_argument("--version", action="version", version=f"edge-lfr {__version__}")
    p.add_argument("-v", "--verbose", action="store_true", help="log debug detail to stderr")
    sub = p.add_subparsers(dest="command", metavar="COMMAND")
    add_run_commands(sub)

    add_eval_commands(sub)

    s = sub.add_parser("bench", help="latency of detect, embed and match (dlib as the reference), or of alerts",
                       description="core (default): median and p95 latencies of each recognition stage on "
                       "real faces; dlib's descriptor is timed in the same run as the ratio reference when "
                       "dlib-bin is installed. alerts: match -> outbox -> MQTT PUBACK latency through a "
                       "throwaway TLS mosquitto on loopback.")
    s.add_argument("target", nargs="?", default="core", choices=["core", "alerts", "pipeline", "scenes"],
                   help="what to measure (default: %(default)s)")
    s.add_argument("--config", help="YAML configuration file")
    s.add_argument("--repeat", type=int, default=200, help="timed runs per measurement (default: %(default)s)")
    s.add_argument("--out", help="also write the figures as JSON here")
    add_bench_arguments(s)
    add_pipeline_bench_arguments(s)
    add_scenes_arguments(s)
    s.set_defaults(func=_cmd_bench)

    add_alert_commands(sub)
    add_watchlist_commands(sub)
    add_audit_commands(sub)

    s = sub.add_parser("models", help="verify every model file against its manifest and show its spec")
    s.add_argument("--models-dir", default=None, help="folder with manifest.json (default: the installed models)")
    s.set_defaults(func=_cmd_models)

    s = sub.add_parser("config", help="print every configuration option, or validate a file")
    s.add_argument("--check", metavar="FILE", help="validate FILE and print the effective configuration")
    s.set_defaults(func=_cmd_config)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except EdgeError as exc:
        print(f"edge-lfr: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("edge-lfr: interrupted", file=sys.stderr)
        return 130
    except OSError as exc:
        # an output path that cannot be written (missing folder, read-only, full disk), or an input
        # that cannot be read: one line naming the file, never a traceback
        where = f"{exc.filename}: " if getattr(exc, "filename", None) else ""
        print(f"edge-lfr: error: {where}{exc.strerror or exc}", file=sys.stderr)
        logging.getLogger("edge.cli").debug("details", exc_info=True)
        return 73 if exc.errno in _CANT_CREATE else 74
    except (ValueError, TypeError, OverflowError, MemoryError, RecursionError, UnicodeError) as exc:
        # bad input the command did not check itself (a date that does not exist, a damaged file)
        print(f"edge-lfr: error: {type(exc).__name__}: {str(exc)[:500]}", file=sys.stderr)
        logging.getLogger("edge.cli").debug("details", exc_info=True)
        return 65
    except Exception as exc:  # the last guard: a bug, reported in one line (details with -v)
        print(f"edge-lfr: internal error ({type(exc).__name__}): {str(exc)[:500]}; run with -v for details",
              file=sys.stderr)
        logging.getLogger("edge.cli").debug("details", exc_info=True)
        return 1


if __name__ == "__main__":
    sys.exit(main())
