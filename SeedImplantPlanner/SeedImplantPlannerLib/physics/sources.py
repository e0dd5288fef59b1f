"""TG-43U1 seed model library: load, validate and list LDR seed models.

Each model is one JSON file in the layout of the project's reference copy (shipped under
``SeedImplantPlanner/Resources/SeedModels``; provenance in ``PROVENANCE.md`` there). Values are
AAPM TG-43U1 / TG-43U1S1 consensus data (Rivard et al., Med Phys 31:633, 2004), each with its
``sources`` list. Users add models as JSON files of the same layout in folders of their own;
a malformed file is refused with a :class:`SeedModelError` naming the file and the field.

Units: lengths in cm (as tabulated by TG-43), Lambda in cGy h^-1 U^-1, half-life in days,
angles in degrees.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from ..core.errors import SeedModelError
from ..core.resources import find_resource_dir

#: Apparent-activity conversion (air-kerma strength per mCi) by nuclide, with its source.
#: I-125: 1.270 U/mCi, AAPM TG-43 (Nath et al., Med Phys 22:209, 1995), as used by vendors to
#: quote "apparent activity". Other nuclides have no shipped factor: mCi input is refused for
#: them unless a model file carries its own ``apparent_activity_U_per_mCi`` with sources.
U_PER_MCI_BY_NUCLIDE = {
    "I-125": {
        "value": 1.270,
        "sources": ["AAPM TG-43 (Nath et al., Med Phys 22:209, 1995): 1.270 U per mCi apparent activity of I-125"],
    },
}

#: Outer capsule dimensions (mm) of the shipped models: what a CT shows of a seed (the seed finder
#: sizes seeds from these, never from the objects in the image). From the source descriptions in
#: AAPM TG-43U1 (Rivard et al., Med Phys 31:633, 2004, Sec. III and Fig. 1: 6711, 2301, TheraSeed 200)
#: and TG-43U1S1 (Rivard et al., Med Phys 34:2187, 2007: BEBIG I25.S06, IsoAid IAI-125A).
#: A model file may carry its own ``capsule_mm`` {"length", "diameter", "sources"}.
CAPSULE_MM_BY_MODEL = {
    "I125_OncoSeed_6711": {"length": 4.5, "diameter": 0.8,
                           "sources": ["TG-43U1 (Rivard 2004): Ti capsule 4.5 mm long, 0.8 mm outer diameter"]},
    "I125_Best_2301": {"length": 5.0, "diameter": 0.8,
                       "sources": ["TG-43U1 (Rivard 2004): double-wall Ti capsule 5.0 mm long, 0.8 mm outer diameter"]},
    "I125_BEBIG_I25.S06": {"length": 4.5, "diameter": 0.8,
                           "sources": ["TG-43U1S1 (Rivard 2007): Ti capsule 4.5 mm long, 0.8 mm outer diameter"]},
    "I125_IsoAid_IAI-125A": {"length": 4.5, "diameter": 0.8,
                             "sources": ["TG-43U1S1 (Rivard 2007): Ti capsule 4.5 mm long, 0.8 mm outer diameter"]},
    "Pd103_TheraSeed_200": {"length": 4.5, "diameter": 0.826,
                            "sources": ["TG-43U1 (Rivard 2004): Ti capsule 4.5 mm long, 0.826 mm outer diameter"]},
}

#: Seconds are never used: times are in hours (dose rates in cGy/h) and days (half-lives).
HOURS_PER_DAY = 24.0



def builtin_models_dir() -> Path:
    """Return the folder that holds the shipped seed model JSON files."""
    return find_resource_dir("SeedModels", SeedModelError, "shipped seed models")


@dataclass(frozen=True)
class SeedModel:
    """One LDR seed model with its TG-43U1 dosimetry parameters (cm, degrees, days)."""

    model_id: str
    nuclide: str
    manufacturer_model: str
    dose_rate_constant: float  # Lambda, cGy h^-1 U^-1
    active_length_cm: float  # L, effective active length of the line source
    half_life_days: float
    g_r_cm: np.ndarray
    g_L: np.ndarray
    F_r_cm: np.ndarray
    F_theta_deg: np.ndarray
    F: np.ndarray  # F[i_theta, j_r]
    g_P: np.ndarray | None = None
    phi_r_cm: np.ndarray | None = None
    phi_an: np.ndarray | None = None
    u_per_mci: float | None = None
    u_per_mci_sources: tuple = ()
    consensus_publication: str = ""
    status: str = ""
    source_file: str = ""
    provenance: dict = field(default_factory=dict, compare=False, repr=False)
    capsule_length_mm: float | None = None  # outer capsule length (None: not known for this model)
    capsule_diameter_mm: float | None = None  # outer capsule diameter

    @property
    def formalisms(self) -> tuple:
        """Formalisms this model supports: always '2D'; '1D' only where phi_an is tabulated."""
        return ("2D", "1D") if self.phi_an is not None else ("2D",)

    @property
    def mean_life_h(self) -> float:
        """Mean life tau = T1/2 / ln 2, in hours."""
        return self.half_life_days * HOURS_PER_DAY / math.log(2.0)

    @property
    def decay_constant_per_h(self) -> float:
        """Decay constant lambda = ln 2 / T1/2, per hour."""
        return math.log(2.0) / (self.half_life_days * HOURS_PER_DAY)

    def summary(self) -> dict:
        """One-line description used by ``seedplan sources`` and reports."""
        notes = []
        if "1D" not in self.formalisms:
            notes.append("1D unavailable: phi_an not tabulated")
        return {
            "model": self.model_id,
            "nuclide": self.nuclide,
            "Lambda_cGy_per_h_per_U": self.dose_rate_constant,
            "L_cm": self.active_length_cm,
            "half_life_d": self.half_life_days,
            "formalisms": "/".join(self.formalisms),
            "U_per_mCi": self.u_per_mci,
            "status": self.status,
            "notes": "; ".join(notes),
        }


def _fail(path, field_name, message):
    raise SeedModelError(f"{path}: field '{field_name}': {message}")


def _value(doc, key, path):
    """Return the positive finite number stored at ``doc[key]`` (``{"value": x}`` or ``x``)."""
    if key not in doc:
        _fail(path, key, "missing")
    raw = doc[key]
    if isinstance(raw, dict):
        if "value" not in raw:
            _fail(path, key + ".value", "missing")
        raw = raw["value"]
    if isinstance(raw, bool) or not isinstance(raw, (int, float)):
        _fail(path, key, f"must be a number, got {raw!r}")
    if not math.isfinite(raw) or raw <= 0:
        _fail(path, key, f"must be a positive finite number, got {raw!r}")
    return float(raw)


def _array(doc, key, path, where, *, allow_none=False, positive=True, increasing=False):
    if key not in doc:
        if allow_none:
            return None
        _fail(path, where + key, "missing")
    raw = doc[key]
    if raw is None:
        if allow_none:
            return None
        _fail(path, where + key, "is null")
    try:
        arr = np.asarray(raw, dtype=float)
    except (TypeError, ValueError):
        _fail(path, where + key, "must be a list of numbers")
    if arr.ndim != 1 or arr.size < 2:
        _fail(path, where + key, "must be a list of at least 2 numbers")
    if not np.all(np.isfinite(arr)):
        _fail(path, where + key, "contains a non-finite value")
    if positive and np.any(arr <= 0):
        _fail(path, where + key, "values must be > 0")
    if increasing and np.any(np.diff(arr) <= 0):
        _fail(path, where + key, "values must be strictly increasing")
    return arr


def model_from_dict(doc: dict, path="<dict>") -> SeedModel:
    """Validate a model document (the shipped JSON layout) and build a :class:`SeedModel`."""
    if not isinstance(doc, dict):
        _fail(path, "<root>", "must be a JSON object")
    for key in ("model_id", "radionuclide"):
        if not isinstance(doc.get(key), str) or not doc.get(key).strip():
            _fail(path, key, "missing or not a non-empty string")
    lam = _value(doc, "dose_rate_constant_cGy_per_h_per_U", path)
    length = _value(doc, "L_eff_cm", path)
    half_life = _value(doc, "half_life_days", path)

    rdf = doc.get("radial_dose_function")
    if not isinstance(rdf, dict):
        _fail(path, "radial_dose_function", "missing or not an object")
    g_r = _array(rdf, "r_cm", path, "radial_dose_function.", increasing=True)
    g_l = _array(rdf, "g_L", path, "radial_dose_function.")
    if g_l.size != g_r.size:
        _fail(path, "radial_dose_function.g_L", f"has {g_l.size} values for {g_r.size} radii")
    g_p = _array(rdf, "g_P", path, "radial_dose_function.", allow_none=True)
    if g_p is not None and g_p.size != g_r.size:
        _fail(path, "radial_dose_function.g_P", f"has {g_p.size} values for {g_r.size} radii")

    an = doc.get("anisotropy_function_2D")
    if not isinstance(an, dict):
        _fail(path, "anisotropy_function_2D", "missing or not an object")
    layout = an.get("layout", "F[i_theta][j_r]")
    if layout != "F[i_theta][j_r]":
        _fail(path, "anisotropy_function_2D.layout", f"must be 'F[i_theta][j_r]', got {layout!r}")
    f_r = _array(an, "r_cm", path, "anisotropy_function_2D.", increasing=True)
    f_t = _array(an, "theta_deg", path, "anisotropy_function_2D.", positive=False, increasing=True)
    if f_t[0] < 0 or f_t[-1] > 180:
        _fail(path, "anisotropy_function_2D.theta_deg", "angles must lie in [0, 180] degrees")
    if f_t[0] != 0 or f_t[-1] not in (90.0, 180.0):
        _fail(path, "anisotropy_function_2D.theta_deg", "must start at 0 and end at 90 or 180 degrees")
    try:
        f_tab = np.asarray(an.get("F"), dtype=float)
    except (TypeError, ValueError):
        _fail(path, "anisotropy_function_2D.F", "must be a table of numbers")
    if f_tab.shape != (f_t.size, f_r.size):
        _fail(path, "anisotropy_function_2D.F",
              f"shape {f_tab.shape} does not match theta_deg x r_cm = ({f_t.size}, {f_r.size})")
    if not np.all(np.isfinite(f_tab)) or np.any(f_tab <= 0):
        _fail(path, "anisotropy_function_2D.F", "values must be positive and finite")

    phi_r = phi = None
    p1 = doc.get("anisotropy_factor_1D")
    if isinstance(p1, dict) and p1.get("phi_an") is not None:
        phi_r = _array(p1, "r_cm", path, "anisotropy_factor_1D.", increasing=True)
        phi = _array(p1, "phi_an", path, "anisotropy_factor_1D.")
        if phi.size != phi_r.size:
            _fail(path, "anisotropy_factor_1D.phi_an", f"has {phi.size} values for {phi_r.size} radii")

    nuclide = doc["radionuclide"].strip()
    u_per_mci, u_src = None, ()
    if "apparent_activity_U_per_mCi" in doc:
        u_per_mci = _value(doc, "apparent_activity_U_per_mCi", path)
        entry = doc["apparent_activity_U_per_mCi"]
        u_src = tuple(entry.get("sources", ())) if isinstance(entry, dict) else ()
        if not u_src:
            _fail(path, "apparent_activity_U_per_mCi.sources", "a conversion factor needs its sources")
    elif nuclide in U_PER_MCI_BY_NUCLIDE:
        u_per_mci = U_PER_MCI_BY_NUCLIDE[nuclide]["value"]
        u_src = tuple(U_PER_MCI_BY_NUCLIDE[nuclide]["sources"])

    capsule = doc.get("capsule_mm", CAPSULE_MM_BY_MODEL.get(doc["model_id"].strip()))
    cap_len = cap_dia = None
    if capsule is not None:
        if not isinstance(capsule, dict):
            _fail(path, "capsule_mm", "must be an object {length, diameter, sources}")
        cap_len = _value(capsule, "length", path)
        cap_dia = _value(capsule, "diameter", path)
        if cap_dia >= cap_len:
            _fail(path, "capsule_mm", f"diameter {cap_dia} mm is not smaller than the length {cap_len} mm")

    statuses = []
    if isinstance(p1, dict) and p1.get("status"):
        statuses.append("phi_an: " + str(p1["status"]))
    if an.get("status"):
        statuses.append("F: " + str(an["status"]))
    if rdf.get("g_P_status") and g_p is not None:
        statuses.append("g_P: " + str(rdf["g_P_status"]))
    return SeedModel(
        model_id=doc["model_id"].strip(), nuclide=nuclide,
        manufacturer_model=str(doc.get("manufacturer_model", "")),
        dose_rate_constant=lam, active_length_cm=length, half_life_days=half_life,
        g_r_cm=g_r, g_L=g_l, g_P=g_p, F_r_cm=f_r, F_theta_deg=f_t, F=f_tab,
        phi_r_cm=phi_r, phi_an=phi, u_per_mci=u_per_mci, u_per_mci_sources=u_src,
        consensus_publication=str(doc.get("consensus_publication", "")),
        status=" | ".join(statuses), source_file=str(path),
        provenance={k: doc.get(k) for k in ("cross_checks", "discrepancies", "notes")},
        capsule_length_mm=cap_len, capsule_diameter_mm=cap_dia,
    )


def load_model_file(path) -> SeedModel:
    """Load and validate one model JSON file; errors name the file and the field."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SeedModelError(f"{path}: cannot read seed model file: {exc.strerror or exc}") from exc
    try:
        doc = json.loads(text)
    except json.JSONDecodeError as exc:
        raise SeedModelError(f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}): {exc.msg}") from exc
    return model_from_dict(doc, path)


