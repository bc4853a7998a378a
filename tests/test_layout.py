"""The import graph: no cycles, the library never imports the glue, and general glue never imports a system."""
import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("diffusion", "experiments", "configs", "benchmarks")
SYSTEMS = ("latent", "cascade", "text", "unclip", "sddpm")   # each a package in diffusion/, experiments/, configs/
GENERAL_GLUE = ("experiments.build", "experiments.loop", "experiments.inference", "experiments.scoring",
                "experiments.runs", "experiments.heldout", "experiments.metric_writers", "experiments.cli",
                "experiments.protocol", "experiments.field_checks", "experiments.draw_cache", "experiments.nll",
                "experiments.results", "experiments.classifier_loop", "experiments.guides")
# What a system's hooks may use of the glue: the protocol, the field checks and run directories; the
# general glue reaches the hooks only through the table, experiments.systems.
HOOKS_MAY_IMPORT = ("experiments.protocol", "experiments.field_checks", "experiments.runs")
# General glue -> the system modules it still imports (library or glue), each to be replaced by that
# system's hook: the list may only shrink (an entry that no longer holds fails the test, as a new one does).
SYSTEM_IMPORTS_LEFT = {
    "experiments.build": {"diffusion.cascade.augmentation", "diffusion.sddpm.process"},
    "experiments.inference": {"diffusion.cascade.augmentation", "diffusion.text.captions",
        "diffusion.text.tokenizer", "experiments.latent.autoencoder_runs", "experiments.text.captioning",
        "experiments.unclip.stage_runs"},
    "experiments.guides": {"diffusion.text.tokenizer", "diffusion.unclip.embedding", "experiments.text.captioning",
        "experiments.unclip.stage_runs"},
    "experiments.loop": {"diffusion.cascade.augmentation", "experiments.latent.autoencoder_runs",
        "experiments.text.captioning", "experiments.unclip.stage_runs"},
    "experiments.scoring": {"diffusion.text.captions", "diffusion.text.contrastive", "experiments.text.captioning",
        "experiments.text.clip_runs"},
    "experiments.draw_cache": {"diffusion.text.captions", "experiments.text.clip_guidance"},
    "experiments.nll": {"diffusion.sddpm.process"},
}


def module_names() -> dict[str, Path]:
    names = {}
    for package in PACKAGES:
        for path in (REPO / package).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def imports(path: Path, modules: dict) -> set[str]:
    """The project modules ``path`` imports anywhere in it (function-local imports included)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.update(f"{node.module}.{alias.name}" if f"{node.module}.{alias.name}" in modules else node.module
                         for alias in node.names)
    return {name for name in found if name in modules and modules[name].name != "__init__.py"}


def graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports(path, modules) for name, path in modules.items()}


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_cycles_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle():
    assert cycles(graph()) == []


def test_library_never_imports_glue_or_configs():
    leaks = {(m, i) for m, deps in graph().items() if m.startswith("diffusion") for i in deps
             if not i.startswith("diffusion")}
    assert leaks == set()


def test_every_system_has_one_name_in_each_layer():
    for system in SYSTEMS:
        for layer in ("diffusion", "experiments", "configs"):
            assert (REPO / layer / system / "__init__.py").exists(), f"{layer}/{system}/"
        assert list((REPO / "tests").glob(f"test_{system}*.py")), f"tests/test_{system}*.py"


def reachable(edges: dict[str, set[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        for dep in edges.get(todo.pop(), ()):
            if dep not in seen:
                seen.add(dep)
                todo.append(dep)
    return seen


def test_every_system_has_hooks_in_the_table_that_never_reach_the_general_glue():
    edges = graph()
    assert {f"experiments.{s}.hooks" for s in SYSTEMS} <= edges["experiments.systems"]
    for system in SYSTEMS:
        glue = {m for m in reachable(edges, f"experiments.{system}.hooks") if m in GENERAL_GLUE}
        assert glue <= set(HOOKS_MAY_IMPORT), f"experiments.{system}.hooks reaches {sorted(glue)}"


def test_general_glue_reaches_systems_only_where_listed():
    edges = graph()
    reached = {(m, i) for m in GENERAL_GLUE for i in edges[m] if i.split(".")[1] in SYSTEMS and i.count(".") >= 2}
    allowed = {(m, i) for m, deps in SYSTEM_IMPORTS_LEFT.items() for i in deps}
    assert reached - allowed == set(), "general glue must not import a system: give the system a hook"
    assert allowed - reached == set(), "an import was removed: strike it from SYSTEM_IMPORTS_LEFT"
