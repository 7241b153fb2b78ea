"""Hostile inputs for `mmapps assistant`: every one must end in exit 2 with one `error:` line (see harness.py)."""
from __future__ import annotations

import json
import math
from pathlib import Path

from . import hostile as H
from .conftest import hostile_suite
from .harness import ROOT, Case

MODEL = ROOT / "data" / "assistant" / "model.pt"
GOOD_LINE = {"text": "play some jazz", "intent": "PlayMusic", "tags": ["O", "O", "B-genre"]}


def make_files(d: Path) -> None:
    H.fifo(d / "fifo.wav")
    H.dev_zero_link(d / "zero.wav")
    H.dev_zero_link(d / "zero.raw")
    H.sparse_file(d / "three_hours.raw", 3 * 3600 * 16000 * 2)
    H.wav(d / "short.wav", 0.06)
    H.wav(d / "tone192k.wav", 2.0, rate=192000, freq=1000.0)
    H.wav(d / "silent.wav", 2.0, freq=None)
    H.wav(d / "long.wav", 61.0, rate=8000)
    H.write(d / "noise.wav", bytes(range(256)) * 8)
    (d / "folder.wav").mkdir()
    # datasets
    snips = d / "snips_ff"
    H.write(snips / "seq.in", H.bad_utf8("play some jazz\n", 5))
    H.write(snips / "seq.out", "O O B-genre\n")
    H.write(snips / "label", "PlayMusic\n")
    H.write(d / "ff.jsonl", H.bad_utf8(json.dumps(GOOD_LINE) + "\n", 10))
    H.write(d / "deep_clinc.json", H.deep_json(100_000, key="val"))
    H.write(d / "deep.jsonl", H.deep_json(100_000) + "\n")
    for name, change in {"tags_int": {"tags": 5}, "tags_str": {"tags": "O O O"}, "tags_nested": {"tags": [[1], 2, None]},
                         "text_list": {"text": ["play", "jazz"]}, "text_dict": {"text": {"a": 1}},
                         "intent_list": {"intent": ["a"]}, "audio_int": {"audio": 5}}.items():
        H.write(d / f"{name}.jsonl", json.dumps({**GOOD_LINE, **change}) + "\n")
    H.write(d / "audio_zero.jsonl", json.dumps({**GOOD_LINE, "audio": str(d / "zero.wav")}) + "\n")
    H.write(d / "audio_fifo.jsonl", json.dumps({**GOOD_LINE, "audio": str(d / "fifo.wav")}) + "\n")
    H.write(d / "clinc_types.json", json.dumps({"val": 5, "oos_val": {"a": 1}}))
    H.write(d / "clinc_items.json", json.dumps({"val": [["play jazz", ["PlayMusic"]], [5, None]], "oos_val": []}))
    H.write(d / "manifest_dir" / "manifest.jsonl", H.bad_utf8(json.dumps(GOOD_LINE) + "\n", 0))
    H.write(d / "bad.toml", H.bad_utf8("[train]\nepochs = 1\n", 3))
    H.write(d / "deep.json", H.deep_json(100_000, key="train"))
    H.write(d / "good.jsonl", (json.dumps(GOOD_LINE) + "\n") * 4)
    H.write(d / "train.jsonl", "".join(json.dumps({**GOOD_LINE, "intent": i}) + "\n"
                                       for i in ("PlayMusic", "GetWeather") * 6))
    H.foreign_resume_state(d / "resumed.pt", "assistant")
    H.write(d / "file_not_dir", "x")
    H.sparse_file(d / "nul_250mb.jsonl", 250 * 2**20)  # under the 256 MiB text cap: read, then refused
    H.sparse_file(d / "nul_300mb.jsonl", 300 * 2**20)  # over the cap: refused from its size
    (d / "out_dir.pt").mkdir()
    # checkpoints
    def model_config(**kw):
        return lambda b: b["config"]["model"].update(kw)

    edits = {
        "ck_model_str": lambda b: b["config"].__setitem__("model", "attention"),
        "ck_neg_dim": model_config(dim=-4),
        "ck_vocab_huge": model_config(vocab_size=10**9),
        "ck_width_huge": model_config(dim=4096, word_emb=4096),
        "ck_fusion": model_config(fusion="concatt"),
        "ck_dim_str": model_config(dim="wide"),
        "ck_no_vocab": lambda b: b["meta"].pop("vocab", None),
        "ck_vocab_int": lambda b: b["meta"].__setitem__("vocab", 5),
        "ck_threshold": lambda b: b["meta"].__setitem__("oos_threshold", "high"),
        "ck_threshold_nan": lambda b: b["meta"].__setitem__("oos_threshold", math.nan),
        # the LM replaced by garbage in whichever form the checkpoint stores it (plain or gzip-compressed)
        "ck_lm_garbage": lambda b: (b["meta"].pop("lm_text_gz", None),
                                    b["meta"].__setitem__("lm_text", "\\data\\\nngram 1=zz\n\x00\x01garbage")),
        "ck_lm_gz_garbage": lambda b: b["meta"].__setitem__("lm_text_gz", b"\x1f\x8b not really gzip"),
        "ck_lm_both": lambda b: b["meta"].update(lm_text="\\data\\\nngram 1=1\n", lm_text_gz=b"\x1f\x8b"),
        "ck_intents_short": lambda b: b["meta"].__setitem__("intents", ["x"]),
        "ck_nan": lambda b: next(v for v in b["state_dict"].values() if v.is_floating_point()).fill_(math.nan),
    }
    for name, edit in edits.items():
        H.tampered_checkpoint(MODEL, d / f"{name}.pt", edit)


