"""Patient records in: FHIR R4 Bundles, flat JSON objects, one-row CSV files; and FHIR Bundles out (synth).

Impossible values (age 400, negative pack-years) are UserErrors naming the file; unknown fields are ignored
with a warning; missing fields stay missing (the model gets indicators, never silent zeros).
"""
from __future__ import annotations

import csv
import datetime as dt
import io as _io
import json
import math
from pathlib import Path

from mmapps.errors import UserError



def _short(e: Exception) -> str:
    text = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    return text[:160]

# name -> (kind, low, high). Kinds: "num", "bool", "sex", "smoking". Ranges reject impossible values.
RECORD_FIELDS: dict[str, tuple[str, float | None, float | None]] = {
    "age": ("num", 0, 120),
    "sex": ("sex", None, None),
    "family_history_lung_cancer": ("bool", None, None),
    "education": ("num", 1, 6),  # PLCOm2012 levels 1 (< high school) .. 6 (postgraduate)
    "bmi": ("num", 10, 80),
    "copd": ("bool", None, None),
    "emphysema": ("bool", None, None),  # reported, not a model input (the CT shows emphysema)
    "personal_cancer_history": ("bool", None, None),
    "smoking_status": ("smoking", None, None),
    "cigs_per_day": ("num", 0, 200),
    "smoking_years": ("num", 0, 100),
    "years_quit": ("num", 0, 100),
    "pack_years": ("num", 0, 400),
}
ALIASES = {"gender": "sex", "family_history": "family_history_lung_cancer", "packyears": "pack_years",
           "pack_years_": "pack_years", "cigarettes_per_day": "cigs_per_day", "smoker": "smoking_status",
           "cancer_history": "personal_cancer_history", "body_mass_index": "bmi", "patient_id": None, "id": None,
           "name": None}
REF_DATE = dt.date(2025, 1, 1)  # the synthetic cohort's "today": fixed so outputs are reproducible

SNOMED_SMOKING = {"266919005": "never", "8517006": "former", "77176002": "current", "449868002": "current",
                  "428041000124106": "current", "65568007": "current", "266927001": None}
SNOMED_COPD = {"13645005", "185086009", "87433001"}
SNOMED_EMPHYSEMA = {"87433001", "68328006"}
SNOMED_LUNG_CANCER = {"363358000", "254637007", "93880001", "162573006"}
CANCER_WORDS = ("cancer", "carcinoma", "neoplasm", "malignan", "lymphoma", "leukemia", "melanoma", "sarcoma")
LOINC = {"smoking_status": "72166-2", "bmi": "39156-5", "height": "8302-2", "weight": "29463-7",
         "education": "82589-3", "pack_years": "401201003", "cigs_per_day": "230056004",
         "smoking_years": "mmapps-smoking-years", "years_quit": "mmapps-years-since-quit"}
PACK_YEARS_LOINC = "8664-5"  # LOINC "Tobacco smoking status pack-years" (the SNOMED 401201003 code is read too)
NOT_ESTABLISHED = {"refuted", "entered-in-error", "provisional", "differential", "unconfirmed"}
NOT_CURRENT = {"resolved", "remission", "inactive"}  # a resolved COPD is no COPD; a cancer in remission is history
MODEL_AGE_RANGE = (50, 80)  # the synthetic training cohort's ages


def _bool(value, name: str, path: Path) -> bool | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        return value
    s = str(value).strip().lower()
    if s in ("1", "true", "yes", "y", "1.0"):
        return True
    if s in ("0", "false", "no", "n", "0.0"):
        return False
    raise UserError(f"{path}: {name} must be true/false (or 1/0); got {value!r}")


