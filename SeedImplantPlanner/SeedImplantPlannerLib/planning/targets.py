"""Targets of one implant and the patient outline the needles enter through.

Several targets can be planned as one implant (one dose grid, organ doses from all seeds), each
with its own prescription, goals and seed strength (clinics use two activities when the masses
differ in size). A :class:`TargetSpec` holds what the user gave for one target; missing values
fall back to the plan-wide ones, and contradictions (the same target twice with different
prescriptions, overlapping targets) are refused with a message naming the targets.

The skin (:func:`skin_region`) is the outside of the union of every label given, hole-filled:
in a labelmap (one label per voxel) the body label excludes the organs and the masses, so the
body label alone has holes where the targets are. With a CT and no segments, the air boundary
(HU > -400, largest connected part, hole-filled) is used.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from ..core.errors import InputError
from .problem import Goals

#: CT number (HU) above which a voxel is inside the patient when the skin comes from the CT.
BODY_HU_THRESHOLD = -400.0


@dataclass
class TargetSpec:
    """One target as given: name and, optionally, its own prescription (Gy), goals and strength."""

    name: str
    prescription_Gy: float | None = None
    strength: float | None = None
    strength_unit: str | None = None
    v100: float | None = None  # fractions, as in Goals
    d90: float | None = None
    v150: float | None = None
    v200: float | None = None
    d90_max: float | None = None
    #: this target's template insertion direction (a letter R, L, A, P, S, I or 'x;y;z'): in template
    #: mode it replaces the plan-wide direction, in auto mode it fixes this target's template (no search)
    direction: str | None = None

    def goals(self, default: Goals | None, prescription_Gy: float | None) -> Goals:
        """This target's goals: its own values over ``default`` (plan-wide goals) and the plan prescription."""
        rx = self.prescription_Gy if self.prescription_Gy is not None else (
            prescription_Gy if prescription_Gy is not None else (default.prescription_Gy if default else None))
        if rx is None:
            raise InputError(f"target '{self.name}': no prescription dose (give one per target or a plan-wide one)")
        base = default or Goals(float(rx))

        def pick(own, fallback):
            return fallback if own is None else own

        return Goals(float(rx), pick(self.v100, base.v100_min), pick(self.d90, base.d90_min_frac),
                     pick(self.v150, base.v150_max), pick(self.v200, base.v200_max), [],
                     pick(self.d90_max, base.d90_max_frac))


def parse_target(text, unit="U") -> TargetSpec:
    """``NAME[:rx=Gy,strength=VALUE,v100=%,d90=%,v150=%,v200=%,d90max=%,direction=D]`` (command line) -> TargetSpec.

    ``direction`` is this target's template insertion direction: a letter (R, L, A, P, S, I: the
    way the needle travels) or three numbers separated by ``;`` (``direction=1;-1;0``).
    """
    name, _, spec = str(text).partition(":")
    name = name.strip()
    if not name:
        raise InputError(f"target {text!r}: empty name (use NAME or NAME:rx=120,strength=0.5)")
    kw = {}
    keys = {"rx": "prescription_Gy", "prescription": "prescription_Gy", "strength": "strength", "v100": "v100",
            "d90": "d90", "v150": "v150", "v200": "v200", "d90max": "d90_max"}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        k, eq, v = part.partition("=")
        if eq and k.strip().lower() in ("direction", "dir"):
            if "direction" in kw:
                raise InputError(f"target {text!r}: direction given twice")
            kw["direction"] = _check_direction(text, v)
            continue
        key = keys.get(k.strip().lower())
        if not eq or key is None:
            raise InputError(f"target {text!r}: {part!r} is not one of rx=Gy, strength=VALUE, v100=%, d90=%, v150=%, "
                             "v200=%, d90max=%, direction=R|L|A|P|S|I|x;y;z")
        if key in kw:
            raise InputError(f"target {text!r}: {k.strip()} given twice")
        try:
            val = float(v)
        except ValueError:
            raise InputError(f"target {text!r}: {part!r} is not a number") from None
        if not math.isfinite(val) or (key in ("prescription_Gy", "strength") and val <= 0):
            raise InputError(f"target {text!r}: {part!r} must be a positive, finite number")
        if key in ("v100", "v150", "v200"):
            if not 0.0 <= val <= 100.0:
                raise InputError(f"target {text!r}: {part!r} is a percentage of the target between 0 and 100")
            val /= 100.0
        elif key in ("d90", "d90_max"):
            if not 0.0 < val <= 300.0:
                raise InputError(f"target {text!r}: {part!r} is a percentage of the prescription in (0, 300]")
            val /= 100.0
        kw[key] = val
    if "strength" in kw:
        kw["strength_unit"] = unit
    return TargetSpec(name, **kw)


