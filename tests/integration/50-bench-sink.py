#!/usr/bin/python3
"""herald-bench sink: signatures are checked (good, bad, missing, stale), and
the counts in GET /report are exact for duplicates (same id), copies (same
seq, new id), gaps, reordering, batches and latency; SIGUSR1 prints the
summary, SIGTERM the final report; --expect and --timeout end it; GET /wait
answers once a count is reached."""
import json
import signal
import time

from benchlib import Sink, envelope, main, sign, wait_for

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def now_us():
    return int(time.time() * 1e6)


def tele(eid, dev, seq, ts=None):
    return envelope(eid, dev, "telemetry", {"seq": seq, "ts": ts or now_us(), "dev": dev})


def test_signatures_and_counts():
    s = Sink("--secret", SECRET, "--json")

    def post(body, wid, **kw):
        raw = json.dumps(body).encode()
        return s.post(raw, sign(SECRET, wid, raw, **kw))[0]

    assert post(tele("e1", "d1", 1), "e1") == 204
    raw = json.dumps(tele("e2", "d1", 2)).encode()
    bad = sign(SECRET, "e2", raw)
    bad["webhook-signature"] = "v1," + "A" * 43 + "="
    assert s.post(raw, bad)[0] == 401                           # wrong signature
    assert s.post(raw)[0] == 401                                # no signature headers
    assert post(tele("e2", "d1", 2), "e2", ts=int(time.time()) - 3600) == 401   # stale
    assert post(tele("e2", "d1", 2), "e2") == 204
    assert post(tele("e2", "d1", 2), "e2") == 204               # the same id again: duplicate
    assert post(tele("e3", "d1", 2), "e3") == 204               # same seq, new id: copy
    assert post(tele("e6", "d1", 6), "e6") == 204               # 3, 4, 5 missing
    assert post(tele("e4", "d1", 4), "e4") == 204               # late: reordered
    batch = [tele("b1", "d2", 1), tele("b2", "d2", 2),
             envelope("b3", "d2", "status", {"seq": 1, "ts": now_us(), "dev": "d2", "state": "online"}),
             envelope("b4", "d2", "request", {"commandId": "c1", "state": "confirmed"})]
    assert post(batch, "b1.4") == 204
    assert post([tele("b5", "d2", 3)], "wrong-id") == 204       # counted, id mismatch noted
    assert s.post(b"{not json", sign(SECRET, "x", b"{not json"))[0] == 400
    assert post({"id": "x"}, "x") == 400                        # not an envelope
    r = s.report()
    assert r["signatures"] == {"checked": True, "ok": 10, "bad": 1, "missing": 1, "stale": 1}, r
    assert r["answers"] == {"204": 8, "400": 2, "401": 3}, r["answers"]
    t = r["kinds"]["telemetry"]
    # d1: 1, 2, 6, 4 distinct; d2: 1, 2, 3
    assert (t["distinct"], t["duplicates"], t["seq_repeats"], t["reordered"], t["lost"]) == \
        (7, 1, 1, 1, 2), t
    assert t["envelopes"] == 9, t
    assert r["kinds"]["status"]["distinct"] == 1
    assert r["kinds"]["request"]["unsequenced"] == 1
    assert r["distinct"] == 9 and r["lost"] == 2 and r["duplicates"] == 1, r
    assert r["webhook_id_mismatch"] == 1, r
    assert r["malformed"] == 2, r
    assert r["devices"] == 2, r
    assert r["batches"] == {"arrays": 2, "max": 4, "mean": 2.5}, r["batches"]
    # latency: every first-time sequenced message has a ts (request envelopes do not)
    assert r["latency_us"]["count"] == 8 and r["latency_us"]["max"] < 10e6, r["latency_us"]
    per = s.report(devices=True)["per_device"]
    assert per["d1"]["telemetry"] == {"distinct": 4, "max_seq": 6, "gaps": 2, "repeats": 1,
                                      "reordered": 1}, per["d1"]
    s.proc.send_signal(signal.SIGUSR1)
    assert "lost 2" in s.proc.stdout.readline() + s.proc.stdout.readline() + \
        s.proc.stdout.readline(), "SIGUSR1 summary"
    rc, out, _ = s.stop()
    assert rc == 0, rc
    final = json.loads(out[out.index("{"):])
    assert final["distinct"] == 9 and final["duplicates"] == 1, final


def test_unsigned_sink_accepts_and_expect_ends_it():
    s = Sink("--expect", "3", "--timeout", "15")
    assert s.post(tele("u1", "d1", 1))[0] == 204
    assert s.post(tele("u1", "d1", 1))[0] == 204                # duplicate: not distinct
    assert s.post(tele("u2", "d1", 2))[0] == 204
    assert s.proc.poll() is None
    assert s.post(tele("u3", "d1", 3))[0] == 204
    rc, out, _ = s.wait(10)
    assert rc == 0, (rc, out)
    assert "distinct 3" in out and "duplicates 1" in out, out


