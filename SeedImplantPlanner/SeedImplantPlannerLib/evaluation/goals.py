"""Dose-volume goals per structure: syntax, goal files, presets, pass/fail.

Goal syntax: ``<metric> <op> <number> [unit]`` with op one of ``>= > <= <`` and
- dose metrics (D90, D2cc, Dmean, Dmax, ...): unit ``Gy`` or ``%`` (of the prescription);
- volume metrics (V100, V150, V20Gy): unit ``%`` (of the structure) or ``cc``;
- indices (CI, EI, HI): no unit.
Examples: ``V100 >= 95%``, ``D90 >= 100%``, ``D2cc <= 145 Gy``, ``V100 < 1 cc``, ``CI >= 0.6``.

Goal files (user-editable):
- JSON: ``{"name": ..., "prescription_Gy": 145, "structures": [{"name": "Prostate",
  "aliases": ["CTV"], "role": "target", "required": true, "goals": ["V100 >= 95%",
  {"goal": "D90 >= 100%", "source": "..."}], "metrics": ["D98"]}]}``
- text: one ``Structure: goal; goal`` per line, ``#`` starts a comment; the line ``Target: ...``
  holds the goals of every target that has no line of its own.

Which goals a target must meet: those of the entry with its name or alias, else the goal set's
goals for "the target" (its first entry with role ``target``, e.g. the presets' PTV with its
aliases). With several targets in one plan every target gets its own pass/fail rows, each against
its own prescription (:meth:`GoalSet.entry_for_target`).
Presets ship in ``Resources/Presets/*.json`` (:func:`list_presets`, :func:`load_goals`).
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

from ..core.errors import InputError
from ..core.resources import find_resource_dir
from .metrics import MetricSpec, parse_metric

OPS = {">=": lambda a, b: a >= b, ">": lambda a, b: a > b, "<=": lambda a, b: a <= b, "<": lambda a, b: a < b}
_GOAL_RE = re.compile(r"^\s*([A-Za-z][A-Za-z0-9.%]*)\s*(>=|<=|>|<|=>|=<)\s*([-+]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?)"
                      r"\s*(gy|cgy|%|cc|cm3|cm\^3)?\s*$", re.I)



@dataclass(frozen=True)
class Goal:
    """One goal: metric, operator, limit and its unit ('Gy', '%rx', '%', 'cc' or '')."""

    text: str
    metric: MetricSpec
    op: str
    limit: float
    unit: str
    source: str = ""

    def value_of(self, value: dict, prescription_Gy: float) -> float:
        """The metric value in this goal's unit."""
        if self.unit == "Gy":
            return value["Gy"]
        if self.unit == "%rx":
            return 100.0 * value["Gy"] / prescription_Gy
        if self.unit == "%":
            return value["percent"]
        if self.unit == "cc":
            return value["cc"]
        return value["value"]

    def check(self, value: dict, prescription_Gy: float):
        """(metric value in the goal's unit, passed) -- passed is None when the value is undefined."""
        v = self.value_of(value, prescription_Gy)
        if v is None or not math.isfinite(v):
            return v, None
        return v, bool(OPS[self.op](v, self.limit))

    @property
    def unit_label(self):
        """Unit as shown to the user."""
        return {"%rx": "% Rx", "%": "%", "Gy": "Gy", "cc": "cc"}.get(self.unit, "")


def parse_goal(text, source="") -> Goal:
    """Parse ``"V100 >= 95%"``-style goal text; InputError naming the text and the expected syntax."""
    text = str(text).strip()
    m = _GOAL_RE.match(text)
    if not m:
        raise InputError(f"cannot read goal '{text}': expected '<metric> <op> <number> [unit]' such as "
                         "'V100 >= 95%', 'D2cc <= 145 Gy' or 'CI >= 0.6' (op one of >=, >, <=, <)")
    metric_txt, op, num, unit = m.groups()
    op = {"=>": ">=", "=<": "<="}.get(op, op)
    try:
        spec = parse_metric(metric_txt)
    except InputError as exc:
        raise InputError(f"goal '{text}': {exc}") from None
    limit = float(num)
    unit = (unit or "").lower()
    if unit in ("cm3", "cm^3"):
        unit = "cc"
    if unit == "cgy":
        unit, limit = "gy", limit / 100.0
    if spec.is_index:
        if unit:
            raise InputError(f"goal '{text}': {spec.name} has no unit")
        u = ""
    elif spec.is_dose:
        if unit == "gy":
            u = "Gy"
        elif unit == "%":
            u = "%rx"
        else:
            raise InputError(f"goal '{text}': a dose goal needs a unit, Gy or % (of the prescription)")
    else:
        if unit == "%":
            u = "%"
        elif unit == "cc":
            u = "cc"
        else:
            raise InputError(f"goal '{text}': a volume goal needs a unit, % (of the structure) or cc")
    return Goal(str(text).strip(), spec, op, limit, u, source)


@dataclass
class StructureGoals:
    """Goals and extra metrics for one structure, matched by name or alias (case-insensitive)."""

    name: str
    aliases: list = field(default_factory=list)
    role: str = "oar"
    required: bool = False
    goals: list = field(default_factory=list)
    metrics: list = field(default_factory=list)

    def matches(self, structure_name) -> bool:
        """True if ``structure_name`` is this entry's name or one of its aliases."""
        low = str(structure_name).strip().lower()
        return low == self.name.lower() or low in (a.lower() for a in self.aliases)


