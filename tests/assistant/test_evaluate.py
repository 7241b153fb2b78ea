from assistant.evaluate import conll_spans, intent_metrics, slot_f1, wer


def test_conll_spans_follow_conlleval():
    assert conll_spans(["B-a", "I-a", "O", "I-b", "B-b"]) == {("a", 0, 2), ("b", 3, 4), ("b", 4, 5)}


def test_slot_f1_partial_match_counts_as_miss():
    true = [["B-artist", "I-artist", "O"]]
    pred = [["B-artist", "O", "O"]]
    r = slot_f1(true, pred)
    assert r["f1"] == 0.0
    assert slot_f1(true, true)["f1"] == 1.0
    r = slot_f1([["B-a", "O", "B-b"]], [["B-a", "O", "O"]])
    assert abs(r["precision"] - 1.0) < 1e-9 and abs(r["recall"] - 0.5) < 1e-9


def test_wer():
    assert wer(["go forward ten meters"], ["go forward ten meters"]) == 0
    assert abs(wer(["go forward ten meters"], ["go ten theatres"]) - 0.5) < 1e-9


def test_oos_metrics():
    m = intent_metrics(["a", "oos", "oos", "b"], ["a", "oos", "a", "a"])
    assert m["oos_recall"] == 0.5 and m["in_scope_accuracy"] == 0.5 and m["intent_accuracy"] == 0.5


def test_slot_value_f1_compares_values_not_positions():
    from assistant.evaluate import slot_value_f1

    true = [{"artist": "miles davis", "service": "spotify"}, {"city": "boston"}]
    pred = [{"artist": "Miles Davis", "service": "deezer"}, {"city": "boston", "timeRange": "tomorrow"}]
    r = slot_value_f1(true, pred)
    assert r["precision"] == 2 / 4 and r["recall"] == 2 / 3
    assert slot_value_f1([{"party_size_number": "2"}], [{"party_size_number": "two"}])["f1"] == 1.0


def test_word_alignment_and_errors():
    from assistant.evaluate import align_words, word_errors

    ref, hyp = "go forward ten meters".split(), "go ten theatres".split()
    assert word_errors(ref, hyp) == 2 and word_errors([], ["a"]) == 1 and word_errors(["a", "b"], []) == 2
    pairs = align_words(ref, hyp)
    assert [p for p in pairs if p[0] is not None] == [(0, 0), (1, None), (2, 1), (3, 2)]
    assert sorted(j for _, j in pairs if j is not None) == [0, 1, 2]  # every hypothesis word appears once


def test_tags_follow_the_words_the_asr_heard():
    from assistant.evaluate import align_tags

    ref = "play some jazz by miles davis on spotify".split()
    tags = ["O", "O", "B-genre", "O", "B-artist", "I-artist", "O", "B-service"]
    # substitutions keep their slot; the ASR's word for 'on' is dropped with it
    hyp = "play some current by michael three resort spotify".split()
    assert align_tags(ref, tags, hyp) == ["O", "O", "B-genre", "O", "B-artist", "I-artist", "O", "B-service"]
    # an inserted word inside a span continues it; a similar spelling pairs with its word, not a neighbour;
    # words added after the last slot are O
    hyp = "play sam jazz by miles the davis spotify thank you".split()
    assert align_tags(ref, tags, hyp) == ["O", "O", "B-genre", "O", "B-artist", "I-artist", "I-artist",
                                          "B-service", "O", "O"]
    ref2, tags2 = "showing at dickinson theatres".split(), ["O", "O", "B-location", "I-location"]
    assert align_tags(ref2, tags2, "showing at dickinson theaters thank you guys".split())[3:] == \
        ["I-location", "O", "O", "O"]
    # a deleted span start leaves a valid BIO sequence (I- without B- becomes B-)
    assert align_tags(ref, tags, "play jazz davis".split()) == ["O", "B-genre", "B-artist"]
    assert align_tags(ref, tags, []) == []


def test_recording_variants_do_what_their_names_say():
    import numpy as np

    from assistant.evaluate import recording_variants

    t = np.arange(16000) / 16000
    tone = lambda f: (0.3 * np.sin(2 * np.pi * f * t)).astype(np.float32)  # noqa: E731
    v = recording_variants()
    rms = lambda x: float(np.sqrt(np.mean(np.square(x[2000:-2000]))))  # noqa: E731  (filter edges left out)
    phone = v["telephone 8 kHz"]
    assert rms(phone(tone(1000))) > 0.8 * rms(tone(1000))  # speech band passes
    assert rms(phone(tone(100))) < 0.1 * rms(tone(100)) and rms(phone(tone(5000))) < 0.05 * rms(tone(5000))
    x = tone(440)
    noise = v["noise 15 dB SNR"](x) - x
    assert abs(10 * np.log10(np.mean(x ** 2) / np.mean(noise ** 2)) - 15) < 0.5
    assert np.allclose(v["quiet -30 dB"](x), x * 10 ** -1.5, atol=1e-7)
    c = v["clipped"](x)
    assert c.max() == 1.0 and (np.abs(c) == 1.0).mean() > 0.5
    p = v["3 s silence around"](x)
    assert len(p) == len(x) + 96000 and not p[:48000].any() and np.array_equal(p[48000:-48000], x)
    assert all(f(x).dtype == np.float32 for f in v.values())
