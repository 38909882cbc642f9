"""jaxgen's floors: the import graph of jaxgen/ has no cycle, no function-local jaxgen import and
no import from a higher floor to a lower one (LAYERS), and no code outside a family's own files
tests a family by its name.

The new-family test (tests/test_new_family.py) runs the floor check on a copy of the repository
with a family added, so a family module must land on the families' floor without an edit here.
"""

import ast
import pathlib

from tests.helpers import ROOT


def _module_name(path: pathlib.Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.AST) -> bool:
    return isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)


def _imports(tree: ast.Module, modules: set[str]):
    """(module-level imported jaxgen modules, function-local jaxgen import lines)."""
    top, local = set(), []

    def targets(node):
        if isinstance(node, ast.Import):
            return [alias.name for alias in node.names]
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{alias.name}" for alias in node.names]
            return [name if name in modules else node.module for name in names]
        return []

    def visit(node, in_function):
        for child in ast.iter_child_nodes(node):
            if _is_type_checking(child):
                continue
            found = [t for t in targets(child) if t == "jaxgen" or t.startswith("jaxgen.")]
            if found and in_function:
                local.append(child.lineno)
            elif found:
                top.update(found)
            function = isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
            visit(child, in_function or function)

    visit(tree, False)
    return top, local


# The floors of jaxgen, lowest first: a module imports only from its own floor or below. A name
# is a module; "P.*" is the package P and every module under it, unless named more precisely
# ("jaxgen.train.*" is then the families: every module of jaxgen/train/ not named elsewhere).
# Importing jaxgen.a.b runs jaxgen/a/__init__.py too, so that package counts as imported.
LAYERS = (
    (
        "foundation",
        (
            "jaxgen", "jaxgen.config", "jaxgen.registry", "jaxgen.workdir", "jaxgen.tokenizers",
            "jaxgen.images", "jaxgen.samples", "jaxgen.lowering", "jaxgen.checksums",
            "jaxgen.optim", "jaxgen.distributed", "jaxgen.diffusion", "jaxgen.diffaugment",
            "jaxgen.torch_archive",
        ),
    ),
    ("data and devices", ("jaxgen.data.*", "jaxgen.parallel", "jaxgen.checkpoint")),
    ("the family contract", ("jaxgen.family", "jaxgen.train")),
    (
        "models, losses, run folders",
        (
            "jaxgen.models.*", "jaxgen.losses.*", "jaxgen.rundir", "jaxgen.pretrained",
            "jaxgen.train.state", "jaxgen.train.gradients",
        ),
    ),
    ("samplers", ("jaxgen.sampling.*",)),
    ("evaluators and loaded runs", ("jaxgen.metrics.*", "jaxgen.runs")),
    ("families", ("jaxgen.train.*",)),
    ("the loop", ("jaxgen.train.loop", "jaxgen.train.ahead", "jaxgen.train.writer")),
    ("entry points", ("jaxgen.cli", "jaxgen.text_to_image")),
)  # fmt: skip


def layer_of(module: str) -> int:
    """The index in LAYERS of the floor `module` belongs to: its own name's, else the longest
    package pattern covering it."""
    exact = [i for i, (_, names) in enumerate(LAYERS) if module in names]
    if exact:
        return exact[0]
    covering = [
        (len(name), i)
        for i, (_, names) in enumerate(LAYERS)
        for name in names
        if name.endswith(".*") and (module + ".").startswith(name[:-1])
    ]
    assert covering, f"{module}: not on any floor of LAYERS"
    return max(covering)[1]


def import_graph() -> tuple[dict[str, set[str]], list[str]]:
    """({module: modules it imports, the packages of those included}, function-local imports)."""
    paths = sorted((ROOT / "jaxgen").rglob("*.py"))
    modules = {_module_name(path) for path in paths}
    graph, local = {}, []
    for path in paths:
        edges, lines = _imports(ast.parse(path.read_text()), modules)
        name = _module_name(path)
        packages = {".".join(e.split(".")[:i]) for e in edges for i in range(2, e.count(".") + 1)}
        graph[name] = {edge for edge in edges | packages if edge in modules and edge != name}
        graph[name] -= {p for p in packages if name.startswith(p + ".")}  # its own packages
        local += [f"{path.relative_to(ROOT)}:{line}" for line in lines]
    return graph, local


