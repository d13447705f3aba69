from relay.core.timefmt import duration, iso


def test_durations_read_in_the_unit_that_suits_them():
    spans = (0, 0.04, 0.45, 8.0, 16, 89, 119, 125, 600, 7300, 90000, 200000, -125)
    assert [duration(s) for s in spans] == ["0 ms", "40 ms", "450 ms", "8 s", "16 s", "89 s", "2 min", "2.1 min",
                                            "10 min", "2 h", "25 h", "2.3 d", "2.1 min"]


def test_times_are_iso_8601_in_utc():
    assert iso(1_700_000_000.123) == "2023-11-14T22:13:20Z"
    assert iso(1_700_000_000.123, milliseconds=True) == "2023-11-14T22:13:20.123Z"
    assert iso(None) is None
