"""Bad input, every command, every kind: exit status 2, one ``seedplan: error:`` line, no output.

The promise of the README (bad input exits 2 with one line naming the input and the problem, and
no output file is created or changed) is tried here row by row. :data:`KINDS` is a table: each row
names the kind of bad input, the ``seedplan`` arguments, a pattern the error line must match, the
output paths that exist before the run (filled with sentinel bytes) and, where a library function
reads the same input, that call (it must raise a ``SeedPlanError`` subclass with the same message).

Every row runs as its own ``seedplan`` subprocess. Checks per row: status 2; stderr is exactly one
line, starting ``seedplan: error:``, with no traceback; the output folder of the row holds exactly
the files it held before, byte for byte; the shared input folder is unchanged after all rows.

Adding a row (new command or a defect found): append a :class:`Kind` to :data:`KINDS`; ``{d}`` in
the arguments is the folder of input files made by :func:`make_inputs` (add a file there if none
fits), ``{o}`` the row's own output folder. ``test_every_command_has_rows`` fails until every
registered subcommand has rows. See docs/DEVELOPING.md, "Bad input".
"""

import json
import os
import shlex
import sys
import tempfile
import unittest
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from seedplan_cli import seedplan  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "SeedImplantPlanner"))

from SeedImplantPlannerLib.core.errors import SeedPlanError  # noqa: E402
from SeedImplantPlannerLib.core.geometry import ImageGeometry  # noqa: E402
from SeedImplantPlannerLib.core.imageio import write_image  # noqa: E402
from SeedImplantPlannerLib.imaging.segio import Segmentation, write_segmentation  # noqa: E402

M6711 = "I125_OncoSeed_6711"
SEED_HEADER = "x_mm,y_mm,z_mm,axis_x,axis_y,axis_z,sk_U,model\n"
#: Tiny CT grid: 20 x 20 x 14 voxels of 2 mm around the origin (the whole suite stays fast).
GEOM = ImageGeometry((20, 20, 14), (2.0, 2.0, 2.0), (-19.0, -19.0, -13.0))
SENTINEL = b"sentinel: a failed run must leave this file as it is\n"


@dataclass(frozen=True)
class Kind:
    """One row: ``kind`` of bad input, ``argv`` of seedplan, ``says`` (regex the message must match),
    ``outputs`` (paths under ``{o}`` made before the run; a trailing ``/`` makes a folder), and
    ``lib`` (``f(d)`` calling the library on the same input; must raise with the same message)."""

    kind: str
    argv: str
    says: str
    outputs: tuple = ("out",)
    lib: object = None

    @property
    def command(self):
        return self.argv.split()[0]


def _rows(*specs):
    return [Kind(*s) if isinstance(s, tuple) else s for s in specs]


# Library calls of the rows (imported lazily: each names the function the CLI uses for that input).
def _register(moving):
    def call(d):
        from SeedImplantPlannerLib.imaging.registration import register_ct
        return register_ct(str(d / "planning.nrrd"), str(d / moving),
                           names=(f"{d}/planning.nrrd (planning CT)", f"{d}/{moving} (new CT)"))
    return call


def _seeds(path):
    from SeedImplantPlannerLib.physics.seeds import read_seeds_csv
    return lambda d: read_seeds_csv(Path(path.format(d=d)))


def _points(path):
    from SeedImplantPlannerLib.physics.seeds import read_points_csv
    return lambda d: read_points_csv(Path(path.format(d=d)))


def _image(path):
    from SeedImplantPlannerLib.core.imageio import read_image
    return lambda d: read_image(Path(path.format(d=d)))


def _seg(path):
    from SeedImplantPlannerLib.imaging.segio import read_segmentation
    return lambda d: read_segmentation(Path(path.format(d=d)))


def _plan(path):
    from SeedImplantPlannerLib.planning.planfile import read_plan_seeds
    return lambda d: read_plan_seeds(Path(path.format(d=d)))


def _goals(path_or_name):
    from SeedImplantPlannerLib.evaluation.goals import load_goals
    return lambda d: load_goals(path_or_name.format(d=d))


def _models(folder):
    from SeedImplantPlannerLib.physics.sources import load_models
    return lambda d: load_models([folder.format(d=d)])


def _rtplan(path):
    from SeedImplantPlannerLib.dicom.rtplan_read import read_rtplan_seeds
    return lambda d: read_rtplan_seeds(Path(path.format(d=d)))


PD = "point-dose --seeds {d}/seeds.csv --points {d}/points.csv"
DOSE = "dose --seeds {d}/seeds.csv --reference {d}/ct.nrrd"
NOMO = "nomogram --segmentation {d}/seg.seg.nrrd --target GTV --strength 0.5 --prescription 120"
PLAN = ("plan --image {d}/ct.nrrd --segmentation {d}/seg.seg.nrrd --target GTV --body Body --strength 0.5 "
        "--prescription 120 --direction P --template-spacing 5 --seed-spacing 5 --min-distance 4 --time-limit 2")
NEEDLES = "needles --segmentation {d}/seg.seg.nrrd --target GTV --body Body --direction P"
MARGIN = "margin --structures {d}/seg.seg.nrrd --source GTV --margin 3 --name PTV"
EVAL = "--dose {d}/dose.nrrd --structures {d}/seg.seg.nrrd --names GTV,Body --rx 100"
DVH = "dvh " + EVAL
METRICS = "metrics " + EVAL
COMPARE = "compare --dose-a {d}/dose.nrrd --dose-b {d}/dose.nrrd --structures {d}/seg.seg.nrrd --names GTV --rx 100"
REPORT = "report " + EVAL
FIND = "find-seeds --ct {d}/ct.nrrd --sk 0.5 --model " + M6711
FNEED = "find-needles --ct {d}/ct.nrrd"
VERIFY = "verify --planned {d}/seeds.csv --found {d}/seeds.csv --spacing 2"
EXPORT = "export-dicom --ct {d}/ct.nrrd --seeds {d}/seeds.csv --prescription-Gy 120"
DSEEDS = "dicom-seeds"
REG = "register --fixed {d}/planning.nrrd --moving {d}/moving.nrrd"
INTRAOP = ("intraop --ct {d}/ct.nrrd --plan {d}/plan.json --segmentation {d}/seg.seg.nrrd "
           "--needles {d}/needles_in_place.csv")

