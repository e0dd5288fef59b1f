"""DICOM input from other systems: brachy RT Plans, CT series folders, RT Structure Sets, and bad input.

The files are built here with pydicom from the attribute tables of PS3.3 (RT Plan IOD with the RT
Brachy Application Setups module C.8.8.15; CT Image IOD), never with the product's own writer, so
the reader is tested against layouts it did not produce: one channel per needle with several
FIXED control points, one channel per seed, temporary LDR with dwell times, sources with and
without Reference Air Kerma Rate, channel shields, cumulative time weights; CT slices out of
order, with a gap, with a gantry tilt, two series in one folder.
"""

import tempfile
import unittest
import warnings
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from SeedImplantPlannerLib.core.dicomseries import read_dicom_series
from SeedImplantPlannerLib.core.errors import InputError
from SeedImplantPlannerLib.core.imageio import read_image
from SeedImplantPlannerLib.dicom.rtimport import read_rtdose, read_rtstruct
from SeedImplantPlannerLib.dicom.rtplan_read import check_plan_on_ct, read_rtplan_seeds

RTPLAN = "1.2.840.10008.5.1.4.1.1.481.5"
RTSTRUCT = "1.2.840.10008.5.1.4.1.1.481.3"
CT_IMAGE = "1.2.840.10008.5.1.4.1.1.2"


def _item(**kw):
    d = Dataset()
    for k, v in kw.items():
        setattr(d, k, v)
    return d


def _save(ds, path):
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = ds.SOPClassUID
    meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta = meta
    ds.save_as(str(path), enforce_file_format=True)
    return Path(path)


def _patient_study_series(ds, modality, study_uid, for_uid):
    # Patient (C.7.1.1), General Study (C.7.2.1), series, Frame of Reference (C.7.4.1), General Equipment (C.7.5.1)
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Other^System", "OTH-1", "", "O"
    ds.StudyInstanceUID, ds.StudyDate, ds.StudyTime = study_uid, "20261101", "080000"
    ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = "", "1", ""
    ds.Modality = modality
    ds.SeriesInstanceUID = generate_uid()
    ds.SeriesNumber = 7
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.Manufacturer = "OtherTPS"


def control_point(index, pos_lps, weight, orientation=None):
    """Brachy Control Point item: index, relative position, 3D position (LPS mm), cumulative time weight."""
    cp = _item(ControlPointIndex=index, ControlPointRelativePosition="0",
               CumulativeTimeWeight="" if weight is None else f"{weight:g}")
    if pos_lps is not None:
        cp.ControlPoint3DPosition = [f"{v:g}" for v in pos_lps]
    if orientation is not None:
        cp.ControlPointOrientation = [float(v) for v in orientation]
    return cp


def channel(number, cps, source=1, total_time_s=1e6, movement="FIXED", final=None, applicator=None, shield=False):
    """Channel item of the Application Setup (C.8.8.15): Type 1/2 attributes and its control points."""
    weights = [float(c.CumulativeTimeWeight) for c in cps if c.CumulativeTimeWeight not in ("", None)]
    ch = _item(ChannelNumber=number, ChannelLength="", ChannelTotalTime=f"{total_time_s:g}",
               SourceMovementType=movement, TransferTubeNumber="", ReferencedSourceNumber=source,
               NumberOfControlPoints=len(cps), BrachyControlPointSequence=Sequence(cps))
    if weights:
        ch.FinalCumulativeTimeWeight = f"{(final if final is not None else weights[-1]):g}"
    if applicator:
        ch.SourceApplicatorNumber, ch.SourceApplicatorID = number, applicator
        ch.SourceApplicatorType, ch.SourceApplicatorLength, ch.ReferencedROINumber = "RIGID", "200", ""
    if shield:
        ch.ChannelShieldSequence = Sequence([_item(ChannelShieldNumber=1, ChannelShieldID="S1",
                                                   ChannelShieldNominalThickness="0.1")])
    return ch


