"""The library's layering: a subpackage imports only from subpackages below it, and the numpy layers never import slicer or vtk.

Read from the source with ``ast`` (nothing is imported), so a new import that breaks the rule fails here
with the file, the line and the offending package named.
"""

import ast
import os
import unittest

LIB = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "SeedImplantPlannerLib"))

#: Bottom first; each package may import from those before it (and from itself).
LAYERS = ["core", "physics", "dicom", "imaging", "samplecase", "evaluation", "planning", "reporting", "mrml", "cli", "web"]
#: Packages that must run without slicer-core and VTK (numpy, scipy, SimpleITK, pydicom only).
NO_SLICER = {"core", "physics", "dicom", "imaging", "samplecase", "evaluation", "planning"}
FORBIDDEN_IN_NUMPY_LAYERS = {"slicer", "vtk", "vtkmodules", "qt", "ctk", "trame", "trame_slicer"}


def library_modules():
    """(package, path relative to the library, ast tree) of every library module."""
    for root, dirs, files in os.walk(LIB):
        dirs[:] = sorted(d for d in dirs if not d.startswith(("_", ".")))
        for name in sorted(files):
            if name.endswith(".py"):
                path = os.path.join(root, name)
                rel = os.path.relpath(path, LIB).replace(os.sep, "/")
                package = rel.split("/")[0] if "/" in rel else ""
                with open(path, encoding="utf-8") as fh:
                    yield package, rel, ast.parse(fh.read(), filename=path)


def imported_packages(package, rel, tree):
    """(line, library subpackage or external top-level name, is_library) of every import in ``tree``."""
    depth = rel.count("/")  # 0 for the package root, 1 for pkg/mod.py
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                parts = alias.name.split(".")
                if parts[0] == "SeedImplantPlannerLib":
                    if len(parts) > 1:
                        yield node.lineno, parts[1], True
                else:
                    yield node.lineno, parts[0], False
        elif isinstance(node, ast.ImportFrom):
            mod = node.module or ""
            if node.level == 0:
                parts = mod.split(".")
                if parts[0] == "SeedImplantPlannerLib":
                    targets = [parts[1]] if len(parts) > 1 else [a.name for a in node.names]
                    for t in targets:
                        yield node.lineno, t, True
                else:
                    yield node.lineno, parts[0], False
            elif node.level <= depth:  # from .x / from . import x: inside the same package
                yield node.lineno, package, True
            else:  # from ..pkg.mod import / from .. import pkg
                targets = [mod.split(".")[0]] if mod else [a.name for a in node.names]
                for t in targets:
                    yield node.lineno, t, True


class LayeringTest(unittest.TestCase):

    def test_every_package_is_a_known_layer(self):
        packages = {p for p, _, _ in library_modules() if p}
        self.assertEqual(sorted(packages - set(LAYERS)), [], "add the new subpackage to LAYERS (and docs/DEVELOPING.md)")

    def test_imports_point_down(self):
        bad = []
        for package, rel, tree in library_modules():
            if not package:
                continue
            rank = LAYERS.index(package)
            for line, target, is_lib in imported_packages(package, rel, tree):
                if not is_lib:
                    if package in NO_SLICER and target in FORBIDDEN_IN_NUMPY_LAYERS:
                        bad.append(f"{rel}:{line} imports {target} (the {package} layer runs without slicer/vtk)")
                    continue
                if target == "__version__":  # the root package's __init__ sits below every layer
                    continue
                if target not in LAYERS:
                    bad.append(f"{rel}:{line} imports SeedImplantPlannerLib.{target}, which is not a subpackage")
                elif LAYERS.index(target) > rank:
                    bad.append(f"{rel}:{line}: {package} imports {target}, a layer above it")
        self.assertEqual(bad, [])

    def test_init_docstrings_state_the_rule(self):
        for package, rel, tree in library_modules():
            if rel.endswith("/__init__.py"):
                doc = ast.get_docstring(tree)
                self.assertTrue(doc and "import" in doc.lower(), f"{rel}: the docstring must say what the package may import")

    def test_the_check_sees_a_violation(self):
        tree = ast.parse("from ..planning.planfile import Plan\nimport vtk\n")
        found = list(imported_packages("physics", "physics/x.py", tree))
        self.assertIn((1, "planning", True), found)
        self.assertIn((2, "vtk", False), found)


if __name__ == "__main__":
    unittest.main()
