"""The repository's promises: CI runs the README's test command; the import rule holds: the runtime imports
neither torch nor the training or export code, and training never imports export (it may use the runtime)."""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest
from conftest import REPO

# package -> (folder, what its modules must never import). The runtime ships alone to small devices (no
# torch, no training code); export builds on training, so training importing export would make a cycle.
IMPORT_RULE = {
    "tivm.runtime": ("runtime", ("torch", "tivm.train", "tivm.export")),
    "tivm.train": ("train", ("tivm.export",)),
}

# Imports every module of PACKAGE in a fresh interpreter whose import system refuses the BLOCKED names and
# records which tivm module asked for them, so even an import wrapped in try/except ImportError is caught.
IMPORT_EVERY_MODULE = r"""
import importlib, pkgutil, sys
PACKAGE, BLOCKED = sys.argv[1], tuple(sys.argv[2:])
attempts = []

def blocked(name):
    return any(name == b or name.startswith(b + ".") for b in BLOCKED)

def importer():
    frame = sys._getframe(2)
    while frame and frame.f_globals.get("__name__", "").startswith(("importlib", "_frozen_importlib")):
        frame = frame.f_back
    return frame.f_globals.get("__name__", "?") if frame else "?"

class Block:
    def find_spec(self, name, path=None, target=None):
        if blocked(name):
            who = importer()
            if who.startswith("tivm."):
                attempts.append(f"{who} imports {name}")
            raise ImportError(f"{name} is blocked for {PACKAGE}")

sys.meta_path.insert(0, Block())
package = importlib.import_module(PACKAGE)
failures = []
for m in pkgutil.walk_packages(package.__path__, PACKAGE + "."):
    try:
        importlib.import_module(m.name)
    except ImportError as e:
        failures.append(f"{m.name}: {e}")
loaded = sorted(name for name in sys.modules if blocked(name))
problems = list(dict.fromkeys(attempts)) + failures + [f"{name} got imported" for name in loaded]
print("\n".join(problems) if problems else "ok")
"""


def _readme_commands() -> list[str]:
    blocks = re.findall(r"```bash\n(.*?)\n```", (REPO / "README.md").read_text(), flags=re.S)
    return [b.strip() for b in blocks]


def test_ci_runs_the_readme_test_command():
    test_command = _readme_commands()[1]
    assert "pytest" in test_command
    ci_lines = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()]
    ci_commands = [ln for ln in ci_lines if ln and not ln.startswith("#") and not ln.startswith("set ")
                   and not ln.startswith("cd ")]
    assert ci_commands == [test_command]


@pytest.mark.parametrize("package", sorted(IMPORT_RULE))
def test_every_module_imports_with_the_forbidden_packages_blocked(package):
    blocked = IMPORT_RULE[package][1]
    out = subprocess.run([sys.executable, "-c", IMPORT_EVERY_MODULE, package, *blocked],
                         capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok", f"{package} must not import {', '.join(blocked)}:\n{out.stdout}"


def _imported_names(tree: ast.AST, module: str) -> list[str]:
    """Absolute names of every import in a module's source, function bodies included (relative ones
    resolved against the module's own package)."""
    package = module.rsplit(".", 1)[0]
    names = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{parent}.{base}" if base else parent
            names += [base] + [f"{base}.{alias.name}" for alias in node.names]
    return names


@pytest.mark.parametrize("package", sorted(IMPORT_RULE))
def test_no_source_line_imports_a_forbidden_package(package):
    # the import test above sees what runs at import time; this also sees imports inside functions
    folder, blocked = IMPORT_RULE[package]
    bad = []
    for path in sorted((REPO / folder).rglob("*.py")):
        # x/__init__.py stays "package.x.__init__", so relative imports resolve against package.x itself
        module = ".".join([package, *path.relative_to(REPO / folder).with_suffix("").parts])
        for name in _imported_names(ast.parse(path.read_text(encoding="utf-8")), module):
            if any(name == b or name.startswith(b + ".") for b in blocked):
                bad.append(f"{path.relative_to(REPO)} imports {name}")
    assert not bad, "\n".join(bad)
