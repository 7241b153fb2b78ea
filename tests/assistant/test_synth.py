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


def _manifest(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_without_spoken_leaves_out_what_training_speech_holds(tmp_path):
    from assistant.synth import without_spoken

    examples = [{"text": t, "intent": "PlayMusic", "tags": ["O"] * len(t.split())}
                for t in ("play jazz", "play some rock music", "put on the blues", "add abba to my playlist")]
    spoken = _manifest(tmp_path / "spoken.jsonl", [{"text": "Play jazz.", "intent": "PlayMusic", "audio": "a.wav"}])
    # a transcribed row counts by the text it was spoken from, not by what the recogniser heard
    heard = _manifest(tmp_path / "heard.jsonl", [{"text": "put on the shoes", "intent": "PlayMusic",
                                                 "reference": "put on the blues"}])
    left = without_spoken(examples, [spoken, heard])
    assert [e["text"] for e in left] == ["play some rock music", "add abba to my playlist"]
    assert without_spoken(examples, []) == examples


def test_synth_cli_exclude_everything_is_one_error(tmp_path):
    from typer.testing import CliRunner

    from mmapps.cli import app

    data = _manifest(tmp_path / "typed.jsonl", [{"text": "play jazz", "intent": "PlayMusic"}])
    r = CliRunner().invoke(app, ["assistant", "synth", str(tmp_path / "out"), "--from", str(data),
                                 "--exclude", str(data)])
    assert r.exit_code == 2 and r.stderr.count("error:") == 1 and "nothing left" in r.stderr
    assert not (tmp_path / "out").exists()
    r = CliRunner().invoke(app, ["assistant", "synth", str(tmp_path / "out"), "--from", str(data),
                                 "--exclude", str(tmp_path / "missing.jsonl")])
    assert r.exit_code == 2 and r.stderr.count("error:") == 1 and "Traceback" not in r.stderr
