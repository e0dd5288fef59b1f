"""Seeds from brachytherapy RT Plans, ours and those of other planning systems (PS3.3 C.8.8.15).

What a seed is, in the terms of the RT Brachy Application Setups module:

- a **Channel** holds one source type (Referenced Source Number -> Source Sequence item); its
  **Brachy Control Point Sequence** describes where the source is and for which share of the
  Channel Total Time: Cumulative Time Weight grows while the source dwells, and the time spent
  between control points i and i+1 is ``Channel Total Time x (w[i+1] - w[i]) / Final Cumulative
  Time Weight``;
- a **dwell** is two consecutive control points at the same Control Point 3D Position with an
  increasing cumulative time weight; each dwell with a nonzero weight increment is one seed there.
  A zero increment (an empty slot, a spacer) is no seed;
- a channel whose weights never increase (all equal, or all empty: Type 2) carries no timing: each
  distinct position is one seed (noted);
- a channel with increments only between different positions (no dwell pairs) is read with every
  control point as a seed (noted): this is how some systems list fixed seeds along a needle.

This covers one channel per seed (our export: two control points at the seed, weights 0 and 1)
and one channel per needle with the seeds as FIXED dwells. Seed axis: the Control Point
Orientation, else the channel's direction through its positions (the needle), else +S.

Strength: the source's Reference Air Kerma Rate (U) at its Source Strength Reference Date/Time;
when that is absent, Source Strength if its units are AIR_KERMA_RATE; else (absent, or 0, which
for an I-125 or Pd-103 seed means the writer left it out) the strength the caller gives
(``strength=(value, unit)``), else an error naming the missing attribute. Channel Shield
Sequences are read past (TG-43 dose is unshielded; noted). Refused, with the reason: HDR, MDR and
PDR plans (a stepping afterloader source: dwell positions of one source, not seeds), control
points without a 3D position (positions only along an applicator whose path the plan does not
hold), plans without positions.
"""

from __future__ import annotations

import math

import numpy as np

from ..core.errors import InputError
from ..physics.seeds import SeedSet
from .common import RTPLAN_STORAGE
from .rtimport import dicom_datetime, float_or_none, lps_to_ras_vec, read_dataset

#: Brachy Treatment Types whose plans describe a stepping afterloader source, not seeds.
STEPPING_SOURCE_TYPES = ("HDR", "MDR", "PDR")
_SAME_POSITION_MM = 1e-3


def _resolve_model(src, known):
    """Model id for a Source item: its description / model id if known, else by nuclide and length."""
    for key in ("SourceDescription", "SourceModelID"):
        v = str(getattr(src, key, "") or "").strip()
        if v in known:
            return v, True
    iso = str(getattr(src, "SourceIsotopeName", "")).strip().upper().replace(" ", "")
    length_mm = float_or_none(src, "ActiveSourceLength")
    cands = []
    for mid, m in known.items():
        if m.nuclide.upper().replace(" ", "") != iso:
            continue
        if length_mm is not None and abs(m.active_length_cm * 10.0 - length_mm) > 0.05:
            continue
        cands.append(mid)
    if len(cands) == 1:
        return cands[0], True
    fallback = (str(getattr(src, "SourceDescription", "") or "") or str(getattr(src, "SourceModelID", "") or "")
                or f"unknown_{iso or 'source'}").strip()
    return fallback, False


