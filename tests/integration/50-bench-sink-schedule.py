#!/usr/bin/python3
"""herald-bench sink misbehaves on schedule: 503 with Retry-After, then the
listening socket closed (connections refused, a kept-alive one cut), then
normal again; 400 for one device's envelopes; --delay-ms slows every answer."""
import http.client
import json
import time
import urllib.error

from benchlib import Sink, envelope, main, wait_for


def tele(eid, dev, seq):
    return envelope(eid, dev, "telemetry", {"seq": seq, "ts": int(time.time() * 1e6), "dev": dev})


def test_schedule():
    t0 = time.monotonic()
    s = Sink("--schedule", "503:1500ms,refuse:1s,ok,400@device=bad", "--retry-after", "7", "--json")
    status, headers = s.post(tele("a1", "d1", 1))
    assert status == 503 and headers.get("Retry-After") == "7", (status, headers)
    # a kept-alive connection opened now is cut, not answered, once the socket closes
    conn = http.client.HTTPConnection("127.0.0.1", s.port, timeout=5)
    conn.request("POST", "/ingest", json.dumps(tele("a1", "d1", 1)), {"Content-Type": "application/json"})
    r = conn.getresponse()
    r.read()
    assert r.status == 503

    def refused():
        try:
            s.post(tele("a1", "d1", 1), timeout=1)
        except urllib.error.URLError as e:
            return isinstance(e.reason, ConnectionRefusedError)
        return False

    wait_for(refused, 3, 0.02, "connections refused")
    t_refused = time.monotonic()
    cut = False
    try:
        conn.request("POST", "/ingest", json.dumps(tele("a1", "d1", 1)),
                     {"Content-Type": "application/json"})
        conn.getresponse().read()
    except (http.client.HTTPException, ConnectionError):
        cut = True
    assert cut, "a request on a kept-alive connection was answered while refusing"
    def accepted():
        try:
            return s.post(tele("a1", "d1", 1), timeout=1)[0] == 204
        except urllib.error.URLError:
            return False

    wait_for(accepted, 4, 0.02, "accepting again")
    assert 0.7 < time.monotonic() - t_refused < 2.5
    assert time.monotonic() - t0 < 6
    status, headers = s.post(tele("x1", "bad", 1))
    assert status == 400 and headers.get("Retry-After") == "7", (status, headers)
    assert s.post([tele("x2", "d1", 2), tele("x3", "bad", 2)])[0] == 400
    assert s.post(tele("x4", "d1", 2))[0] == 204
    rep = s.report()
    assert rep["answers"]["400"] == 2 and rep["rejected_by_rule"] == 2, rep
    assert rep["answers"]["503"] >= 2, rep
    # The kept-alive request was cut; a probe of refused() whose connection
    # was accepted just before the listener closed is cut too, not refused.
    assert 1 <= rep["refused_requests"] <= 2, rep
    assert 0.9 < rep["refused_s"] < 1.6, rep["refused_s"]
    # only what was answered 2xx is counted: d1 seq 1 and 2
    assert rep["distinct"] == 2 and rep["devices"] == 1, rep
    assert rep["kinds"]["telemetry"]["duplicates"] == 0, rep


def test_delay():
    s = Sink("--delay-ms", "300")
    t = time.monotonic()
    assert s.post(tele("a", "d1", 1))[0] == 204
    assert time.monotonic() - t >= 0.3
    rep = s.report()
    assert rep["distinct"] == 1 and rep["answers"] == {"204": 1}, rep


if __name__ == "__main__":
    main(test_schedule, test_delay)
