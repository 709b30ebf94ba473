from edgeser.metrics import classification_metrics


def test_metrics_known_values():
    # class 0: 3 of 4 right; class 1: 1 of 2 right
    m = classification_metrics([0, 0, 0, 0, 1, 1], [0, 0, 0, 1, 1, 0], ["a", "b"])
    assert m["wa"] == 4 / 6
    assert m["ua"] == (0.75 + 0.5) / 2
    f1_a = 2 * 0.75 * 0.75 / 1.5
    f1_b = 2 * 0.5 * 0.5 / 1.0
    assert abs(m["macro_f1"] - (f1_a + f1_b) / 2) < 1e-12
    assert m["confusion"] == [[3, 1], [1, 1]]
