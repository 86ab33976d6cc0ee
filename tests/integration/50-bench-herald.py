#!/usr/bin/python3
"""herald between herald-bench fleet and herald-bench sink, with the sink's
exact accounting: every message of every kind delivered, none missing, no
copy under a new id, signatures valid; a worker killed with SIGKILL mid-run
loses nothing.  (Request round trips: 50-bench-herald-rtt.py.)"""
import json
import os
import signal

from benchlib import Proc, bench, herald_between, main, settled, wait_for

def test_every_message_exactly():
    tmp, broker, sink, h = herald_between(batch_max=20)
    _, out, _ = bench("fleet", "--port", broker.port, "--devices", 30, "--rate", 50, "--count", 40,
                      "--status-every", "300ms", "--event-every", "200ms", "--size", 256,
                      "--seq-out", tmp.join("seq"), "--json", timeout=30)
    f = json.loads(out)
    r = wait_for(lambda: settled(sink), 15, 0.1, "every message at the sink")
    assert r["lost"] == 0 and r["duplicates"] == 0 and r["seq_repeats"] == 0, r
    assert r["kinds"]["telemetry"]["distinct"] == f["sent"]["telemetry"] == 1200, (r["kinds"], f["sent"])
    assert r["kinds"]["status"]["distinct"] == f["sent"]["status"], (r["kinds"], f["sent"])
    assert r["kinds"]["event"]["distinct"] == f["sent"]["event"], (r["kinds"], f["sent"])
    assert r["distinct"] == f["sent"]["total"], (r["distinct"], f["sent"])
    assert r["signatures"]["ok"] == r["requests"] and r["signatures"]["bad"] == 0, r["signatures"]
    assert r["dev_mismatch"] == 0 and r["webhook_id_mismatch"] == 0 and r["malformed"] == 0, r
    assert r["negative_latency"] == 0 and r["latency_us"]["count"] == r["distinct"], r["latency_us"]
    print("# herald: %d distinct, reordered %d, latency p50 %.1f ms p99 %.1f ms, batches %s" % (
        r["distinct"], r["reordered"], r["latency_us"]["p50"] / 1e3, r["latency_us"]["p99"] / 1e3,
        r["batches"]))


def test_kill_http_worker_loses_nothing():
    tmp, broker, sink, h = herald_between(batch_max=10)
    fleet = Proc("fleet", "--port", broker.port, "--devices", 20, "--rate", 50, "--count", 100,
                 "--seq-out", tmp.join("seq"), "--json")
    wait_for(lambda: sink.report()["distinct"] >= 400, 10, 0.05, "traffic flowing")
    w = h.worker("http", 0)
    os.kill(w["pid"], signal.SIGKILL)
    rc, out, _ = fleet.wait(30)
    assert rc == 0
    r = wait_for(lambda: settled(sink), 20, 0.1, "every message after the kill")
    assert r["lost"] == 0 and r["distinct"] == json.loads(out)["sent"]["total"], r
    assert r["seq_repeats"] == 0, "a redelivery under a new envelope id: %s" % r
    wait_for(lambda: (h.worker("http", 0) or {}).get("pid") not in (None, w["pid"]), 10,
             what="http worker restarted")
    print("# kill -9 http: silence %.0f ms, %d duplicate ids" % (
        r["longest_silence_ms"], r["duplicates"]))


if __name__ == "__main__":
    main(test_every_message_exactly, test_kill_http_worker_loses_nothing)