def test_wait_answers_when_the_count_is_reached():
    """GET /wait holds its answer until N distinct messages (of a kind) are
    counted, so a benchmark needs no polling; 504 after timeout_ms."""
    import http.client
    import select
    import urllib.error
    import urllib.request
    s = Sink()

    def get(query, timeout=10):
        try:
            with urllib.request.urlopen(s.url + "wait?" + query, timeout=timeout) as r:
                return r.status, json.loads(r.read())
        except urllib.error.HTTPError as e:
            return e.code, json.loads(e.read() or b"null")

    assert get("distinct=0") == (200, {"distinct": 0})
    t0 = time.monotonic()
    assert get("distinct=1&timeout_ms=300") == (504, {"distinct": 0})
    assert 0.25 < time.monotonic() - t0 < 5
    for bad in ("", "distinct=x", "distinct=1&timeout_ms=0", "distinct=1&kind=nope"):
        assert get(bad)[0] == 400, bad
    waiter = http.client.HTTPConnection("127.0.0.1", s.port, timeout=10)
    waiter.request("GET", "/wait?distinct=2&kind=telemetry")
    s.post(envelope("w0", "d1", "status", {"seq": 1, "ts": now_us(), "state": "online"}))
    s.post(tele("w1", "d1", 1))
    s.post(tele("w1", "d1", 1))                 # the same id: not a second one
    # The sink answers waiters before it answers the POST that counted, and
    # on loopback an answer is in our socket once written: nothing there now
    # means a status and one telemetry did not end the wait.
    assert select.select([waiter.sock], [], [], 0)[0] == [], "answered too early"
    s.post(tele("w2", "d1", 2))
    r = waiter.getresponse()
    assert (r.status, json.loads(r.read())) == (200, {"distinct": 2})
    waiter.close()
    r = s.report()
    assert r["answers"] == {"204": 4}, r["answers"]     # /wait is not traffic
    s.stop()


def test_timeout_without_expect_reached_fails():
    t0 = time.monotonic()
    s = Sink("--expect", "5", "--timeout", "1", "--json")
    s.post(tele("t1", "d1", 1))
    rc, out, err = s.wait(10)
    assert rc == 1, rc
    assert 0.9 < time.monotonic() - t0 < 8
    assert json.loads(out[out.index("{"):])["distinct"] == 1
    assert "timeout" in err


def test_seq_in_counts_tail_loss():
    import os
    import tempfile
    fd, path = tempfile.mkstemp(prefix="bench-seq.")
    with os.fdopen(fd, "w") as f:
        f.write("d1 telemetry 5\nd2 status 2\n")
    try:
        s = Sink("--seq-in", path)
        for i in (1, 2, 3):
            s.post(tele("s%d" % i, "d1", i))
        r = s.report()
        assert r["lost"] == 0 and r["missing"] == 4 and r["expected"] == 7, r
    finally:
        os.unlink(path)


def test_reading_envelopes():
    """The sink reads envelopes in place and falls back to jansson for what
    it would have to unescape; both read the same: escaped ids, nested
    payloads with braces inside strings, a real-valued seq (unsequenced),
    a payload whose dev is not the envelope's device, request states.
    Not an envelope, an array with a non-object, a duplicate key: 400."""
    s = Sink("--json")
    nested = tele("n1", "d1", 1)
    nested["payload"]["deep"] = {"a": ["}", "]", {"b": "{\\\"x\\\""}], "c": [1, 2.5e3, True, None]}
    assert s.post(json.dumps(nested, indent=2).encode())[0] == 204
    escaped = b'{"id":"e\\u0032x","device":"d\\u0031","kind":"telemetry",' \
        b'"receivedAt":"2026-11-22T00:00:00.000Z","payload":{"seq":2,"dev":"d1"}}'
    assert s.post(escaped)[0] == 204                            # jansson: id e2x, device d1
    assert s.post(json.dumps(tele("e2x", "d1", 2)).encode())[0] == 204   # its duplicate
    real = tele("r1", "d1", 3)
    real["payload"]["seq"] = 3.0
    assert s.post(json.dumps(real).encode())[0] == 204          # unsequenced
    other = tele("o1", "d1", 4)
    other["payload"]["dev"] = "d9"
    assert s.post(json.dumps(other).encode())[0] == 204         # dev mismatch
    reqs = [envelope("q%d" % i, "d3", "request", {"commandId": "c%d" % i, "state": st})
            for i, st in enumerate(["sent", "confirmed", "sent"])]
    assert s.post(json.dumps(reqs).encode())[0] == 204
    assert s.post(json.dumps([tele("x1", "d1", 5), 7]).encode())[0] == 400
    nopay = tele("x2", "d1", 5)
    nopay["payload"] = [1]
    assert s.post(json.dumps(nopay).encode())[0] == 400
    assert s.post(b'{"id":"x3","id":"x4","device":"d1","kind":"telemetry",'
                  b'"receivedAt":"t","payload":{}}')[0] == 400
    assert s.post(b"[]")[0] == 400
    r = s.report()
    t = r["kinds"]["telemetry"]
    assert (t["distinct"], t["duplicates"], t["unsequenced"]) == (4, 1, 1), t
    assert r["dev_mismatch"] == 1 and r["malformed"] == 4, r
    assert r["request_states"] == {"sent": 2, "confirmed": 1}, r["request_states"]
    assert r["batches"] == {"arrays": 1, "max": 3, "mean": 3.0}, r["batches"]
    per = s.report(devices=True)["per_device"]
    # seqs 1, 2 (escaped device d1), 4; 3 came as 3.0, which is no sequence
    assert per["d1"]["telemetry"] == {"distinct": 3, "max_seq": 4, "gaps": 1, "repeats": 0,
                                      "reordered": 0}, per["d1"]


if __name__ == "__main__":
    main(test_signatures_and_counts, test_reading_envelopes,
         test_unsigned_sink_accepts_and_expect_ends_it,
         test_wait_answers_when_the_count_is_reached,
         test_timeout_without_expect_reached_fails, test_seq_in_counts_tail_loss)