#: The table. Kinds are grouped by what is wrong; every command appears in several groups.
KINDS = _rows(
    # -- files: missing, unreadable, empty, binary, truncated ---------------------------------------
    ("missing file", PD.replace("seeds.csv", "nope.csv") + " --out {o}/out", r"nope\.csv: cannot read seeds CSV",
     ("out",), _seeds("{d}/nope.csv")),
    ("empty file", PD.replace("seeds.csv", "empty.csv") + " --out {o}/out", r"empty\.csv: .*seeds CSV",
     ("out",), _seeds("{d}/empty.csv")),
    ("binary file", PD.replace("seeds.csv", "binary.bin") + " --out {o}/out", r"binary\.bin: .*seeds CSV",
     ("out",), _seeds("{d}/binary.bin")),
    ("folder given as a file", PD.replace("{d}/seeds.csv", "{d}/afolder") + " --out {o}/out",
     r"afolder: .*seeds CSV", ("out",), _seeds("{d}/afolder")),
    ("empty points file", PD.replace("points.csv", "empty.csv") + " --out {o}/out", r"empty\.csv: .*points CSV",
     ("out",), _points("{d}/empty.csv")),
    ("binary points file", PD.replace("points.csv", "binary.bin") + " --out {o}/out", r"binary\.bin: .*points CSV",
     ("out",), _points("{d}/binary.bin")),
    ("missing image", DOSE.replace("ct.nrrd", "nope.nrrd") + " --out {o}/out.nrrd", r"nope\.nrrd: image not found",
     ("out.nrrd",), _image("{d}/nope.nrrd")),
    ("empty image", DOSE.replace("ct.nrrd", "empty.nrrd") + " --out {o}/out.nrrd", r"empty\.nrrd: unreadable image",
     ("out.nrrd",), _image("{d}/empty.nrrd")),
    ("binary image", DOSE.replace("ct.nrrd", "binary.nrrd") + " --out {o}/out.nrrd", r"binary\.nrrd: unreadable image",
     ("out.nrrd",), _image("{d}/binary.nrrd")),
    ("NRRD cut in half (compressed)", DVH.replace("dose.nrrd", "half.nrrd") + " --csv {o}/dvh.csv",
     r"half\.nrrd: unreadable image", ("dvh.csv",), _image("{d}/half.nrrd")),
    ("NRRD cut in half (raw)", FIND.replace("ct.nrrd", "rawhalf.nrrd") + " --out {o}/found.csv",
     r"rawhalf\.nrrd: unreadable image", ("found.csv",), _image("{d}/rawhalf.nrrd")),
    ("seg.nrrd with a broken header", NOMO.replace("seg.seg.nrrd", "broken.seg.nrrd"),
     r"broken\.seg\.nrrd: unreadable segmentation", (), _seg("{d}/broken.seg.nrrd")),
    ("seg.nrrd cut in half", MARGIN.replace("seg.seg.nrrd", "half.seg.nrrd") + " --out {o}/ptv.seg.nrrd",
     r"half\.seg\.nrrd: unreadable segmentation", ("ptv.seg.nrrd",), _seg("{d}/half.seg.nrrd")),
    ("missing segmentation", NEEDLES.replace("seg.seg.nrrd", "nope.seg.nrrd") + " --out {o}/needles/",
     r"nope\.seg\.nrrd: segmentation not found", ("needles/",), _seg("{d}/nope.seg.nrrd")),
    ("empty segmentation file", PLAN.replace("seg.seg.nrrd", "empty.seg.nrrd") + " --out {o}/plan/",
     r"empty\.seg\.nrrd: unreadable segmentation", ("plan/",), _seg("{d}/empty.seg.nrrd")),
    ("plan JSON cut short", "dose --seeds {d}/plan_cut.json --reference {d}/ct.nrrd --out {o}/out.nrrd",
     r"plan_cut\.json: plan file is not valid JSON", ("out.nrrd",), _plan("{d}/plan_cut.json")),
    ("plan JSON of another version", EXPORT.replace("seeds.csv", "plan_v99.json") + " --out {o}/dicom/",
     r"plan_v99\.json: plan file version 99 is not supported", ("dicom/",), _plan("{d}/plan_v99.json")),
    ("plan JSON with missing keys", VERIFY.replace("--planned {d}/seeds.csv", "--planned {d}/plan_nokeys.json")
     + " --out-dir {o}/verify/", r"plan_nokeys\.json: malformed plan file .*seeds", ("verify/",),
     _plan("{d}/plan_nokeys.json")),
    ("plan JSON of another format", FIND + " --planned {d}/plan_other.json --out {o}/found.csv",
     r"plan_other\.json: not a SeedImplantPlanner plan file", ("found.csv",), _plan("{d}/plan_other.json")),
    ("plan JSON that is binary", REPORT + " --plan {d}/binary.json --out {o}/report.html",
     r"binary\.json: plan is not valid JSON", ("report.html",)),
    ("plan JSON whose source lacks the model", REPORT + " --seeds {d}/plan_nomodel.json --out {o}/r.html",
     r"plan_nomodel\.json: malformed plan file \(source\.model missing", ("r.html",), _plan("{d}/plan_nomodel.json")),
    ("plan with a negative seed strength", "dose --seeds {d}/plan_negsk.json --reference {d}/ct.nrrd --out {o}/o.nrrd",
     r"plan_negsk\.json: .*strength must be > 0", ("o.nrrd",), _plan("{d}/plan_negsk.json")),
    ("missing needle file", NEEDLES + " --needle-mode freehand --needles {d}/nope.csv --out {o}/needles/",
     r"nope\.csv: cannot read needle file", ("needles/",)),
    ("not a DICOM file", DSEEDS + " --plan {d}/notdicom.dcm --out {o}/seeds.csv", r"notdicom\.dcm: .*DICOM",
     ("seeds.csv",), _rtplan("{d}/notdicom.dcm")),
    ("DICOM of the wrong modality", DSEEDS + " --plan {d}/ct_slice.dcm --out {o}/seeds.csv",
     r"ct_slice\.dcm: .*(RT ?Plan|RTPLAN|modality)", ("seeds.csv",), _rtplan("{d}/ct_slice.dcm")),
    ("missing DICOM file", DSEEDS + " --plan {d}/nope.dcm --out {o}/seeds.csv", r"nope\.dcm",
     ("seeds.csv",), _rtplan("{d}/nope.dcm")),
    # -- content: columns, values --------------------------------------------------------------
    ("missing column", PD.replace("seeds.csv", "seeds_nocol.csv"), r"seeds_nocol\.csv: seeds CSV is missing column",
     (), _seeds("{d}/seeds_nocol.csv")),
    ("text in a number column", PD.replace("points.csv", "points_text.csv") + " --out {o}/out",
     r"points_text\.csv: line 2: column y_mm: not a number", ("out",), _points("{d}/points_text.csv")),
    ("NaN seed position", DOSE.replace("seeds.csv", "seeds_nan.csv") + " --out {o}/out.nrrd",
     r"seeds_nan\.csv: line 2: .*not finite", ("out.nrrd",), _seeds("{d}/seeds_nan.csv")),
    ("zero seed strength", PD.replace("seeds.csv", "seeds_zero.csv") + " --out {o}/out",
     r"seeds_zero\.csv: line 2: column sk_U: strength must be > 0", ("out",), _seeds("{d}/seeds_zero.csv")),
    ("unknown seed model", PD.replace("seeds.csv", "seeds_unknown.csv") + " --out {o}/out",
     r"seeds_unknown\.csv: seed 1: unknown seed model 'NoSuchSeed'", ("out",)),
    ("unknown seed model (dose)", DOSE.replace("seeds.csv", "seeds_unknown.csv") + " --out {o}/out.nrrd",
     r"seeds_unknown\.csv: seed 1: unknown seed model 'NoSuchSeed'", ("out.nrrd",)),
    ("unknown seed model in a plan file", DOSE.replace("seeds.csv", "plan_model.json") + " --out {o}/out.nrrd",
     r"plan_model\.json: seed 2: unknown seed model 'NoSuchSeed'", ("out.nrrd",)),
    ("unknown seed model (metrics --seeds)", METRICS + " --seeds {d}/seeds_unknown.csv --csv {o}/m.csv",
     r"seeds_unknown\.csv: seed 1: unknown seed model 'NoSuchSeed'", ("m.csv",)),
    ("unknown seed model of found seeds (verify)", VERIFY.replace("--found {d}/seeds.csv", "--found {d}/seeds_unknown.csv")
     + " --out-dir {o}/v/", r"seeds_unknown\.csv: seed 1: unknown seed model 'NoSuchSeed'", ("v/",)),
    ("unknown seed model (export-dicom)", EXPORT.replace("seeds.csv", "seeds_unknown.csv") + " --out {o}/dicom/",
     r"seeds_unknown\.csv: seed 1: unknown seed model 'NoSuchSeed'", ("dicom/",)),
    ("unknown seed model option (plan)", PLAN + " --model NoSuchSeed --out {o}/plan/",
     r"--model NoSuchSeed: unknown seed model \(known: .*I125_OncoSeed_6711", ("plan/",)),
    ("unknown seed model option (find-seeds)", FIND.replace(M6711, "NoSuchSeed") + " --out {o}/found.csv",
     r"--model NoSuchSeed: unknown seed model", ("found.csv",)),
    ("NaN in a dose image", METRICS.replace("dose.nrrd", "dose_nan.nrrd") + " --csv {o}/m.csv",
     r"dose_nan\.nrrd.*(NaN|not finite)", ("m.csv",)),
    ("Inf in a dose image", COMPARE.replace("--dose-b {d}/dose.nrrd", "--dose-b {d}/dose_inf.nrrd") + " --json {o}/c.json",
     r"dose_inf\.nrrd.*(Inf|not finite)", ("c.json",)),
    ("negative dose image", DVH.replace("dose.nrrd", "dose_neg.nrrd") + " --png {o}/dvh.png",
     r"dose_neg\.nrrd.*negative", ("dvh.png",)),
    ("NaN in a CT", FIND.replace("ct.nrrd", "ct_nan.nrrd") + " --out {o}/found.csv",
     r"ct_nan\.nrrd.*(NaN|not finite)", ("found.csv",)),
    # -- segments ------------------------------------------------------------------------------
    ("segment that does not exist", NOMO.replace("--target GTV", "--target PTV"), r"no segment named 'PTV'", ()),
    ("empty segment as target", PLAN.replace("--target GTV", "--target Empty") + " --out {o}/plan/",
     r"target 'Empty' is empty", ("plan/",)),
    ("empty segment as margin source", MARGIN.replace("--source GTV", "--source Empty") + " --out {o}/ptv.seg.nrrd",
     r"Empty.*empty", ("ptv.seg.nrrd",)),
    ("segment that does not exist (names)", DVH.replace("GTV,Body", "GTV,Liver") + " --csv {o}/dvh.csv",
     r"Liver", ("dvh.csv",)),
    ("empty segment as ROI", FIND + " --roi {d}/seg.seg.nrrd --roi-segment Empty --out {o}/found.csv",
     r"ROI segment 'Empty' is empty", ("found.csv",)),
    ("empty target name", NOMO.replace("--target GTV", "--target="), r"no target structure given", ()),
    ("forbidden segment that does not exist", NEEDLES + " --forbidden Vessels --out {o}/needles/",
     r"no segment named 'Vessels'", ("needles/",)),
    # -- geometry ------------------------------------------------------------------------------
    ("target outside the CT", PLAN.replace("ct.nrrd", "ct_far.nrrd") + " --out {o}/plan/",
     r"seg\.seg\.nrrd: the target 'GTV' lies outside the image \S*ct_far\.nrrd: the target spans RAS .* the image "
     r"\[481\.0, 481\.0, 487\.0\] to", ("plan/",)),
    ("target partly outside the CT", PLAN.replace("ct.nrrd", "ct_shift.nrrd") + " --out {o}/plan/",
     r"seg\.seg\.nrrd: \d+\.\d% of the target 'GTV' lies outside the image \S*ct_shift\.nrrd", ("plan/",)),
    ("mismatched dose grids", COMPARE.replace("--dose-b {d}/dose.nrrd", "--dose-b {d}/dose_other.nrrd")
     + " --csv {o}/c.csv", r"(geometry|grid).*(mismatch|differ|match)", ("c.csv",)),
    ("ROI outside the CT", FIND.replace("ct.nrrd", "ct_far.nrrd") + " --roi {d}/seg.seg.nrrd --roi-segment GTV"
     " --out {o}/found.csv", r"does not overlap the CT", ("found.csv",)),
    ("seeds outside the dose grid", "dose --seeds {d}/seeds_far.csv --reference {d}/ct.nrrd --out {o}/out.nrrd",
     r"seed\(s\) lie outside the dose grid", ("out.nrrd",)),
    ("structures outside the dose grid", METRICS.replace("seg.seg.nrrd", "far.seg.nrrd") + " --json {o}/m.json",
     r"(outside|overlap)", ("m.json",)),
    ("RT Dose grid not matching --dose", EXPORT + " --dose {d}/dose_rate.nrrd --out {o}/dicom/",
     r"dose_rate\.nrrd: dose image holds quantity", ("dicom/",)),
    # -- numbers: prescriptions, strengths, spacings, margins, times, boxes ---------------------
    ("zero prescription", NOMO.replace("--prescription 120", "--prescription 0"), r"prescription", ()),
    ("negative prescription", PLAN.replace("--prescription 120", "--prescription -5") + " --out {o}/plan/",
     r"prescription dose must be > 0 Gy", ("plan/",)),
    ("NaN prescription", DVH.replace("--rx 100", "--rx nan") + " --csv {o}/dvh.csv", r"prescription", ("dvh.csv",)),
    ("Inf prescription", REPORT.replace("--rx 100", "--rx inf") + " --out {o}/r.html", r"prescription", ("r.html",)),
    ("NaN prescription (DICOM)", EXPORT.replace("120", "nan") + " --out {o}/dicom/", r"prescription", ("dicom/",)),
    ("zero prescription (verify)", VERIFY + " --structures {d}/seg.seg.nrrd --target GTV --rx 0 --out-dir {o}/v/",
     r"prescription", ("v/",)),
    ("zero strength", PLAN.replace("--strength 0.5", "--strength 0") + " --out {o}/plan/", r"strength must be > 0",
     ("plan/",)),
    ("NaN strength", NOMO.replace("--strength 0.5", "--strength nan"), r"strength is not finite", ()),
    ("negative strength (find-seeds)", FIND.replace("--sk 0.5", "--sk -1") + " --out {o}/found.csv",
     r"--sk must be a strength > 0", ("found.csv",)),
    ("NaN strength (demo)", "demo --strength nan --no-scene --no-dicom --no-verification --out {o}/demo/",
     r"strength", ("demo/",)),
    ("zero spacing", "dose --seeds {d}/seeds.csv --box -10 -10 -10 10 10 10 --spacing 0 --out {o}/out.nrrd",
     r"spacing", ("out.nrrd",)),
    ("negative spacing", DOSE + " --spacing -1 --out {o}/out.nrrd", r"spacing", ("out.nrrd",)),
    ("NaN spacing", VERIFY.replace("--spacing 2", "--spacing nan") + " --out-dir {o}/v/", r"spacing", ("v/",)),
    ("zero dose spacing (plan)", PLAN + " --dose-spacing 0 --out {o}/plan/", r"--dose-spacing must be > 0",
     ("plan/",)),
    ("negative margin", MARGIN.replace("--margin 3", "--margin -2") + " --out {o}/ptv.seg.nrrd", r"margin",
     ("ptv.seg.nrrd",)),
    ("NaN margin", MARGIN.replace("--margin 3", "--margin nan") + " --out {o}/ptv.seg.nrrd", r"margin",
     ("ptv.seg.nrrd",)),
    ("negative crop margin", DOSE + " --crop-margin -1 --out {o}/out.nrrd", r"--crop-margin must be >= 0",
     ("out.nrrd",)),
    ("negative ROI margin", FIND + " --roi {d}/seg.seg.nrrd --roi-segment GTV --margin -1 --out {o}/found.csv",
     r"margin", ("found.csv",)),
    ("negative obstacle margin", NEEDLES + " --margin -1 --out {o}/needles/", r"--margin must be >= 0",
     ("needles/",)),
    ("negative time", PD + " --time-h -1 --out {o}/out", r"time", ("out",)),
    ("NaN time", DOSE + " --time-h nan --out {o}/out.nrrd", r"time", ("out.nrrd",)),
    ("zero time limit", PLAN + " --time-limit 0 --out {o}/plan/", r"--time-limit must be > 0", ("plan/",)),
    ("box with min > max", "dose --seeds {d}/seeds.csv --box 10 -10 -10 -10 10 10 --out {o}/out.nrrd",
     r"(max corner|min).*(below|>|max)", ("out.nrrd",)),
    ("NaN box corner", "dose --seeds {d}/seeds.csv --box nan -10 -10 10 10 10 --out {o}/out.nrrd",
     r"box", ("out.nrrd",)),
    ("image header declaring a huge grid", DOSE.replace("ct.nrrd", "huge.nrrd") + " --out {o}/out.nrrd",
     r"huge\.nrrd: image of 3000 x 3000 x 3000 voxels would need about .* of memory", ("out.nrrd",)),
    ("segmentation header declaring a huge grid", NOMO.replace("seg.seg.nrrd", "huge.seg.nrrd"),
     r"huge\.seg\.nrrd: segmentation of 3000 x 3000 x 3000 voxels would need about", ()),
    ("grid too large for memory", "dose --seeds {d}/seeds.csv --box -200 -200 -200 200 200 200 --spacing 0.1"
     " --out {o}/out.nrrd", r"would need about .* of memory", ("out.nrrd",)),
    ("negative max distance", VERIFY + " --max-distance -1 --out-dir {o}/v/", r"--max-distance must be > 0", ("v/",)),
    ("negative gamma criterion", COMPARE + " --gamma-dta-mm -2 --csv {o}/c.csv", r"(dta|DTA|distance)", ("c.csv",)),
    ("zero expected seeds", FIND + " --expected 0 --out {o}/found.csv", r"expected", ("found.csv",)),
    ("supersample not a number", METRICS + " --supersample many --csv {o}/m.csv", r"--supersample must be",
     ("m.csv",)),
    ("usage error (not a number)", PD + " --time-h soon --out {o}/out", r"argument --time-h: invalid float value",
     ("out",)),
    ("usage error (missing option)", "report --dose {d}/dose.nrrd --out {o}/r.html",
     r"required: --structures", ("r.html",)),
    # -- dates ---------------------------------------------------------------------------------
    ("unparsable date", NOMO + " --reference-date 2026-13-45 --implant-date 2026-11-27",
     r"not an ISO date or date-time: '2026-13-45'", ()),
    ("dates in the wrong order", PLAN + " --reference-date 2026-11-27 --implant-date 2025-11-20 --out {o}/plan/",
     r"(before|after|order)", ("plan/",)),
    ("CT date before the implant date", VERIFY + " --implant-date 2026-11-27 --ct-date 2026-11-01 --out-dir {o}/v/",
     r"(before|after|order)", ("v/",)),
    ("unparsable strength date", EXPORT + " --strength-date tomorrow --out {o}/dicom/", r"tomorrow", ("dicom/",)),
    ("unparsable decay date", DSEEDS + " --plan {d}/rtplan.dcm --at yesterday --out {o}/seeds.csv", r"yesterday",
     ("seeds.csv",)),
    ("mCi for a nuclide without a factor", NOMO + " --model Pd103_TheraSeed_200 --unit mCi",
     r"strength in mCi is not accepted for Pd-103", ()),
    # -- seed models ---------------------------------------------------------------------------
    ("seed model missing a field", "sources --model-dir {d}/models_missing",
     r"bad\.json: field 'half_life_days': missing", (), _models("{d}/models_missing")),
    ("seed model field of the wrong type", "sources --model-dir {d}/models_type",
     r"bad\.json: field 'L_eff_cm': must be a number", (), _models("{d}/models_type")),
    ("seed model with a negative Lambda", PD + " --model-dir {d}/models_lambda --out {o}/out",
     r"bad\.json: field 'dose_rate_constant_cGy_per_h_per_U': must be a positive", ("out",),
     _models("{d}/models_lambda")),
    ("seed model with a non-monotonic table", DOSE + " --model-dir {d}/models_mono --out {o}/out.nrrd",
     r"bad\.json: field 'radial_dose_function\.r_cm': values must be strictly increasing", ("out.nrrd",),
     _models("{d}/models_mono")),
    ("seed model that is not JSON", "sources --model-dir {d}/models_binary", r"bad\.json: not valid JSON", (),
     _models("{d}/models_binary")),
    ("seed model folder that does not exist", "sources --model-dir {d}/nope", r"nope: seed model folder does not exist",
     (), _models("{d}/nope")),
    # -- goals ---------------------------------------------------------------------------------
    ("goal file with bad syntax (text)", METRICS + " --goals {d}/goals_bad.txt --csv {o}/m.csv", r"goals_bad\.txt",
     ("m.csv",), _goals("{d}/goals_bad.txt")),
    ("goal file with bad syntax (JSON)", "goals --show {d}/goals_bad.json", r"goals_bad\.json: not valid JSON", (),
     _goals("{d}/goals_bad.json")),
    ("unknown goal preset", REPORT + " --goals no_such_preset --out {o}/r.html",
     r"goals 'no_such_preset': no such file or preset", ("r.html",), _goals("no_such_preset")),
    ("goal with an unknown metric", "goals --show {d}/goals_metric.txt", r"goals_metric\.txt", (),
     _goals("{d}/goals_metric.txt")),
    ("bad organ-at-risk limit", PLAN + " --oar Bowel:D2cc=lots --out {o}/plan/", r"limit 'D2cc=lots' is not a number",
     ("plan/",)),
    ("bad direction", PLAN.replace("--direction P", "--direction sideways") + " --out {o}/plan/",
     r"direction 'sideways'", ("plan/",)),
    # -- several targets (issue 13, section 6) -------------------------------------------------------
    ("overlapping targets", PLAN + " --target Body --out {o}/plan/", r"targets 'GTV' and 'Body' overlap", ("plan/",)),
    ("target without a prescription", PLAN.replace("--prescription 120 ", "").replace("--target GTV", "--target GTV:rx=120")
     + " --target Bone --out {o}/plan/", r"no prescription dose for target\(s\) Bone", ("plan/",)),
    ("contradictory prescriptions", PLAN.replace("--target GTV", "--target GTV:rx=120 --target gtv:rx=140")
     + " --out {o}/plan/", r"'gtv' is given twice with contradictory prescription \(120 and 140\)", ("plan/",)),
    ("bad per-target direction", PLAN.replace("--target GTV", "--target GTV:direction=up") + " --out {o}/plan/",
     r"direction='up'", ("plan/",)),
    ("no needle path reaches the target", PLAN + " --forbidden Body --out {o}/plan/",
     r"no feasible needle path reaches the target 'GTV'.*Body", ("plan/",)),
    ("needle limit of zero", PLAN + " --max-needles 0 --out {o}/plan/", r"--max-needles must be at least 1", ("plan/",)),
    # -- output paths --------------------------------------------------------------------------
    ("output folder cannot be created", PD + " --out /proc/nope/out.csv", r"/proc/nope/out\.csv: cannot create", ()),
    ("output folder not writable", PD + " --out {ro}/out.csv", r"out\.csv: .*(not writable|cannot write)", ()),
    ("output folder is a file", DOSE + " --out {d}/seeds.csv/out.nrrd", r"seeds\.csv is a file", ()),
    ("output path is a folder", "dicom-seeds --plan {d}/rtplan.dcm --out {o}/adir", r"adir: output path is a folder",
     ("adir/",)),
    ("output folder is a file (plan)", PLAN + " --out {o}/plan", r"plan: output folder exists and is a file",
     ("plan",)),
    ("output folder is a file (verify)", VERIFY + " --out-dir {o}/v", r"exists and is a file", ("v",)),
    ("output folder is a file (export)", EXPORT + " --out {o}/dicom", r"dicom: .*(is a file|not a folder)",
     ("dicom",)),
    ("output path is a device", PD + " --out /dev/null", r"/dev/null: output path is a device", ()),
    ("second output is a device", METRICS + " --csv {o}/m.csv --json /dev/full", r"/dev/full: output path is a device",
     ("m.csv",)),
    ("second output not writable", METRICS + " --csv {o}/m.csv --json /proc/nope/m.json", r"/proc/nope/m\.json",
     ("m.csv",)),
    ("DVH PNG into a file's folder", DVH + " --csv {o}/dvh.csv --png {o}/dvh.csv/dvh.png", r"dvh\.csv is a file",
     ("dvh.csv",)),
    ("report PDF is a folder", REPORT + " --out {o}/r.html --pdf {o}/pdfdir", r"pdfdir: output path is a folder",
     ("r.html", "pdfdir/")),
    ("existing non-empty DICOM folder", EXPORT + " --out {o}/dicom/", r"folder exists and is not empty", ("dicom/",)),
    ("margin output not a .seg.nrrd", MARGIN + " --out {o}/ptv.nrrd", r"ptv\.nrrd: .*\.seg\.nrrd", ("ptv.nrrd",)),
    # -- more files and options (rows added as defects were found) ------------------------------
    ("plan JSON that is a list", "dose --seeds {d}/plan_list.json --reference {d}/ct.nrrd --out {o}/o.nrrd",
     r"plan_list\.json: not a SeedImplantPlanner plan file", ("o.nrrd",), _plan("{d}/plan_list.json")),
    ("empty plan JSON", EXPORT.replace("seeds.csv", "empty.json") + " --out {o}/dicom/",
     r"empty\.json: plan file is not valid JSON", ("dicom/",), _plan("{d}/empty.json")),
    ("labelmap with non-integer values", NOMO.replace("seg.seg.nrrd", "float_labels.nrrd"),
     r"float_labels\.nrrd: labelmap has non-integer values", (), _seg("{d}/float_labels.nrrd")),
    ("labelmap names sidecar broken", NOMO.replace("seg.seg.nrrd", "labels.nrrd"),
     r"labels\.nrrd\.labels\.json: label names must be a JSON object", (), _seg("{d}/labels.nrrd")),
    ("2D image as reference", DOSE.replace("ct.nrrd", "slice2d.nrrd") + " --out {o}/out.nrrd",
     r"slice2d\.nrrd: expected a 3D image", ("out.nrrd",), _image("{d}/slice2d.nrrd")),
    ("binary found-seeds file", VERIFY.replace("--found {d}/seeds.csv", "--found {d}/binary.bin") + " --out-dir {o}/v/",
     r"binary\.bin: seeds CSV is not UTF-8 text", ("v/",)),
    ("binary needle JSON", EXPORT + " --needles {d}/binary.json --out {o}/dicom/", r"binary\.json: .*needle file",
     ("dicom/",)),
    ("broken segmentation for DICOM", EXPORT + " --segmentation {d}/broken.seg.nrrd --out {o}/dicom/",
     r"broken\.seg\.nrrd: unreadable segmentation", ("dicom/",)),
    ("missing CT under the report", REPORT + " --ct {d}/nope_ct.nrrd --out {o}/r.html", r"nope_ct\.nrrd: image not found",
     ("r.html",)),
    ("empty fixed-seeds file", PLAN + " --fixed-seeds {d}/empty.csv --out {o}/plan/", r"empty\.csv: seeds CSV",
     ("plan/",)),
    ("binary implanted-needles file", PLAN + " --implanted-needles {d}/binary.bin --out {o}/plan/",
     r"binary\.bin: needle file is not UTF-8", ("plan/",)),
    ("folder given as an RT Plan", DSEEDS + " --plan {d}/afolder --out {o}/seeds.csv", r"afolder", ("seeds.csv",),
     _rtplan("{d}/afolder")),
    ("binary goals file", "goals --show {d}/binary.bin", r"binary\.bin: cannot read goals file", (),
     _goals("{d}/binary.bin")),
    ("seed model id defined twice", "sources --model-dir {d}/models_twice", r"defined twice", (),
     _models("{d}/models_twice")),
    ("seed model with a shipped id", "sources --model-dir {d}/models_shipped", r"is a shipped model", (),
     _models("{d}/models_shipped")),
    ("template holes closer than a needle", NEEDLES + " --template-spacing 0.001 --out {o}/needles/",
     r"template spacing 0\.001 mm is below the outer diameter", ("needles/",)),
    ("seeds closer than their length", PLAN.replace("--seed-spacing 5", "--seed-spacing 0.5") + " --out {o}/plan/",
     r"loose seeds need a spacing >= the seed length", ("plan/",)),
    ("NaN prescription (demo, no folder made)", "demo --prescription nan --out {o}/newdemo",
     r"--strength and --prescription must be finite and > 0", ()),
    ("web planner on another address without --allow-remote", "serve {d} --host 0.0.0.0 --port 8080",
     r"binds to 127\.0\.0\.1 only; .*--allow-remote", ()),
    ("web planner on a missing folder", "serve {d}/no-such-folder", r"no-such-folder: the folder to serve does not exist",
     ()),
    ("web planner on an impossible port", "serve {d} --port 70000", r"--port 70000: not a port number", ()),
    ("ROI segment without ROI", FIND + " --roi-segment GTV --out {o}/found.csv", r"--roi-segment needs --roi",
     ("found.csv",)),
    ("target without structures (verify)", VERIFY + " --target GTV --out-dir {o}/v/", r"--target needs --structures",
     ("v/",)),
    ("unknown gauge", NEEDLES + " --gauge 99 --out {o}/needles/", r"gauge", ("needles/",)),
    ("DVH maximum of 0 %", DVH + " --dvh-max-percent 0 --csv {o}/dvh.csv", r"DVH maximum dose must be > 0 Gy",
     ("dvh.csv",)),
    ("fixed seeds outside the image", PLAN + " --fixed-seeds {d}/seeds_far.csv --out {o}/plan/",
     r"seed\(s\) lie outside the image of the segmentation \(fixed seeds", ("plan/",)),
    ("empty RT Plan label", EXPORT + " --label= --out {o}/dicom/", r"RT Plan label is empty", ()),
    ("RT Plan without a Source Sequence", DSEEDS + " --plan {d}/rp_nosrc.dcm --out {o}/seeds.csv",
     r"rp_nosrc\.dcm: RT Plan has no Source Sequence", ("seeds.csv",), _rtplan("{d}/rp_nosrc.dcm")),
    ("RT Plan without Application Setups", DSEEDS + " --plan {d}/rp_noappl.dcm --out {o}/seeds.csv",
     r"rp_noappl\.dcm: RT Plan has no Application Setup Sequence", ("seeds.csv",), _rtplan("{d}/rp_noappl.dcm")),
    ("RT Plan channel without control points", DSEEDS + " --plan {d}/rp_nocp.dcm --out {o}/seeds.csv",
     r"rp_nocp\.dcm: channel 1 has no Brachy Control Point Sequence", ("seeds.csv",), _rtplan("{d}/rp_nocp.dcm")),
    ("RT Plan channel naming a missing source", DSEEDS + " --plan {d}/rp_badref.dcm --out {o}/seeds.csv",
     r"rp_badref\.dcm: channel 1 refers to source 99", ("seeds.csv",), _rtplan("{d}/rp_badref.dcm")),
    ("RT Plan source date unreadable, decay asked", DSEEDS + " --plan {d}/rp_baddate.dcm --at 2026-12-01 --out {o}/s.csv",
     r"rp_baddate\.dcm: source 1", ("s.csv",)),
    ("gamma dose criterion NaN", COMPARE + " --gamma-dose-percent nan --csv {o}/c.csv", r"gamma: dose criterion",
     ("c.csv",)),
    ("negative gamma threshold", COMPARE + " --gamma-threshold-percent -5 --png {o}/c.png", r"low-dose threshold",
     ("c.png",)),
    ("negative alpha/beta", METRICS + " --bed --alpha-beta -2 --json {o}/m.json", r"alpha/beta must be", ("m.json",)),
    ("zero repair half-time", REPORT + " --bed --repair-half-time-h 0 --out {o}/r.html", r"repair half-time",
     ("r.html",)),
    ("unknown metric", METRICS + " --metric Q7 --csv {o}/m.csv", r"unknown metric 'Q7'", ("m.csv",)),
    ("metric beyond 100 % of the volume", DVH + " --metric D150 --csv {o}/dvh.csv", r"metric 'D150'", ("dvh.csv",)),
    ("supersample factor 0", METRICS + " --supersample 0 --csv {o}/m.csv", r"supersample factor must be >= 1",
     ("m.csv",)),
    ("supersample factor beyond the sample limit", METRICS + " --supersample 60 --json {o}/m.json",
     r"structure 'GTV': supersampling 60\^3 .* more than the limit of [\d,]+; the largest factor that fits is \d+",
     ("m.json",)),
    ("spacing of 2 values", DOSE + " --spacing 1 2 --out {o}/out.nrrd", r"grid spacing takes 1 or 3 values",
     ("out.nrrd",)),
    ("margin of 2 values", MARGIN.replace("--margin 3", "--margin 3 3") + " --out {o}/ptv.seg.nrrd",
     r"margin must be one value or three", ("ptv.seg.nrrd",)),
    ("new structure name taken", MARGIN.replace("--name PTV", "--name GTV") + " --out {o}/ptv.seg.nrrd",
     r"structure 'GTV' already exists", ("ptv.seg.nrrd",)),
    ("V100 goal above 100 %", PLAN + " --v100 150 --out {o}/plan/", r"--v100 is a percentage", ("plan/",)),
    ("negative OAR limit", PLAN + " --oar Bone:D2cc=-5 --out {o}/plan/", r"D2cc limit must be > 0 Gy", ("plan/",)),
    ("NaN template point", PLAN + " --template-point nan 0 0 --out {o}/plan/", r"template point must be three finite",
     ("plan/",)),
    ("NaN needle length", NEEDLES + " --usable-length nan --out {o}/needles/", r"usable length must be > 0 mm",
     ("needles/",)),
    ("seeds outside the CT (DICOM)", EXPORT.replace("seeds.csv", "seeds_far.csv") + " --out {o}/dicom/",
     r"seed\(s\) lie outside the CT", ("dicom/",)),
    ("folder without a DICOM series as CT", EXPORT.replace("{d}/ct.nrrd", "{d}/afolder") + " --out {o}/dicom/",
     r"afolder: folder holds no DICOM image series", ("dicom/",)),
    # -- find-needles (issue 9 section 6) ----------------------------------------------------------
    ("CT without metal (find-needles)", FNEED + " --out {o}/needles.csv", r"no metal in the CT", ("needles.csv",)),
    ("NaN in a CT (find-needles)", FNEED.replace("ct.nrrd", "ct_nan.nrrd") + " --out {o}/needles.csv",
     r"non-finite", ("needles.csv",)),
    ("region outside the CT (find-needles)", FNEED.replace("ct.nrrd", "ct_far.nrrd")
     + " --roi {d}/seg.seg.nrrd --roi-segment GTV --out {o}/needles.csv", r"does not overlap the CT", ("needles.csv",)),
    ("deviations without a plan (find-needles)", FNEED + " --deviations {o}/dev.csv --out {o}/needles.csv",
     r"--deviations needs --plan", ("needles.csv", "dev.csv")),
    ("zero needle length (find-needles)", FNEED + " --min-length 0 --out {o}/needles.csv", r"--min-length must be > 0",
     ("needles.csv",)),
    # -- option combinations found late (defects: output was written before the check) ----------
    ("goals CSV without goals", METRICS + " --csv {o}/m.csv --goals-csv {o}/g.csv", r"--goals-csv needs --goals",
     ("m.csv", "g.csv")),
    ("gamma map without gamma", COMPARE + " --no-gamma --csv {o}/c.csv --gamma-map {o}/g.nrrd",
     r"--gamma-map needs the gamma index", ("c.csv", "g.nrrd")),
    ("time curve without a target", METRICS.replace("GTV,Body", "Body") + " --csv {o}/m.csv --time-curve-csv {o}/t.csv",
     r"time curve needs a target", ("m.csv", "t.csv")),
    # -- intra-operative review -------------------------------------------------------------------
    ("intraop: plan in another frame than the CT", INTRAOP.replace("ct.nrrd", "ct_far.nrrd") + " --out {o}/intraop/",
     r"the plan does not overlap the CT", ("intraop/",)),
    ("intraop: missing needle table", INTRAOP.replace("needles_in_place.csv", "nope.csv") + " --out {o}/intraop/",
     r"nope\.csv: cannot read needle file", ("intraop/",)),
    ("intraop: negative implanted count", INTRAOP + " --implanted -1 --out {o}/intraop/", r"--implanted must be >= 0",
     ("intraop/",)),
    ("intraop: plan file cut in half", INTRAOP.replace("plan.json", "plan_cut.json") + " --out {o}/intraop/",
     r"plan_cut\.json", ("intraop/",)),
    ("intraop: NaN in the CT", INTRAOP.replace("ct.nrrd", "ct_nan.nrrd") + " --out {o}/intraop/",
     r"ct_nan\.nrrd: CT holds non-finite voxels", ("intraop/",)),
    ("intraop: CT without needles and no needle table", INTRAOP.replace(" --needles {d}/needles_in_place.csv", "")
     + " --out {o}/intraop/", r"metal", ("intraop/",)),
    ("intraop: registration to another body part", INTRAOP.replace("ct.nrrd", "head.nrrd") + " --register {d}/planning.nrrd"
     " --out {o}/intraop/", r"head\.nrrd \(intra-operative CT\).*failed: .*Dice", ("intraop/",)),
    ("intraop: transform file that is not one", INTRAOP + " --transform {d}/binary.json --out {o}/intraop/",
     r"binary\.json: unreadable transform", ("intraop/",)),
    ("verify: transform file that is not one", "verify --planned {d}/seeds.csv --found {d}/seeds.csv --no-dose "
     "--transform {d}/binary.json --out-dir {o}/v/", r"binary\.json: unreadable transform", ("v/",)),
    # -- register (rigid registration of a new CT to the planning CT) --------------------------------
    ("register: CTs that do not overlap", REG.replace("moving.nrrd", "moving_far.nrrd") + " --out {o}/t.tfm",
     r"do not overlap", ("t.tfm",), _register("moving_far.nrrd")),
    ("register: an empty (air-only) CT", REG.replace("moving.nrrd", "air.nrrd") + " --out {o}/t.tfm --json {o}/t.json",
     r"air\.nrrd \(new CT\): no body in the CT", ("t.tfm", "t.json")),
    ("register: another body part", REG.replace("moving.nrrd", "head.nrrd") + " --out {o}/t.tfm --resampled {o}/r.nrrd",
     r"head\.nrrd \(new CT\).*failed: .*Dice", ("t.tfm", "r.nrrd")),
    ("register: NaN in the new CT", REG.replace("moving.nrrd", "ct_nan.nrrd") + " --out {o}/t.tfm",
     r"ct_nan\.nrrd.*(NaN|non-finite)", ("t.tfm",)),
    ("register: missing planning CT", REG.replace("planning.nrrd", "nope.nrrd") + " --out {o}/t.tfm",
     r"nope\.nrrd: image not found", ("t.tfm",)),
    ("register: truncated new CT", REG.replace("moving.nrrd", "rawhalf.nrrd") + " --out {o}/t.tfm",
     r"rawhalf\.nrrd", ("t.tfm",)),
    ("register: unknown transform file type", REG + " --out {o}/t.xyz", r"t\.xyz: transform file must end in",
     ("t.xyz",)),
    ("register: registration grid of 0 mm", REG + " --grid 0 --out {o}/t.tfm", r"grid \(--grid, mm\) must be a positive",
     ("t.tfm",)),
)