def cases(d: Path) -> list[Case]:
    u = ["assistant", "understand"]
    ev = ["assistant", "evaluate"]
    tr = ["assistant", "train", str(d / "good.jsonl")]
    c = [
        Case("fifo_audio", u + ["--audio", f"{d}/fifo.wav"], category="special file"),
        Case("dev_zero_audio", u + ["--audio", f"{d}/zero.wav"], category="special file"),
        Case("dev_zero_raw", u + ["--audio", f"{d}/zero.raw", "--raw"], category="special file"),
        Case("three_hour_raw", u + ["--audio", f"{d}/three_hours.raw", "--raw"], category="special file",
             expect="at most 60 s"),
        Case("folder_audio", u + ["--audio", f"{d}/folder.wav"], category="special file"),
        Case("short_60ms", u + ["--audio", f"{d}/short.wav"], category="audio"),
        Case("tone_192k", u + ["--audio", f"{d}/tone192k.wav"], category="audio", allow_success=True),
        Case("tone_192k_pocketsphinx", u + ["--audio", f"{d}/tone192k.wav", "--asr", "pocketsphinx"], category="audio",
             allow_success=True),
        Case("short_60ms_pocketsphinx", u + ["--audio", f"{d}/short.wav", "--asr", "pocketsphinx"], category="audio"),
        Case("silent", u + ["--audio", f"{d}/silent.wav"], category="audio"),
        Case("over_60s", u + ["--audio", f"{d}/long.wav"], category="audio"),
        Case("not_audio", u + ["--audio", f"{d}/noise.wav"], category="audio"),
        Case("text_bad_byte", u + ["--text", "play \udcff jazz"], category="text", expect="not valid UTF-8"),
        Case("text_empty", u + ["--text", "   "], category="text"),
        Case("text_long", u + ["--text", "a " * 800], category="text"),
        Case("text_nul", u + ["--text", "play\x01 \x00jazz"], category="text"),
        Case("snips_0xff", ev + [f"{d}/snips_ff"], category="dataset"),
        Case("manifest_0xff", ev + [f"{d}/ff.jsonl"], category="dataset"),
        Case("manifest_dir_0xff", ev + [f"{d}/manifest_dir"], category="dataset"),
        Case("clinc_deep", ev + [f"{d}/deep_clinc.json"], category="dataset"),
        Case("manifest_deep", ev + [f"{d}/deep.jsonl"], category="dataset"),
        Case("clinc_wrong_types", ev + [f"{d}/clinc_types.json"], category="dataset"),
        Case("clinc_wrong_items", ev + [f"{d}/clinc_items.json"], category="dataset"),
        Case("manifest_audio_dev_zero", ev + [f"{d}/audio_zero.jsonl"], category="dataset"),
        Case("manifest_audio_fifo", ev + [f"{d}/audio_fifo.jsonl"], category="dataset"),
    ] + [Case(f"manifest_{n}", ev + [f"{d}/{n}.jsonl"], category="dataset")
         for n in ("tags_int", "tags_str", "tags_nested", "text_list", "text_dict", "intent_list", "audio_int")]
    c += [
        Case("config_not_utf8", tr + ["--out", f"{d}/m1.pt", "--config", f"{d}/bad.toml"], [f"{d}/m1.pt"], category="config"),
        Case("config_deep", tr + ["--out", f"{d}/m2.pt", "--config", f"{d}/deep.json"], [f"{d}/m2.pt"], category="config"),
        Case("set_lr_nan", tr + ["--out", f"{d}/m3.pt", "--set", "train.lr=nan"], [f"{d}/m3.pt"], category="config"),
        Case("set_lr_inf", tr + ["--out", f"{d}/m4.pt", "--set", "train.lr=inf"], [f"{d}/m4.pt"], category="config"),
        Case("set_dim_negative", tr + ["--out", f"{d}/m5.pt", "--set", "model.dim=-4"], [f"{d}/m5.pt"], category="config"),
        Case("set_unknown_key", tr + ["--out", f"{d}/m6.pt", "--set", "train.lrr=0.1"], [f"{d}/m6.pt"], category="config"),
        Case("resume_other_architecture", ["assistant", "train", f"{d}/train.jsonl", "--out", f"{d}/resumed.pt",
                                           "--resume", "--epochs", "2"], [f"{d}/resumed.pt"], category="config",
             expect=r"--resume: .*saved by a different model architecture .*missing"),
        Case("out_inside_file", tr + ["--out", f"{d}/file_not_dir/m.pt"], category="output"),
        Case("out_is_folder", tr + ["--out", f"{d}/out_dir.pt"], category="output"),
        Case("synth_limit_0", ["assistant", "synth", f"{d}/synth0", "--from", f"{d}/good.jsonl", "--limit", "0"],
             [f"{d}/synth0"], category="option"),
        Case("synth_limit_negative", ["assistant", "synth", f"{d}/synth1", "--from", f"{d}/good.jsonl", "--limit", "-2"],
             [f"{d}/synth1"], category="option"),
        Case("synth_out_is_file", ["assistant", "synth", f"{d}/file_not_dir", "--from", f"{d}/good.jsonl"],
             category="output"),
    ]
    c += [
        Case("manifest_250mb_of_nul", ev + [f"{d}/nul_250mb.jsonl"], category="budget"),
        Case("manifest_300mb_of_nul", ev + [f"{d}/nul_300mb.jsonl"], category="budget", expect="limit"),
        Case("shard_out_of_range", ev + [f"{d}/good.jsonl", "--shard", "5/2"], category="option"),
        Case("shard_garbage", ev + [f"{d}/good.jsonl", "--shard", "half"], category="option"),
        Case("workers_zero", ev + [f"{d}/good.jsonl", "--workers", "0"], category="option"),
        Case("device_unknown", u + ["--text", "play jazz", "--device", "tpu"], category="option"),
        Case("model_fifo", u + ["--text", "play jazz", "--model", f"{d}/fifo.wav"], category="special file"),
        Case("model_dev_zero", u + ["--text", "play jazz", "--model", f"{d}/zero.wav"], category="special file"),
    ]
    ck = ["ck_model_str", "ck_neg_dim", "ck_vocab_huge", "ck_width_huge", "ck_fusion", "ck_dim_str", "ck_no_vocab",
          "ck_vocab_int", "ck_threshold", "ck_threshold_nan", "ck_lm_garbage", "ck_lm_gz_garbage", "ck_lm_both", "ck_intents_short",
          "ck_nan"]
    c += [Case(n, u + ["--audio", str(ROOT / "data/assistant/samples/sample1.wav"), "--text", "play jazz",
                       "--model", f"{d}/{n}.pt"], category="checkpoint") for n in ck]
    c += [Case("ck_lm_garbage_pocketsphinx", u + ["--audio", str(ROOT / "data/assistant/samples/sample1.wav"),
                                                  "--asr", "pocketsphinx", "--model", f"{d}/ck_lm_garbage.pt"],
               category="checkpoint")]
    return c


PENDING: dict[str, str] = {}
results, test_assistant_hostile_input_is_one_clean_error = hostile_suite("assistant", make_files, cases, PENDING)
