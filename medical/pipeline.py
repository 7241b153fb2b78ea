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

from .io import load_ct, load_mri, read_record
from .models import ModelConfig, build_model, record_vector
from .preprocess import preprocess_ct, preprocess_mri

DATA_DIR = data_dir() / "medical"  # bundled model, model card and sample patient
DEFAULT_MODEL = DATA_DIR / "model.pt"
RISK_THRESHOLDS = (0.10, 0.70)  # BTS guideline use of Brock: < 10 % low, 10-70 % intermediate, > 70 % high


def risk_category(p: float) -> str:
    return "low" if p < RISK_THRESHOLDS[0] else ("high" if p > RISK_THRESHOLDS[1] else "intermediate")


class Pipeline(CorePipeline):
    """A trained medical model plus its preprocessing, rebuilt from one checkpoint file."""

    scenario = "medical"
    config_class = ModelConfig

    @classmethod
    def build_model(cls, config: ModelConfig):
        return build_model(config)

    # -- the three steps -----------------------------------------------------------------------------
    def preprocess(self, study=None, record=None, mri=None) -> dict:
        """Read and validate the inputs.

        Args:
            study: CT as a DICOM series folder, DICOM file or NIfTI file (or None).
            record: FHIR R4 Bundle, flat JSON or one-row CSV (or None).
            mri: MRI as a DICOM series/file or NIfTI (or None).
        Returns:
            {"sample": {"ct": {"grid": [2,g,g,g], "crop": [1,c,c,c], "geom": [5]}, "mri": [1,m,m,m],
            "record": [2*F]} (present modalities only), "views": arrays for the pictures, "warnings": [...]}.
        """
        warnings: list[str] = []
        sample: dict = {}
        views: dict = {"study": study}
        if study is None and record is None and mri is None:
            raise UserError("nothing to predict from: give a CT study, a record and/or an MRI")
        if study is not None:
            vol = load_ct(study)
            warnings += vol.warnings
            if "ct" in self.config.modalities:
                ct = preprocess_ct(vol, self.config.ct_grid, self.config.ct_crop)
                sample["ct"] = {k: ct[k] for k in ("grid", "crop", "geom")}
                views.update(ct=ct["grid"][0].numpy(), crop=ct["crop"][0].numpy(), candidate=ct["_candidate"],
                             spacing=vol.spacing, shape=vol.array.shape, hu=vol.array)
            else:
                warnings.append(f"{study}: this model does not use CT; the study was read and ignored")
        if mri is not None:
            vol = load_mri(mri)
            warnings += vol.warnings
            if "mri" in self.config.modalities:
                sample["mri"] = preprocess_mri(vol, self.config.mri_grid)
            else:
                warnings.append(f"{mri}: this model does not use MRI; ignored")
        if record is not None:
            fields, w = read_record(record)
            warnings += w
            views["record"] = fields
            if "record" in self.config.modalities:
                sample["record"] = torch.from_numpy(record_vector(fields))
            else:
                warnings.append(f"{record}: this model does not use the record; ignored")
        for m in ("ct", "mri", "record"):
            if m in self.config.modalities and m not in sample:
                warnings.append(f"{m} missing: predicted without it")
        if not sample:
            raise UserError("none of the given inputs is used by this model (it uses "
                            f"{', '.join(self.config.modalities)})")
        return {"sample": sample, "views": views, "warnings": warnings}

    def _forward(self, inputs: dict) -> dict:
        """Args: the ``preprocess`` dict. Returns: {"batch": the collated batch of 1, "outputs": head logits
        ({"malignancy": [1,1], aux heads}), "weights": fusion weights per modality [1], "masked": probability
        change when each modality is masked [1]}."""
        from mmapps.data import collate_samples, move_to
        from mmapps.explain import masked_contributions

        batch = move_to(collate_samples([inputs["sample"]]), self.device)
        out = self.model(batch)
        check_finite_output(out["outputs"], "medical model output")
        masked = masked_contributions(self.model, batch, "malignancy")
        return {"batch": batch, "outputs": out["outputs"], "weights": out["weights"], "masked": masked}

    def postprocess(self, outputs: dict, inputs: dict) -> dict:
        """Raw outputs -> the JSON-ready result of DESIGN's ``predict`` contract."""
        sample = inputs["sample"]
        p = float(torch.sigmoid(outputs["outputs"]["malignancy"].reshape(-1))[0])
        weights = {m: float(w[0]) for m, w in outputs["weights"].items() if m in sample}
        result = {
            "probability": round(p, 4),
            "risk_category": risk_category(p),
            "modalities": {m: m in sample for m in ("ct", "mri", "record")},
            "contributions": {"masked_delta": {m: round(float(v[0]), 4) for m, v in outputs["masked"].items()},
                              "fusion_weights": {m: round(v, 4) for m, v in weights.items()}},
            "warnings": list(inputs["warnings"]),
            "report": None,
        }
        aux = self._aux(outputs["outputs"]) if "ct" in sample else {}
        if aux:
            result["ct_findings"] = aux
        return result

    # -- public API ----------------------------------------------------------------------------------
    def predict(self, study=None, record=None, mri=None, report: str | Path | None = None) -> dict:
        """Malignancy risk of one patient.

        Args:
            study, record, mri: as in ``preprocess`` (any may be None, not all).
            report: folder for the PNG report, or None.
        Returns:
            {"probability", "risk_category", "modalities", "contributions", "warnings", "report", ...}.
        """
        inputs = self.preprocess(study, record, mri)
        with torch.no_grad():
            outputs = self._forward(inputs)
        result = self.postprocess(outputs, inputs)
        if report is not None:
            result["report"] = str(self.write_report(report, inputs, outputs, result))
        return result

    def write_report(self, folder, inputs: dict, outputs: dict, result: dict) -> Path:
        """The PNG report (slices, Grad-CAM, contributions) in ``folder``; returns its path."""
        from .viz import write_report

        views = dict(inputs["views"])
        cam = None
        if "ct" in inputs["sample"]:
            cam = self.grad_cam(outputs["batch"])
            views["crop_cam"] = self.grad_cam(outputs["batch"], "crop")
        return write_report(Path(folder), views, cam, result, views.get("study"))

    def _aux(self, o: dict) -> dict:
        """Auxiliary head read-outs (the CT features the model thinks it sees)."""
        if "nodule_size" not in o or not self.config.aux_heads:
            return {}
        from .models import NODULE_TYPES

        return {"nodule_size_mm": round(float(10 * 2 ** o["nodule_size"].reshape(-1)[0]), 1),
                "nodule_type": NODULE_TYPES[int(o["nodule_type"][0].argmax())],
                "spiculation_probability": round(float(torch.sigmoid(o["spiculation"].reshape(-1)[0])), 3),
                "upper_lobe_probability": round(float(torch.sigmoid(o["upper_lobe"].reshape(-1)[0])), 3),
                "emphysema_probability": round(float(torch.sigmoid(o["emphysema"].reshape(-1)[0])), 3)}

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