@dataclass
class GoalSet:
    """A named set of structure goals, optionally with a default prescription and its sources."""

    name: str
    structures: list = field(default_factory=list)
    prescription_Gy: float | None = None
    title: str = ""
    sources: list = field(default_factory=list)

    def for_structure(self, structure_name):
        """The :class:`StructureGoals` matching ``structure_name``, or None."""
        for s in self.structures:
            if s.matches(structure_name):
                return s
        return None

    def assign(self, structure_names) -> dict:
        """``{id(entry): structure name}``: each entry takes its own name first, then its aliases in order."""
        low = {str(n).lower(): n for n in structure_names}
        taken, out = set(), {}
        for entry in self.structures:
            for cand in [entry.name] + list(entry.aliases):
                n = low.get(cand.lower())
                if n is not None and n not in taken:
                    out[id(entry)] = n
                    taken.add(n)
                    break
        return out

    def entry_for(self, structure_name, structure_names):
        """The entry assigned to ``structure_name`` among ``structure_names`` (see :meth:`assign`), or None."""
        assigned = self.assign(structure_names)
        for entry in self.structures:
            if assigned.get(id(entry)) == structure_name:
                return entry
        return None

    def target_entry(self):
        """The first entry with role 'target', or None."""
        return next((s for s in self.structures if s.role == "target"), None)

    def generic_target_entry(self, structure_names=()):
        """The goals written for "the target": the first entry with role 'target' (e.g. the presets' PTV
        with its aliases), which every target without an entry of its own takes; or None."""
        return self.target_entry()

    def entry_for_target(self, target_name, structure_names):
        """The entry whose goals target ``target_name`` must meet: its own (name or alias, see
        :meth:`entry_for`), else the goals for "the target" (:meth:`generic_target_entry`). With several
        targets in one plan every target gets its own rows, each against its own prescription."""
        return self.entry_for(target_name, structure_names) or self.generic_target_entry(structure_names)


def _goal_from_item(item, where):
    if isinstance(item, str):
        return parse_goal(item)
    if isinstance(item, dict) and "goal" in item:
        return parse_goal(item["goal"], str(item.get("source", "")))
    raise InputError(f"{where}: a goal must be a string like 'V100 >= 95%' or {{\"goal\": ..., \"source\": ...}}")


def goals_from_dict(doc, where="goals") -> GoalSet:
    """Build a :class:`GoalSet` from the JSON layout (see module doc)."""
    if not isinstance(doc, dict) or not isinstance(doc.get("structures"), list):
        raise InputError(f"{where}: expected a JSON object with a 'structures' list")
    entries = []
    for n, s in enumerate(doc["structures"]):
        if not isinstance(s, dict) or not s.get("name"):
            raise InputError(f"{where}: structure entry {n + 1} needs a 'name'")
        role = str(s.get("role", "oar")).lower()
        if role not in ("target", "oar", "body"):
            raise InputError(f"{where}: structure '{s['name']}' has role '{role}' (use target, oar or body)")
        goals = [_goal_from_item(g, f"{where}: structure '{s['name']}'") for g in s.get("goals", [])]
        metrics = [parse_metric(m).name for m in s.get("metrics", [])]
        entries.append(StructureGoals(str(s["name"]), [str(a) for a in s.get("aliases", [])], role,
                                      bool(s.get("required", False)), goals, metrics))
    rx = doc.get("prescription_Gy")
    if rx is not None:
        try:
            rx = float(rx)
        except (TypeError, ValueError):
            raise InputError(f"{where}: prescription_Gy must be a number, got {rx!r}") from None
        if not math.isfinite(rx) or rx <= 0:
            raise InputError(f"{where}: prescription_Gy must be > 0, got {rx!r}")
    return GoalSet(str(doc.get("name", where)), entries, rx, str(doc.get("title", "")), list(doc.get("sources", [])))


def goals_from_text(text, where="goals") -> GoalSet:
    """Build a :class:`GoalSet` from ``Structure: goal; goal`` lines."""
    entries = {}
    for lineno, raw in enumerate(str(text).splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        if ":" not in line:
            raise InputError(f"{where}, line {lineno}: expected 'Structure: goal; goal', got '{raw.strip()}'")
        name, rest = line.split(":", 1)
        name = name.strip()
        if not name:
            raise InputError(f"{where}, line {lineno}: structure name is empty")
        # "Target: ..." are the goals of every target without a line of its own
        entry = entries.setdefault(name.lower(), StructureGoals(name, role="target" if name.lower() == "target"
                                                                else "oar"))
        for g in rest.split(";"):
            if g.strip():
                try:
                    entry.goals.append(parse_goal(g))
                except InputError as exc:
                    raise InputError(f"{where}, line {lineno}: {exc}") from None
    return GoalSet(where, list(entries.values()))


def preset_dir() -> Path:
    """Folder of the shipped goal presets."""
    return find_resource_dir("Presets", InputError, "goal presets")


def list_presets() -> dict:
    """``{preset name: title}`` of the shipped presets."""
    out = {}
    for p in sorted(preset_dir().glob("*.json")):
        doc = json.loads(p.read_text(encoding="utf-8"))
        out[p.stem] = doc.get("title", "")
    return out


def load_goals(path_or_preset) -> GoalSet:
    """Goals from a preset name (see :func:`list_presets`), a JSON file or a text file."""
    p = Path(str(path_or_preset))
    if not p.exists():
        cand = preset_dir() / f"{path_or_preset}.json"
        if cand.exists():
            p = cand
        else:
            raise InputError(f"goals '{path_or_preset}': no such file or preset (presets: "
                             f"{', '.join(list_presets())})")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"{p}: cannot read goals file ({exc})") from exc
    if p.suffix.lower() == ".json":
        try:
            doc = json.loads(text)
        except ValueError as exc:
            raise InputError(f"{p}: not valid JSON ({exc})") from exc
        return goals_from_dict(doc, str(p))
    return goals_from_text(text, str(p))
