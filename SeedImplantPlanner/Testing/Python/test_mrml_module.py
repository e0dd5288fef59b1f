"""The module file outside Slicer: it compiles, its .ui has every widget it uses, and its parameter node
wrapper declares exactly the parameters the library's PlanParameters reads and writes."""

import ast
import os
import re
import unittest
import xml.etree.ElementTree as ET

from SeedImplantPlannerLib.mrml import parameters

MODULE_DIR = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))
MODULE_FILE = os.path.join(MODULE_DIR, "SeedImplantPlanner.py")
UI_FILE = os.path.join(MODULE_DIR, "Resources", "UI", "SeedImplantPlanner.ui")
ICON_FILE = os.path.join(MODULE_DIR, "Resources", "Icons", "SeedImplantPlanner.png")


def module_source():
    with open(MODULE_FILE, encoding="utf-8") as fh:
        return fh.read()


def ui_widgets():
    """{objectName: (class, SlicerParameterName or None)} of the .ui file."""
    root = ET.parse(UI_FILE).getroot()
    out = {}
    for w in root.iter("widget"):
        param = None
        for p in w.findall("property"):
            if p.get("name") == "SlicerParameterName":
                param = p.find("string").text
        out[w.get("name")] = (w.get("class"), param)
    return out


def wrapper_fields():
    """{field name: default expression or None} of the @parameterNodeWrapper class."""
    tree = ast.parse(module_source())
    for node in tree.body:
        if isinstance(node, ast.ClassDef) and any(getattr(d, "id", None) == "parameterNodeWrapper"
                                                  for d in node.decorator_list):
            fields = {}
            for stmt in node.body:
                if isinstance(stmt, ast.AnnAssign):
                    fields[stmt.target.id] = (ast.unparse(stmt.annotation),
                                              ast.literal_eval(stmt.value) if stmt.value is not None else None)
            return node.name, fields
    raise AssertionError("no @parameterNodeWrapper class in the module file")


class ModuleFileTest(unittest.TestCase):

    def test_module_file_compiles(self):
        compile(module_source(), MODULE_FILE, "exec")

    def test_template_classes_are_there(self):
        tree = ast.parse(module_source())
        classes = {n.name: [ast.unparse(b) for b in n.bases] for n in tree.body if isinstance(n, ast.ClassDef)}
        self.assertEqual(classes["SeedImplantPlanner"], ["ScriptedLoadableModule"])
        self.assertIn("ScriptedLoadableModuleWidget", classes["SeedImplantPlannerWidget"])
        self.assertEqual(classes["SeedImplantPlannerLogic"], ["ScriptedLoadableModuleLogic"])
        self.assertEqual(classes["SeedImplantPlannerTest"], ["ScriptedLoadableModuleTest"])
        self.assertEqual(wrapper_fields()[0], "SeedImplantPlannerParameterNode")

    def test_no_template_leftovers(self):
        text = module_source()
        for word in ("TODO", "FIXME", "TemplateKey", "John Doe", "NotImplementedError"):
            self.assertNotIn(word, text)

    def test_every_ui_widget_the_widget_uses_exists(self):
        used = set(re.findall(r"self\.ui\.(\w+)", module_source()))
        widgets = ui_widgets()
        missing = sorted(used - set(widgets))
        self.assertEqual(missing, [], f"widgets used by SeedImplantPlanner.py but absent from the .ui: {missing}")
        self.assertGreater(len(used), 25)

    def test_ui_parameter_names_are_wrapper_fields(self):
        _name, fields = wrapper_fields()
        for obj, (cls, param) in ui_widgets().items():
            if param is not None:
                self.assertIn(param, fields, f"{obj} ({cls}) is bound to unknown parameter {param!r}")

    def test_wrapper_matches_the_library_parameters(self):
        _name, fields = wrapper_fields()
        lib = set(parameters.DEFAULTS) | set(parameters.NODE_PARAMETERS) | set(parameters.NODE_LIST_PARAMETERS) \
            | set(parameters.STRING_LIST_PARAMETERS)
        self.assertEqual(set(fields), lib)
        for name, default in parameters.DEFAULTS.items():
            self.assertEqual(fields[name][1], default, name)
        for name in parameters.NODE_LIST_PARAMETERS:
            self.assertTrue(fields[name][0].startswith("list["), name)
        for name in parameters.STRING_LIST_PARAMETERS:
            self.assertEqual(fields[name][0], "list[str]", name)

    def test_panels(self):
        widgets = ui_widgets()
        panels = [n for n, (cls, _p) in widgets.items() if cls == "ctkCollapsibleButton"]
        self.assertEqual(panels, ["inputsCollapsibleButton", "sourceCollapsibleButton", "needlesCollapsibleButton",
                                  "seedsCollapsibleButton", "doseCollapsibleButton", "evaluationCollapsibleButton",
                                  "intraopCollapsibleButton"])

    def test_icon_exists(self):
        with open(ICON_FILE, "rb") as fh:
            self.assertEqual(fh.read(8), b"\x89PNG\r\n\x1a\n")

    def test_help_text_links_to_no_invented_site(self):
        help_text = re.search(r'helpText = _\("""(.*?)"""\)', module_source(), re.S)
        self.assertIsNotNone(help_text)
        self.assertIn("docs/slicer.md", help_text.group(1))
        self.assertNotIn("http", help_text.group(1))  # the project has no public repository yet

    def test_dependency_install_reads_the_shipped_requirements_file(self):
        text = module_source()
        self.assertIn('self.resourcePath("requirements.txt")', text)
        self.assertTrue(os.path.isfile(os.path.join(MODULE_DIR, "Resources", "requirements.txt")))
        # slicer.packaging where the running Slicer has it, slicer.util.pip_install otherwise
        self.assertIn("packaging.pip_ensure(", text)
        self.assertIn("slicer.util.pip_install(", text)


if __name__ == "__main__":
    unittest.main()