def source(number=1, isotope="I-125", half_life=59.4, akr=0.5, length=None, description=None, model_id=None,
           strength_units=None, strength=None):
    """Source item (C.8.8.15): Type 1 attributes; ``akr=None`` leaves Reference Air Kerma Rate out."""
    s = _item(SourceNumber=number, SourceType="LINE", SourceIsotopeName=isotope,
              SourceIsotopeHalfLife=f"{half_life:g}", SourceStrengthReferenceDate="20261120",
              SourceStrengthReferenceTime="093000")
    if akr is not None:
        s.ReferenceAirKermaRate = f"{akr:g}"
    if length is not None:
        s.ActiveSourceLength = f"{length:g}"
    if description:
        s.SourceDescription = description
    if model_id:
        s.SourceModelID = model_id
    if strength_units:
        s.SourceStrengthUnits, s.SourceStrength = strength_units, f"{strength:g}"
    return s


def rtplan(path, channels, sources, technique="PERMANENT", btype="LDR", for_uid=None, study_uid=None):
    """An RT Plan IOD (A.20) with the RT Brachy Application Setups module, written with pydicom."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = RTPLAN, generate_uid()
    _patient_study_series(ds, "RTPLAN", study_uid or generate_uid(), for_uid or generate_uid())
    ds.OperatorsName = ""
    ds.RTPlanLabel, ds.RTPlanDate, ds.RTPlanTime, ds.RTPlanGeometry = "OTHER1", "20261120", "090000", "TREATMENT_DEVICE"
    ds.FractionGroupSequence = Sequence([_item(
        FractionGroupNumber=1, NumberOfFractionsPlanned=1, NumberOfBeams=0, NumberOfBrachyApplicationSetups=1,
        ReferencedBrachyApplicationSetupSequence=Sequence([_item(ReferencedBrachyApplicationSetupNumber=1)]))])
    ds.BrachyTreatmentTechnique, ds.BrachyTreatmentType = technique, btype
    ds.TreatmentMachineSequence = Sequence([_item(TreatmentMachineName="SEEDS")])
    ds.SourceSequence = Sequence(sources)
    ds.ApplicationSetupSequence = Sequence([_item(ApplicationSetupType="PERINEAL", ApplicationSetupNumber=1,
                                                  TotalReferenceAirKerma="0", ChannelSequence=Sequence(channels))])
    return _save(ds, path)


def ras(lps):
    return np.asarray(lps, float) * [-1, -1, 1]


#: a needle along +S (LPS z) at x=10, y=-5 with seed slots every 10 mm; the slot at z=20 is a spacer
NEEDLE_LPS = [(10.0, -5.0, z) for z in (0.0, 10.0, 20.0, 30.0)]


def needle_channel_cps(weights=(1, 1, 0, 1)):
    """Dwell pairs at each slot of NEEDLE_LPS: cumulative weight rises by ``weights[slot]`` at the slot."""
    cps, w = [], 0.0
    for p, dw in zip(NEEDLE_LPS, weights):
        cps.append(control_point(len(cps), p, w))
        w += dw
        cps.append(control_point(len(cps), p, w))
    return cps


class Case(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = Path(self.tmp.name)

    def tearDown(self):
        self.tmp.cleanup()


class TestOtherSystemsRtPlans(Case):
    def test_one_channel_per_needle_with_fixed_dwells(self):
        path = rtplan(self.dir / "needle.dcm", [channel(1, needle_channel_cps(), applicator="N1")],
                      [source(akr=0.512, length=4.0)])
        seeds, info = read_rtplan_seeds(path)
        # three seeds: the zero-weight slot at z=20 is a spacer
        np.testing.assert_allclose(seeds.positions, ras([NEEDLE_LPS[0], NEEDLE_LPS[1], NEEDLE_LPS[3]]), atol=1e-9)
        np.testing.assert_allclose(seeds.axes, np.tile([0, 0, 1.0], (3, 1)), atol=1e-12)  # along the needle
        self.assertEqual(seeds.models, ["I125_Best_2301"] * 3)  # the only I-125 model with a 4.0 mm active length
        np.testing.assert_allclose(seeds.strengths_U, 0.512)
        self.assertEqual(info["needle_names"], ["N1"] * 3)
        self.assertEqual(info["channel_numbers"], [1, 1, 1])
        self.assertTrue(info["permanent"])
        self.assertTrue(any("seed axis along the channel" in n for n in info["notes"]))

    def test_one_channel_per_seed_with_orientation(self):
        axes_lps = [(0.0, 0.6, 0.8), (0.6, 0.0, 0.8)]
        chans = [channel(i + 1, [control_point(0, p, 0, a), control_point(1, p, 1, a)])
                 for i, (p, a) in enumerate(zip(NEEDLE_LPS[:2], axes_lps))]
        path = rtplan(self.dir / "seeds.dcm", chans, [source(akr=0.7, description="I125_OncoSeed_6711")])
        seeds, info = read_rtplan_seeds(path)
        np.testing.assert_allclose(seeds.positions, ras(NEEDLE_LPS[:2]), atol=1e-9)
        np.testing.assert_allclose(seeds.axes, ras(axes_lps), atol=1e-7)
        self.assertEqual(seeds.models, ["I125_OncoSeed_6711"] * 2)
        self.assertEqual(info["notes"], [])
        self.assertEqual(info["dwell_times_s"], [1e6, 1e6])

    def test_temporary_ldr_keeps_dwell_times(self):
        # INTERSTITIAL LDR (removed after 72 h): weights 0 -> 0.25 at the first slot, 0.25 -> 1 at the second
        t = 72 * 3600.0
        cps = [control_point(0, NEEDLE_LPS[0], 0), control_point(1, NEEDLE_LPS[0], 0.25),
               control_point(2, NEEDLE_LPS[1], 0.25), control_point(3, NEEDLE_LPS[1], 1.0)]
        path = rtplan(self.dir / "temp.dcm", [channel(1, cps, total_time_s=t)],
                      [source(akr=1.1, description="I125_OncoSeed_6711")], technique="INTERSTITIAL")
        seeds, info = read_rtplan_seeds(path)
        self.assertEqual(len(seeds), 2)
        self.assertFalse(info["permanent"])
        np.testing.assert_allclose(info["dwell_times_s"], [0.25 * t, 0.75 * t])
        self.assertTrue(any("temporary implant" in n for n in info["notes"]))

    def test_source_without_air_kerma_rate_needs_the_strength(self):
        chans = [channel(1, needle_channel_cps())]
        path = rtplan(self.dir / "noakr.dcm", chans, [source(akr=None, description="I125_OncoSeed_6711")])
        with self.assertRaisesRegex(InputError, r"noakr.dcm: source 1: Reference Air Kerma Rate \(300A,022A\) is "
                                                r"missing.*give it \(--strength\)"):
            read_rtplan_seeds(path)
        seeds, info = read_rtplan_seeds(path, strength=(0.5, "U"))
        np.testing.assert_allclose(seeds.strengths_U, 0.5)
        self.assertTrue(any("the given strength 0.5 U used" in n for n in info["notes"]))
        # a strength given for a plan that has its own is not used, and that is said
        with_akr = rtplan(self.dir / "akr.dcm", chans, [source(akr=0.7, description="I125_OncoSeed_6711")])
        seeds, info = read_rtplan_seeds(with_akr, strength=(0.5, "U"))
        np.testing.assert_allclose(seeds.strengths_U, 0.7)
        self.assertTrue(any("given strength was not used" in n for n in info["notes"]))
        seeds, _ = read_rtplan_seeds(path, strength=(0.5, "mCi"))
        np.testing.assert_allclose(seeds.strengths_U, 0.5 * 1.270)  # I-125: 1.270 U per mCi (TG-43)
        # Source Strength in AIR_KERMA_RATE stands in for an absent Reference Air Kerma Rate
        path2 = rtplan(self.dir / "alt.dcm", chans, [source(akr=None, description="I125_OncoSeed_6711",
                                                            strength_units="AIR_KERMA_RATE", strength=0.61)])
        seeds, info = read_rtplan_seeds(path2)
        np.testing.assert_allclose(seeds.strengths_U, 0.61)
        self.assertTrue(any("Source Strength" in n for n in info["notes"]))
        # zero is refused unless the strength is given
        path3 = rtplan(self.dir / "zero.dcm", chans, [source(akr=0.0, description="I125_OncoSeed_6711")])
        with self.assertRaisesRegex(InputError, "zero strength"):
            read_rtplan_seeds(path3)
        self.assertEqual(len(read_rtplan_seeds(path3, strength=(0.4, "U"))[0]), 3)

    def test_channel_shields_and_weights_without_timing(self):
        shielded = rtplan(self.dir / "shield.dcm", [channel(1, needle_channel_cps(), shield=True)],
                          [source(description="I125_OncoSeed_6711")])
        seeds, info = read_rtplan_seeds(shielded)
        self.assertEqual(len(seeds), 3)
        self.assertTrue(any("Channel Shield" in n for n in info["notes"]))
        # cumulative time weights left empty (Type 2): every distinct position is a seed
        cps = [control_point(i, p, None) for i, p in enumerate(NEEDLE_LPS)]
        empty = rtplan(self.dir / "empty.dcm", [channel(1, cps)], [source(description="I125_OncoSeed_6711")])
        seeds, info = read_rtplan_seeds(empty)
        np.testing.assert_allclose(seeds.positions, ras(NEEDLE_LPS), atol=1e-9)
        self.assertTrue(any("no cumulative time weight increments" in n for n in info["notes"]))
        # seeds listed as single control points with rising weights (no dwell pairs)
        cps = [control_point(i, p, i) for i, p in enumerate(NEEDLE_LPS)]
        listed = rtplan(self.dir / "listed.dcm", [channel(1, cps)], [source(description="I125_OncoSeed_6711")])
        seeds, info = read_rtplan_seeds(listed)
        self.assertEqual(len(seeds), 4)

    def test_unusable_plans_are_refused_with_the_reason(self):
        src = [source(isotope="Ir-192", half_life=73.83, akr=40000.0)]
        cases = [
            (rtplan(self.dir / "hdr.dcm", [channel(1, needle_channel_cps(), movement="STEPWISE")], src, "INTERSTITIAL",
                    "HDR"), "HDR: a stepping-source afterloader plan"),
            (rtplan(self.dir / "pdr.dcm", [channel(1, needle_channel_cps(), movement="STEPWISE")], src, "INTERSTITIAL",
                    "PDR"), "PDR: a stepping-source"),
            (rtplan(self.dir / "nopos.dcm", [channel(1, [control_point(0, None, 0), control_point(1, None, 1)])],
                    [source()]), "control point 0 has no Control Point 3D Position"),
            (rtplan(self.dir / "nochan.dcm", [], [source()]), "no channels, hence no seed positions"),
            (rtplan(self.dir / "zerodwell.dcm", [channel(1, needle_channel_cps((0, 0, 0, 0)), final=1)], [source()]),
             "no cumulative time weight increments"),
        ]
        for path, message in cases[:4]:
            with self.subTest(message), self.assertRaisesRegex(InputError, f"{path.name}.*{message}"):
                read_rtplan_seeds(path)
        # all-zero weights carry no timing: positions are read, and said so
        seeds, info = read_rtplan_seeds(cases[4][0])
        self.assertTrue(any(cases[4][1] in n for n in info["notes"]))


def ct_slice(path, z, value, series_uid, study_uid, for_uid, instance, shape=(6, 5), spacing=(1.5, 1.5),
             iop=(1, 0, 0, 0, 1, 0), origin_xy=(-4.0, -3.0)):
    """One CT Image (A.3) slice at LPS z with every pixel = ``value`` HU."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = CT_IMAGE, generate_uid()
    _patient_study_series(ds, "CT", study_uid, for_uid)
    ds.SeriesInstanceUID = series_uid
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
    ds.InstanceNumber = instance
    ds.ImagePositionPatient = [f"{origin_xy[0]:g}", f"{origin_xy[1]:g}", f"{z:g}"]
    ds.ImageOrientationPatient = [f"{v:g}" for v in iop]
    ds.PixelSpacing = [f"{spacing[1]:g}", f"{spacing[0]:g}"]
    ds.SliceThickness = "2"
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.Rows, ds.Columns = shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
    ds.RescaleIntercept, ds.RescaleSlope, ds.KVP, ds.AcquisitionNumber = "0", "1", "120", "1"
    ds.PixelData = np.full(shape, value, dtype="<i2").tobytes()
    return _save(ds, path)


