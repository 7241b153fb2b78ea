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
