import io

import numpy as np
import pytest
import soundfile as sf
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from assistant.io import check_text, decode_audio
from mmapps.errors import UserError


def _wav(n=4000):
    buf = io.BytesIO()
    sf.write(buf, 0.3 * np.sin(np.linspace(0, 500, n)), 16000, format="WAV", subtype="PCM_16")
    return buf.getvalue()


WAV = _wav()
# hangs are caught by the per-test timeout, not by hypothesis deadlines (which fail on a busy machine)
pytestmark = pytest.mark.timeout(300)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096), st.booleans())
def test_random_bytes_never_crash(data, raw):
    try:
        x = decode_audio(data, "fuzz.wav", raw=raw)
        assert x.dtype == np.float32 and np.all(np.isfinite(x))
    except UserError as e:
        assert "fuzz.wav" in str(e)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(0, len(WAV) - 1), st.integers(0, 255)), min_size=1, max_size=8),
       st.integers(8, len(WAV)))
def test_mutated_wav_never_crash(edits, cut):
    data = bytearray(WAV[:cut])
    for pos, val in edits:
        if pos < len(data):
            data[pos] = val
    try:
        x = decode_audio(bytes(data), "mut.wav")
        assert np.all(np.isfinite(x)) and len(x) / 16000 <= 60
    except UserError as e:
        assert "mut.wav" in str(e)


@settings(max_examples=100, deadline=None)
@given(st.text(max_size=1200))
def test_text_checks_never_crash(text):
    try:
        assert check_text(text) == text and text.strip() and len(text) <= 1000
    except UserError as e:
        assert "--text" in str(e)
