"""``register``: rigid registration of a new CT (intra-operative, post-implant) to the planning CT.

    seedplan register --fixed PLANNING_CT --moving NEW_CT --out transform.tfm|transform.json
                      [--json record.json] [--resampled new_on_planning_grid.nrrd]
                      [--translation-only] [--metric mattes|bone] [--init moments|geometry|identity]
                      [--grid 2.5] [--metal-hu 2500] [--metal-margin 10]

The ``.tfm`` (ITK, LPS, planning -> new CT points) is what 3D Slicer reads as a linear transform: applied
to the new CT it puts it onto the planning CT. The JSON holds the planning-from-new 4 x 4 in RAS, the
translation, the rotation and the quality check (docs/registration.md).
"""

from __future__ import annotations


def cmd_register(args):
    """Register ``--moving`` to ``--fixed``; write the transform (and the JSON record / resampled CT)."""
    from .main import ProgressBar
    from ..core.errors import InputError
    from ..core.imageio import read_sitk, geometry_of, write_image
    from ..imaging.registration import register_ct, resample_to_planning, transform_format, write_transform
    transform_format(args.out)
    if args.json is not None and not str(args.json).lower().endswith(".json"):
        raise InputError(f"--json {args.json}: the registration record is a .json file")
    outs = [str(p) for p in (args.out, args.json, args.resampled) if p is not None]
    if len(set(outs)) != len(outs):
        raise InputError("--out, --json and --resampled must be different files")
    fixed = read_sitk(args.fixed)
    moving = read_sitk(args.moving)
    bar = ProgressBar("register", enabled=not args.quiet)
    result = register_ct(fixed, moving, translation_only=args.translation_only, metric=args.metric, init=args.init,
                         grid_mm=args.grid, metal_hu=args.metal_hu, metal_margin_mm=args.metal_margin, progress=bar,
                         names=(f"{args.fixed} (planning CT)", f"{args.moving} (new CT)"))
    resampled = None
    if args.resampled:
        resampled = resample_to_planning(moving, result, geometry_of(fixed))
    write_transform(args.out, result)
    if args.json:
        write_transform(args.json, result)
    if resampled is not None:
        write_image(args.resampled, resampled, geometry_of(fixed), {"SeedPlan_Registered": f"{args.moving} -> {args.fixed}"})
    print(result.summary_line() + f" ({result.seconds:.1f} s)")
    return 0


def register(sub):
    """Add ``register``."""
    p = sub.add_parser("register", help="rigid registration of an intra-operative / post-implant CT to the planning CT")
    p.add_argument("--fixed", required=True, help="the planning CT (NRRD, NIfTI, MHA or a DICOM series folder)")
    p.add_argument("--moving", required=True, help="the new CT (intra-operative or post-implant)")
    p.add_argument("--out", required=True, help="transform file: .tfm/.txt/.h5/.mat (ITK, read by 3D Slicer) or .json")
    p.add_argument("--json", help="also write the JSON record (RAS matrix, translation, rotation, quality) here")
    p.add_argument("--resampled", help="also write the new CT resampled onto the planning CT's grid here")
    p.add_argument("--translation-only", action="store_true", help="3 degrees of freedom (no rotation)")
    p.add_argument("--metric", choices=("mattes", "bone"), default="mattes",
                   help="mattes: mutual information of the CTs; bone: of their bone window only (default mattes)")
    p.add_argument("--init", choices=("moments", "geometry", "identity"), default="moments",
                   help="start: body centres of mass (default), image centres, or the scanner coordinates")
    p.add_argument("--grid", type=float, default=None, help="registration grid, mm (default 2.5)")
    p.add_argument("--metal-hu", type=float, default=None, help="metal above this HU is left out (default 2500)")
    p.add_argument("--metal-margin", type=float, default=None,
                   help="and everything within this many mm of it (default 10)")
    p.set_defaults(func=cmd_register, output_options={"out": "file", "json": "file", "resampled": "file"})
