#!/usr/bin/python3
"""herald between herald-bench fleet and herald-bench sink, with the sink's
exact accounting: every message of every kind delivered, none missing, no
copy under a new id, signatures valid; request round trips through the REST
API reach the devices and their answers come back as response and request
envelopes; a worker killed with SIGKILL mid-run loses nothing."""
import json
import os
import signal
import time

from benchlib import Proc, Sink, Skip, bench, herald_built, main, wait_for
from heraldtest import Herald, Mosquitto, TmpDir

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def setup(batch_max=1, seqfile=None):
    if not herald_built():
        raise Skip("herald is not built")
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    sink = Sink("--secret", SECRET, "--seq-in", seqfile or tmp.join("seq"))
    h = Herald(tmp, broker=broker, conf={
        "backend": {"url": sink.url, "secret": SECRET, "batch_max": batch_max}}).wait_ready()
    return tmp, broker, sink, h


def settled(sink):
    r = sink.report()
    return r if r.get("missing") == 0 else None


def test_every_message_exactly():
    tmp, broker, sink, h = setup(batch_max=20)
    _, out, _ = bench("fleet", "--port", broker.port, "--devices", 30, "--rate", 50, "--count", 60,
                      "--status-every", "300ms", "--event-every", "200ms", "--size", 256,
                      "--seq-out", tmp.join("seq"), "--json", timeout=30)
    f = json.loads(out)
    r = wait_for(lambda: settled(sink), 15, 0.1, "every message at the sink")
    assert r["lost"] == 0 and r["duplicates"] == 0 and r["seq_repeats"] == 0, r
    assert r["kinds"]["telemetry"]["distinct"] == f["sent"]["telemetry"] == 1800, (r["kinds"], f["sent"])
    assert r["kinds"]["status"]["distinct"] == f["sent"]["status"], (r["kinds"], f["sent"])
    assert r["kinds"]["event"]["distinct"] == f["sent"]["event"], (r["kinds"], f["sent"])
    assert r["distinct"] == f["sent"]["total"], (r["distinct"], f["sent"])
    assert r["signatures"]["ok"] == r["requests"] and r["signatures"]["bad"] == 0, r["signatures"]
    assert r["dev_mismatch"] == 0 and r["webhook_id_mismatch"] == 0 and r["malformed"] == 0, r
    assert r["negative_latency"] == 0 and r["latency_us"]["count"] == r["distinct"], r["latency_us"]
    print("# herald: %d distinct, reordered %d, latency p50 %.1f ms p99 %.1f ms, batches %s" % (
        r["distinct"], r["reordered"], r["latency_us"]["p50"] / 1e3, r["latency_us"]["p99"] / 1e3,
        r["batches"]))


def test_request_round_trips():
    tmp, broker, sink, h = setup()
    fleet = Proc("fleet", "--port", broker.port, "--devices", 5, "--rate", 0,
                 "--fail-ratio", 0.2, "--duration", "20s", "--json")
    # herald knows a device is online once its status arrived
    wait_for(lambda: sink.report()["kinds"].get("status", {}).get("distinct", 0) >= 5, 10, 0.1,
             "5 devices online at herald")
    _, out, _ = bench("rtt", "--url", h.api_url, "--token", "test-token-1", "--devices", 5,
                      "--rate", 25, "--count", 50, "--wait", 10, "--json", timeout=30, check=False)
    r = json.loads(out)
    assert r["sent"] == 50 and r["completed"] == 50, r
    assert r["ok"] == 40 and r["device_failed"] == 10, r        # exactly the fleet's 20 %
    assert r["states"] == {"confirmed": 40, "failed": 10}, r["states"]
    _, fout, _ = fleet.stop()
    assert json.loads(fout)["received"]["requests"] == 50
    # the devices' answers and the requests' ends reach the backend
    wait_for(lambda: sum(sink.report()["request_states"].get(s, 0) for s in ("confirmed", "failed"))
             >= 50, 10, 0.1, "50 request envelopes of ended requests")
    rep = sink.report()
    k = rep["kinds"]
    assert k["response"]["distinct"] == 50 and k["response"]["lost"] == 0, k["response"]
    states = rep["request_states"]
    assert states.get("confirmed") == 40 and states.get("failed") == 10, states
    print("# request envelopes by state:", states)


def test_kill_http_worker_loses_nothing():
    tmp, broker, sink, h = setup(batch_max=10)
    fleet = Proc("fleet", "--port", broker.port, "--devices", 20, "--rate", 50, "--count", 150,
                 "--seq-out", tmp.join("seq"), "--json")
    wait_for(lambda: sink.report()["distinct"] >= 500, 10, 0.05, "traffic flowing")
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
    main(test_every_message_exactly, test_request_round_trips, test_kill_http_worker_loses_nothing)