def test_jaxgen_import_graph_has_no_cycle_and_no_function_local_jaxgen_import():
    graph, local = import_graph()
    assert not local, f"function-local jaxgen imports: {local}"
    done, stack = set(), []

    def visit(module):
        if module in stack:
            cycle = stack[stack.index(module) :] + [module]
            raise AssertionError("import cycle: " + " -> ".join(cycle))
        if module in done:
            return
        stack.append(module)
        for target in sorted(graph[module]):
            visit(target)
        stack.pop()
        done.add(module)

    for module in sorted(graph):
        visit(module)
    assert [name for name, edges in graph.items() if "jaxgen.train.loop" in edges] == ["jaxgen.cli"]


def test_no_module_imports_from_a_higher_floor():
    graph, _ = import_graph()
    upward = [
        f"{module} ({LAYERS[layer_of(module)][0]}) -> {target} ({LAYERS[layer_of(target)][0]})"
        for module, targets in sorted(graph.items())
        for target in sorted(targets)
        if layer_of(target) > layer_of(module)
    ]
    assert not upward, "imports from a higher floor:\n" + "\n".join(upward)
    # What the floors mean: the evaluators and the run loader never import a family, and the
    # packages of families and evaluators are not a loop.
    assert layer_of("jaxgen.train.vae") > layer_of("jaxgen.metrics.generative")
    assert layer_of("jaxgen.runs") < layer_of("jaxgen.train.gpt") < layer_of("jaxgen.train.loop")


def test_the_floor_check_sees_an_upward_import():
    assert layer_of("jaxgen.data.kinds") < layer_of("jaxgen.train.ddpm")
    assert layer_of("jaxgen.train.loop") > layer_of("jaxgen.train.ddpm")
    assert layer_of("jaxgen.train") < layer_of("jaxgen.models.gan")  # the package alone


def family_name_tests(tree: ast.Module) -> list[int]:
    """Lines that compare a `family` (config.family, a variable named family) with a string
    literal, or look one up in a literal collection of strings."""
    lines = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        names = [
            o for o in operands if ast.unparse(o) == "family" or ast.unparse(o).endswith(".family")
        ]
        strings = [
            o
            for o in operands
            if isinstance(o, ast.Constant)
            and isinstance(o.value, str)
            or isinstance(o, ast.Tuple | ast.List | ast.Set)
            and o.elts
            and all(isinstance(e, ast.Constant) and isinstance(e.value, str) for e in o.elts)
        ]
        if names and strings:
            lines.append(node.lineno)
    return lines


def test_no_family_name_tests_outside_the_family_files():
    """Behaviour that depends on the family comes from the family (its Steps, predict_fns,
    Family fields), not from `config.family == "seq2seq"` elsewhere. A family's own files
    (train/, models/, losses/, sampling/<family>.py) may name it."""
    families = {path.stem for path in (ROOT / "jaxgen" / "train").glob("*.py")}
    found = []
    for folder in ("jaxgen", "experiments", "benchmarks"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            own = path.parent.name in ("train", "models", "losses", "sampling")
            if own and path.stem in families:
                continue
            lines = family_name_tests(ast.parse(path.read_text()))
            found += [f"{path.relative_to(ROOT)}:{line}" for line in lines]
    assert not found, f"family name tests: {found}"


def test_the_family_name_check_sees_one():
    tree = ast.parse(
        "if config.family != 'seq2seq': pass\nok = family in ('a', 'b')\nfine = family == other"
    )
    assert family_name_tests(tree) == [1, 2]


def test_the_graph_check_sees_a_cycle_and_a_local_import():
    modules = {"jaxgen.a", "jaxgen.b"}
    tree = ast.parse("from jaxgen import b\ndef f():\n    import jaxgen.a\n")
    assert _imports(tree, modules) == ({"jaxgen.b"}, [3])
