"""Brachytherapy RT Plan writer for permanent seed implants, and the needle each seed came from.

Layout (docs/dicom.md): one Application Setup (SlicerRT reads only the first), Application Setup
Type a defined term (PERINEAL by default: the template-guided interstitial setup); **one channel
per seed** (channels 1..N in seed order), Source Movement Type FIXED, two control points at the
seed centre (Control Point 3D Position, LPS) with cumulative time weights 0 and 1 (one dwell, one
seed), and Control Point Orientation = the seed's long axis in LPS. The needle a seed was implanted
with is the channel's Source Applicator (Number, ID, Type RIGID, Length), shared by the channels of
its seeds. One Source item per (model, strength) pair carries isotope, half-life, Reference Air
Kerma Rate (= S_K in U) at the Source Strength Reference Date/Time, active length and model.
Channel Total Time is the nuclide's mean life in seconds (permanent implant: rate x mean life =
total dose to full decay).
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass

import numpy as np

from ..core.errors import InputError
from ..physics.seeds import SeedSet
from ..physics.sources import SeedModel
from .common import (MANUFACTURER, RTPLAN_STORAGE, RTSTRUCT_STORAGE, StudyContext, base_dataset, ds_list, ds_string,
                     new_uid, ras_to_lps, save_dataset, seq_item)


#: Defined Terms of Application Setup Type (300A,0232), PS3.3 C.8.8.15.
APPLICATION_SETUP_TYPES = ("FLETCHER_SUIT", "DELCLOS", "BLOEDORN", "JOSLIN_FLYNN", "CHANDIGARH", "MANCHESTER",
                           "HENSCHKE", "NASOPHARYNGEAL", "OESOPHAGEAL", "ENDOBRONCHIAL", "SYED_NEBLETT", "ENDORECTAL",
                           "PERINEAL")
DEFAULT_SETUP_TYPE = "PERINEAL"


def check_setup_type(value):
    """Refuse an Application Setup Type that is not one of the standard's defined terms."""
    if value not in APPLICATION_SETUP_TYPES:
        raise InputError(f"Application Setup Type {value!r} is not a defined term (use one of "
                         f"{', '.join(APPLICATION_SETUP_TYPES)})")


@dataclass(frozen=True)
class Applicator:
    """The needle a seed was implanted with, as a channel's Source Applicator."""

    number: int
    name: str
    length_mm: float | None  # Source Applicator Length: the needle's usable length, else its path length


def _needle_paths(needles):
    """(number, name, polyline (M, 3) RAS, usable length mm or None) of needles (Needle objects or to_dict() form)."""
    out = []
    for n, nd in enumerate(needles or [], start=1):
        if isinstance(nd, dict):
            number = nd.get("number", n)
            name = str(nd.get("name") or f"N{number}")
            pts = nd.get("control_points_ras_mm") or [nd.get("entry_ras_mm"), nd.get("tip_ras_mm")]
            usable = nd.get("usable_length_mm")
        else:
            number = getattr(nd, "number", n)
            name = str(getattr(nd, "name", "") or f"N{number}")
            if hasattr(nd, "sample_path"):
                pts = nd.sample_path(1.0)[0]
            else:
                pts = [nd.entry, nd.tip]
            usable = getattr(nd, "usable_length_mm", None)
        try:
            number = int(number)
            pts = np.asarray(pts, dtype=float).reshape(-1, 3)
            usable = None if usable in (None, "") else float(usable)
        except (TypeError, ValueError) as exc:
            raise InputError(f"needle {name}: number, entry/tip or usable length malformed ({exc})") from exc
        if len(pts) < 2 or not np.all(np.isfinite(pts)):
            raise InputError(f"needle {name}: needs finite entry and tip coordinates")
        if usable is not None and not (np.isfinite(usable) and usable > 0):
            raise InputError(f"needle {name}: usable length must be a positive number of mm, got {usable}")
        out.append((number, name, pts, usable))
    return out


def plan_needle_names(plan):
    """Needle name of each seed of a :class:`planfile.Plan` ('' for loose seeds), for ``seed_needle_names``."""
    names = {int(n.number): str(n.name) for n in plan.needles}
    return [names.get(int(v), "") if int(v) > 0 else "" for v in plan.seed_needle]


