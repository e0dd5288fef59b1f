"""The module's Python requirements: the file it installs from, and the check of what is missing."""

import importlib.metadata
import os
import re
import tempfile
import unittest

from SeedImplantPlannerLib.core.errors import InputError
from SeedImplantPlannerLib.core.requirements import missing_requirements, read_requirements

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
MODULE_REQUIREMENTS = os.path.join(REPO, "SeedImplantPlanner", "Resources", "requirements.txt")


class RequirementsFileTest(unittest.TestCase):

    def write(self, text):
        tmp = tempfile.TemporaryDirectory(prefix="seedplan-req-")
        self.addCleanup(tmp.cleanup)
        path = os.path.join(tmp.name, "requirements.txt")
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(text)
        return path

    def test_comments_blank_lines_and_pip_options_are_skipped(self):
        path = self.write("# what Slicer lacks\n\n-r other.txt\n--index-url https://example.invalid/simple\n"
                          "scipy>=1.0  # inline comment\n  matplotlib\n")
        self.assertEqual(read_requirements(path), ["scipy>=1.0", "matplotlib"])

    def test_installed_and_missing_packages(self):
        numpy_version = importlib.metadata.version("numpy")
        major = int(numpy_version.split(".")[0])
        path = self.write(f"numpy>={major}\nnumpy>={major + 1000}\nseedplan-no-such-package-xyz\n"
                          f"numpy<{major}; python_version < '3'\n")
        # satisfied / too old / not installed / marker does not apply here
        self.assertEqual(missing_requirements(path), [f"numpy>={major + 1000}", "seedplan-no-such-package-xyz"])

    def test_presence_only_check_without_the_packaging_library(self):
        reqs = ["numpy>=100000", "seedplan-no-such-package-xyz"]
        self.assertEqual(missing_requirements(reqs, use_packaging=False), ["seedplan-no-such-package-xyz"])

    def test_bad_requirement_names_the_file_and_the_line(self):
        path = self.write("scipy>=1.0\nscipy >= = 2\n")
        with self.assertRaisesRegex(InputError, re.escape(path) + r".*'scipy >= = 2'"):
            missing_requirements(path)

    def test_unreadable_file_is_named(self):
        missing = os.path.join(tempfile.gettempdir(), "seedplan-no-such-dir", "requirements.txt")
        with self.assertRaisesRegex(InputError, "requirements file .*seedplan-no-such-dir.*cannot be read"):
            read_requirements(missing)


class ModuleRequirementsTest(unittest.TestCase):
    """The file the Slicer module installs from (Resources/requirements.txt next to the module file)."""

    def test_module_requirements_are_the_library_dependencies_slicer_lacks(self):
        reqs = read_requirements(MODULE_REQUIREMENTS)
        names = {re.match(r"[A-Za-z0-9._-]+", r).group(0).lower() for r in reqs}
        self.assertEqual(names, {"scipy", "matplotlib"})
        # the same minimum versions as the library's own dependencies (pyproject.toml)
        with open(os.path.join(REPO, "pyproject.toml"), encoding="utf-8") as fh:
            pyproject = fh.read()
        for r in reqs:
            self.assertIn(f'"{r}"', pyproject, f"{r} differs from pyproject.toml's dependencies")

    def test_the_test_environment_satisfies_them(self):
        self.assertEqual(missing_requirements(MODULE_REQUIREMENTS), [])


if __name__ == "__main__":
    unittest.main()
