import json

import numpy as np
import pytest

from assistant.synth import espeak_available, speak, synth_dataset, voice_plan

needs_espeak = pytest.mark.skipif(not espeak_available(), reason="espeak-ng is not installed")


@needs_espeak
def test_speak_is_16k_with_noise_floor():
    x = speak("play some jazz", "en-gb+f2", 170, 40, seed=1)
    assert x.dtype == np.float32 and 0.5 < len(x) / 16000 < 4
    # espeak's exact-zero runs are gone (they break the ASR), and the noise is low (~30 dB SNR)
    assert np.mean(x == 0) < 0.01
    quiet = np.sort(np.abs(x))[: len(x) // 10]
    assert quiet.mean() < 0.1 * np.abs(x).max()


@needs_espeak
def test_synth_dataset_manifest_and_shards(tmp_path):
    examples = [{"text": t, "intent": "PlayMusic", "tags": ["O"] * len(t.split())}
                for t in ("play jazz", "play some rock music", "put on the blues")]
    man = synth_dataset(examples, tmp_path / "out", seed=3, shard=(1, 2), progress=False)
    rows = [json.loads(l) for l in man.read_text().splitlines()]
    assert len(rows) == 1  # the second half of 3 items
    assert (tmp_path / "out" / rows[0]["audio"]).is_file() and "+" in rows[0]["voice"]
    assert not list(tmp_path.glob(".out*"))  # no temporary folder left behind


def test_voice_plan_is_deterministic():
    assert voice_plan(5, 7) == voice_plan(5, 7)
    assert voice_plan(5, 7) != voice_plan(5, 8)