def _source_strength_U(path, src, num, model_id, resolved, known, strength, notes):
    """Air kerma strength (U) of a Source item at its reference date, from the file or from ``strength``."""
    akr = float_or_none(src, "ReferenceAirKermaRate")
    if akr is not None and akr > 0:
        return akr
    units = str(getattr(src, "SourceStrengthUnits", "") or "").strip().upper()
    alt = float_or_none(src, "SourceStrength")
    if akr is None and units == "AIR_KERMA_RATE" and alt is not None and alt > 0:
        # an explicit 0 contradicts it and is refused below; an absent rate leaves Source Strength the only value
        notes.append(f"source {num}: Reference Air Kerma Rate missing; Source Strength (AIR_KERMA_RATE) used")
        return alt
    if strength is not None:
        value, unit = strength
        if unit == "U":
            from ..physics.strength import check_strength_value
            sk = check_strength_value(value, "given seed strength")
        else:
            if not resolved:
                raise InputError(f"{path}: source {num}: a strength in {unit} needs a known seed model to convert "
                                 f"to U (source '{model_id}' is not in the seed library); give it in U")
            from ..physics.strength import to_air_kerma_strength_U
            sk = to_air_kerma_strength_U(value, unit, known[model_id])
        notes.append(f"source {num}: Reference Air Kerma Rate {'is 0' if akr == 0 else 'missing'}; "
                     f"the given strength {sk:.6g} U used")
        return sk
    if akr == 0:
        raise InputError(f"{path}: source {num}: Reference Air Kerma Rate (300A,022A) is 0: nobody can compute a "
                         "dose from a source of zero strength; give the seed strength (--strength)")
    raise InputError(f"{path}: source {num}: Reference Air Kerma Rate (300A,022A) is missing, so the seed strength "
                     "is unknown; give it (--strength)")


def _channel_seeds(path, ch, cnum):
    """(control point indices that are seeds, positions LPS (n, 3), weight increments or None, orientations, notes)."""
    notes = []
    cps = sorted(getattr(ch, "BrachyControlPointSequence", []), key=lambda c: int(c.ControlPointIndex))
    if not cps:
        raise InputError(f"{path}: channel {cnum} has no Brachy Control Point Sequence, hence no seed positions")
    pos = []
    for c in cps:
        v = getattr(c, "ControlPoint3DPosition", None)
        if v is None or len(v) != 3:
            raise InputError(f"{path}: channel {cnum}: control point {int(c.ControlPointIndex)} has no Control Point "
                             "3D Position (only a position along an applicator whose path the plan does not hold): "
                             "the seeds cannot be placed")
        pos.append([float(x) for x in v])
    p = np.array(pos)
    w = np.array([float(c.CumulativeTimeWeight) if getattr(c, "CumulativeTimeWeight", None) not in ("", None)
                  else np.nan for c in cps])
    orient = [np.asarray(c.ControlPointOrientation, dtype=float) if "ControlPointOrientation" in c else None
              for c in cps]
    same = np.linalg.norm(np.diff(p, axis=0), axis=1) <= _SAME_POSITION_MM
    dw = np.diff(w)
    timed = bool(np.any(np.nan_to_num(dw, nan=0.0) > 0))
    if np.any(dw < 0):
        raise InputError(f"{path}: channel {cnum}: Cumulative Time Weight decreases along the control points")
    if not timed:
        seeds = [0] + [i for i in range(1, len(cps)) if not same[i - 1]]  # each distinct position once
        if len(cps) > 1:
            notes.append(f"channel {cnum}: no cumulative time weight increments; each control point position "
                         "taken as a seed")
        return seeds, p, None, orient, cps, notes
    seeds = [i for i in range(len(cps) - 1) if same[i] and dw[i] > 0]
    if not seeds:
        if np.any(same):  # dwell pairs exist but none has a weight increment
            raise InputError(f"{path}: channel {cnum}: every dwell has a zero time weight: no seed positions")
        notes.append(f"channel {cnum}: no dwell pairs (two control points at one position); every control point "
                     "taken as a seed")
        return list(range(len(cps))), p, None, orient, cps, notes
    return seeds, p, dw, orient, cps, notes