def _smoking(value, path: Path) -> str | None:
    if value is None or value == "":
        return None
    s = str(value).strip().lower()
    if s in SNOMED_SMOKING:
        return SNOMED_SMOKING[s]
    if "never" in s or s in ("no", "non-smoker", "nonsmoker", "0", "false"):
        return "never"
    if "former" in s or s.startswith("ex") or "quit" in s:
        return "former"
    if "current" in s or "every day" in s or "some day" in s or s in ("smoker", "yes", "1", "true"):
        return "current"
    if "unknown" in s:
        return None
    raise UserError(f"{path}: smoking_status must be never, former or current; got {value!r}")


def validate_record(raw: dict, path: Path) -> tuple[dict, list[str]]:
    """Raw key/values -> clean fields; impossible values are errors, unknown keys are warnings."""
    fields: dict = {}
    warnings: list[str] = []
    for key, value in raw.items():
        k = str(key).strip().lower()
        if k in ALIASES:
            if ALIASES[k] is None:
                continue
            k = ALIASES[k]
        if k not in RECORD_FIELDS:
            warnings.append(f"{path}: unknown record field {key!r} ignored")
            continue
        kind, lo, hi = RECORD_FIELDS[k]
        if value is None or (isinstance(value, str) and value.strip() == ""):
            continue
        if kind == "num":
            try:
                v = float(value)
            except (TypeError, ValueError):
                raise UserError(f"{path}: {k} must be a number; got {value!r}") from None
            if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v > hi):
                raise UserError(f"{path}: {k} = {value!r} is impossible (must be between {lo} and {hi})")
            fields[k] = v
        elif kind == "bool":
            fields[k] = _bool(value, k, path)
        elif kind == "sex":
            s = str(value).strip().lower()
            if s in ("f", "female", "woman"):
                fields[k] = "female"
            elif s in ("m", "male", "man"):
                fields[k] = "male"
            elif s in ("other", "unknown", "o", "u"):
                continue
            else:
                raise UserError(f"{path}: sex must be female or male; got {value!r}")
        else:
            st = _smoking(value, path)
            if st is not None:
                fields[k] = st
    age = fields.get("age")
    for k in ("smoking_years", "years_quit"):
        if age is not None and fields.get(k, 0) > age:
            raise UserError(f"{path}: {k} = {fields[k]:g} is impossible for age {age:g}")
    if fields.get("smoking_status") == "never":
        for k in ("cigs_per_day", "smoking_years", "pack_years"):
            if fields.get(k, 0) > 0:
                warnings.append(f"{path}: never-smoker with {k} = {fields[k]:g}; {k} ignored")
                fields[k] = 0.0
    return fields, warnings


