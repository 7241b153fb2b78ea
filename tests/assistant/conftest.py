import json

import pytest
import torch

# the test machines are small and shared: one thread avoids oversubscription (much faster here)
torch.set_num_threads(1)

INTENT_TEXTS = {
    "PlayMusic": ["play {x} by {y}", "put on some {x} from {y}", "play the song {x} by {y} please"],
    "GetWeather": ["what is the weather in {x}", "will it rain in {x} tomorrow", "weather forecast for {x}"],
}
TAGS = {
    "play {x} by {y}": "O B-track O B-artist",
    "put on some {x} from {y}": "O O O B-music_item O B-artist",
    "play the song {x} by {y} please": "O O B-music_item B-track O B-artist O",
    "what is the weather in {x}": "O O O O O B-city",
    "will it rain in {x} tomorrow": "O O O O B-city B-timeRange",
    "weather forecast for {x}": "O O O B-city",
}
FILL = ["jazz", "madonna", "paris", "berlin", "blues", "adele", "london", "rome", "prince", "oslo"]


@pytest.fixture(scope="session")
def tiny_manifest(tmp_path_factory):
    """A small labelled JSON-lines manifest (text only) written like a user's own data."""
    d = tmp_path_factory.mktemp("tinydata")
    rows = []
    for intent, tpls in INTENT_TEXTS.items():
        for t in tpls:
            for i, x in enumerate(FILL):
                y = FILL[(i + 3) % len(FILL)]
                text = t.replace("{x}", x).replace("{y}", y)
                rows.append({"text": text, "intent": intent, "tags": TAGS[t].split()})
    (d / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return d / "manifest.jsonl"


@pytest.fixture(scope="session")
def tiny_model(tiny_manifest, tmp_path_factory):
    """A model trained for a few epochs on the tiny manifest (shared by the pipeline and CLI tests)."""
    from assistant.train import train

    out = tmp_path_factory.mktemp("tinymodel") / "model.pt"
    train([tiny_manifest], out, cfg_overrides=["epochs=12", "lr=0.005", "batch_size=16", "amp=false"], quiet=True)
    return out
