"""An import-linter contract type: these modules, and every module they import at any depth (imports
inside functions included), use nothing outside the standard library and a few named modules.

The browser runs the runtime core unchanged in Pyodide, where no third-party package is installed.
A `forbidden` contract would have to name every third-party package and would miss the next one;
this one allows the standard library (`sys.stdlib_module_names`), the project's own packages and the
modules it is told to allow (Pyodide's `pyodide` and `js`), and reports any other package with the
chain of imports that reaches it. Configured in pyproject.toml:

    [[tool.importlinter.contracts]]
    type = "standard_library_only"
    source_modules = ["runtime.pyodide_backend"]
    allowed_modules = ["pyodide", "js"]
    ignore_imports = ["runtime.index -> hnswlib"]   # each with the reason it is allowed
"""

from __future__ import annotations

import sys
from pathlib import Path

import grimp
from importlinter import Contract, ContractCheck, fields, output
from importlinter.application.contract_utils import AlertLevel, remove_ignored_imports

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: import-linter's own TOML reader there
    import tomli as tomllib

ROOT = Path(__file__).resolve().parents[1]


def top_level(module: str) -> str:
    return module.split(".")[0]


class StandardLibraryOnlyContract(Contract):
    type_name = "standard_library_only"

    source_modules = fields.ListField(subfield=fields.ModuleField())
    allowed_modules = fields.ListField(subfield=fields.StringField(), required=False, default=[])
    ignore_imports = fields.ListField(subfield=fields.ImportExpressionField(), required=False)

    def reached(self, graph: grimp.ImportGraph) -> set[str]:
        """The sources and every module they import, directly or not, once the ignored imports are
        removed from `graph` (an ignored import that no longer exists is an error: delete it)."""
        remove_ignored_imports(graph, self.ignore_imports, AlertLevel.ERROR)
        sources = [module.name for module in self.source_modules]
        for source in sources:
            if source not in graph.modules:
                raise ValueError(f"Module '{source}' does not exist.")
        return set(sources).union(*(graph.find_upstream_modules(source) for source in sources))

    def check(self, graph: grimp.ImportGraph, verbose: bool) -> ContractCheck:
        reached = self.reached(graph)
        own = {top_level(name) for name in self.session_options["root_packages"]}
        allowed = set(sys.stdlib_module_names) | set(self.allowed_modules) | own
        violations = []
        for package in sorted(m for m in reached if top_level(m) not in allowed):
            source = next(
                s.name for s in self.source_modules if graph.chain_exists(importer=s.name, imported=package)
            )
            chain = graph.find_shortest_chain(importer=source, imported=package)
            steps = [
                (a, b, [d["line_number"] for d in graph.get_import_details(importer=a, imported=b)])
                for a, b in zip(chain[:-1], chain[1:], strict=True)
            ]
            violations.append({"package": package, "steps": steps})
        return ContractCheck(kept=not violations, metadata={"violations": violations})

    def render_broken_contract(self, check: ContractCheck) -> None:
        for violation in check.metadata["violations"]:
            output.print_error(f"{violation['package']} is not in the standard library:")
            output.new_line()
            for importer, imported, lines in violation["steps"]:
                output.indent_cursor()
                output.print_error(f"{importer} -> {imported} (l.{', l.'.join(map(str, lines))})", bold=False)
            output.new_line()


# Pyodide's own modules, the bridge to the page: the only packages outside the standard library a
# module of the browser's core may name (each import guarded, absent on CPython).
PYODIDE_BRIDGE = {"pyodide", "js"}


def standard_library_modules(root: Path = ROOT) -> list[str]:
    """The project's modules that the standard_library_only contracts in root/pyproject.toml cover
    with nothing but the standard library (and Pyodide's bridge) allowed: their sources and
    everything those import, as the contract sees the import graph. Contracts that allow more
    (loop B's numpy) are checked statically only."""
    config = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]
    packages = config["root_packages"]
    session = {"root_packages": packages, "include_external_packages": True}
    modules: set[str] = set()
    for options in config["contracts"]:
        allows = set(options.get("allowed_modules", []))
        if options["type"] == StandardLibraryOnlyContract.type_name and allows <= PYODIDE_BRIDGE:
            graph = grimp.build_graph(*packages, include_external_packages=True, cache_dir=None)
            contract = StandardLibraryOnlyContract(options["name"], session, options)
            modules |= {m for m in contract.reached(graph) if top_level(m) in packages}
    return sorted(modules)
