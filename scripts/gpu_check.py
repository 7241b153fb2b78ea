"""Run each scenario's CLI on the CPU and on CUDA and compare the answers: the check for machines with a GPU.

CI has no GPU, and `--device auto` (every command's default) picks CUDA wherever one is present, so this is what a
user with a GPU runs first. Each step is one `mmapps` call, as a user would type it; the same call on both devices
must give the same answer (to float tolerance), and training must run on CUDA and give a checkpoint that loads.

    python scripts/gpu_check.py --out /tmp/gpu_check          # report.json, report.md and pictures in --out

Steps whose packages are missing are reported as skipped (e.g. the assistant's speech path without faster-whisper).
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
MEDICAL_SAMPLE = ROOT / "data/medical/samples/patient"
DRIVING_SAMPLES = ROOT / "data/driving/samples"
ASSISTANT_TEXTS = [s["text"] for s in json.loads((ROOT / "data/assistant/samples/samples.json").read_text())]
PROB_TOL = 2e-3  # GPU convolutions (TF32, other reduction orders) differ from the CPU's in the 4th digit
BOX_TOL = 0.02   # metres / radians
GPU = "cuda"     # --cpu-only sets "cpu": tests this script on a machine without a GPU

# a few typed rows per intent: enough for a training smoke run of the assistant (the real data stays outside the repo)
ASSISTANT_ROWS = [(f"play some {g} by {a}", "PlayMusic", ["O", "O", "B-genre", "O", "B-artist"])
                  for g in ("jazz", "rock", "blues", "soul", "pop") for a in ("adele", "queen", "prince")] + \
                 [(f"what is the weather in {c} {d}", "GetWeather", ["O", "O", "O", "O", "O", "B-city", "B-timeRange"])
                  for c in ("boston", "paris", "denver", "oslo", "lima") for d in ("today", "tomorrow", "tonight")] + \
                 [(f"add this {t} to my {p} playlist", "AddToPlaylist", ["O", "O", "B-music_item", "O", "B-playlist_owner",
                                                                       "B-playlist", "O"])
                  for t in ("song", "track", "tune") for p in ("workout", "party", "sleep", "focus", "road")]


def mmapps(args: list[str], log: list, timeout: int = 600) -> tuple[int, str, float]:
    t0 = time.perf_counter()
    try:
        p = subprocess.run([sys.executable, "-m", "mmapps", *map(str, args)], capture_output=True, text=True,
                           timeout=timeout, cwd=ROOT)
        rc, out, err = p.returncode, p.stdout, p.stderr
    except subprocess.TimeoutExpired as e:
        rc, out, err = 124, e.stdout or "", f"timed out after {timeout} s"
    wall = time.perf_counter() - t0
    log.append({"cmd": "mmapps " + " ".join(map(str, args)), "rc": rc, "wall_s": round(wall, 2),
                "stderr_tail": (err or "")[-1500:]})
    print(f"[{rc}] {wall:6.1f} s  mmapps {' '.join(map(str, args))[:150]}", flush=True)
    if rc != 0:
        print((err or "")[-1500:], flush=True)
    return rc, out, wall


def json_lines(text: str) -> list[dict]:
    return [json.loads(line) for line in text.splitlines() if line.strip().startswith("{")]


def on_both(args: list[str], log: list, **kw) -> dict:
    """The same call with --device cpu and --device cuda: their JSON answers and wall times."""
    res = {}
    for key, dev in (("cpu", "cpu"), ("cuda", GPU)):
        rc, out, wall = mmapps([*[str(a).replace("{dev}", key) for a in args], "--device", dev, "--json"], log, **kw)
        res[key] = {"rc": rc, "wall_s": round(wall, 2), "json": json_lines(out) if rc == 0 else None}
    return res


def medical(out: Path, workers: int, log: list) -> dict:
    r: dict = {}
    both = on_both(["medical", "predict", MEDICAL_SAMPLE / "ct", "--record", MEDICAL_SAMPLE / "record.json",
                    "--report", out / "medical_{dev}"], log)
    r["predict"] = {d: {"rc": v["rc"], "wall_s": v["wall_s"]} for d, v in both.items()}
    if all(v["json"] for v in both.values()):
        a, b = both["cpu"]["json"][0], both["cuda"]["json"][0]
        r["predict"]["probability"] = [a["probability"], b["probability"]]
        r["predict"]["same"] = (abs(a["probability"] - b["probability"]) <= PROB_TOL
                                and [n["center_mm"] for n in a["nodules"]] == [n["center_mm"] for n in b["nodules"]])
    cohort = out / "med_cohort"
    rc, _, _ = mmapps(["medical", "synth", cohort, "--patients", 40, "--seed", 2468, "--workers", workers], log)
    if rc == 0:
        both = on_both(["medical", "evaluate", cohort, "--workers", workers], log)
        r["evaluate"] = {d: {"rc": v["rc"], "wall_s": v["wall_s"],
                             "auroc": (v["json"][-1].get("auroc") if v["json"] else None)} for d, v in both.items()}
        ok = all(v["auroc"] is not None for v in r["evaluate"].values())
        r["evaluate"]["same"] = ok and abs(r["evaluate"]["cpu"]["auroc"] - r["evaluate"]["cuda"]["auroc"]) <= PROB_TOL
        ckpt = out / "med_model/model.pt"
        rc, _, wall = mmapps(["medical", "train", cohort, "--out", ckpt, "--epochs", 3, "--workers", workers,
                              "--device", GPU, "--json"], log)
        r["train"] = {"rc": rc, "wall_s": round(wall, 2)}
        if rc == 0:
            rc, o, _ = mmapps(["medical", "predict", MEDICAL_SAMPLE / "ct", "--record", MEDICAL_SAMPLE / "record.json",
                               "--model", ckpt, "--device", GPU, "--json"], log)
            r["train"]["predict_with_it"] = {"rc": rc, "probability": json_lines(o)[0]["probability"] if rc == 0 else None}
    return r


def driving(out: Path, workers: int, log: list) -> dict:
    r: dict = {}
    both = on_both(["driving", "perceive", DRIVING_SAMPLES, "--out", out / "driving_{dev}"], log)
    r["perceive"] = {d: {"rc": v["rc"], "wall_s": v["wall_s"],
                         "latency_ms": [f.get("latency_ms") for f in v["json"]] if v["json"] else None}
                     for d, v in both.items()}
    if all(v["json"] for v in both.values()):
        diffs, same = [], True  # (|cpu - cuda|, frame, object, field)
        for fa, fb in zip(both["cpu"]["json"], both["cuda"]["json"]):
            da, db = fa["objects"], fb["objects"]
            same &= len(da) == len(db) and all(x["class"] == y["class"] for x, y in zip(da, db))
            for i, (x, y) in enumerate(zip(da, db)):
                diffs += [(abs(x["box3d"][k] - y["box3d"][k]), fa["frame"], i, k) for k in x["box3d"]]
                diffs.append((abs(x["score"] - y["score"]), fa["frame"], i, "score"))
        worst = max(diffs, default=(0.0, None, None, None))
        r["perceive"]["objects"] = [len(f["objects"]) for f in both["cpu"]["json"]]
        r["perceive"]["max_abs_diff"] = {"value": round(worst[0], 4), "frame": worst[1], "object": worst[2],
                                         "field": worst[3]}
        r["perceive"]["same"] = bool(same and worst[0] <= BOX_TOL)
    both = on_both(["driving", "evaluate", DRIVING_SAMPLES, "--no-ablations"], log)
    r["evaluate"] = {d: {"rc": v["rc"], "wall_s": v["wall_s"]} for d, v in both.items()}
    if all(v["json"] for v in both.values()):
        r["evaluate"]["same"] = both["cpu"]["json"][-1] == both["cuda"]["json"][-1]
    ckpt = out / "drv_model/model.pt"
    rc, _, wall = mmapps(["driving", "train", DRIVING_SAMPLES, "--val", DRIVING_SAMPLES, "--out", ckpt, "--epochs", 2,
                          "--set", "train.batch_size=2", "--set", f"train.num_workers={min(workers, 4)}",
                          "--device", GPU, "--json"], log)
    r["train"] = {"rc": rc, "wall_s": round(wall, 2)}
    if rc == 0:
        rc, o, _ = mmapps(["driving", "perceive", DRIVING_SAMPLES, "--model", ckpt, "--device", GPU, "--json"], log)
        r["train"]["perceive_with_it"] = {"rc": rc}
    return r


def assistant(out: Path, log: list) -> dict:
    r: dict = {"understand_text": []}
    for text in ASSISTANT_TEXTS:
        both = on_both(["assistant", "understand", "--text", text], log)
        row = {d: {"rc": v["rc"], "wall_s": v["wall_s"]} for d, v in both.items()}
        if all(v["json"] for v in both.values()):
            a, b = both["cpu"]["json"][0], both["cuda"]["json"][0]
            row["intent"] = [a["intent"], b["intent"]]
            row["same"] = (a["intent"] == b["intent"] and a["slots"] == b["slots"]
                           and abs(a["confidence"] - b["confidence"]) <= PROB_TOL)
        r["understand_text"].append(row)
    manifest = out / "assistant_rows.jsonl"
    manifest.write_text("".join(json.dumps({"text": t, "intent": i, "tags": g}) + "\n" for t, i, g in ASSISTANT_ROWS))
    both = on_both(["assistant", "evaluate", manifest], log)
    r["evaluate"] = {d: {"rc": v["rc"], "wall_s": v["wall_s"],
                         "intent_accuracy": v["json"][-1].get("intent_accuracy") if v["json"] else None}
                     for d, v in both.items()}
    ckpt = out / "asst_model/model.pt"
    rc, _, wall = mmapps(["assistant", "train", manifest, "--out", ckpt, "--epochs", 2, "--set", f'train.device="{GPU}"',
                          "--json"], log)
    r["train"] = {"rc": rc, "wall_s": round(wall, 2)}
    if rc == 0:
        rc, o, _ = mmapps(["assistant", "understand", "--text", ASSISTANT_TEXTS[0], "--model", ckpt, "--device", GPU,
                           "--json"], log)
        r["train"]["understand_with_it"] = {"rc": rc}
    try:
        import faster_whisper  # noqa: F401  (the speech path: Whisper itself always runs on the CPU, int8)
    except ImportError:
        r["understand_audio"] = "skipped: faster-whisper is not installed here"
    else:
        both = on_both(["assistant", "understand", "--audio", ROOT / "data/assistant/samples/sample1.wav"], log)
        r["understand_audio"] = {d: {"rc": v["rc"], "wall_s": v["wall_s"],
                                     "intent": v["json"][0]["intent"] if v["json"] else None} for d, v in both.items()}
    return r


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1))
    ap.add_argument("--only", default="medical,driving,assistant")
    ap.add_argument("--cpu-only", action="store_true", help="both sides on the CPU (tests this script without a GPU)")
    a = ap.parse_args()
    import torch

    global GPU
    GPU = "cpu" if a.cpu_only else "cuda"
    if not a.cpu_only and not torch.cuda.is_available():
        print("error: no CUDA device: this check compares the CPU with a GPU", file=sys.stderr)
        return 2
    a.out.mkdir(parents=True, exist_ok=True)
    log: list = []
    report = {"gpu": torch.cuda.get_device_name(0) if GPU == "cuda" else None, "torch": torch.__version__, "python": sys.version.split()[0]}
    for name in a.only.split(","):
        t0 = time.perf_counter()
        try:
            report[name] = {"medical": lambda: medical(a.out, a.workers, log),
                            "driving": lambda: driving(a.out, a.workers, log),
                            "assistant": lambda: assistant(a.out, log)}[name]()
        except Exception as e:  # report and go on: one run should show every scenario's state
            report[name] = {"crashed": f"{type(e).__name__}: {e}"}
        report[name]["check_s"] = round(time.perf_counter() - t0, 1)
        (a.out / "report.json").write_text(json.dumps({**report, "calls": log}, indent=1))
    failed = [c for c in log if c["rc"] != 0]
    print(json.dumps({k: v for k, v in report.items()}, indent=1))
    print(f"{len(log)} calls, {len(failed)} failed")
    shutil.rmtree(a.out / "med_cohort", ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