def _lib_rows():
    """Library-only kinds (API calls the Slicer module and the web UI make): ``(kind, f(d))`` must raise a
    SeedPlanError subclass, never a bare KeyError/IndexError/ValueError/TypeError/OSError."""
    from SeedImplantPlannerLib.core.imageio import read_image
    from SeedImplantPlannerLib.core.memory import require_memory
    from SeedImplantPlannerLib.evaluation.evaluate import evaluate_plan
    from SeedImplantPlannerLib.evaluation.goals import load_goals
    from SeedImplantPlannerLib.evaluation.structures import read_structures
    from SeedImplantPlannerLib.imaging.segio import read_segmentation
    from SeedImplantPlannerLib.physics import dose as D
    from SeedImplantPlannerLib.physics.seeds import SeedSet
    from SeedImplantPlannerLib.planning.needles import read_needles
    from SeedImplantPlannerLib.planning.planfile import read_plan
    from SeedImplantPlannerLib.physics.strength import strength_at
    from SeedImplantPlannerLib.physics.sources import get_model
    g = ImageGeometry((4, 4, 4), (1, 1, 1), (0, 0, 0))

    def one_seed():
        return SeedSet([[0, 0, 0]], [[0, 0, 1]], 1.0, M6711)

    def gtv(d):
        return read_structures(d / "seg.seg.nrrd", ["GTV"])

    return [
        ("needle JSON: curved catheter without control points", lambda d: read_needles(d / "needles_nocp.json")),
        ("needle JSON: entry with 2 coordinates", lambda d: read_needles(d / "needles_2d.json")),
        ("needle CSV: missing tip columns", lambda d: read_needles(d / "needles_nocol.csv")),
        ("needle JSON: gauge not a number", lambda d: read_needles(d / "needles_gauge.json")),
        ("goals JSON: structure without a name", lambda d: load_goals(d / "goals_noname.json")),
        ("goals JSON: structures not a list", lambda d: load_goals(d / "goals_notlist.json")),
        ("goals JSON: a list", lambda d: load_goals(d / "goals_list.json")),
        ("goals JSON: prescription not a number", lambda d: load_goals(d / "goals_rx.json")),
        ("segmentation header: label value not a number", lambda d: read_segmentation(d / "badlabel.seg.nrrd")),
        ("segmentation header: colour not numbers", lambda d: read_segmentation(d / "badcolor.seg.nrrd")),
        ("segmentation header: layer beyond the file", lambda d: read_segmentation(d / "badlayer.seg.nrrd")),
        ("plan: seed position with 2 coordinates", lambda d: read_plan(d / "plan_pos2.json")),
        ("plan: goals not an object", lambda d: read_plan(d / "plan_goals.json")),
        ("plan: unknown loading rule", lambda d: read_plan(d / "plan_rules.json")),
        ("plan: needle number not a number", lambda d: read_plan(d / "plan_needle.json")),
        ("plan: prescription null", lambda d: read_plan(d / "plan_rxnull.json")),
        ("plan: seeds not objects", lambda d: read_plan(d / "plan_seedlist.json")),
        ("geometry dict missing keys", lambda d: ImageGeometry.from_dict({})),
        ("geometry with 2 sizes", lambda d: ImageGeometry((4, 4), (1, 1, 1), (0, 0, 0))),
        ("geometry with zero spacing", lambda d: ImageGeometry((4, 4, 4), (1, 0, 1), (0, 0, 0))),
        ("seed positions of 2 coordinates", lambda d: SeedSet(np.zeros((2, 2)), np.zeros((2, 3)), 1.0, M6711)),
        ("strengths for another seed count", lambda d: SeedSet(np.zeros((2, 3)), np.ones((2, 3)), [1, 2, 3], M6711)),
        ("points of 2 coordinates", lambda d: D.dose_at_points_Gy(np.zeros((2, 2)), one_seed())),
        ("unknown formalism", lambda d: D.compute_dose_Gy(g, one_seed(), formalism="3D")),
        ("1D for a model without phi_an", lambda d: D.compute_dose_Gy(
            g, SeedSet([[0, 0, 0]], [[0, 0, 1]], 1.0, "Pd103_TheraSeed_200"), formalism="1D")),
        ("unknown dose quantity", lambda d: D.compute_dose_Gy(g, one_seed(), quantity="integral")),
        ("unknown dose engine", lambda d: D.compute_dose_Gy(g, one_seed(), method="gpu")),
        ("no seeds for a dose grid", lambda d: D.compute_dose_Gy(g, SeedSet(np.zeros((0, 3)), np.zeros((0, 3)), [], []))),
        ("dose grid too large (library)", lambda d: D.DoseGrid(
            ImageGeometry((4000, 4000, 4000), (0.1, 0.1, 0.1), (0, 0, 0)), one_seed())),
        ("memory request beyond the machine", lambda d: require_memory(1 << 62, "test array")),
        # (the available memory changes between two calls: these are not compared with the CLI's message)
        ("image header declaring a huge grid (library)", lambda d: read_image(d / "huge.nrrd")),
        ("segmentation header declaring a huge grid (library)", lambda d: read_segmentation(d / "huge.seg.nrrd")),
        ("moving a seed that does not exist", lambda d: D.DoseGrid(g, one_seed(), method="direct").move_seed(5, [0, 0, 0])),
        ("adding a seed at NaN", lambda d: D.DoseGrid(g, one_seed(), method="direct").add_seed(
            [np.nan, 0, 0], [0, 0, 1], 1.0, M6711)),
        ("dose array not on its grid", lambda d: evaluate_plan(np.zeros((3, 3, 3)), GEOM, gtv(d), 100.0)),
        ("evaluation with NaN prescription", lambda d: evaluate_plan(np.zeros(GEOM.shape), GEOM, gtv(d), float("nan"))),
        ("evaluation without structures", lambda d: evaluate_plan(np.zeros(GEOM.shape), GEOM, [], 100.0)),
        ("strength unit unknown", lambda d: strength_at(get_model(M6711), 0.5, "Bq")),
        ("strength date unparsable (library)", lambda d: strength_at(get_model(M6711), 0.5, "U", "soon", "2026-01-01")),
    ]