class TestCtSeries(Case):
    def series(self, folder, zs, series_uid=None, names=None, **kw):
        folder.mkdir(exist_ok=True)
        uid = series_uid or generate_uid()
        self.study, self.for_uid = getattr(self, "study", generate_uid()), getattr(self, "for_uid", generate_uid())
        for n, z in enumerate(zs):
            name = names[n] if names else f"IMG{n:03d}.dcm"
            ct_slice(folder / name, z, int(round(10 * z)), uid, self.study, self.for_uid, instance=50 - n, **kw)
        return uid

    def test_slices_out_of_order_are_sorted_along_the_normal(self):
        zs = [4.0, -2.0, 8.0, 0.0, 2.0, 6.0]  # file names and instance numbers say nothing about the order
        self.series(self.dir / "ct", zs)
        arr, g = read_image(self.dir / "ct")
        self.assertEqual(arr.shape, (6, 6, 5))
        np.testing.assert_array_equal(arr[:, 0, 0], [10 * z for z in sorted(zs)])
        np.testing.assert_allclose(g.origin, [4.0, 3.0, -2.0], atol=1e-9)  # RAS of the first voxel
        np.testing.assert_allclose(g.spacing, [1.5, 1.5, 2.0], atol=1e-9)

    def test_missing_slice_is_refused_with_the_gap(self):
        self.series(self.dir / "ct", [0.0, 2.0, 4.0, 10.0, 12.0])
        with self.assertRaisesRegex(InputError, r"ct: series .*2 slice\(s\) missing between 4.00 and 10.00 mm .*"
                                                r"gap 6.00 mm, spacing 2.00 mm"):
            read_image(self.dir / "ct")

    def test_mixed_series_need_a_choice(self):
        a = self.series(self.dir / "ct", [0.0, 2.0, 4.0], names=["a1.dcm", "a2.dcm", "a3.dcm"])
        b = self.series(self.dir / "ct", [1.0, 3.0, 5.0, 7.0], names=["b1.dcm", "b2.dcm", "b3.dcm", "b4.dcm"])
        with self.assertRaises(InputError) as err:
            read_image(self.dir / "ct")
        msg = str(err.exception)
        self.assertIn("2 image series in one folder", msg)
        self.assertIn(a, msg)
        self.assertIn(b, msg)
        self.assertIn("FOLDER::SERIES_UID", msg)
        arr, g = read_image(f"{self.dir / 'ct'}::{b}")
        np.testing.assert_array_equal(arr[:, 0, 0], [10, 30, 50, 70])
        with self.assertRaisesRegex(InputError, "no image series with Series Instance UID 1.2.3"):
            read_image(f"{self.dir / 'ct'}::1.2.3")

    def test_gantry_tilt_is_refused(self):
        # slices 2 mm apart along z, origins sliding 0.5 mm in y per slice (about 14 deg of tilt)
        folder = self.dir / "tilt"
        folder.mkdir()
        uid, study, for_uid = generate_uid(), generate_uid(), generate_uid()
        for n in range(4):
            ct_slice(folder / f"t{n}.dcm", 2.0 * n, 0, uid, study, for_uid, n + 1, origin_xy=(-4.0, -3.0 + 0.5 * n))
        with self.assertRaisesRegex(InputError, r"gantry tilt of about 14.0 deg.*refused, not resampled"):
            read_image(folder)

    def test_corrupt_file_in_the_folder_is_named(self):
        self.series(self.dir / "ct", [0.0, 2.0, 4.0])
        bad = self.dir / "ct" / "IMG001.dcm"
        data = bad.read_bytes()
        bad.write_bytes(data[:140] + b"\xff" * 40)  # preamble and DICM kept, the header destroyed
        (self.dir / "ct" / "notes.txt").write_text("not DICOM: skipped")
        with warnings.catch_warnings(), self.assertRaisesRegex(InputError, "IMG001.dcm: corrupt DICOM file"):
            warnings.simplefilter("ignore")  # pydicom warns about the damaged file before it gives up
            read_image(self.dir / "ct")

    def test_slices_without_the_part10_preamble_are_read(self):
        zs = [0.0, 2.0, 4.0]
        self.series(self.dir / "ct", zs)
        for f in (self.dir / "ct").iterdir():  # the bare data set, as older systems export it
            ds = pydicom.dcmread(f)
            f.unlink()
            del ds.file_meta
            ds.preamble = None
            pydicom.dcmwrite(f.with_suffix(""), ds, enforce_file_format=False, implicit_vr=True, little_endian=True)
            self.assertNotEqual(f.with_suffix("").read_bytes()[128:132], b"DICM")
        (self.dir / "ct" / "README").write_text("exported slices\n")
        arr, g = read_image(self.dir / "ct")
        np.testing.assert_array_equal(arr[:, 0, 0], [0, 20, 40])

    def test_export_onto_one_of_several_series(self):
        from SeedImplantPlannerLib.dicom.export import export_plan_dicom
        from SeedImplantPlannerLib.physics.seeds import SeedSet
        a = self.series(self.dir / "ct", [0.0, 2.0, 4.0, 6.0], names=[f"a{i}.dcm" for i in range(4)])
        b = self.series(self.dir / "ct", [0.0, 3.0, 6.0], names=[f"b{i}.dcm" for i in range(3)])
        seeds = SeedSet(np.array([[0.0, 0.0, 3.0]]), np.array([[0.0, 0.0, 1.0]]), np.array([0.5]),
                        ["I125_OncoSeed_6711"])
        with self.assertRaisesRegex(InputError, "2 image series in one folder"):
            export_plan_dicom(self.dir / "out", self.dir / "ct", seeds, 120.0)
        self.assertFalse((self.dir / "out").exists())
        res = export_plan_dicom(self.dir / "out", f"{self.dir / 'ct'}::{b}", seeds, 120.0)
        plan = pydicom.dcmread(res["rtplan"])
        self.assertEqual(plan.FrameOfReferenceUID, self.for_uid)
        self.assertNotEqual(a, b)

    def test_enhanced_multiframe_image_is_named(self):
        folder = self.dir / "enh"
        folder.mkdir()
        ds = Dataset()
        ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.2.1", generate_uid()  # Enhanced CT Image
        _patient_study_series(ds, "CT", generate_uid(), generate_uid())
        ds.NumberOfFrames = 2
        ds.PerFrameFunctionalGroupsSequence = Sequence([_item(PlanePositionSequence=Sequence(
            [_item(ImagePositionPatient=["0", "0", f"{z:g}"])])) for z in (0.0, 2.0)])
        _save(ds, folder / "enhanced.dcm")
        with self.assertRaisesRegex(InputError, "enhanced.dcm is an enhanced multi-frame image .*single-frame slices"):
            read_image(folder)

    def test_rt_objects_beside_the_ct_are_skipped(self):
        uid = self.series(self.dir / "ct", [0.0, 2.0, 4.0])
        rtplan(self.dir / "ct" / "plan.dcm", [channel(1, needle_channel_cps())], [source()])
        image, series, files, headers = read_dicom_series(self.dir / "ct")
        self.assertEqual(series.uid, uid)
        self.assertEqual(len(files), 3)


