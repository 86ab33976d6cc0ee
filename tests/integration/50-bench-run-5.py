#!/usr/bin/python3
"""contrib/bench/run --quick, scenario 5: connected devices against RSS and
CPU; the broker's RSS and the simulator's one fd per device are measured in
every run, herald's numbers whenever herald is built."""
from benchlib import check_herald_row, main, run_scenarios


def test_devices_vs_rss():
    t, text = run_scenarios("5")
    assert [r[0] for r in t[5]] == ["100", "300"], t[5]
    for row in t[5]:
        if check_herald_row(row, text):
            assert int(row[1]) > 0 and float(row[2]) > 0, row
        assert int(row[3]) > 0, row                        # broker RSS
        fds, kb = row[4].split(" / ")
        assert float(fds) == 1.0 and float(kb) > 0, row


if __name__ == "__main__":
    main(test_devices_vs_rss)