LIBRARY_KINDS = _lib_rows()


def _sentinel(path: Path, folder: bool):
    if folder:
        path.mkdir(parents=True, exist_ok=True)
        (path / "keep.txt").write_bytes(SENTINEL)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(SENTINEL)


def snapshot(folder: Path) -> dict:
    """{relative path: bytes (files) or None (folders)} of everything under ``folder``."""
    out = {}
    for p in sorted(folder.rglob("*")):
        out[str(p.relative_to(folder))] = p.read_bytes() if p.is_file() else None
    return out


def make_inputs(d: Path):
    """Every input file the rows refer to, in folder ``d`` (tiny, made in about a second)."""
    from SeedImplantPlannerLib.physics.dose import compute_dose_Gy
    from SeedImplantPlannerLib.physics.seeds import SeedSet
    c = GEOM.voxel_centers_ras()
    r = np.linalg.norm(c, axis=-1)
    masks = {"GTV": r <= 7.0, "Body": r <= 17.0, "Bone": (c[..., 1] >= 12) & (np.abs(c[..., 0]) <= 2),
             "Empty": np.zeros(GEOM.shape, bool)}
    ct = np.where(masks["Body"], 40, -1000).astype(np.int16)
    write_image(d / "ct.nrrd", ct, GEOM)
    write_segmentation(d / "seg.seg.nrrd", Segmentation.from_masks(GEOM, masks))
    far = ImageGeometry(GEOM.size, GEOM.spacing, (481.0, 481.0, 487.0))
    write_image(d / "ct_far.nrrd", ct, far)
    write_image(d / "ct_shift.nrrd", ct, ImageGeometry(GEOM.size, GEOM.spacing, (1.0, -19.0, -13.0)))  # half the GTV
    write_segmentation(d / "far.seg.nrrd", Segmentation.from_masks(far, {"GTV": masks["GTV"], "Body": masks["Body"]}))
    ctf = ct.astype(np.float32)
    ctf[3, 4, 5] = np.nan
    write_image(d / "ct_nan.nrrd", ctf, GEOM)
    seeds = SeedSet([[-3.0, 0, 0], [3.0, 0, 0]], [[0, 0, 1.0]] * 2, 0.5, M6711)
    (d / "seeds.csv").write_text(SEED_HEADER + f"-3,0,0,0,0,1,0.5,{M6711}\n3,0,0,0,0,1,0.5,{M6711}\n")
    (d / "seeds_far.csv").write_text(SEED_HEADER + f"300,0,0,0,0,1,0.5,{M6711}\n")
    (d / "seeds_nocol.csv").write_text("x_mm,y_mm,z_mm,sk_U,model\n0,0,0,0.5,x\n")
    (d / "seeds_nan.csv").write_text(SEED_HEADER + f"nan,0,0,0,0,1,0.5,{M6711}\n")
    (d / "seeds_zero.csv").write_text(SEED_HEADER + f"0,0,0,0,0,1,0,{M6711}\n")
    (d / "seeds_unknown.csv").write_text(SEED_HEADER + "0,0,0,0,0,1,0.5,NoSuchSeed\n")
    (d / "points.csv").write_text("x_mm,y_mm,z_mm\n10,0,0\n")
    (d / "points_text.csv").write_text("x_mm,y_mm,z_mm\n10,ten,0\n")
    (d / "empty.csv").write_bytes(b"")
    (d / "empty.nrrd").write_bytes(b"")
    (d / "empty.seg.nrrd").write_bytes(b"")
    rng = np.random.default_rng(12)
    junk = rng.integers(0, 256, 3000, dtype=np.uint8).tobytes() + b"\x00\xff\xfe"
    for name in ("binary.bin", "binary.nrrd", "binary.json"):
        (d / name).write_bytes(junk)
    (d / "afolder").mkdir()
    dose, _ = compute_dose_Gy(GEOM, seeds, method="direct")
    write_image(d / "dose.nrrd", dose.astype(np.float32), GEOM, {"SeedPlan_Quantity": "total", "SeedPlan_Unit": "Gy"})
    write_image(d / "dose_rate.nrrd", dose.astype(np.float32), GEOM,
                {"SeedPlan_Quantity": "to_time", "SeedPlan_Unit": "Gy"})
    other = ImageGeometry((16, 16, 12), (2.5, 2.5, 2.5), (-18.75, -18.75, -13.75))
    write_image(d / "dose_other.nrrd", np.ones(other.shape, np.float32), other)
    for name, value in (("dose_nan.nrrd", np.nan), ("dose_inf.nrrd", np.inf), ("dose_neg.nrrd", -5.0)):
        a = dose.astype(np.float32)
        a[5, 6, 7] = value
        write_image(d / name, a, GEOM)
    data = (d / "dose.nrrd").read_bytes()
    (d / "half.nrrd").write_bytes(data[: len(data) // 2])
    write_image(d / "raw.nrrd", ct, GEOM, compress=False)
    data = (d / "raw.nrrd").read_bytes()
    (d / "rawhalf.nrrd").write_bytes(data[: len(data) // 2])
    data = (d / "seg.seg.nrrd").read_bytes()
    (d / "half.seg.nrrd").write_bytes(data[: len(data) // 2])
    head, _, body = data.partition(b"\n\n")
    broken = head.replace(b"sizes:", b"sizes: 20 x").replace(b"type:", b"type: quadruple")
    (d / "broken.seg.nrrd").write_bytes(broken + b"\n\n" + body)
    plan = _plan_doc(seeds)
    (d / "plan.json").write_text(json.dumps(plan))
    text = json.dumps(plan, indent=1)
    (d / "plan_cut.json").write_text(text[: len(text) // 2])
    (d / "plan_v99.json").write_text(json.dumps(dict(plan, version=99)))
    (d / "plan_nokeys.json").write_text(json.dumps({k: v for k, v in plan.items() if k != "seeds"}))
    (d / "plan_other.json").write_text(json.dumps(dict(plan, format="SomethingElse.plan")))
    (d / "plan_list.json").write_text(json.dumps([plan]))
    # 3000^3 float64 (about 400 GiB) declared by a header over 10 bytes of data
    huge = ("NRRD0004\ntype: double\ndimension: 3\nspace: left-posterior-superior\nsizes: 3000 3000 3000\n"
            "space directions: (1,0,0) (0,1,0) (0,0,1)\nendian: little\nencoding: gzip\n\n0123456789")
    (d / "huge.nrrd").write_text(huge)
    (d / "huge.seg.nrrd").write_text(huge)

    def plan_variant(name, change):
        doc = json.loads(json.dumps(plan))
        change(doc)
        (d / name).write_text(json.dumps(doc))

    plan_variant("plan_pos2.json", lambda p: p["seeds"][0].update(position_ras_mm=[1, 2]))
    plan_variant("plan_goals.json", lambda p: p.update(goals="high"))
    plan_variant("plan_rules.json", lambda p: p.update(loading_rules={"bogus": 1}))
    plan_variant("plan_needle.json", lambda p: p.update(needles=[{"number": "one"}]))
    plan_variant("plan_rxnull.json", lambda p: p.update(prescription_Gy=None))
    plan_variant("plan_seedlist.json", lambda p: p.update(seeds=[1, 2]))
    plan_variant("plan_model.json", lambda p: p["seeds"][1].update(model="NoSuchSeed"))
    # CTs for register: a small pelvis-like body (an ellipse with a bone rod and a bone plate), moved
    # 3 mm; the same far away; air only; a skull-like shell (another body part)
    reg = ImageGeometry((40, 32, 20), (3.0, 3.0, 3.0), (-58.5, -46.5, -28.5))
    c = reg.voxel_centers_ras()
    x, y, z = c[..., 0], c[..., 1], c[..., 2]

    def pelvis(dx):
        hu = np.where(((x - dx) / 50.0) ** 2 + (y / 38.0) ** 2 <= 1.0, 40, -1000)
        hu = np.where(np.hypot(x - dx - 20.0, y + 15.0) <= 7.0, 900, hu)
        return np.where((np.abs(x - dx + 20.0 + 0.3 * z) <= 3.0) & (np.abs(y) < 20) & (z > -10), 900, hu).astype(np.int16)
    write_image(d / "planning.nrrd", pelvis(0.0), reg)
    write_image(d / "moving.nrrd", pelvis(3.0), reg)
    write_image(d / "moving_far.nrrd", pelvis(3.0), ImageGeometry(reg.size, reg.spacing, (600.0, 600.0, 600.0)))
    write_image(d / "air.nrrd", np.full(reg.shape, -1000, np.int16), reg)
    r = np.linalg.norm(c / [55.0, 44.0, 70.0], axis=-1)
    write_image(d / "head.nrrd", np.where(r <= 1.0, np.where(r > 0.88, 1200, 30), -1000).astype(np.int16), reg)
    (d / "needles_nocp.json").write_text(json.dumps([{"control_points_ras_mm": []}]))
    (d / "needles_in_place.csv").write_text("name,entry_x_mm,entry_y_mm,entry_z_mm,tip_x_mm,tip_y_mm,tip_z_mm\n"
                                            "N1,0,-30,0,0,0,0\n")
    (d / "needles_2d.json").write_text(json.dumps([{"entry_ras_mm": [0, 0], "tip_ras_mm": [0, 0, 1]}]))
    (d / "needles_nocol.csv").write_text("entry_x_mm,entry_y_mm,entry_z_mm\n1,2,3\n")
    (d / "needles_gauge.json").write_text(json.dumps([{"entry_ras_mm": [0, 0, 0], "tip_ras_mm": [0, 0, 9],
                                                        "gauge": "thin"}]))
    (d / "goals_noname.json").write_text(json.dumps({"name": "x", "structures": [{"goals": ["V100 >= 95%"]}]}))
    (d / "goals_notlist.json").write_text(json.dumps({"name": "x", "structures": "GTV"}))
    (d / "goals_list.json").write_text(json.dumps([1, 2]))
    (d / "goals_rx.json").write_text(json.dumps({"name": "x", "prescription_Gy": "lots", "structures": []}))
    seg_bytes = (d / "seg.seg.nrrd").read_bytes()
    for name, old, new in (("badlabel", b"Segment0_LabelValue:=1", b"Segment0_LabelValue:=one"),
                           ("badcolor", b"Segment0_Color:=", b"Segment0_Color:=red green blue "),
                           ("badlayer", b"Segment0_Layer:=0", b"Segment0_Layer:=7")):
        assert old in seg_bytes, old
        (d / f"{name}.seg.nrrd").write_bytes(seg_bytes.replace(old, new))
    (d / "empty.json").write_bytes(b"")
    write_image(d / "float_labels.nrrd", np.where(masks["GTV"], 1.5, 0.0).astype(np.float32), GEOM)
    write_image(d / "labels.nrrd", masks["GTV"].astype(np.uint8), GEOM)
    (d / "labels.nrrd.labels.json").write_text('["GTV"]')
    import SimpleITK as sitk
    sitk.WriteImage(sitk.GetImageFromArray(ct[0]), str(d / "slice2d.nrrd"))  # a 2D image
    (d / "plan_nomodel.json").write_text(json.dumps(dict(plan, source={"strength_U": 0.5})))
    bad = json.loads(json.dumps(plan))
    bad["seeds"][0]["strength_U"] = -1.0
    (d / "plan_negsk.json").write_text(json.dumps(bad))
    _models_folders(d)
    (d / "goals_bad.txt").write_text("GTV: V100 >= 95%\nGTV V150 less than half\n")
    (d / "goals_bad.json").write_text('{"name": "x", "structures": [ {"name": "GTV", "goals": ["V100 >= 95%"] ]}')
    (d / "goals_metric.txt").write_text("GTV: Q42 >= 95%\n")
    (d / "notdicom.dcm").write_text("this is a text file, not DICOM\n" * 20)
    _dicom_files(d, seeds)
    ro = d / "readonly"
    ro.mkdir()
    ro.chmod(0o555)


def _plan_doc(seeds):
    """A valid plan file (version 1) holding ``seeds`` on one needle, written by the library."""
    from SeedImplantPlannerLib.planning.loading import LoadingRules
    from SeedImplantPlannerLib.planning.problem import Goals
    from SeedImplantPlannerLib.planning.planfile import Plan
    source = {"model": M6711, "nuclide": "I-125", "strength_U": 0.5, "strength_value": 0.5, "strength_unit": "U",
              "reference_date": None, "implant_date": "2026-11-27"}
    plan = Plan(source, 120.0, Goals(120.0), LoadingRules(), [], seeds, [0] * len(seeds), [np.nan] * len(seeds),
                [False] * len(seeds))
    return plan.to_dict()


def _models_folders(d: Path):
    src = json.loads((ROOT / "SeedImplantPlanner/Resources/SeedModels" / f"{M6711}.json").read_text())
    src["model_id"] = "User_6711_copy"

    def folder(name, doc=None, text=None):
        f = d / name
        f.mkdir()
        (f / "bad.json").write_text(text if text is not None else json.dumps(doc))

    doc = json.loads(json.dumps(src))
    del doc["half_life_days"]
    folder("models_missing", doc)
    doc = json.loads(json.dumps(src))
    doc["L_eff_cm"] = "three millimetres"
    folder("models_type", doc)
    doc = json.loads(json.dumps(src))
    doc["dose_rate_constant_cGy_per_h_per_U"] = {"value": -0.965}
    folder("models_lambda", doc)
    doc = json.loads(json.dumps(src))
    r = doc["radial_dose_function"]["r_cm"]
    r[2], r[3] = r[3], r[2]
    folder("models_mono", doc)
    folder("models_binary", text="\x00\x01 not json {")
    folder("models_twice", src)
    (d / "models_twice" / "again.json").write_text(json.dumps(src))
    folder("models_shipped", dict(src, model_id=M6711))


def _dicom_files(d: Path, seeds):
    """An RT Plan of ``seeds``, one CT slice (both by the product's own DICOM export), broken RT Plans."""
    import pydicom
    from SeedImplantPlannerLib.dicom.export import export_plan_dicom
    res = export_plan_dicom(d / "dicom", d / "ct.nrrd", seeds, 120.0)
    os.replace(res["rtplan"], d / "rtplan.dcm")
    os.replace(sorted(res["ct"])[0], d / "ct_slice.dcm")

    def variant(name, change):
        ds = pydicom.dcmread(d / "rtplan.dcm")
        change(ds)
        ds.save_as(d / name)

    def no_control_points(ds):
        for ch in ds.ApplicationSetupSequence[0].ChannelSequence:
            del ch.BrachyControlPointSequence

    variant("rp_nosrc.dcm", lambda ds: delattr(ds, "SourceSequence"))
    variant("rp_noappl.dcm", lambda ds: delattr(ds, "ApplicationSetupSequence"))
    variant("rp_nocp.dcm", no_control_points)
    variant("rp_badref.dcm", lambda ds: setattr(ds.ApplicationSetupSequence[0].ChannelSequence[0],
                                                "ReferencedSourceNumber", 99))
    variant("rp_baddate.dcm", lambda ds: delattr(ds.SourceSequence[0], "SourceStrengthReferenceDate"))


def run_row(row: Kind, d: Path, o: Path):
    """Make the row's outputs, run it, return (CompletedProcess, snapshot before, snapshot after)."""
    o.mkdir(parents=True, exist_ok=True)
    for out in row.outputs:
        _sentinel(o / out.rstrip("/"), out.endswith("/"))
    before = snapshot(o)
    # root writes into a mode-555 folder anyway: /proc is a folder nobody can create files in
    ro = "/proc" if hasattr(os, "geteuid") and os.geteuid() == 0 else d / "readonly"
    argv = shlex.split(row.argv.format(d=d, o=o, ro=ro))
    result = seedplan(*argv, timeout=120)
    return result, before, snapshot(o)


class BadInputTest(unittest.TestCase):
    """Every row of :data:`KINDS` through the command line (subprocess) and, where given, the library."""

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.TemporaryDirectory()
        cls.dir = Path(cls.tmp.name)
        cls.d = cls.dir / "in"
        cls.d.mkdir()
        make_inputs(cls.d)
        cls.inputs_before = snapshot(cls.d)
        with ThreadPoolExecutor(max_workers=2) as pool:
            futures = [pool.submit(run_row, row, cls.d, cls.dir / f"o{n:03d}") for n, row in enumerate(KINDS)]
            cls.results = [f.result() for f in futures]

    @classmethod
    def tearDownClass(cls):
        (cls.d / "readonly").chmod(0o755)
        cls.tmp.cleanup()

    def test_kinds_counted(self):
        kinds = sorted({row.kind for row in KINDS})
        commands = sorted({row.command for row in KINDS})
        print(f"\nbad-input kinds: {len(kinds)} kinds in {len(KINDS)} rows over {len(commands)} commands "
              f"({', '.join(commands)}); {sum(1 for r in KINDS if r.lib)} also through the library, "
              f"{len(LIBRARY_KINDS)} library-only kinds; {len(kinds) + len(LIBRARY_KINDS)} kinds in all")
        for row, (r, _, _) in zip(KINDS, self.results):
            print(f"  {row.kind} [{row.command}]: {r.stderr.strip()[:200]}")
        self.assertEqual(len(kinds), len(KINDS), "two rows share a kind label")
        self.assertGreaterEqual(len(kinds), 100)

    def test_every_command_has_rows(self):
        sys_path = str(ROOT / "SeedImplantPlanner")
        if sys_path not in sys.path:
            sys.path.insert(0, sys_path)
        from SeedImplantPlannerLib.cli.main import build_parser
        parser = build_parser()
        sub = next(a for a in parser._actions if a.dest == "command")
        have = {row.command for row in KINDS}
        for command in sub.choices:
            with self.subTest(command=command):
                self.assertIn(command, have, f"add bad-input rows for '{command}' to KINDS in {Path(__file__).name} "
                                             "(docs/DEVELOPING.md, 'Bad input')")

    def test_command_line(self):
        for row, (r, before, after) in zip(KINDS, self.results):
            with self.subTest(kind=row.kind, command=row.command):
                lines = [line for line in r.stderr.splitlines() if line.strip()]
                self.assertEqual(r.returncode, 2, f"{row.argv}\nstdout: {r.stdout}\nstderr: {r.stderr}")
                self.assertNotIn("Traceback", r.stderr)
                self.assertEqual(len(lines), 1, r.stderr)
                self.assertTrue(lines[0].startswith("seedplan: error: "), lines[0])
                self.assertRegex(lines[0], row.says)
                self.assertEqual(sorted(after), sorted(before), "files appeared or vanished in the output folder")
                for name, data in before.items():
                    self.assertEqual(after[name], data, f"{name} was changed")

    def test_library(self):
        for row, (r, _, _) in zip(KINDS, self.results):
            if row.lib is None:
                continue
            with self.subTest(kind=row.kind):
                with self.assertRaises(SeedPlanError) as ctx:
                    row.lib(self.d)
                message = " ".join(str(ctx.exception).split())
                line = r.stderr.strip()
                self.assertEqual(line, "seedplan: error: " + message)

    def test_library_only(self):
        for kind, call in LIBRARY_KINDS:
            with self.subTest(kind=kind):
                try:
                    call(self.d)
                except SeedPlanError as exc:
                    self.assertTrue(str(exc).strip(), "empty message")
                else:
                    self.fail("no error raised")

    def test_devices_untouched(self):
        import stat
        for dev in ("/dev/null", "/dev/full"):
            if os.path.exists(dev):
                self.assertTrue(stat.S_ISCHR(os.stat(dev).st_mode), f"{dev} was replaced by a file")

    def test_inputs_unchanged(self):
        self.assertEqual(sorted(snapshot(self.d)), sorted(self.inputs_before), "a run left files among the inputs")


if __name__ == "__main__":
    unittest.main()
