"""Clinical read-outs of a prediction: the BTS risk band (attributed correctly), Lung-RADS v2022 from size and
type, and a FHIR R4 RiskAssessment. Synthetic-data models: not for clinical use."""
from __future__ import annotations

import datetime as dt

BTS_PET_THRESHOLD = 0.10  # BTS 2015: Brock probability < 10 % -> CT surveillance, >= 10 % -> PET-CT
RISK_BASIS = ("BTS 2015 nodule guideline, pre-PET step: probability < 10 % -> CT surveillance (low), >= 10 % -> "
              "PET-CT (intermediate). Herder's 10-70 % / > 70 % bands apply only after PET-CT and are not computed.")


def risk_category(p: float | None, assessable: bool = True, has_nodule: bool = True) -> str:
    """low / intermediate (BTS pre-PET threshold), no_nodule, not_assessable."""
    if not assessable:
        return "not_assessable"
    if not has_nodule or p is None:
        return "no_nodule"
    return "low" if p < BTS_PET_THRESHOLD else "intermediate"


def recommendation(category: str) -> str:
    return {"low": "CT surveillance (BTS: probability < 10 %)",
            "intermediate": "PET-CT next (BTS: probability >= 10 %); Herder bands after PET",
            "no_nodule": "no nodule >= 4 mm found in the scanned lung",
            "not_assessable": "the scan cannot be judged: see reasons"}.get(category, "")


def solid_component_mm(nodule: dict) -> float:
    """Diameter of the solid part, from the solid share of the nodule's volume (a sphere's cube-root law)."""
    return float(nodule["diameter_mm"]) * float(nodule.get("solid_fraction", 1.0)) ** (1.0 / 3.0)


def lung_rads_nodule(nodule: dict) -> str:
    """Lung-RADS v2022 baseline category of one nodule from its size (longest axial diameter here; the
    standard uses the mean diameter) and type; 4X when a category 3/4 nodule is spiculated."""
    d, kind = float(nodule["diameter_mm"]), nodule["type"]
    if kind == "ground-glass":
        cat = "2" if d < 30 else "3"
    elif kind == "part-solid":
        s = solid_component_mm(nodule)
        cat = "2" if d < 6 else ("3" if s < 6 else ("4A" if s < 8 else "4B"))
    else:
        cat = "2" if d < 6 else ("3" if d < 8 else ("4A" if d < 15 else "4B"))
    if cat in ("3", "4A", "4B") and nodule.get("spiculation"):
        cat = "4X"
    return cat


_ORDER = ["1", "2", "3", "4A", "4B", "4X"]


def lung_rads(nodules: list[dict]) -> dict:
    """The study's Lung-RADS v2022 category: the highest nodule category; 1 without nodules."""
    cats = [lung_rads_nodule(n) for n in nodules]
    worst = max(cats, key=_ORDER.index) if cats else "1"
    return {"version": "v2022", "category": worst,
            "basis": "size (longest axial diameter) and type of each reported nodule; baseline screening"}


def fhir_risk_assessment(result: dict, patient_id: str | None = None, as_of: dt.date | None = None) -> dict:
    """A FHIR R4 RiskAssessment for the prediction (status final; basis and reasons in notes)."""
    p = result.get("probability")
    when = (as_of or dt.date.today()).isoformat()
    ra: dict = {
        "resourceType": "RiskAssessment",
        "status": "final",
        "code": {"text": "Lung nodule malignancy risk (mmapps medical, synthetic-data model, not for clinical use)"},
        "occurrenceDateTime": when,
        "method": {"text": "CT/MRI + patient record fusion model; " + RISK_BASIS},
        "note": [{"text": "Not for clinical use: trained on synthetic data only."}],
    }
    if patient_id:
        ra["subject"] = {"reference": f"Patient/{patient_id}"}
    else:
        ra["subject"] = {"display": "unidentified patient"}
    if not result.get("assessable", True):
        ra["note"].append({"text": "Not assessable: " + "; ".join(result.get("reasons", []))})
        return ra
    outcome = {"text": "malignancy of the most suspicious lung nodule"}
    pred: dict = {"outcome": outcome, "qualitativeRisk": {"text": result.get("risk_category", "")}}
    if p is not None:
        pred["probabilityDecimal"] = float(p)
    ra["prediction"] = [pred]
    if result.get("lung_rads"):
        ra["note"].append({"text": f"Lung-RADS {result['lung_rads']['version']} category "
                                   f"{result['lung_rads']['category']}"})
    cal = result.get("calibration") or {}
    if cal.get("prevalence") is not None:
        ra["note"].append({"text": f"Probability calibrated to a malignancy prevalence of {cal['prevalence']:.0%}."})
    return ra