def user_model_dirs() -> list:
    """Folders named by the SEEDPLAN_MODEL_PATH environment variable (os.pathsep separated)."""
    raw = os.environ.get("SEEDPLAN_MODEL_PATH", "")
    return [Path(p) for p in raw.split(os.pathsep) if p.strip()]


def load_models(extra_dirs=()) -> dict:
    """Return ``{model_id: SeedModel}``: shipped models plus every ``*.json`` in ``extra_dirs``.

    ``extra_dirs`` defaults to nothing; the folders of SEEDPLAN_MODEL_PATH are always added.
    A user model may not reuse a shipped model's id (that would silently change shipped data).
    """
    models = {}
    for path in sorted(builtin_models_dir().glob("*.json")):
        model = load_model_file(path)
        models[model.model_id] = model
    shipped = set(models)
    for folder in list(extra_dirs) + user_model_dirs():
        folder = Path(folder)
        if not folder.is_dir():
            raise SeedModelError(f"{folder}: seed model folder does not exist")
        for path in sorted(folder.glob("*.json")):
            model = load_model_file(path)
            if model.model_id in shipped:
                raise SeedModelError(f"{path}: field 'model_id': '{model.model_id}' is a shipped model; choose another id")
            if model.model_id in models:
                raise SeedModelError(f"{path}: field 'model_id': '{model.model_id}' defined twice "
                                     f"(also in {models[model.model_id].source_file})")
            models[model.model_id] = model
    return models


_CACHE: dict = {}


def get_model(model_id: str, extra_dirs=()) -> SeedModel:
    """Return the model ``model_id``; unknown ids raise SeedModelError listing the known ones."""
    key = tuple(str(d) for d in extra_dirs) + tuple(str(d) for d in user_model_dirs())
    if key not in _CACHE:
        _CACHE[key] = load_models(extra_dirs)
    models = _CACHE[key]
    if model_id not in models:
        raise SeedModelError(f"unknown seed model '{model_id}' (known: {', '.join(sorted(models))})")
    return models[model_id]