def _distance_to_polyline(p, pts):
    a, b = pts[:-1], pts[1:]
    ab = b - a
    t = np.clip(np.einsum("ij,ij->i", p - a, ab) / np.maximum(np.einsum("ij,ij->i", ab, ab), 1e-12), 0, 1)
    return float(np.min(np.linalg.norm(a + t[:, None] * ab - p, axis=1)))


def assign_seeds_to_needles(seeds: SeedSet, needles, tol_mm=2.0):
    """Name of the needle each seed lies on (nearest path within ``tol_mm``), '' for none."""
    paths = _needle_paths(needles)
    names = []
    for p in seeds.positions:
        best, best_d = "", tol_mm
        for _, name, pts, _ in paths:
            d = _distance_to_polyline(p, pts)
            if d <= best_d:
                best, best_d = name, d
        names.append(best)
    return names


def seed_applicators(seeds: SeedSet, needles=None, seed_needle_names=None):
    """The :class:`Applicator` (needle) of each seed, None for a loose seed or when nothing names one.

    ``seed_needle_names`` names each seed's needle ('' for none); with ``needles`` the names are
    looked up among them (number and length from the needle), else without ``needles`` a name alone
    gives an applicator numbered by first appearance and of unknown length. Without names, each seed
    goes to the needle path it lies on (within 2 mm).
    """
    paths = _needle_paths(needles)
    if seed_needle_names is not None:
        names = [str(n or "") for n in seed_needle_names]
        if len(names) != len(seeds):
            raise InputError(f"{len(names)} needle names for {len(seeds)} seeds")
    elif paths:
        names = assign_seeds_to_needles(seeds, needles)
    else:
        return [None] * len(seeds)
    by_name = {}
    for number, name, pts, usable in paths:
        length = usable if usable is not None else float(np.sum(np.linalg.norm(np.diff(pts, axis=0), axis=1)))
        by_name.setdefault(name, Applicator(number, name, length))
    out = []
    for i, name in enumerate(names):
        if not name:
            out.append(None)
            continue
        if name not in by_name:
            if paths:
                raise InputError(f"seed {i + 1}: needle '{name}' is not among the needles given "
                                 f"({', '.join(sorted(by_name)) or 'none'})")
            by_name[name] = Applicator(len(by_name) + 1, name, None)
        out.append(by_name[name])
    numbers = {}
    for a in by_name.values():
        if numbers.setdefault(a.number, a.name) != a.name:
            raise InputError(f"needles '{numbers[a.number]}' and '{a.name}' share the number {a.number}")
    return out


