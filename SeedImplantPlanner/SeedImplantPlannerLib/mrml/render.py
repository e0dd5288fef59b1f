"""Offscreen pictures of a plan: axial, sagittal and coronal slices and a 3D view, as PNG files.

Slicer's own displayable managers draw the nodes (the same pipelines as the application's
views): CT in grey, dose colour wash, isodose lines (model slice intersections), structure
outlines, needles and seeds. The render window is offscreen: EGL first, OSMesa as fallback
(``VTK_DEFAULT_OPENGL_WINDOW`` chooses when set). Depth peeling stays off (translucent isodose
surfaces vanish with it on Mesa). Views are made with their own layout names and removed after
rendering, so the user's Red/Yellow/Green views in a running Slicer are never touched.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..core.errors import InputError
from ..core.fileio import atomic_path

SLICE_VIEWS = {"axial": "Axial", "sagittal": "Sagittal", "coronal": "Coronal"}
VIEWS = ("axial", "sagittal", "coronal", "3d")
_LAYOUT_PREFIX = "SeedPlanPicture"


def _slicer():
    import slicer  # noqa: PLC0415
    return slicer


def _vtk():
    import vtk  # noqa: PLC0415
    return vtk


def offscreen_render_window(width, height):
    """An offscreen render window that works without a display (EGL, else OSMesa)."""
    from vtkmodules import vtkRenderingOpenGL2 as gl  # noqa: PLC0415
    wanted = os.environ.get("VTK_DEFAULT_OPENGL_WINDOW") or ""
    order = [wanted] if wanted else []
    order += ["vtkEGLRenderWindow", "vtkOSOpenGLRenderWindow"]
    last = None
    for cls_name in order:
        cls = getattr(gl, cls_name, None)
        if cls is None:
            continue
        rw = cls()
        rw.SetOffScreenRendering(1)
        rw.SetMultiSamples(0)
        rw.SetSize(int(width), int(height))
        try:
            ok = rw.SupportsOpenGL()
        except Exception as exc:  # noqa: BLE001 - a backend that cannot start is skipped
            last = exc
            ok = False
        if ok:
            return rw
        rw.Finalize()
    raise InputError(f"no offscreen OpenGL available (tried {', '.join(order)}): install libegl1 or libosmesa6"
                     + (f" ({last})" if last else ""))


def _capture_png(render_window, path):
    vtk = _vtk()
    grab = vtk.vtkWindowToImageFilter()
    grab.SetInput(render_window)
    grab.ReadFrontBufferOff()
    grab.SetInputBufferTypeToRGB()
    grab.Update()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        writer = vtk.vtkPNGWriter()
        writer.SetFileName(str(tmp))
        writer.SetInputConnection(grab.GetOutputPort())
        writer.Write()
    return path


def png_to_array(path) -> np.ndarray:
    """RGB array (rows top to bottom, columns, 3) of a PNG file."""
    vtk = _vtk()
    from vtk.util import numpy_support  # noqa: PLC0415
    reader = vtk.vtkPNGReader()
    reader.SetFileName(str(path))
    reader.Update()
    img = reader.GetOutput()
    w, h, _ = img.GetDimensions()
    arr = numpy_support.vtk_to_numpy(img.GetPointData().GetScalars()).reshape(h, w, -1)
    return arr[::-1, :, :3].copy()


class _View:
    """A render window + renderer + interactor + displayable manager group (offscreen)."""

    def __init__(self, factory, app_logic, managers, width, height):
        vtk = _vtk()
        slicer = _slicer()
        self.window = offscreen_render_window(width, height)
        self.renderer = vtk.vtkRenderer()
        self.renderer.SetUseDepthPeeling(0)
        self.window.AddRenderer(self.renderer)
        self.interactor = vtk.vtkRenderWindowInteractor()
        self.interactor.SetRenderWindow(self.window)
        self.interactor.Initialize()
        # The factory is a process-wide singleton: lend it this scene's application logic only while
        # the managers are made, so a running Slicer's own views keep theirs.
        previous = factory.GetMRMLApplicationLogic()
        factory.SetMRMLApplicationLogic(app_logic)
        try:
            for m in managers:
                if not factory.IsDisplayableManagerRegistered(m):
                    factory.RegisterDisplayableManager(m)
            self.group = slicer.vtkMRMLDisplayableManagerGroup()
            self.group.Initialize(factory, self.renderer)
        finally:
            if previous is not None:
                factory.SetMRMLApplicationLogic(previous)

    def render(self):
        self.window.Render()

    def close(self):
        self.group.SetMRMLDisplayableNode(None)
        self.window.Finalize()


def _ensure_view_logics(app_logic):
    vtk = _vtk()
    if app_logic.GetSliceLogics() is None:
        app_logic.SetSliceLogics(vtk.vtkCollection())
    if app_logic.GetViewLogics() is None:
        app_logic.SetViewLogics(vtk.vtkCollection())


def default_center_and_fov(dose_node=None, seeds_node=None, ct_node=None, margin_mm=25.0):
    """(centre RAS, field of view mm) framing the seeds (else the dose grid, else the CT)."""
    pts = None
    if seeds_node is not None and seeds_node.GetNumberOfControlPoints():
        pts = _slicer().util.arrayFromMarkupsControlPoints(seeds_node)
    if pts is not None and len(pts):
        lo, hi = pts.min(axis=0) - margin_mm, pts.max(axis=0) + margin_mm
    else:
        node = dose_node or ct_node
        if node is None:
            raise InputError("nothing to frame: give a dose, seeds or CT node")
        b = [0.0] * 6
        node.GetRASBounds(b)
        lo, hi = np.array(b[0::2]), np.array(b[1::2])
    return (lo + hi) / 2.0, float(np.max(hi - lo))


def render_slice_view(ctx, path, orientation, center_ras, fov_mm, ct_node=None, dose_node=None,
                      dose_opacity=0.45, size=(512, 512)):
    """Render one slice view (orientation 'Axial', 'Sagittal' or 'Coronal') through ``center_ras`` to PNG."""
    vtk = _vtk()
    slicer = _slicer()
    scene, app_logic = ctx.scene, ctx.app_logic
    _ensure_view_logics(app_logic)
    width, height = int(size[0]), int(size[1])
    view = _View(slicer.vtkMRMLSliceViewDisplayableManagerFactory.GetInstance(), app_logic,
                 ["vtkMRMLModelSliceDisplayableManager", "vtkMRMLSegmentationsDisplayableManager2D",
                  "vtkMRMLMarkupsDisplayableManager"], width, height)
    view.renderer.GetActiveCamera().ParallelProjectionOn()
    logic = slicer.vtkMRMLSliceLogic()
    logic.SetMRMLApplicationLogic(app_logic)
    logic.SetMRMLScene(scene)
    app_logic.GetSliceLogics().AddItem(logic)
    slice_node = logic.AddSliceNode(f"{_LAYOUT_PREFIX}{orientation}")
    composite = logic.GetSliceCompositeNode()
    try:
        slice_node.SetOrientation(orientation)
        composite.SetBackgroundVolumeID(ct_node.GetID() if ct_node is not None else None)
        composite.SetForegroundVolumeID(dose_node.GetID() if dose_node is not None else None)
        composite.SetForegroundOpacity(float(dose_opacity))
        composite.SetLabelVolumeID(None)
        view.group.SetMRMLDisplayableNode(slice_node)
        mapper = vtk.vtkImageMapper()
        mapper.SetColorWindow(255)
        mapper.SetColorLevel(127.5)
        actor = vtk.vtkActor2D()
        actor.SetMapper(mapper)
        actor.GetProperty().SetDisplayLocationToBackground()
        view.renderer.AddViewProp(actor)
        logic.ResizeSliceNode(width, height)
        fov = float(fov_mm)
        slice_node.SetFieldOfView(fov * width / max(width, height), fov * height / max(width, height),
                                  slice_node.GetFieldOfView()[2])
        slice_node.JumpSliceByCentering(*[float(v) for v in center_ras])
        mapper.SetInputConnection(logic.GetImageDataConnection())
        view.render()
        return _capture_png(view.window, path)
    finally:
        view.close()
        app_logic.GetSliceLogics().RemoveItem(logic)
        logic.SetMRMLScene(None)
        for node in (composite, slice_node):
            if node is not None and node.GetScene() is scene:
                scene.RemoveNode(node)


def render_3d_view(ctx, path, center_ras, fov_mm, segmentation_node=None, size=(512, 512),
                   azimuth=-30.0, elevation=20.0, frame_bounds=None, view_from=(0.0, 1.0, 0.0)):
    """Render a 3D view (isodose surfaces, structures, needles, seeds) around ``center_ras`` to PNG.

    The camera looks from ``view_from`` (a RAS direction, default anterior), turned by ``azimuth``
    and ``elevation`` degrees. ``frame_bounds`` (xmin, xmax, ymin, ymax, zmin, zmax) is the box the
    camera frames (default: the cube of side ``fov_mm`` around the centre).
    """
    slicer = _slicer()
    scene, app_logic = ctx.scene, ctx.app_logic
    _ensure_view_logics(app_logic)
    width, height = int(size[0]), int(size[1])
    if segmentation_node is not None:
        segmentation_node.CreateClosedSurfaceRepresentation()
    view = _View(slicer.vtkMRMLThreeDViewDisplayableManagerFactory.GetInstance(), app_logic,
                 ["vtkMRMLModelDisplayableManager", "vtkMRMLSegmentationsDisplayableManager3D",
                  "vtkMRMLMarkupsDisplayableManager"], width, height)
    view_node = scene.AddNewNodeByClass("vtkMRMLViewNode", f"{_LAYOUT_PREFIX}3D")
    try:
        view_node.SetLayoutName(f"{_LAYOUT_PREFIX}3D")
        view_node.SetBoxVisible(False)
        view_node.SetAxisLabelsVisible(False)
        view_node.SetBackgroundColor(0.08, 0.08, 0.12)
        view_node.SetBackgroundColor2(0.08, 0.08, 0.12)
        view.renderer.SetBackground(0.08, 0.08, 0.12)
        view.group.SetMRMLDisplayableNode(view_node)
        cam = view.renderer.GetActiveCamera()
        c = np.asarray(center_ras, float)
        cam.SetFocalPoint(*c)
        v = np.asarray(view_from, float)
        v = v / np.linalg.norm(v)
        cam.SetPosition(*(c + float(fov_mm) * v))
        up = np.array([0.0, 0.0, 1.0]) if abs(v[2]) < 0.9 else np.array([0.0, 1.0, 0.0])
        cam.SetViewUp(*up)
        cam.Azimuth(azimuth)
        cam.Elevation(elevation)
        cam.OrthogonalizeViewUp()
        cam.SetViewAngle(30.0)
        if frame_bounds is None:
            half = float(fov_mm) / 2.0
            frame_bounds = [c[0] - half, c[0] + half, c[1] - half, c[1] + half, c[2] - half, c[2] + half]
        view.renderer.ResetCamera(*[float(b) for b in frame_bounds])
        cam.Zoom(0.9)
        view.renderer.ResetCameraClippingRange()
        view.render()
        return _capture_png(view.window, path)
    finally:
        view.close()
        scene.RemoveNode(view_node)


def style_for_pictures(segmentation_node=None, seeds_node=None, needle_nodes=(), isodose_nodes=(),
                       segments_3d=None):
    """Display settings that read well in still pictures (outlines, projected needles and seeds).

    ``segments_3d``: IDs of the segments shown, target first (default all): a body contour would hide
    the rest in 3D and draw its outline along the picture's border in the slices. In 3D the first
    shown segment is drawn at 70 % opacity, the others at 20 %.
    """
    if segmentation_node is not None:
        d = segmentation_node.GetDisplayNode()
        if d is not None:
            d.SetVisibility2DFill(False)
            d.SetVisibility2DOutline(True)
            d.SetSliceIntersectionThickness(2)
            d.SetOpacity3D(1.0)
            seg = segmentation_node.GetSegmentation()
            shown = list(segments_3d) if segments_3d is not None else \
                [seg.GetNthSegmentID(i) for i in range(seg.GetNumberOfSegments())]
            for i in range(seg.GetNumberOfSegments()):
                sid = seg.GetNthSegmentID(i)
                d.SetSegmentVisibility(sid, sid in shown)
                # the first shown segment (the target) stands out; the others stay see-through
                d.SetSegmentOpacity3D(sid, 0.7 if shown and sid == shown[0] else 0.2)
    for node in needle_nodes:
        d = node.GetDisplayNode()
        if d is not None:
            d.SetSliceProjection(True)
            d.SetSliceProjectionOpacity(0.8)
            d.SetSliceProjectionUseFiducialColor(True)
    if seeds_node is not None and seeds_node.GetDisplayNode() is not None:
        d = seeds_node.GetDisplayNode()
        d.SetSliceProjection(True)
        d.SetSliceProjectionOpacity(0.5)
        d.SetSliceProjectionUseFiducialColor(True)
    for node in isodose_nodes:
        d = node.GetDisplayNode()
        if d is not None:
            d.SetVisibility2D(True)
            d.SetSliceIntersectionThickness(2)
            # 3D: only the prescription isodose surface (all levels nest and hide each other)
            d.SetVisibility3D(node.GetAttribute("SeedImplantPlanner.IsodoseLevelPercent") == "100")
            d.SetOpacity(0.35)


def write_plan_pictures(ctx, out_dir, ct_node=None, dose_node=None, segmentation_node=None, seeds_node=None,
                        needle_nodes=(), isodose_nodes=(), center_ras=None, fov_mm=None, size=(512, 512),
                        views=VIEWS, prefix="plan", dose_opacity=0.35, segments_3d=None):
    """Write PNG pictures of a plan (axial, sagittal, coronal, 3d); returns {view: path}.

    ``ctx`` is a :class:`mrml_scene.SlicerSceneContext`; the views go through ``center_ras``
    (default: the centre of the seeds) with a square field of view of ``fov_mm``.
    """
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise InputError(f"unknown view(s) {', '.join(unknown)} (use {', '.join(VIEWS)})")
    auto_center, auto_fov = default_center_and_fov(dose_node, seeds_node, ct_node)
    center = auto_center if center_ras is None else np.asarray(center_ras, float)
    fov = auto_fov if fov_mm is None else float(fov_mm)
    style_for_pictures(segmentation_node, seeds_node, needle_nodes, isodose_nodes, segments_3d)
    out_dir = Path(out_dir)
    out = {}
    for v in views:
        path = out_dir / f"{prefix}_{v}.png"
        if v == "3d":
            out[v] = render_3d_view(ctx, path, center, fov, segmentation_node, size,
                                    frame_bounds=_plan_bounds(seeds_node, isodose_nodes),
                                    view_from=least_occluded_side(center, segmentation_node, segments_3d,
                                                                  _entry_side(needle_nodes)))
        else:
            out[v] = render_slice_view(ctx, path, SLICE_VIEWS[v], center, fov, ct_node, dose_node,
                                       dose_opacity, size)
    return out


def _plan_bounds(seeds_node, isodose_nodes):
    """Box around the seeds and the prescription isodose surface (None when there is neither)."""
    boxes = []
    if seeds_node is not None and seeds_node.GetNumberOfControlPoints():
        pts = _slicer().util.arrayFromMarkupsControlPoints(seeds_node)
        boxes.append((pts.min(axis=0), pts.max(axis=0)))
    for node in isodose_nodes:
        poly = node.GetPolyData()
        if node.GetAttribute("SeedImplantPlanner.IsodoseLevelPercent") == "100" and poly is not None \
                and poly.GetNumberOfPoints():
            b = poly.GetBounds()
            boxes.append((np.array(b[0::2]), np.array(b[1::2])))
    if not boxes:
        return None
    lo = np.min([b[0] for b in boxes], axis=0) - 5.0
    hi = np.max([b[1] for b in boxes], axis=0) + 5.0
    return [lo[0], hi[0], lo[1], hi[1], lo[2], hi[2]]


def _entry_side(needle_nodes):
    """Direction the needles come from (mean tip -> entry), or anterior without needles.

    Looking from the entry side shows the needles and the seeds with little anatomy in front.
    """
    dirs = []
    for node in needle_nodes:
        n = node.GetNumberOfControlPoints()
        if n >= 2:
            d = np.array(node.GetNthControlPointPosition(0)) - np.array(node.GetNthControlPointPosition(n - 1))
            if np.linalg.norm(d) > 0:
                dirs.append(d / np.linalg.norm(d))
    if dirs:
        m = np.mean(dirs, axis=0)
        if np.linalg.norm(m) > 1e-6:
            return tuple(m / np.linalg.norm(m))
    return (0.0, 1.0, 0.0)


def least_occluded_side(center_ras, segmentation_node=None, segment_ids=None, preferred=(0.0, 1.0, 0.0),
                        reach_mm=150.0, spread_mm=15.0):
    """Camera direction (one of the six RAS axes, or ``preferred``) with the least structure in front.

    For each candidate, 9 parallel rays leave the centre (a 3 x 3 bundle ``spread_mm`` apart) and
    are sampled every 2 mm up to ``reach_mm``; the score is the number of samples inside a shown
    segment other than the first (the target). Ties keep ``preferred``, then the list order.
    """
    preferred = np.asarray(preferred, float)
    candidates = [preferred] + [np.array(v, float) for v in
                                ((0, 1, 0), (0, -1, 0), (1, 0, 0), (-1, 0, 0), (0, 0, 1), (0, 0, -1))]
    if segmentation_node is None:
        return tuple(preferred)
    from .segmentations import segment_ids as _segment_ids, segment_structure  # noqa: PLC0415
    ids = list(segment_ids) if segment_ids is not None else _segment_ids(segmentation_node)
    blockers = []
    for sid in ids[1:]:
        try:
            blockers.append(segment_structure(segmentation_node, sid))
        except InputError:
            continue
    if not blockers:
        return tuple(preferred)
    c = np.asarray(center_ras, float)
    t = np.arange(20.0, reach_mm, 2.0)
    best, best_score = preferred, None
    for d in candidates:
        d = d / np.linalg.norm(d)
        helper = np.array([1.0, 0.0, 0.0]) if abs(d[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
        u = np.cross(d, helper)
        u /= np.linalg.norm(u)
        w = np.cross(d, u)
        offsets = [a * u + b * w for a in (-spread_mm, 0.0, spread_mm) for b in (-spread_mm, 0.0, spread_mm)]
        pts = np.concatenate([c + o + t[:, None] * d for o in offsets])
        score = 0
        for s in blockers:
            ijk = np.rint(s.geometry.ras_to_ijk(pts)).astype(np.int64)
            ok = np.all((ijk >= 0) & (ijk < np.asarray(s.geometry.size)), axis=1)
            score += int(np.count_nonzero(s.mask[ijk[ok, 2], ijk[ok, 1], ijk[ok, 0]]))
        if best_score is None or score < best_score:
            best, best_score = d, score
    return tuple(best)