def read_record(path: str | Path, as_of: dt.date | None = None) -> tuple[dict, list[str]]:
    """FHIR R4 Bundle, flat JSON object, or one-row CSV -> (fields, warnings).

    ``as_of``: the scan date (DICOM StudyDate) or the user's --as-of: a FHIR patient's age is taken then and
    anything recorded after it is left out."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: record file not found")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise UserError(f"{path}: cannot read record ({e.strerror})") from e
    if len(data) > 200_000_000:
        raise UserError(f"{path}: record file is too large ({len(data)} bytes)")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise UserError(f"{path}: record is not UTF-8 text") from e
    suffix = path.suffix.lower()
    stripped = text.lstrip()
    if suffix == ".json" or stripped.startswith("{") or stripped.startswith("["):
        try:
            obj = json.loads(text)
        except (ValueError, RecursionError) as e:
            raise UserError(f"{path}: invalid JSON ({_short(e)})") from e
        if isinstance(obj, dict) and obj.get("resourceType") == "Bundle":
            fields, warnings = parse_fhir_bundle(obj, path, as_of)
        elif isinstance(obj, dict) and "resourceType" in obj:
            raise UserError(f"{path}: FHIR {obj.get('resourceType')!r} resource; a FHIR Bundle is expected")
        elif not isinstance(obj, dict):
            raise UserError(f"{path}: a record must be a JSON object (or FHIR Bundle); got {type(obj).__name__}")
        else:
            fields, warnings = validate_record(obj, path)
        return fields, warnings + _age_range_warning(fields, path)
    if suffix in (".csv", ".tsv") or ("," in text.splitlines()[0] if text.strip() else False):
        try:
            rows = list(csv.DictReader(_io.StringIO(text), delimiter="\t" if suffix == ".tsv" else ","))
        except csv.Error as e:
            raise UserError(f"{path}: invalid CSV ({_short(e)})") from e
        if len(rows) != 1:
            raise UserError(f"{path}: a CSV record must have a header and exactly one row; got {len(rows)} rows")
        row = {k: v for k, v in rows[0].items() if k is not None}
        fields, warnings = validate_record(row, path)
        return fields, warnings + _age_range_warning(fields, path)
    raise UserError(f"{path}: unknown record format (expected a FHIR R4 Bundle, a JSON object or a one-row CSV)")


def _age_range_warning(fields: dict, path: Path) -> list[str]:
    age = fields.get("age")
    if age is not None and not MODEL_AGE_RANGE[0] <= age <= MODEL_AGE_RANGE[1]:
        return [f"{path}: age {age:.0f} lies outside the model's training range {MODEL_AGE_RANGE[0]}-"
                f"{MODEL_AGE_RANGE[1]}: the probability is an extrapolation"]
    return []


def _list(value) -> list:
    """A FHIR array field; a wrong JSON type (an object, a number) reads as empty instead of crashing."""
    return value if isinstance(value, list) else []


def _status(resource: dict, field: str) -> str:
    codes, words = _codes(resource.get(field))
    return next(iter(codes), words.strip())


def _date(text) -> dt.date | None:
    try:
        return dt.date.fromisoformat(str(text)[:10])
    except (TypeError, ValueError):
        return None


def _codes(concept) -> tuple[set[str], str]:
    if not isinstance(concept, dict):
        return set(), ""
    codings = _list(concept.get("coding"))
    codes = {str(c.get("code")) for c in codings if isinstance(c, dict)}
    words = " ".join([str(concept.get("text") or "")] + [str(c.get("display") or "") for c in codings
                                                        if isinstance(c, dict)])
    return codes, words.lower()


def parse_fhir_bundle(bundle: dict, path: Path, as_of: dt.date | None = None) -> tuple[dict, list[str]]:
    """Patient birthDate/gender, smoking Observations (LOINC 72166-2), pack-years, BMI, Conditions (honouring
    clinicalStatus / verificationStatus), FamilyMemberHistory.

    Nothing recorded after ``as_of`` (the scan date) is used, the age is taken at ``as_of``, and a lung cancer is
    never "personal cancer history": it is the outcome the model predicts, not an input.
    """
    entries = bundle.get("entry") or []
    if not isinstance(entries, list):
        raise UserError(f"{path}: Bundle.entry must be a list")
    resources = [e.get("resource") for e in entries if isinstance(e, dict) and isinstance(e.get("resource"), dict)]
    patients = [r for r in resources if r.get("resourceType") == "Patient"]
    warnings: list[str] = []
    raw: dict = {}
    dates = []
    latest: dict[str, tuple] = {}  # field -> (date, value): the most recent observation wins
    conditions = []
    later = 0
    for r in resources:
        rt = r.get("resourceType")
        when = _date(r.get("effectiveDateTime") or r.get("onsetDateTime") or r.get("recordedDate"))
        if when and as_of and when > as_of and rt in ("Observation", "Condition"):
            later += 1
            continue
        if when:
            dates.append(when)
        if rt == "Observation":
            codes, words = _codes(r.get("code"))
            value = None
            if isinstance(r.get("valueQuantity"), dict):
                value = r["valueQuantity"].get("value")
            elif "valueInteger" in r:
                value = r.get("valueInteger")
            elif isinstance(r.get("valueCodeableConcept"), dict):
                vc, vw = _codes(r["valueCodeableConcept"])
                value = next((c for c in vc if c in SNOMED_SMOKING), None) or vw
            elif "valueString" in r:
                value = r.get("valueString")
            elif "valueBoolean" in r:
                value = r.get("valueBoolean")
            if _status(r, "status") in ("entered-in-error", "cancelled"):
                continue
            if PACK_YEARS_LOINC in codes:
                codes = codes | {LOINC["pack_years"]}
            for name, code in LOINC.items():
                if code in codes:
                    key = (when or dt.date.min)
                    if name not in latest or key >= latest[name][0]:
                        latest[name] = (key, value)
        elif rt == "Condition":
            if _status(r, "verificationStatus") in NOT_ESTABLISHED:
                continue
            codes, words = _codes(r.get("code"))
            conditions.append((codes, words, _status(r, "clinicalStatus")))
        elif rt == "FamilyMemberHistory":
            if _status(r, "status") == "entered-in-error":
                continue
            for c in _list(r.get("condition")):
                codes, words = _codes(c.get("code") if isinstance(c, dict) else None)
                if codes & SNOMED_LUNG_CANCER or ("lung" in words and any(w in words for w in CANCER_WORDS)):
                    raw["family_history_lung_cancer"] = True
    if patients:
        p = patients[0]
        if p.get("gender") is not None:
            raw["sex"] = p.get("gender")
        birth = _date(p.get("birthDate"))
        if p.get("birthDate") is not None and birth is None:
            raise UserError(f"{path}: Patient.birthDate {p.get('birthDate')!r} is not a date")
        if birth:
            died = _date(p.get("deceasedDateTime"))
            if as_of is not None:
                ref = as_of
                if died and died < as_of:
                    warnings.append(f"{path}: the patient died on {died}, before the scan date {as_of}: "
                                    "is this the right record?")
            else:
                ref = _date(p.get("deceasedDateTime")) or (max(dates) if dates else REF_DATE)
                warnings.append(f"{path}: no scan date (DICOM StudyDate or --as-of): age taken at the record's "
                                f"latest date {ref}")
            age = (ref - birth).days / 365.25
            if age < 0:
                raise UserError(f"{path}: Patient.birthDate {birth} lies after "
                                f"{'the scan date' if as_of else 'the record' + chr(39) + 's latest date'} {ref}")
            raw["age"] = round(age, 2)
    else:
        warnings.append(f"{path}: Bundle has no Patient resource (age and sex missing)")
    for name, (_, value) in latest.items():
        if name in ("height", "weight"):
            continue
        raw[name] = value
    if "bmi" not in raw and "height" in latest and "weight" in latest:
        try:
            h, w = float(latest["height"][1]) / 100.0, float(latest["weight"][1])
            raw["bmi"] = w / (h * h)
        except (TypeError, ValueError, ZeroDivisionError):
            pass
    if later:
        warnings.append(f"{path}: {later} observation(s)/condition(s) dated after the scan ({as_of}) left out")
    if conditions:
        current = [(c, w) for c, w, st in conditions if st not in NOT_CURRENT]
        raw["copd"] = any(c & SNOMED_COPD or "chronic obstructive" in w for c, w in current)
        raw["emphysema"] = any(c & SNOMED_EMPHYSEMA or "emphysema" in w for c, w in current)
        raw["personal_cancer_history"] = any(
            any(x in w for x in CANCER_WORDS) and "suspected" not in w and not _is_lung_cancer(c, w)
            for c, w, _ in conditions)
    fields, more = validate_record(raw, path)
    return fields, warnings + more


def _is_lung_cancer(codes: set[str], words: str) -> bool:
    return bool(codes & SNOMED_LUNG_CANCER) or (("lung" in words or "bronch" in words)
                                                and any(x in words for x in CANCER_WORDS))


def fhir_bundle(patient_id: str, rec: dict) -> dict:
    """A minimal, valid FHIR R4 collection Bundle for a synthetic patient (fields as in RECORD_FIELDS)."""
    when = REF_DATE.isoformat()
    birth = dt.date(REF_DATE.year - int(rec["age"]), REF_DATE.month, REF_DATE.day) - dt.timedelta(
        days=int(round((rec["age"] - int(rec["age"])) * 365.25)))
    subject = {"reference": f"urn:uuid:{patient_id}"}
    entries = [{"fullUrl": f"urn:uuid:{patient_id}", "resource": {
        "resourceType": "Patient", "id": patient_id, "gender": rec["sex"], "birthDate": birth.isoformat()}}]

    def obs(i, code, system, display, value):
        return {"fullUrl": f"urn:uuid:{patient_id}-obs{i}", "resource": {
            "resourceType": "Observation", "id": f"{patient_id}-obs{i}", "status": "final",
            "code": {"coding": [{"system": system, "code": code, "display": display}], "text": display},
            "subject": subject, "effectiveDateTime": when, **value}}

    smoking_code = {"never": ("266919005", "Never smoker"), "former": ("8517006", "Former smoker"),
                    "current": ("449868002", "Smokes tobacco daily")}[rec["smoking_status"]]
    entries.append(obs(1, "72166-2", "http://loinc.org", "Tobacco smoking status", {"valueCodeableConcept": {
        "coding": [{"system": "http://snomed.info/sct", "code": smoking_code[0], "display": smoking_code[1]}],
        "text": smoking_code[1]}}))
    entries.append(obs(2, "39156-5", "http://loinc.org", "Body Mass Index",
                       {"valueQuantity": {"value": round(rec["bmi"], 1), "unit": "kg/m2"}}))
    entries.append(obs(3, "82589-3", "http://loinc.org", "Highest level of education",
                       {"valueInteger": int(rec["education"])}))
    if rec["smoking_status"] != "never":
        entries.append(obs(4, "401201003", "http://snomed.info/sct", "Cigarette pack-years",
                           {"valueQuantity": {"value": round(rec["pack_years"], 1), "unit": "{pack-years}"}}))
        entries.append(obs(5, "230056004", "http://snomed.info/sct", "Cigarette consumption",
                           {"valueQuantity": {"value": round(rec["cigs_per_day"], 1), "unit": "/d"}}))
        entries.append(obs(6, "mmapps-smoking-years", "urn:mmapps:medical", "Years smoked",
                           {"valueQuantity": {"value": round(rec["smoking_years"], 1), "unit": "a"}}))
        entries.append(obs(7, "mmapps-years-since-quit", "urn:mmapps:medical", "Years since quitting",
                           {"valueQuantity": {"value": round(rec["years_quit"], 1), "unit": "a"}}))
    conds = []
    if rec["copd"]:
        conds.append(("13645005", "Chronic obstructive lung disease (disorder)"))
    if rec["personal_cancer_history"]:
        conds.append(("363346000", "Malignant neoplastic disease (disorder)"))
    if not conds:
        conds.append(("38341003", "Hypertensive disorder (disorder)"))  # a Condition list that says "no COPD"
    for i, (code, text) in enumerate(conds):
        entries.append({"fullUrl": f"urn:uuid:{patient_id}-cond{i}", "resource": {
            "resourceType": "Condition", "id": f"{patient_id}-cond{i}", "subject": subject, "recordedDate": when,
            "code": {"coding": [{"system": "http://snomed.info/sct", "code": code, "display": text}], "text": text}}})
    if rec["family_history_lung_cancer"]:
        entries.append({"fullUrl": f"urn:uuid:{patient_id}-fmh", "resource": {
            "resourceType": "FamilyMemberHistory", "id": f"{patient_id}-fmh", "status": "completed",
            "patient": subject, "relationship": {"coding": [{"code": "PRN", "display": "parent"}]},
            "condition": [{"code": {"coding": [{"system": "http://snomed.info/sct", "code": "363358000",
                                                "display": "Malignant tumor of lung"}]}}]}})
    return {"resourceType": "Bundle", "id": f"bundle-{patient_id}", "type": "collection", "entry": entries}