def read_rtplan_seeds(path, at=None, model_dirs=(), strength=None):
    """Seeds of a brachytherapy RT Plan: ``(SeedSet, info)`` (rules in the module docstring).

    ``at``: decay the strengths to this date/time. ``strength``: ``(value, unit)`` with unit U or
    mCi, used for sources without a Reference Air Kerma Rate. ``info``: technique, type, permanent,
    prescription_Gy, frame_of_reference_uid, strength_reference, needle_names (Source Applicator
    ID or Name per seed), channel_numbers, dwell_times_s (per seed, None without timing), sources,
    unresolved_models, notes.
    """
    from ..physics.sources import load_models
    path, ds = read_dataset(path, RTPLAN_STORAGE, "RT Plan")
    if "ApplicationSetupSequence" not in ds or not ds.ApplicationSetupSequence:
        raise InputError(f"{path}: RT Plan has no Application Setup Sequence (not a brachytherapy plan: "
                         "an external-beam plan?)")
    technique = str(getattr(ds, "BrachyTreatmentTechnique", "") or "").strip().upper()
    btype = str(getattr(ds, "BrachyTreatmentType", "") or "").strip().upper()
    if btype in STEPPING_SOURCE_TYPES:
        raise InputError(f"{path}: Brachy Treatment Type {btype}: a stepping-source afterloader plan; its dwell "
                         "positions belong to one moving source and are not seeds")
    known = load_models(model_dirs)
    notes = []
    if technique != "PERMANENT":
        notes.append(f"Brachy Treatment Technique is {technique or 'missing'}, not PERMANENT: a temporary implant; "
                     "the seeds' dwell times are in info['dwell_times_s'] (this product's doses are totals to full "
                     "decay)")
    if btype not in ("LDR", "MANUAL"):
        notes.append(f"Brachy Treatment Type is {btype or 'missing'}, not LDR")
    sources = {}
    for src in getattr(ds, "SourceSequence", []):
        num = int(src.SourceNumber)
        model_id, ok = _resolve_model(src, known)
        sk = _source_strength_U(path, src, num, model_id, ok, known, strength, notes)
        half_life = float_or_none(src, "SourceIsotopeHalfLife")
        if half_life is None and ok:
            half_life = known[model_id].half_life_days
        ref = dicom_datetime(getattr(src, "SourceStrengthReferenceDate", ""),
                             getattr(src, "SourceStrengthReferenceTime", ""))
        sources[num] = {"number": num, "model": model_id, "resolved": ok, "air_kerma_rate_U": sk,
                        "isotope": str(getattr(src, "SourceIsotopeName", "")), "half_life_days": half_life,
                        "reference_datetime": ref, "active_length_mm": float_or_none(src, "ActiveSourceLength")}
    if not sources:
        raise InputError(f"{path}: RT Plan has no Source Sequence: the seeds' isotope and strength are unknown")
    if strength is not None and not any("the given strength" in n for n in notes):
        notes.append("the given strength was not used: every source carries its Reference Air Kerma Rate")
    when = None
    if at is not None:
        from ..physics.strength import parse_datetime
        when = parse_datetime(at)
    pos, axes, sk, models, needle_names, channel_numbers, dwell_s = [], [], [], [], [], [], []
    for setup in ds.ApplicationSetupSequence:
        for ch in getattr(setup, "ChannelSequence", []):
            cnum = int(ch.ChannelNumber)
            snum = int(ch.ReferencedSourceNumber)
            if snum not in sources:
                raise InputError(f"{path}: channel {cnum} refers to source {snum}, which is not in the Source Sequence")
            src = sources[snum]
            movement = str(getattr(ch, "SourceMovementType", "") or "").strip().upper()
            if movement and movement != "FIXED":
                notes.append(f"channel {cnum}: Source Movement Type {movement} in an {btype or 'LDR'} plan; its "
                             "dwells read as seeds")
            if "ChannelShieldSequence" in ch and ch.ChannelShieldSequence:
                notes.append(f"channel {cnum}: Channel Shield Sequence ignored (TG-43 dose is unshielded)")
            seeds_i, p, dw, orient, cps, ch_notes = _channel_seeds(path, ch, cnum)
            notes.extend(ch_notes)
            total_time = float_or_none(ch, "ChannelTotalTime")
            final_w = float_or_none(ch, "FinalCumulativeTimeWeight")
            if final_w is None and dw is not None:
                final_w = float(np.nansum(dw))
            distinct = p[np.r_[True, np.linalg.norm(np.diff(p, axis=0), axis=1) > _SAME_POSITION_MM]]
            for i in seeds_i:
                if orient[i] is not None and np.linalg.norm(orient[i]) > 1e-6:
                    a = lps_to_ras_vec(orient[i])
                elif len(distinct) > 1:
                    a = lps_to_ras_vec(distinct[-1] - distinct[0])
                    notes.append(f"channel {cnum}: no Control Point Orientation; seed axis along the channel")
                else:
                    a = np.array([0.0, 0.0, 1.0])
                    notes.append(f"channel {cnum}: no Control Point Orientation; seed axis set to +S")
                strength_U = src["air_kerma_rate_U"]
                if when is not None:
                    if src["reference_datetime"] is None or not src["half_life_days"]:
                        raise InputError(f"{path}: source {snum} lacks a reference date or half-life; cannot decay "
                                         f"to {at}")
                    hours = (when - src["reference_datetime"]).total_seconds() / 3600.0
                    strength_U *= math.exp(-math.log(2.0) * hours / (src["half_life_days"] * 24.0))
                pos.append(lps_to_ras_vec(p[i]))
                axes.append(a)
                sk.append(strength_U)
                models.append(src["model"])
                needle_names.append(str(getattr(ch, "SourceApplicatorID", "") or getattr(ch, "SourceApplicatorName", "")
                                        or ""))
                channel_numbers.append(cnum)
                if dw is not None and total_time is not None and final_w:
                    dwell_s.append(total_time * float(dw[i]) / final_w)
                else:
                    dwell_s.append(None)
    if not pos:
        raise InputError(f"{path}: RT Plan has no channels, hence no seed positions")
    seeds = SeedSet(np.array(pos), np.array(axes), np.array(sk), models)
    rx = None
    for dref in getattr(ds, "DoseReferenceSequence", []):
        if "TargetPrescriptionDose" in dref and dref.TargetPrescriptionDose not in ("", None):
            rx = float(dref.TargetPrescriptionDose)
            break
    refs = {s["reference_datetime"] for s in sources.values()}
    info = {
        "path": path, "sop_instance_uid": str(ds.SOPInstanceUID), "plan_label": str(getattr(ds, "RTPlanLabel", "")),
        "technique": technique, "type": btype, "permanent": technique == "PERMANENT",
        "prescription_Gy": rx, "frame_of_reference_uid": str(getattr(ds, "FrameOfReferenceUID", "") or ""),
        "study_instance_uid": str(getattr(ds, "StudyInstanceUID", "")),
        "strength_reference": refs.pop() if len(refs) == 1 else None, "strengths_decayed_to": when,
        "needle_names": needle_names, "channel_numbers": channel_numbers, "dwell_times_s": dwell_s,
        "sources": list(sources.values()),
        "unresolved_models": sorted({s["model"] for s in sources.values() if not s["resolved"]}),
        "notes": list(dict.fromkeys(notes)),
    }
    return seeds, info