def rtstruct(path, ct_series_uid, study_uid, for_uid, contours_lps):
    """An RT Structure Set IOD (A.19) with one ROI 'GTV' made of the given closed planar contours (LPS)."""
    ds = Dataset()
    ds.SOPClassUID, ds.SOPInstanceUID = RTSTRUCT, generate_uid()
    _patient_study_series(ds, "RTSTRUCT", study_uid, for_uid)
    ds.OperatorsName = ""
    ds.StructureSetLabel, ds.StructureSetDate, ds.StructureSetTime = "S", "20261120", "090000"
    ds.ReferencedFrameOfReferenceSequence = Sequence([_item(
        FrameOfReferenceUID=for_uid, RTReferencedStudySequence=Sequence([_item(
            ReferencedSOPClassUID="1.2.840.10008.3.1.2.3.1", ReferencedSOPInstanceUID=study_uid,
            RTReferencedSeriesSequence=Sequence([_item(SeriesInstanceUID=ct_series_uid,
                                                       ContourImageSequence=Sequence([]))]))]))])
    ds.StructureSetROISequence = Sequence([_item(ROINumber=1, ReferencedFrameOfReferenceUID=for_uid, ROIName="GTV",
                                                 ROIGenerationAlgorithm="MANUAL")])
    ds.ROIContourSequence = Sequence([_item(ReferencedROINumber=1, ROIDisplayColor=[255, 0, 0], ContourSequence=Sequence(
        [_item(ContourGeometricType="CLOSED_PLANAR", NumberOfContourPoints=len(c),
               ContourData=[f"{v:g}" for v in np.ravel(c)]) for c in contours_lps]))])
    ds.RTROIObservationsSequence = Sequence([_item(ObservationNumber=1, ReferencedROINumber=1,
                                                   RTROIInterpretedType="GTV", ROIInterpreter="")])
    return _save(ds, path)


