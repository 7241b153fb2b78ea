"""Load checkpoint -> read study/record -> preprocess -> predict -> explain. The Python API.

    from medical import Pipeline
    pipe = Pipeline.from_checkpoint()                       # bundled model
    result = pipe.predict(study="ct_dir/", record="patient.json", mri="t1.nii")
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from mmapps.errors import UserError
from mmapps.paths import data_dir
from mmapps.pipeline import Pipeline as CorePipeline
from mmapps.pipeline import check_finite_output

from .io import Volume, load_ct, load_mri, read_record
from .models import ModelConfig, build_model, record_vector
from .preprocess import preprocess_mri

DATA_DIR = data_dir() / "medical"  # bundled model, model card and sample patient
DEFAULT_MODEL = DATA_DIR / "model.pt"
TRAINING_PREVALENCE = 0.30  # the synthetic cohort's malignancy share, when the checkpoint does not record its own


class Pipeline(CorePipeline):
    """A trained medical model plus its preprocessing, rebuilt from one checkpoint file."""

    scenario = "medical"
    config_class = ModelConfig

    def __init__(self, model, config, meta: dict | None = None, device: str = "auto", path: str | None = None):
        super().__init__(model, config, meta, device=device, path=path)
        prevalence = self.meta.get("prevalence", TRAINING_PREVALENCE)
        if isinstance(prevalence, bool) or not isinstance(prevalence, (int, float)) or not 0 < prevalence < 1:
            from mmapps.checkpoint import CheckpointError

            raise CheckpointError(f"{path or 'checkpoint'}: meta 'prevalence' must be a number in (0, 1); "
                                  f"got {prevalence!r}")
        from mmapps.calibration import LogitScaling

        self.calibration = LogitScaling.from_meta(self.meta, path)  # identity for an uncalibrated checkpoint

    @classmethod
    def build_model(cls, config: ModelConfig):
        return build_model(config)

    # -- the three steps -----------------------------------------------------------------------------
    def preprocess(self, study=None, record=None, mri=None, as_of=None) -> dict:
        """Read and validate the inputs, gate the scans, find the nodules.

        Args:
            study: CT as a DICOM series folder, DICOM file or NIfTI file, or a ``medical.io.Volume`` already in
                memory (HU), or None.
            record: FHIR R4 Bundle, flat JSON or one-row CSV (or None).
            mri: MRI as a DICOM series/file or NIfTI (or None).
            as_of: the scan date (``datetime.date``) for the record's age when the CT header has no StudyDate.
        Returns:
            {"samples": one model sample per reported nodule ({"ct": {"grid": [2,g,g,g], "crop": [1,c,c,c],
            "geom": [5]}, "mri": [1,m,m,m], "record": [2*F]}, present modalities only; empty when nothing can be
            scored), "assessable", "reasons", "nodules", "analysis" (the CT's gate and lung grid), "warnings",
            "modalities", "views"}.
        """
        from .lungs import check_chest_mri
        from .preprocess import analyse_ct, ct_inputs

        if study is None and record is None and mri is None:
            raise UserError("nothing to predict from: give a CT study, a record and/or an MRI")
        warnings: list[str] = []
        reasons: list[str] = []
        shared: dict = {}
        ct_list: list[dict] = []
        analysis = None
        ct_tags = None
        vol = study if isinstance(study, Volume) else load_ct(study) if study is not None else None
        if isinstance(study, Volume):
            study = study.source
        if vol is not None:
            warnings += vol.warnings
            ct_tags = vol.tags
            as_of = _study_date(vol.tags.get("StudyDate")) or as_of
        if record is not None:  # before the gate: a broken record is an error whatever the scan shows
            fields, w = read_record(record, as_of)
            warnings += w
            if "record" in self.config.modalities:
                shared["record"] = torch.from_numpy(record_vector(fields))
            else:
                warnings.append(f"{record}: this model does not use the record; ignored")
        if vol is not None:
            analysis = analyse_ct(vol)
            scan = analysis["scan"]
            warnings += scan.warnings
            if not scan.assessable:
                reasons += [f"CT {study}: {r}" for r in scan.reasons]
            elif "ct" in self.config.modalities:
                ct_list = ct_inputs(analysis, self.config.ct_grid, self.config.ct_crop, self.config.measured)
            else:
                warnings.append(f"{study}: this model does not use CT; nodules measured, not scored by the CT")
        mri_ok = False
        if mri is not None:
            mvol = load_mri(mri)
            warnings += mvol.warnings
            why, w = check_chest_mri(mvol, ct_tags)
            warnings += w
            if why:
                note = [f"MRI {mri}: {r}" for r in why]
                if study is None:
                    reasons += note
                else:
                    warnings += [n + "; the MRI is not used" for n in note]
            elif "mri" in self.config.modalities:
                shared["mri"] = preprocess_mri(mvol, self.config.mri_grid)
                mri_ok = True
            else:
                warnings.append(f"{mri}: this model does not use MRI; ignored")
        assessable = not reasons
        nodules = analysis["nodules"] if analysis is not None and assessable else []
        if study is None and record is not None and mri is None:
            warnings.append("no CT: no nodule findings; the probability rests on the record alone")
        samples: list[dict] = []
        has_ct_finding = analysis is None or bool(nodules)  # a CT was read and found nothing: nothing to score
        if assessable and has_ct_finding:
            samples = [{**shared, "ct": c} for c in ct_list] if ct_list else ([dict(shared)] if shared else [])
        if assessable and not samples and has_ct_finding:
            raise UserError("none of the given inputs is used by this model (it uses "
                            f"{', '.join(self.config.modalities)})")
        for m in ("ct", "mri", "record"):
            if m in self.config.modalities and samples and m not in samples[0]:
                warnings.append(f"{m} missing: predicted without it")
        return {"samples": samples, "assessable": assessable, "reasons": reasons, "nodules": nodules,
                "analysis": analysis, "warnings": warnings, "study": study,
                "patient_id": (ct_tags or {}).get("PatientID") or None,
                "as_of": as_of.isoformat() if as_of else None,
                "modalities": {"ct": analysis is not None and assessable and bool(ct_list),
                               "mri": mri_ok, "record": "record" in shared}}

    def _forward(self, inputs: dict) -> dict:
        """Args: the ``preprocess`` dict. Returns: {"batch": the collated samples (one per nodule, N),
        "outputs": head logits ({"malignancy": [N,1], aux heads}), "weights": fusion weights per modality [N],
        "masked": probability change when each modality is masked [N]}; empty when there is nothing to score."""
        from mmapps.data import collate_samples, move_to
        from mmapps.explain import masked_contributions

        if not inputs["samples"]:
            return {}
        batch = move_to(collate_samples(inputs["samples"]), self.device)
        context: dict = {"batch": batch}
        features, present = self.model.encode(batch, context)  # once: the masked variants reuse it
        out = self.model.decode(features, present, dict(context))
        check_finite_output(out["outputs"], "medical model output")
        masked = masked_contributions(self.model, batch, "malignancy", encoded=(features, context))
        return {"batch": batch, "outputs": out["outputs"], "weights": out["weights"], "masked": masked}

    def postprocess(self, outputs: dict, inputs: dict) -> dict:
        """Raw outputs -> the JSON-ready result of DESIGN's ``predict`` contract (extended by the gate)."""
        from .clinical import RISK_BASIS, lung_rads, recommendation, risk_category

        nodules = [dict(n) for n in inputs["nodules"]]
        result: dict = {"assessable": inputs["assessable"], "reasons": list(inputs["reasons"]), "probability": None}
        contributions: dict = {}
        if outputs:
            probs = torch.sigmoid(self.calibration(outputs["outputs"]["malignancy"].reshape(-1).float())).tolist()
            for n, p in zip(nodules, probs):
                n["probability"] = round(float(p), 4)
            k = int(np.argmax(probs))  # the study's probability is its most suspicious nodule's
            result["probability"] = round(float(probs[k]), 4)
            sample = inputs["samples"][k]
            contributions = {
                "masked_delta": {m: round(float(v[k]), 4) for m, v in outputs["masked"].items()},
                "fusion_weights": {m: round(float(w[k]), 4) for m, w in outputs["weights"].items() if m in sample}}
            outputs["index"] = k
        category = risk_category(result["probability"], inputs["assessable"],
                                 has_nodule=bool(nodules) or inputs["analysis"] is None)
        result["risk_category"] = category
        result["recommendation"] = recommendation(category)
        result["risk_basis"] = RISK_BASIS
        result["calibration"] = {"prevalence": float(self.meta.get("prevalence", TRAINING_PREVALENCE)),
                                 "method": "platt" if self.calibration.n else "none",
                                 "fitted_on": self.calibration.fitted_on or None,
                                 "note": "probabilities are calibrated to the training cohort's malignancy share; "
                                         "screen-detected nodules are about 1-5 % malignant"}
        analysis = inputs["analysis"]
        if analysis is not None and inputs["assessable"]:
            result["lung_rads"] = lung_rads(nodules)
            stats = analysis["scan"].stats
            result["ct_measurements"] = {k: stats.get(k) for k in ("lung_volume_ml", "lung_coverage_mm",
                                                                   "emphysema_fraction", "partial_coverage")}
        # detection_score: the false-candidate classifier's P(nodule) (reported from its threshold, 0.07), so a reader
        # sees how sure the detector was; fitted on synthetic scans, it is a ranking, not a calibrated probability
        result["nodules"] = [{k: n[k] for k in ("center_mm", "center_voxel", "diameter_mm", "type", "spiculation",
                                                "upper_lobe", "probability", "detection_score", "solid_fraction",
                                                "spiculation_score")
                              if k in n} for n in nodules]
        for n in result["nodules"]:
            n.setdefault("probability", None)
        result["modalities"] = inputs["modalities"]
        result["patient_id"] = inputs.get("patient_id")
        result["as_of"] = inputs.get("as_of")  # the scan date the record was read at
        result["contributions"] = contributions
        result["warnings"] = list(inputs["warnings"])
        result["report"] = None
        return result

    # -- public API ----------------------------------------------------------------------------------
    def predict(self, study=None, record=None, mri=None, report: str | Path | None = None, as_of=None) -> dict:
        """Malignancy risk of one patient.

        Args:
            study, record, mri: as in ``preprocess`` (any may be None, not all).
            report: folder for the PNG report, or None.
            as_of: scan date for the record's age when the CT has no StudyDate (``datetime.date`` or None).
        Returns:
            {"assessable", "reasons", "probability" (None when not assessable or no nodule), "risk_category",
            "lung_rads" (when a CT was read), "nodules", "modalities", "contributions", "warnings", "report", ...}.
        """
        inputs = self.preprocess(study, record, mri, as_of)
        with torch.no_grad():
            outputs = self._forward(inputs)
        result = self.postprocess(outputs, inputs)
        if report is not None:
            result["report"] = str(self.write_report(report, inputs, outputs, result))
        return result

    def write_report(self, folder, inputs: dict, outputs: dict, result: dict) -> Path:
        """The PNG report (every nodule on its axial slice, lung outline, Grad-CAM, contributions, or the
        not-assessable reasons) in ``folder``; returns its path."""
        from .viz import write_report

        cam = None
        if outputs and "ct" in outputs["batch"]:
            k = outputs.get("index", 0)
            one = {key: _take(v, k) for key, v in outputs["batch"].items()}
            cam = self.grad_cam(one, "crop")
        return write_report(Path(folder), inputs, cam, result)

    def grad_cam(self, batch: dict, branch: str = "grid") -> np.ndarray | None:
        """Grad-CAM of the malignancy logit on a CT branch (monai.visualize.GradCAM).

        Args:
            batch: a collated batch of one (``_forward``'s "batch").
            branch: "grid" (the lung-region CNN, map [g,g,g]) or "crop" (the nodule-centred CNN, map [c,c,c]).
        Returns:
            The map as a numpy array, or None when Grad-CAM fails (an explanation never breaks a prediction).
        """
        from monai.visualize import GradCAM

        model = self.model

        class CTOnly(torch.nn.Module):
            # GradCAM wants forward(x) -> logits; everything but this CT branch's input stays fixed.
            def __init__(self):
                super().__init__()
                self.fusion_model = model

            def forward(self, x):
                return model({**batch, "ct": {**batch["ct"], branch: x}})["outputs"]["malignancy"].reshape(-1, 1)

        wrapper = CTOnly().eval()
        layer = "grid_net.features" if branch == "grid" else "crop_net.features"
        import warnings as _w

        try:
            cam = GradCAM(nn_module=wrapper, target_layers="fusion_model.encoders.ct." + layer)
            with torch.enable_grad(), _w.catch_warnings():
                _w.simplefilter("ignore")  # hook notices from torch: not the user's business
                m = cam(x=batch["ct"][branch].detach().clone().requires_grad_(True), class_idx=0)
            return m[0, 0].detach().cpu().numpy()
        except Exception as e:  # an explanation must never break a prediction
            _w.warn(f"Grad-CAM failed: {e}")
            return None


def _study_date(text):
    """DICOM StudyDate (YYYYMMDD) -> date, or None."""
    import datetime as dt

    try:
        return dt.datetime.strptime(str(text or "").strip()[:8], "%Y%m%d").date()
    except ValueError:
        return None


def _take(value, k: int):
    """Sample k of a collated batch, kept as a batch of one."""
    if isinstance(value, dict):
        return {key: _take(v, k) for key, v in value.items()}
    if isinstance(value, torch.Tensor) and value.dim() > 0:
        return value[k:k + 1]
    if isinstance(value, list):
        return value[k:k + 1]
    return value