def write_rtplan(path, seeds: SeedSet, models: dict, prescription_Gy, strength_ref: _dt.datetime,
                 study: StudyContext, now, rtstruct_ds, target_roi, applicators, plan_label,
                 setup_type=DEFAULT_SETUP_TYPE):
    """Write the brachy RT Plan of ``seeds`` (strengths at ``strength_ref``); returns the dataset.

    ``applicators``: the :class:`Applicator` of each seed (None for none), or None.
    """
    from pydicom.sequence import Sequence
    ds = base_dataset(RTPLAN_STORAGE, "RTPLAN", new_uid(), 4, "Seed implant plan", study, now)
    ds.InstanceNumber = 1
    ds.RTPlanLabel = plan_label[:16]
    ds.RTPlanName = plan_label[:64]
    ds.RTPlanDescription = "Permanent seed implant (TG-43U1); one channel per seed"
    ds.RTPlanDate = now.strftime("%Y%m%d")
    ds.RTPlanTime = now.strftime("%H%M%S")
    if rtstruct_ds is not None:
        ds.RTPlanGeometry = "PATIENT"
        ds.ReferencedStructureSetSequence = Sequence([seq_item(ReferencedSOPClassUID=RTSTRUCT_STORAGE,
                                                               ReferencedSOPInstanceUID=rtstruct_ds.SOPInstanceUID)])
    else:
        ds.RTPlanGeometry = "TREATMENT_DEVICE"
    # RT Prescription
    ds.PrescriptionDescription = f"{prescription_Gy:g} Gy total dose to full decay (minimum peripheral dose)"
    dref = seq_item(DoseReferenceNumber=1, DoseReferenceUID=new_uid(), DoseReferenceType="TARGET",
                    DoseReferenceDescription=f"Prescription {prescription_Gy:g} Gy"[:64],
                    TargetPrescriptionDose=ds_string(prescription_Gy))
    if target_roi is not None:
        dref.DoseReferenceStructureType = "VOLUME"
        dref.ReferencedROINumber = target_roi
    else:
        dref.DoseReferenceStructureType = "SITE"
    ds.DoseReferenceSequence = Sequence([dref])
    # RT Fraction Scheme
    ds.FractionGroupSequence = Sequence([seq_item(
        FractionGroupNumber=1, NumberOfFractionsPlanned=1, NumberOfBeams=0, NumberOfBrachyApplicationSetups=1,
        ReferencedBrachyApplicationSetupSequence=Sequence([seq_item(ReferencedBrachyApplicationSetupNumber=1)]),
        ReferencedDoseReferenceSequence=Sequence([seq_item(ReferencedDoseReferenceNumber=1)]))])
    # RT Brachy Application Setups
    ds.BrachyTreatmentTechnique = "PERMANENT"
    ds.BrachyTreatmentType = "LDR"
    ds.TreatmentMachineSequence = Sequence([seq_item(TreatmentMachineName="MANUAL SEEDS",
                                                     Manufacturer=MANUFACTURER)])
    source_of = {}
    sources = []
    for i in range(len(seeds)):
        key = (seeds.models[i], float(seeds.strengths_U[i]))
        if key in source_of:
            continue
        m: SeedModel = models[key[0]]
        number = len(sources) + 1
        source_of[key] = number
        item = seq_item(SourceNumber=number, SourceType="LINE", SourceManufacturer=m.manufacturer_model[:64] or m.model_id[:64],
                        SourceDescription=m.model_id[:64],
                        ActiveSourceLength=ds_string(m.active_length_cm * 10.0),
                        SourceIsotopeName=m.nuclide, SourceIsotopeHalfLife=ds_string(m.half_life_days),
                        SourceStrengthUnits="AIR_KERMA_RATE", ReferenceAirKermaRate=ds_string(key[1]),
                        SourceStrength=ds_string(key[1]),
                        SourceStrengthReferenceDate=strength_ref.strftime("%Y%m%d"),
                        SourceStrengthReferenceTime=strength_ref.strftime("%H%M%S"))
        if len(m.model_id) <= 16:
            item.SourceModelID = m.model_id
        sources.append(item)
    ds.SourceSequence = Sequence(sources)
    pos_lps = ras_to_lps(seeds.positions)
    axis_lps = ras_to_lps(seeds.axes)
    channels = []
    total_air_kerma = 0.0
    for i in range(len(seeds)):
        m = models[seeds.models[i]]
        tau_s = m.mean_life_h * 3600.0
        total_air_kerma += float(seeds.strengths_U[i]) * m.mean_life_h  # uGy at 1 m
        cps = Sequence([seq_item(ControlPointIndex=c, ControlPointRelativePosition="0",
                                 ControlPoint3DPosition=ds_list(pos_lps[i]), CumulativeTimeWeight=str(c),
                                 ControlPointOrientation=[float(v) for v in axis_lps[i]]) for c in (0, 1)])
        ch = seq_item(ChannelNumber=i + 1, ChannelLength="", ChannelTotalTime=ds_string(tau_s), SourceMovementType="FIXED",
                      TransferTubeNumber="", ReferencedSourceNumber=source_of[(seeds.models[i], float(seeds.strengths_U[i]))],
                      NumberOfControlPoints=2, FinalCumulativeTimeWeight="1", BrachyControlPointSequence=cps)
        app = applicators[i] if applicators else None
        if app is not None and app.length_mm is not None:
            # Source Applicator ID (2C), Type (1C) and Length (1C) are required once the Number is present
            ch.SourceApplicatorNumber = app.number
            ch.SourceApplicatorID = app.name[:16]
            ch.SourceApplicatorType = "RIGID"
            ch.SourceApplicatorName = app.name[:64]
            ch.SourceApplicatorLength = ds_string(app.length_mm)
            ch.ReferencedROINumber = ""  # 2C with the Number: the needle has no ROI in the structure set
        elif app is not None:  # a needle name without its geometry: named only (Type 3)
            ch.SourceApplicatorName = app.name[:64]
        channels.append(ch)
    check_setup_type(setup_type)
    setup = seq_item(ApplicationSetupType=setup_type, ApplicationSetupNumber=1,
                     ApplicationSetupName="Permanent seed implant",
                     TotalReferenceAirKerma=ds_string(total_air_kerma), ChannelSequence=Sequence(channels))
    ds.ApplicationSetupSequence = Sequence([setup])
    ds.ApprovalStatus = "UNAPPROVED"
    save_dataset(ds, path)
    return ds
