#!/usr/bin/python3
"""contrib/bench/run --quick, scenarios 1 and 2: the seconds-long versions of
device -> backend throughput and of the request round trip run, with their
references (broker drain, raw MQTT round trip) measured; herald's rows have
numbers, no loss and every request completed, whenever herald is built."""
from benchlib import check_herald_row, main, run_scenarios


def test_throughput_and_round_trip():
    t, text = run_scenarios("1,2")
    drain = t[1][0]
    assert drain[0].startswith("mosquitto_sub") and drain[1] == "2000 / 2000", drain
    assert int(drain[2]) > 0
    rows = t[1][1:]
    assert [r[0] for r in rows] == ["herald, batch_max 1", "herald, batch_max 100",
                                    "herald, batch_max 100, 2 mqtt workers"], rows
    for row in rows:
        if check_herald_row(row, text):
            assert row[1] == "2000 / 2000" and row[4] == "0", row
    raw = t[2][0]
    assert raw[0].startswith("raw MQTT") and raw[1:3] == ["400", "400"] and raw[7:9] == ["0", "0"], raw
    assert 0 < float(raw[3]) <= float(raw[5])
    assert raw[9] == "–", raw           # no herald on the raw path
    if check_herald_row(t[2][1], text):
        # every request answered by its device, none timed out or failed
        api = t[2][1]
        assert api[1:3] == ["400", "400"] and api[7:9] == ["0", "0"], api
        assert 0 < float(api[3]) <= float(api[5]), api
        assert float(api[9]) > 0, api     # herald's CPU per request was measured
    assert "Commands:" in text and "herald-bench rtt --raw" in text


if __name__ == "__main__":
    main(test_throughput_and_round_trip)
