"""The extension's CMake files, configured against the project's stub Slicer (Testing/CMakeStub).

The stub's slicerMacroBuildScriptedModule / slicer_add_python_unittest fail when a listed file is
missing and write what was listed to a manifest; this test also checks the other direction: every
library .py file and every module resource is listed (unlisted files are silently not packaged by
Slicer). Files are those tracked by git when the tree is a git checkout (so an engineer's
uncommitted work does not fail everyone's run), else every file on disk.
"""

import os
import shutil
import subprocess
import tempfile
import unittest

REPO = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", ".."))
MODULE = os.path.join(REPO, "SeedImplantPlanner")
STUB = os.path.join(REPO, "Testing", "CMakeStub")
CMAKE = shutil.which("cmake")
COMPILER = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")


def project_files(subdir):
    """Files under ``subdir`` (relative to the repo): git-tracked ones in a checkout, else all on disk."""
    try:
        out = subprocess.run(["git", "-C", REPO, "ls-files", "--", subdir], capture_output=True, text=True,
                             check=True, timeout=60).stdout.split()
        if out:
            return sorted(out)
    except (OSError, subprocess.SubprocessError):
        pass
    found = []
    for root, dirs, files in os.walk(os.path.join(REPO, subdir)):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        for f in files:
            found.append(os.path.relpath(os.path.join(root, f), REPO).replace(os.sep, "/"))
    return sorted(found)


def configure(source_dir, build_dir):
    return subprocess.run([CMAKE, "-S", source_dir, "-B", build_dir, f"-DSlicer_DIR={STUB}"],
                          capture_output=True, text=True, timeout=300)


@unittest.skipUnless(CMAKE, "cmake is not installed: the extension's CMake lists cannot be checked")
@unittest.skipUnless(COMPILER, "no C compiler: cmake cannot configure project() (needed even for the stub check)")
class ExtensionCMakeTest(unittest.TestCase):

    @classmethod
    def setUpClass(cls):
        cls._tmp = tempfile.TemporaryDirectory(prefix="seedplan-cmake-")
        cls.result = configure(REPO, os.path.join(cls._tmp.name, "build"))
        cls.manifest = {}
        path = os.path.join(cls._tmp.name, "build", "SlicerStubManifest.txt")
        if os.path.exists(path):
            with open(path, encoding="utf-8") as fh:
                for line in fh:
                    kind, _, value = line.strip().partition(" ")
                    cls.manifest.setdefault(kind, []).append(value)

    @classmethod
    def tearDownClass(cls):
        cls._tmp.cleanup()

    def test_configure_succeeds(self):
        self.assertEqual(self.result.returncode, 0, self.result.stdout + self.result.stderr)

    def test_every_library_file_is_listed(self):
        listed = set(self.manifest.get("SCRIPT", []))
        wanted = {f for f in project_files("SeedImplantPlanner/SeedImplantPlannerLib") if f.endswith(".py")}
        wanted.add("SeedImplantPlanner/SeedImplantPlanner.py")
        missing = sorted(wanted - listed)
        self.assertEqual(missing, [], f"add to MODULE_PYTHON_SCRIPTS in SeedImplantPlanner/CMakeLists.txt: {missing}")

    def test_every_resource_is_listed(self):
        listed = set(self.manifest.get("RESOURCE", []))
        wanted = set(project_files("SeedImplantPlanner/Resources"))
        missing = sorted(wanted - listed)
        self.assertEqual(missing, [], f"add to MODULE_PYTHON_RESOURCES in SeedImplantPlanner/CMakeLists.txt: {missing}")
        for kind in ("SeedModels/", "Presets/", "UI/SeedImplantPlanner.ui", "Icons/SeedImplantPlanner.png"):
            self.assertTrue(any(kind in f for f in listed), kind)

    def test_module_and_library_tests_are_registered(self):
        listed = set(self.manifest.get("UNITTEST", []))
        self.assertIn("SeedImplantPlanner/SeedImplantPlanner.py", listed)
        for f in project_files("SeedImplantPlanner/Testing/Python"):
            if os.path.basename(f).startswith("test_") and f.endswith(".py"):
                self.assertIn(f, listed)

    def test_extension_metadata(self):
        self.assertEqual(self.manifest.get("CATEGORY"), ["Radiotherapy"])
        # the project has no public repository: no homepage, icon or screenshot URL may name an invented one
        self.assertEqual(self.manifest.get("URL", []), [])
        self.assertTrue(os.path.isfile(os.path.join(REPO, "LICENSE.txt")))
        self.assertTrue(os.path.isfile(os.path.join(REPO, "Resources", "Icons", "SeedImplantPlanner.png")))
        with open(os.path.join(REPO, "CMakeLists.txt"), encoding="utf-8") as fh:
            top = fh.read()
        for var in ("EXTENSION_DESCRIPTION", "EXTENSION_CONTRIBUTORS", "EXTENSION_CATEGORY", "EXTENSION_LICENSE_FILE"):
            self.assertIn(f"set({var} ", top)
        self.assertNotIn("http", top)
        self.assertNotIn(".s4ext", " ".join(os.listdir(REPO)))

    def test_a_missing_file_fails_the_configure(self):
        with tempfile.TemporaryDirectory(prefix="seedplan-cmake-bad-") as tmp:
            src = os.path.join(tmp, "src")
            os.makedirs(src)
            with open(os.path.join(src, "Good.py"), "w", encoding="utf-8") as fh:
                fh.write("\n")
            with open(os.path.join(src, "CMakeLists.txt"), "w", encoding="utf-8") as fh:
                fh.write("cmake_minimum_required(VERSION 3.16)\nproject(Bad NONE)\nfind_package(Slicer REQUIRED)\n"
                         "include(${Slicer_USE_FILE})\n"
                         "slicerMacroBuildScriptedModule(NAME Good SCRIPTS Good.py GoodLib/gone.py RESOURCES)\n")
            result = configure(src, os.path.join(tmp, "build"))
            self.assertNotEqual(result.returncode, 0)
            self.assertIn("GoodLib/gone.py", result.stdout + result.stderr)


if __name__ == "__main__":
    unittest.main()
