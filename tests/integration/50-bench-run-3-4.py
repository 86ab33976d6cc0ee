#!/usr/bin/python3
"""contrib/bench/run --quick, scenarios 3 and 4: kill -9 of a worker at half
load and a backend outage run seconds-long when herald is built (no loss, the
worker restarted, the backlog drained), and are written as "not run" with
their commands when it is not."""
from benchlib import check_herald_row, main, run_scenarios


def test_kill_and_outage():
    t, text = run_scenarios("3,4")
    kill = t[3][0]
    assert kill[0] == "http", kill
    if check_herald_row(kill, text):
        sent = kill[1].split(" / ")
        assert sent[0] == sent[1] and kill[2] == "0" and kill[6] == "yes", kill
    outage = t[4][0]
    assert outage[0] == "503 for 2 s", outage
    if check_herald_row(outage, text):
        sent = outage[1].split(" / ")
        assert sent[0] == sent[1] and outage[2] == "0", outage
        assert outage[5] != "not drained", outage
    assert "kill -9 <pid of the" in text and "--schedule" in text


if __name__ == "__main__":
    main(test_kill_and_outage)
