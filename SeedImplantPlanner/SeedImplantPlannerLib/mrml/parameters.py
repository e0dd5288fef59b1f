"""The module's parameter node, in the storage layout of Slicer's ``parameterNodeWrapper``.

A ``vtkMRMLScriptedModuleNode`` with attribute ``ModuleName = SeedImplantPlanner`` holds numbers and
strings as parameters, ``True``/``False`` for booleans, nodes as node references with the
parameter's name as role, lists as ``name.len`` + ``name.<i>``, so the module's wrapper class reads
what the library wrote and the other way round.
"""

from __future__ import annotations

import math

from ..core.errors import InputError

MODULE_NAME = "SeedImplantPlanner"

DEFAULTS = {
    "targetSegmentId": "",
    "seedModel": "I125_OncoSeed_6711",
    "strengthValue": 0.5,
    "strengthUnit": "mCi",
    "referenceDate": "",
    "implantDate": "",
    "prescriptionDoseGy": 145.0,
    "doseGridSpacingMm": 2.0,
    "doseMarginMm": 15.0,
    "doseEngine": "fast",
    "isodoseLevelsPercent": "50, 90, 100, 150, 200",
    "needlesLocked": False,
    "needleSpacingMm": 10.0,
    "seedSpacingMm": 10.0,
    "goalPreset": "",
    "liveUpdate": True,
}
NODE_PARAMETERS = ("ctVolume", "segmentation", "seedsNode", "doseVolume", "dvhTable", "dvhChart", "metricsTable",
                   "doseColorTable", "slicerRtDvhMetricsTable")
NODE_LIST_PARAMETERS = ("needleNodes", "isodoseModels", "slicerRtDvhTables")
#: Plans with several targets: the first target is ``targetSegmentId`` with ``prescriptionDoseGy`` and
#: the plan's strength; the others are listed here with their own prescription (Gy) and seed strength
#: (in ``strengthUnit``, "" = the plan's), template direction ("" = the plan's; R, L, A, P, S, I or x;y;z)
#: and goals (``v100=95,v150=65`` in the --target syntax, "" = the goal set's or defaults), one entry
#: per target in the same order.
STRING_LIST_PARAMETERS = ("organSegmentIds", "forbiddenSegmentIds", "extraTargetSegmentIds",
                          "extraTargetPrescriptionsGy", "extraTargetStrengths", "extraTargetDirections",
                          "extraTargetGoals")


class PlanParameters:
    """Typed access to the module's parameter node, in parameterNodeWrapper's storage layout."""

    def __init__(self, node):
        self.node = node

    @staticmethod
    def create(scene):
        """A new singleton parameter node of the module in ``scene`` (reused if present)."""
        node = scene.GetSingletonNode(MODULE_NAME, "vtkMRMLScriptedModuleNode")
        if node is None:
            node = scene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetSingletonTag(MODULE_NAME)
            node.SetAttribute("ModuleName", MODULE_NAME)
            node.SetName(scene.GenerateUniqueName(MODULE_NAME))
            node = scene.AddNode(node)
        params = PlanParameters(node)
        for k, v in DEFAULTS.items():
            if not node.GetParameter(k):
                params.set(k, v)
        return params

    def set(self, name, value):
        """Store a number, string or bool parameter."""
        if isinstance(value, bool):
            self.node.SetParameter(name, "True" if value else "False")
        else:
            self.node.SetParameter(name, str(value))

    def get(self, name):
        """A parameter converted to the type of its default (str when no default)."""
        raw = self.node.GetParameter(name)
        default = DEFAULTS.get(name)
        if raw == "" and default is not None:
            return default
        if isinstance(default, bool):
            return raw == "True"
        if isinstance(default, float):
            try:
                return float(raw)
            except ValueError:
                raise InputError(f"parameter {name} is not a number: {raw!r}") from None
        return raw

    def set_node(self, name, node):
        """Reference ``node`` (or None) under role ``name``."""
        self.node.SetParameter(name, "")
        self.node.SetNodeReferenceID(name, node.GetID() if node is not None else None)

    def get_node(self, name):
        """The node referenced under role ``name`` (or None)."""
        return self.node.GetNodeReference(name)

    def set_node_list(self, name, nodes):
        """Reference a list of nodes (``name.len`` and ``name.<i>``)."""
        old = self._len(name)
        for i, n in enumerate(nodes):
            self.set_node(f"{name}.{i}", n)
        for i in range(len(nodes), old):
            self.node.SetNodeReferenceID(f"{name}.{i}", None)
            self.node.UnsetParameter(f"{name}.{i}")
        self.node.SetParameter(f"{name}.len", str(len(nodes)))

    def get_node_list(self, name):
        """The referenced nodes of a node list (missing entries skipped)."""
        out = []
        for i in range(self._len(name)):
            n = self.get_node(f"{name}.{i}")
            if n is not None:
                out.append(n)
        return out

    def set_string_list(self, name, values):
        """Store a list of strings (``name.len`` and ``name.<i>``)."""
        old = self._len(name)
        values = [str(v) for v in values]
        for i, v in enumerate(values):
            self.node.SetParameter(f"{name}.{i}", v)
        for i in range(len(values), old):
            self.node.UnsetParameter(f"{name}.{i}")
        self.node.SetParameter(f"{name}.len", str(len(values)))

    def get_string_list(self, name):
        """A stored list of strings."""
        return [self.node.GetParameter(f"{name}.{i}") for i in range(self._len(name))]

    def _len(self, name):
        raw = self.node.GetParameter(f"{name}.len")
        return int(raw) if raw else 0

    def isodose_levels(self):
        """Isodose levels (% of prescription) from the comma-separated parameter."""
        return parse_levels(self.get("isodoseLevelsPercent"))


def parse_levels(text):
    """'50, 90, 100' -> (50.0, 90.0, 100.0); InputError naming a bad entry."""
    out = []
    for part in str(text).replace(";", ",").split(","):
        part = part.strip().rstrip("%")
        if not part:
            continue
        try:
            v = float(part)
        except ValueError:
            raise InputError(f"isodose level {part!r} is not a number (give percentages such as 50, 90, 100)") from None
        if not math.isfinite(v) or v <= 0:
            raise InputError(f"isodose level {part!r} must be a positive percentage")
        out.append(v)
    if not out:
        raise InputError("no isodose level given (e.g. 50, 90, 100, 150, 200)")
    return tuple(sorted(set(out)))