def _check_direction(text, value):
    """The direction text of a --target option, checked (letter or three numbers separated by ';')."""
    v = str(value).strip()
    t = v.upper()
    if t in ("R", "L", "A", "P", "S", "I"):
        return t
    try:
        parts = [float(p) for p in v.split(";")]
    except ValueError:
        parts = []
    if len(parts) != 3 or not all(math.isfinite(p) for p in parts) or max(abs(p) for p in parts) < 1e-9:
        raise InputError(f"target {text!r}: direction={v!r}: use R, L, A, P, S, I or three numbers separated by ';' "
                         "(e.g. direction=1;-1;0)")
    return ";".join(f"{p:g}" for p in parts)


#: TargetSpec goal fields and their --target keys (fractions in the spec, percentages in the text).
GOAL_KEYS = (("v100", "v100"), ("d90", "d90"), ("v150", "v150"), ("v200", "v200"), ("d90_max", "d90max"))


def parse_target_list(text, unit=None, need_rx=True) -> list:
    """The other targets of an implant as the module's and the web page's field give them -> [TargetSpec].

    Entries are separated by ``;`` (a ``;`` followed by a number belongs to a direction vector
    ``direction=1;-1;0``); each is the ``--target`` syntax of ``seedplan plan``
    (``NAME:rx=Gy,strength=S,direction=D,v100=%,d90=%,v150=%,v200=%,d90max=%``, see
    :func:`parse_target`) or the short form ``NAME:Rx[:strength]``. Strengths are in ``unit`` (the
    plan's). ``need_rx``: every entry must give its prescription. InputError names a bad entry.
    """
    import re
    out = []
    # a ';' followed by a number belongs to a direction vector (direction=1;-1;0), not between two targets
    for part in filter(None, (p.strip() for p in re.split(r";(?!\s*[-+.\d])", str(text or "")))):
        name, _, rest = part.partition(":")
        if rest.strip() and "=" not in rest:  # short form NAME:Rx[:strength]
            bits = [b.strip() for b in rest.split(":")]
            if len(bits) > 2 or not name.strip() or not bits[0]:
                raise InputError(f"other target {part!r}: write NAME:Rx or NAME:Rx:strength (e.g. GTV_Groin:140:0.7) "
                                 "or NAME:rx=140,strength=0.7,direction=P")
            try:
                values = [float(b) for b in bits if b]
            except ValueError:
                raise InputError(f"other target {part!r}: the prescription and strength must be numbers") from None
            rest = ",".join(f"{k}={v!r}" for k, v in zip(("rx", "strength"), values))
            part_cli = f"{name}:{rest}"
        else:
            part_cli = part
        try:
            spec = parse_target(part_cli, unit)
        except InputError as exc:
            raise InputError(f"other target {part!r}: {exc}") from None
        if need_rx and spec.prescription_Gy is None:
            raise InputError(f"other target {part!r}: give its prescription, NAME:Rx (e.g. GTV_Groin:140) or "
                             "NAME:rx=140")
        out.append(spec)
    return out


def spec_from_plan_row(row, strength=None, unit=None) -> TargetSpec:
    """A plan file's target row (``plan.targets``) as a TargetSpec: its prescription, its own template
    direction and the goals in which it differs from the planner's defaults (``strength`` in ``unit``)."""
    from .problem import Goals
    g = Goals.from_dict(row["goals"]) if isinstance(row.get("goals"), dict) and row["goals"] else None
    default = Goals(float(row["prescription_Gy"]))
    own = {}
    if g is not None:
        for f, attr in (("v100", "v100_min"), ("d90", "d90_min_frac"), ("v150", "v150_max"), ("v200", "v200_max"),
                        ("d90_max", "d90_max_frac")):
            v, dv = getattr(g, attr), getattr(default, attr)
            if v is not None and (dv is None or abs(v - dv) > 1e-9):
                own[f] = float(v)
    return TargetSpec(str(row["name"]), float(row["prescription_Gy"]), strength, unit if strength is not None else None,
                      direction=row.get("direction") or None, **own)


def format_target_spec(spec) -> str:
    """``NAME:rx=140,strength=0.7,direction=P,v150=65`` (the ``--target`` syntax) of a TargetSpec."""
    parts = []
    if spec.prescription_Gy is not None:
        parts.append(f"rx={spec.prescription_Gy:g}")
    if spec.strength is not None:
        parts.append(f"strength={spec.strength:g}")
    if spec.direction:
        parts.append(f"direction={spec.direction}")
    for field_name, key in GOAL_KEYS:
        v = getattr(spec, field_name)
        if v is not None:
            parts.append(f"{key}={100.0 * v:g}")
    return spec.name + (":" + ",".join(parts) if parts else "")


def format_target_list(specs) -> str:
    """The inverse of :func:`parse_target_list` (entries joined by ``; ``)."""
    return "; ".join(format_target_spec(s) for s in specs)


