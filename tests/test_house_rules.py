"""The package's own structure: no import circle between its modules (imports inside functions count too) and no
private name imported from another module. Read from the source with ``ast``: nothing is imported."""
import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "absvit"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


def _imports(modules: dict[str, Path]):
    """(importing module, imported module, imported name, line) for every ``absvit`` import, at any depth."""
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "absvit":
                for alias in node.names:
                    target = f"{node.module}.{alias.name}"
                    yield name, target if target in modules else node.module, alias.name, node.lineno
            elif isinstance(node, ast.Import):
                for alias in node.names:
                    if alias.name in modules:
                        yield name, alias.name, None, node.lineno


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan)."""
    index, low, stack, on_stack, groups = {}, {}, [], set(), []

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
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return groups


def test_no_import_circle():
    modules = _modules()
    edges: dict[str, set[str]] = {}
    for source, target, _, _ in _imports(modules):
        if target in modules and target != source:
            edges.setdefault(source, set()).add(target)
    assert _cycles(edges) == []


def test_no_private_name_is_imported_from_another_module():
    private = [f"{modules_path}:{line} imports {name} from {target}"
               for modules_path, target, name, line in _imports(_modules()) if name and name.startswith("_")]
    assert private == []


def test_the_checks_find_what_they_look_for():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
