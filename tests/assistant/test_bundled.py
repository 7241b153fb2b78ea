import json

import pytest

from mmapps.paths import data_dir

MODEL = data_dir() / "assistant" / "model.pt"
needs_model = pytest.mark.skipif(not MODEL.is_file(), reason="bundled model not trained yet")


@needs_model
def test_bundled_model_is_self_contained_and_small():
    from mmapps.checkpoint import load_checkpoint

    b = load_checkpoint(MODEL)
    cfg, meta = b["config"], b["meta"]
    assert MODEL.stat().st_size < 20 * 2**20
    assert cfg["scenario"] == "assistant" and cfg["model"]["n_intents"] == len(meta["intents"]) == 8
    assert {"vocab", "intents", "tags", "oos_threshold", "asr_prompt"} <= set(meta)
    assert {"lm_text", "lm_text_gz"} & set(meta)  # the ARPA LM, plain or gzip-compressed
    from assistant.pipeline import expand_meta

    meta = expand_meta(meta, MODEL)
    assert "oos" in meta["intents"] and "\\data\\" in meta["lm_text"] and meta["asr_prompt"].strip()
    total = sum(p.stat().st_size for p in (data_dir() / "assistant").rglob("*") if p.is_file())
    assert total < 20 * 2**20


@needs_model
def test_bundled_model_understands_text_and_rejects_out_of_scope():
    from assistant import Pipeline

    pipe = Pipeline.from_checkpoint(None)
    r = pipe.understand(text="play some jazz by miles davis on spotify")
    assert r["intent"] == "PlayMusic" and not r["out_of_scope"]
    assert r["slots"].get("artist") == "miles davis" and r["slots"].get("service") == "spotify"
    assert "miles davis" in r["reply"]
    r = pipe.understand(text="how do i transfer money from my checking account to savings")
    assert r["out_of_scope"] and r["intent"] == "oos"


@needs_model
@pytest.mark.slow
def test_demo_writes_pictures(tmp_path):
    from assistant.cli import demo

    summary = demo(tmp_path)
    pngs = list(tmp_path.glob("*.png"))
    assert len(pngs) == len(summary["speech"]) == 3
    assert all(p.stat().st_size > 10_000 for p in pngs)
    assert all(isinstance(s["transcript"], str) and s["rtf"] > 0 for s in summary["speech"])
    json.dumps(summary)  # JSON-able