def check_plan_on_ct(seeds: SeedSet, info: dict, ct, require_inside=True) -> None:
    """Refuse seeds of an RT Plan that do not belong to the CT ``ct`` (DICOM folder, ``FOLDER::UID`` or image file).

    A DICOM CT must share the plan's Frame of Reference UID (same patient coordinate system); with
    ``require_inside`` every seed must also lie inside the CT (the only check an image file, which
    carries no frame of reference, allows).
    """
    from ..core.dicomseries import read_dicom_series, split_series_path
    from ..core.imageio import geometry_of, read_sitk
    from .common import grid_box
    folder, uid = split_series_path(ct)
    plan = info.get("path", "RT Plan")
    if uid is not None or folder.is_dir():
        image, series, files, headers = read_dicom_series(ct)
        ct_for = str(getattr(headers[0], "FrameOfReferenceUID", "") or "")
        plan_for = info.get("frame_of_reference_uid") or ""
        if plan_for and ct_for and plan_for != ct_for:
            raise InputError(f"{plan}: RT Plan frame of reference {plan_for} is not the CT's ({ct_for}, {folder}): the "
                             "seed positions are in another patient coordinate system")
        geometry = geometry_of(image)
    else:
        geometry = geometry_of(read_sitk(ct))
    if not require_inside:
        return
    lo, hi = grid_box(geometry)
    outside = ~np.all((seeds.positions >= lo - 1e-6) & (seeds.positions <= hi + 1e-6), axis=1)
    if np.any(outside):
        i = int(np.flatnonzero(outside)[0])
        raise InputError(f"{plan}: {int(outside.sum())} seed(s) lie outside the CT {ct} (seed {i + 1} at RAS "
                         f"{np.round(seeds.positions[i], 1).tolist()} mm): another frame of reference?")
