"""The package's architecture, checked: imports point one way along the data path, no cycles,
the command line starts without the numeric stack, and one place assembles the appliance."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
EDGE = ROOT / "edge"

#: Each concern's rank on the data path: a module may import its own concern or a lower rank,
#: never a higher one, and never another concern of the same rank.
RANKS = {"base": 0, "recognition": 1, "matching": 2, "alerts": 2, "watchlist": 3, "privacy": 4,
         "appliance": 5, "tools": 6, "cli": 7}
FIRMWARE = {"base", "recognition", "matching", "alerts", "watchlist", "privacy", "appliance"}


def _module(path: Path) -> str:
    return ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")


def _concern(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[1] in RANKS else "base"


def _imports() -> dict[str, set[str]]:
    """module -> edge modules it imports (top level and inside functions alike)."""
    modules = {_module(p) for p in EDGE.rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for path in EDGE.rglob("*.py"):
        me = _module(path)
        out = set()
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("edge"):
                for alias in node.names:  # "from edge.alerts import schema" names a module
                    sub = f"{node.module}.{alias.name}"
                    out.add(sub if sub in modules else node.module)
            elif isinstance(node, ast.Import):
                out.update(a.name for a in node.names if a.name.startswith("edge"))
            elif isinstance(node, ast.ImportFrom) and node.level:
                raise AssertionError(f"{me}: relative import; the layout uses absolute edge.* imports")
        graph[me] = {m for m in out if m in modules and m != me}
    return graph


def test_no_module_imports_against_the_data_path():
    wrong = []
    for me, deps in _imports().items():
        mine = _concern(me)
        for dep in deps:
            theirs = _concern(dep)
            if theirs == mine or dep in ("edge", "edge.lazy"):
                continue
            if RANKS[theirs] >= RANKS[mine]:
                wrong.append(f"{me} ({mine}) imports {dep} ({theirs})")
    assert not wrong, "\n".join(sorted(wrong))


def test_firmware_never_imports_tools_or_cli():
    graph = _imports()
    leaks = [f"{m} -> {d}" for m, deps in graph.items() if _concern(m) in FIRMWARE
             for d in deps if _concern(d) in ("tools", "cli")]
    assert not leaks, leaks


def test_no_import_cycle_between_modules():
    graph = _imports()
    state: dict[str, int] = {}
    cycles = []

    def visit(node, stack):
        state[node] = 1
        for dep in sorted(graph.get(node, ())):
            if state.get(dep) == 1:
                cycles.append(" -> ".join(stack[stack.index(dep):] + [dep]))
            elif dep not in state:
                visit(dep, stack + [dep])
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert not cycles, cycles


def _loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", code + "\nimport sys; print(' '.join(sorted(sys.modules)))"],
                         capture_output=True, text=True, cwd=ROOT, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_help_and_version_do_not_load_the_numeric_stack():
    loaded = _loaded_after("from edge.cli.main import main\n"
                           "for argv in (['--help'], ['watchlist', '--help'], ['--version']):\n"
                           "    try:\n        main(argv)\n    except SystemExit:\n        pass")
    heavy = {"numpy", "cv2", "yaml", "paho", "cryptography"} & {m.split(".")[0] for m in loaded}
    assert not heavy, f"edge-lfr --help loaded {sorted(heavy)}"


def test_the_package_names_its_public_verbs_without_loading_them():
    loaded = _loaded_after("import edge\nassert {'Recognizer', 'Config', 'load_config', 'EdgeError'} <= set(dir(edge))")
    assert "numpy" not in loaded
    import edge
    from edge.recognition.api import Recognizer
    assert edge.Recognizer is Recognizer and edge.__version__


def _calls(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Call):
            f = node.func
            if isinstance(f, ast.Name):
                names.add(f.id)
            elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name):
                names.add(f"{f.value.id}.{f.attr}")
    return names


@pytest.mark.parametrize("constructor", ["Pipeline", "AlertPublisher", "ServiceAudit.start", "PreviewServer",
                                         "UnitWatchlist", "build_recognizers"])
def test_one_place_assembles_the_appliance(constructor):
    """Only appliance/builder.py wires the parts; the service, rig, bench and demo call it.
    The alert benches make a bare publisher (they measure the publisher alone), the watchlist
    and audit commands open the stored list, the rig's throwaway unit checks its own bundles; the
    benches build the recognizers once for all their runs."""
    allowed = {"edge/appliance/builder.py", "edge/tools/bench_alerts.py", "edge/cli/watchlist.py",
               "edge/cli/audit.py", "edge/tools/rig.py", "edge/appliance/service.py", "edge/tools/demo.py",
               "edge/tools/bench_pipeline.py", "edge/tools/bench_scenes.py"}
    users = {str(p.relative_to(ROOT)) for p in EDGE.rglob("*.py") if constructor in _calls(p)}
    assert users <= allowed, sorted(users - allowed)
    if constructor in ("Pipeline", "ServiceAudit.start", "PreviewServer"):
        assert users == {"edge/appliance/builder.py"}, sorted(users)
