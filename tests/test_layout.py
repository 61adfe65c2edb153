"""The layout's import rules (docs/architecture.md, "Packages"), read from the source itself.

Every ``import`` counts, also those inside functions: a circle hidden in a function is still a
circle. The rules:

- ``device`` never imports ``gateway`` or ``provisioning``; ``gateway`` never imports ``device``
  or ``provisioning``; gerbang's shared modules import none of the three. Only the programs
  that run the whole system on one machine (the demo, the rehearsal, their simulation
  helpers) import everything.
- Inside ``device`` the packages import one way, in the order a frame flows (``LAYERS``).
- No import cycle between any two modules of the project.
- The gate controller, uplink and capture workers load no OpenCV or TFLite (checked in a real
  interpreter, since a third-party import can pull them in too).
- No module over 800 lines outside the tests.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("device", "gateway", "gerbang", "provisioning")
#: gerbang modules that run the whole system (broker, gateway, gates) on one machine.
WHOLE_SYSTEM = ("gerbang.demo", "gerbang.rehearsal", "gerbang.simulation")
#: device packages from the frame's source to the command line; each may import only the
#: ones on earlier lines (same line: not each other). Top-level ``device/__init__`` is docs only.
LAYERS: list[set[str]] = [
    {"device.config"},
    {"device.bus"},
    {"device.capture", "device.infer"},
    {"device.gate", "device.screen", "device.uplink"},
    {"device.decide"},
    {"device.manage"},
    {"device.processes"},
    {"device.tools"},
    {"device.cli"},
]
HEAVY = ("cv2", "tflite_runtime", "ai_edge_litert")
LIGHT_WORKERS = ("device.processes.gate", "device.processes.uplink", "device.processes.capture")
MAX_LINES = 800


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name → file, for every module of the four packages."""
    modules = {}
    for package in PACKAGES:
        for path in (root / package).rglob("*.py"):
            rel = path.relative_to(root).with_suffix("")
            parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
            modules[".".join(parts)] = path
    return modules


def imports_of(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports, anywhere in the file (``from a import b`` counts as
    ``a.b`` when that is a module, else as ``a``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules
                     else node.module for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in modules:
                name = name.rpartition(".")[0]
            if name:
                found.add(name)
    return found


def import_graph(root: Path = ROOT) -> dict[str, set[str]]:
    modules = project_modules(root)
    return {name: imports_of(path, modules) - {name} for name, path in modules.items()}


def cycles(graph: dict[str, Iterable[str]]) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for v in list(graph):
        if v not in index:
            visit(v)
    return found


def is_whole_system(module: str) -> bool:
    return any(module == m or module.startswith(m + ".") for m in WHOLE_SYSTEM)


def device_package(module: str) -> str | None:
    """``device.uplink.outbox`` → ``device.uplink``; ``device.config`` → ``device.config``."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "device" and len(parts) > 1 else None


def layer_of(package: str) -> int:
    for level, members in enumerate(LAYERS):
        if package in members:
            return level
    raise AssertionError(f"{package} is in no layer of LAYERS: add it where it belongs")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_cycle_finder_finds_a_cycle_and_only_cycles() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set(), "c": {"b"}}) == []


def test_no_import_cycle_in_the_project(graph: dict[str, set[str]]) -> None:
    assert cycles(graph) == []


def test_device_imports_neither_gateway_nor_provisioning(graph: dict[str, set[str]]) -> None:
    wrong = sorted((m, t) for m, targets in graph.items() if m.startswith("device")
                   for t in targets if t.split(".")[0] in ("gateway", "provisioning"))
    assert wrong == []


def test_gateway_imports_neither_device_nor_provisioning(graph: dict[str, set[str]]) -> None:
    wrong = sorted((m, t) for m, targets in graph.items() if m.startswith("gateway")
                   for t in targets if t.split(".")[0] in ("device", "provisioning"))
    assert wrong == []


def test_only_the_whole_system_programs_import_across_the_packages(
        graph: dict[str, set[str]]) -> None:
    shared = {m: t for m, t in graph.items() if m.startswith("gerbang") and not is_whole_system(m)}
    wrong = sorted((m, t) for m, targets in shared.items() for t in targets
                   if t.split(".")[0] != "gerbang")
    assert wrong == []
    users = sorted((m, t) for m, targets in graph.items() if not is_whole_system(m)
                   for t in targets if is_whole_system(t))
    assert users == [], "only tests may import the demo, the rehearsal or their simulation"


def test_device_packages_import_one_way(graph: dict[str, set[str]]) -> None:
    wrong = []
    for module, targets in graph.items():
        source = device_package(module)
        if source is None:
            continue
        for target in targets:
            dest = device_package(target)
            if dest is None or dest == source:
                continue
            if layer_of(dest) >= layer_of(source):
                wrong.append(f"{module} -> {target}")
    assert sorted(wrong) == []


def test_every_device_package_has_a_layer() -> None:
    packages = {p.parent.name for p in (ROOT / "device").glob("*/__init__.py")}
    modules = {p.stem for p in (ROOT / "device").glob("*.py") if p.stem != "__init__"}
    for name in sorted(packages | modules):
        layer_of(f"device.{name}")


def test_every_package_says_what_lives_there() -> None:
    missing = []
    for package in PACKAGES:
        for init in (ROOT / package).rglob("__init__.py"):
            doc = ast.get_docstring(ast.parse(init.read_text()))
            if not doc or len(doc.strip().splitlines()) < 2:
                missing.append(str(init.relative_to(ROOT)))
    assert missing == []


@pytest.mark.parametrize("worker", LIGHT_WORKERS)
def test_workers_that_do_not_infer_load_no_opencv_or_tflite(worker: str) -> None:
    probe = (f"import sys, {worker}\n"
             f"print(sorted({{m.split('.')[0] for m in sys.modules}} & {set(HEAVY)!r}))")
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                            cwd=ROOT, timeout=120)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "[]", f"{worker} imports {result.stdout.strip()}"


def test_no_module_over_800_lines_outside_the_tests() -> None:
    long = {str(path.relative_to(ROOT)): n for path in project_modules().values()
            if (n := len(path.read_text().splitlines())) > MAX_LINES}
    assert long == {}