def square(z, half=2.0):
    return [(-half, -half, z), (half, -half, z), (half, half, z), (-half, half, z)]


class TestBadInput(Case):
    def make_ct(self, zs=(0.0, 2.0, 4.0, 6.0)):
        self.study, self.for_uid, self.ct_uid = generate_uid(), generate_uid(), generate_uid()
        folder = self.dir / "case" / "ct"
        folder.mkdir(parents=True)
        for n, z in enumerate(zs):
            ct_slice(folder / f"c{n}.dcm", z, 0, self.ct_uid, self.study, self.for_uid, n + 1, shape=(8, 8))
        return folder

    def test_corrupt_dicom_and_other_modality_where_an_rt_plan_is_expected(self):
        corrupt = self.dir / "corrupt.dcm"
        corrupt.write_bytes(b"\0" * 128 + b"DICM" + b"\x02\x00\x10\x00UI\xff\xff" + b"garbage" * 3)
        with warnings.catch_warnings(), self.assertRaisesRegex(InputError, "corrupt.dcm: not a readable DICOM file"):
            warnings.simplefilter("ignore")  # pydicom warns about the invalid UID before the file is refused
            read_rtplan_seeds(corrupt)
        text = self.dir / "plan.txt"
        text.write_text("seed plan as text")
        with self.assertRaisesRegex(InputError, "plan.txt: not a readable DICOM file"):
            read_rtplan_seeds(text)
        folder = self.make_ct()
        ct_file = next(folder.iterdir())
        with self.assertRaisesRegex(InputError, f"{ct_file.name}: expected an RT Plan, but the file is CT Image Storage "
                                                r"\(Modality CT"):
            read_rtplan_seeds(ct_file)
        with self.assertRaisesRegex(InputError, "expected an RT Dose, but the file is CT Image Storage"):
            read_rtdose(ct_file)

    def test_rtstruct_whose_ct_is_absent(self):
        from SeedImplantPlannerLib.imaging.segio import read_segmentation
        folder = self.make_ct()
        path = rtstruct(self.dir / "case" / "rs.dcm", generate_uid(), self.study, self.for_uid, [square(2.0)])
        with self.assertRaisesRegex(InputError, r"rs.dcm: the CT series it references \(.*\) is not in its folder"):
            read_segmentation(path)
        # the same structure set referencing the CT next to it reads
        good = rtstruct(self.dir / "case" / "rs2.dcm", self.ct_uid, self.study, self.for_uid, [square(2.0)])
        seg = read_segmentation(good)
        self.assertEqual([s.name for s in seg.segments], ["GTV"])
        self.assertGreater(int(seg.mask("GTV").sum()), 0)
        self.assertTrue(folder.is_dir())

    def test_contours_on_planes_not_in_the_ct(self):
        from SeedImplantPlannerLib.imaging.segio import read_segmentation
        self.make_ct()
        between = rtstruct(self.dir / "case" / "between.dcm", self.ct_uid, self.study, self.for_uid,
                           [square(2.0), square(3.0)])
        with self.assertRaisesRegex(InputError, r"between.dcm: ROI 'GTV': contour 2 lies 1.00 mm from slice \d .*a plane "
                                                "not in the image"):
            read_segmentation(between)
        beyond = rtstruct(self.dir / "case" / "beyond.dcm", self.ct_uid, self.study, self.for_uid, [square(20.0)])
        with self.assertRaisesRegex(InputError, "beyond.dcm: ROI 'GTV': contour 1 lies 20.00 mm .*outside the image"):
            read_segmentation(beyond)
        _, g = read_image(self.dir / "case" / "ct")
        with self.assertRaisesRegex(InputError, "contour 2 lies 1.00 mm"):
            read_rtstruct(between, g)

    def test_rt_plan_in_another_frame_of_reference(self):
        folder = self.make_ct()
        cps = [control_point(0, (1.0, 1.0, 2.0), 0), control_point(1, (1.0, 1.0, 2.0), 1)]
        other = rtplan(self.dir / "other_for.dcm", [channel(1, cps)], [source(description="I125_OncoSeed_6711")])
        seeds, info = read_rtplan_seeds(other)
        with self.assertRaisesRegex(InputError, "other_for.dcm: RT Plan frame of reference .* is not the CT's"):
            check_plan_on_ct(seeds, info, folder)
        same = rtplan(self.dir / "same_for.dcm", [channel(1, cps)], [source(description="I125_OncoSeed_6711")],
                      for_uid=self.for_uid)
        seeds, info = read_rtplan_seeds(same)
        check_plan_on_ct(seeds, info, folder)  # same frame, seed inside the CT
        far = [control_point(0, (1.0, 1.0, 300.0), 0), control_point(1, (1.0, 1.0, 300.0), 1)]
        outside = rtplan(self.dir / "outside.dcm", [channel(1, far)], [source(description="I125_OncoSeed_6711")],
                         for_uid=self.for_uid)
        seeds, info = read_rtplan_seeds(outside)
        with self.assertRaisesRegex(InputError, r"outside.dcm: 1 seed\(s\) lie outside the CT"):
            check_plan_on_ct(seeds, info, folder)


if __name__ == "__main__":
    unittest.main()