def merge_specs(specs) -> list:
    """One spec per target name (case-insensitive); the same target given twice with different values is refused."""
    out = {}
    for s in specs:
        key = s.name.strip().lower()
        if key in out:
            a = out[key]
            for f in ("prescription_Gy", "strength", "v100", "d90", "v150", "v200", "d90_max"):
                va, vb = getattr(a, f), getattr(s, f)
                if va is not None and vb is not None and abs(va - vb) > 1e-9:
                    raise InputError(f"target '{s.name}' is given twice with contradictory {f.replace('_Gy', '')} "
                                     f"({va:g} and {vb:g})")
                if va is None and vb is not None:
                    setattr(a, f, vb)
            if a.direction is not None and s.direction is not None and a.direction != s.direction:
                raise InputError(f"target '{s.name}' is given twice with contradictory directions "
                                 f"({a.direction} and {s.direction})")
            if a.direction is None:
                a.direction = s.direction
            continue
        out[key] = TargetSpec(**{k: getattr(s, k) for k in s.__dataclass_fields__})
    return list(out.values())


def target_goals_from_goal_set(goal_set, name, structure_names, prescription_Gy) -> dict:
    """The planner goals a goal set (:class:`goals.GoalSet`) asks of target ``name``, as TargetSpec fields.

    The target's goals are those of its own entry (name or alias), else the goal set's goals for
    "the target" (:meth:`goals.GoalSet.entry_for_target`), so every target of a plan gets them,
    each against its own prescription ``prescription_Gy`` (a D90 goal in Gy becomes a fraction of
    it). Mapped: ``V100 >= x%`` (v100), ``D90 >= x% | Gy`` (d90), ``D90 <= x% | Gy`` (d90_max),
    ``V150 <= x%``, ``V200 <= x%``; the other goals are checked on the evaluated dose only.
    """
    entry = goal_set.entry_for_target(name, structure_names) if goal_set is not None else None
    out = {}
    for g in (entry.goals if entry is not None else []):
        m, up = g.metric.name, g.op in (">=", ">")
        if m == "V100" and up and g.unit == "%":
            out["v100"] = g.limit / 100.0
        elif m == "D90" and g.unit in ("%rx", "Gy"):
            frac = g.limit / 100.0 if g.unit == "%rx" else g.limit / float(prescription_Gy)
            out["d90" if up else "d90_max"] = frac
        elif m in ("V150", "V200") and not up and g.unit == "%":
            out[m.lower()] = g.limit / 100.0
    return out


def organ_limits_from_goal_set(goal_set, organ, structure_names, prescription_Gy) -> dict:
    """``{dmax_Gy, d2cc_Gy, d0_1cc_Gy}`` (those given) of ``organ``'s entry in a goal set: ``Dmax``, ``D2cc``,
    ``D0.1cc <= x Gy | %`` (of ``prescription_Gy``)."""
    entry = goal_set.entry_for(organ, structure_names) if goal_set is not None else None
    limits = {}
    for g in (entry.goals if entry is not None else []):
        key = {"Dmax": "dmax_Gy", "D2cc": "d2cc_Gy", "D0.1cc": "d0_1cc_Gy"}.get(g.metric.name)
        if key and g.op in ("<=", "<") and g.unit in ("Gy", "%rx"):
            limits[key] = g.limit if g.unit == "Gy" else g.limit / 100.0 * float(prescription_Gy)
    return limits


def check_overlaps(geometry, masks: dict, tolerance_cc=0.0):
    """Refuse targets that share voxels (their prescriptions would contradict): InputError naming them."""
    names = list(masks)
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            both = np.count_nonzero(masks[names[i]] & masks[names[j]])
            cc = both * geometry.voxel_volume_cc
            if both and cc > tolerance_cc:
                raise InputError(f"targets '{names[i]}' and '{names[j]}' overlap ({cc:.2f} cc in common): give one "
                                 "target for the shared volume or separate them")


def skin_region(geometry, body_mask=None, other_masks=(), ct_hu=None):
    """The inside of the patient (bool [k, j, i]) the needles enter: see the module doc.

    ``body_mask`` and ``other_masks`` (every label of the segmentation) are united and
    hole-filled; without any mask, ``ct_hu`` (same grid) gives the air boundary. None when
    neither is given.
    """
    from scipy import ndimage
    region = None
    for m in ([body_mask] if body_mask is not None else []) + list(other_masks):
        m = np.asarray(m, dtype=bool)
        if m.shape != geometry.shape:
            raise InputError(f"a mask of shape {m.shape} does not match the grid {geometry.shape}")
        region = m.copy() if region is None else region | m
    if region is None and ct_hu is not None:
        ct = np.asarray(ct_hu)
        if ct.shape != geometry.shape:
            raise InputError(f"the CT ({ct.shape}) and the segmentation grid {geometry.shape} differ")
        region = ct > BODY_HU_THRESHOLD
        lab, n = ndimage.label(region)
        if n > 1:
            sizes = np.bincount(lab.ravel())
            sizes[0] = 0
            region = lab == int(np.argmax(sizes))
    if region is None:
        return None
    if not region.any():
        raise InputError("the body outline is empty: cannot place needle entries on the skin")
    # fill internal cavities (organs not given, bowel gas) slice by slice and in 3D
    filled = ndimage.binary_fill_holes(region)
    for k in range(filled.shape[0]):
        filled[k] = ndimage.binary_fill_holes(filled[k])
    return filled
