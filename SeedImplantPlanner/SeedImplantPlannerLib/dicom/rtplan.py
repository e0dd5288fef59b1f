"""Brachytherapy RT Plan writer for permanent seed implants, and the needle each seed came from.

Layout (docs/dicom.md): one Application Setup (SlicerRT reads only the first); one channel per seed
(channels 1..N in seed order), Source Movement Type FIXED, two control points at the seed centre
(Control Point 3D Position, LPS) with cumulative time weights 0 and 1, and Control Point
Orientation = the seed's long axis in LPS. One Source item per (model, strength) pair carries
isotope, half-life, Reference Air Kerma Rate (= S_K in U) at the Source Strength Reference
Date/Time, active length and model. Channel Total Time is the nuclide's mean life in seconds
(permanent implant: rate x mean life = total dose to full decay). The needle a seed came from is
kept as Source Applicator ID.
"""

from __future__ import annotations

import datetime as _dt

import numpy as np

from ..core.errors import InputError
from ..physics.seeds import SeedSet
from ..physics.sources import SeedModel
from .common import (MANUFACTURER, RTPLAN_STORAGE, RTSTRUCT_STORAGE, StudyContext, base_dataset, ds_list, ds_string,
                     new_uid, ras_to_lps, save_dataset, seq_item)


def _needle_paths(needles):
    """Polylines (M, 3) RAS and names of needles (Needle objects or their to_dict() form)."""
    out = []
    for n, nd in enumerate(needles or [], start=1):
        if isinstance(nd, dict):
            name = str(nd.get("name") or f"N{nd.get('number', n)}")
            pts = nd.get("control_points_ras_mm") or [nd.get("entry_ras_mm"), nd.get("tip_ras_mm")]
        else:
            name = str(getattr(nd, "name", "") or f"N{n}")
            if hasattr(nd, "sample_path"):
                pts = nd.sample_path(1.0)[0]
            else:
                pts = [nd.entry, nd.tip]
        try:
            pts = np.asarray(pts, dtype=float).reshape(-1, 3)
        except (TypeError, ValueError) as exc:
            raise InputError(f"needle {name}: entry/tip are not three RAS coordinates ({exc})") from exc
        if len(pts) < 2 or not np.all(np.isfinite(pts)):
            raise InputError(f"needle {name}: needs finite entry and tip coordinates")
        out.append((name, pts))
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
        for name, pts in paths:
            d = _distance_to_polyline(p, pts)
            if d <= best_d:
                best, best_d = name, d
        names.append(best)
    return names


def write_rtplan(path, seeds: SeedSet, models: dict, prescription_Gy, strength_ref: _dt.datetime,
                 study: StudyContext, now, rtstruct_ds, target_roi, needle_names, plan_label):
    """Write the brachy RT Plan of ``seeds`` (strengths at ``strength_ref``); returns the dataset."""
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
        if needle_names and needle_names[i]:
            ch.SourceApplicatorID = needle_names[i][:16]
        channels.append(ch)
    setup = seq_item(ApplicationSetupType="OTHER", ApplicationSetupNumber=1,
                     ApplicationSetupName="Permanent seed implant", TotalReferenceAirKerma=ds_string(total_air_kerma),
                     ChannelSequence=Sequence(channels))
    ds.ApplicationSetupSequence = Sequence([setup])
    ds.ApprovalStatus = "UNAPPROVED"
    save_dataset(ds, path)
    return ds
