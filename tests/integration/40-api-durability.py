#!/usr/bin/python3
"""Accepted requests survive crashes (issue 4, must show 3): 100 requests
queued for an offline device, then kill -9 of the router, and separately of
all of herald; after the restart all 100 are still queued, and when the
device comes online it receives each exactly once, in accept order, and
confirms them; the backend hears of every confirmation."""
import os
import signal
import threading

from apilib import Device, api, envelopes, request_states, start, warm_up
from heraldtest import Herald, Mosquitto, TmpDir, main, wait_for

N = 100


def queue_requests(h, device):
    ids = []
    for i in range(N):
        st, rec, _ = api(h, "POST", "/v1/devices/%s/requests" % device,
                         {"type": "ok", "params": {"i": i}, "timeout": 120})
        assert st == 202 and rec["state"] == "queued", (st, rec)
        ids.append(rec["commandId"])
    return ids


def queued_ids(h, device):
    st, doc, _ = api(h, "GET", "/v1/devices/%s/requests?state=queued" % device)
    return [r["commandId"] for r in doc["requests"]] if st == 200 else None


def deliver_and_check(h, broker, backend, device, ids):
    dev = Device(broker, device).connect()
    wait_for(lambda: len(dev.cmds()) >= N, 20, what="%d commands at %s" % (N, device))
    wait_for(lambda: api(h, "GET", "/v1/devices/%s" % device)[1]["pending"] == 0, 10,
             what="every request of %s to end" % device)
    dev.marker()
    got = [c["commandId"] for c in dev.cmds()]
    assert got == ids, "delivered %d (%d distinct), in order: %s" % (
        len(got), len(set(got)), got == sorted(got, key=ids.index))
    assert [c["params"]["i"] for c in dev.cmds()] == list(range(N))
    st, doc, _ = api(h, "GET", "/v1/devices/%s/requests?state=confirmed" % device)
    assert sorted(r["commandId"] for r in doc["requests"]) == sorted(ids), doc
    wait_for(lambda: all("confirmed" in request_states(backend).get(c, []) for c in ids), 15,
             what="every confirmation at the backend")
    dev.disconnect()


def test_router_kill9():
    tmp, broker, backend, h = start()
    ids = queue_requests(h, "dur-router")
    assert queued_ids(h, "dur-router") == ids
    old = h.worker("router")
    os.kill(old["pid"], signal.SIGKILL)
    wait_for(lambda: (lambda w: w and w["pid"] != old["pid"] and w["state"] == "ready")(
        h.worker("router")), 15, what="the router to be restarted")
    wait_for(lambda: queued_ids(h, "dur-router") == ids, 10, what="100 queued after the restart")
    deliver_and_check(h, broker, backend, "dur-router", ids)
    ws = {"%s.%d" % (w["role"], w["slot"]): w["restarts"] for w in h.workers()}
    assert ws.pop("router.0") == 1 and not any(ws.values()), ws


def test_router_kill9_device_stays_online():
    """Presence is kept in the store: a device that was online when the
    router died is taken to still be, and gets new requests without
    having to speak first."""
    tmp, broker, backend, h = start()
    dev = Device(broker, "dur-online").connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/dur-online")[1].get("online"), 10,
             what="dur-online to be online")
    old = h.worker("router")
    os.kill(old["pid"], signal.SIGKILL)
    wait_for(lambda: (lambda w: w and w["pid"] != old["pid"] and w["state"] == "ready")(
        h.worker("router")), 15, what="the router to be restarted")
    st, d, _ = wait_for(lambda: (lambda r: r[0] == 200 and r)(api(h, "GET", "/v1/devices/dur-online")),
                        10, what="the restarted router to answer")
    assert d["online"] is True, d
    st, rec, _ = api(h, "POST", "/v1/devices/dur-online/requests?wait=15", {"type": "ok"})
    assert st == 200 and rec["state"] == "confirmed", (st, rec)
    dev.disconnect()


def test_api_kill9_late_reply():
    """The router answers a ?wait call after the api worker that asked was
    killed; the restarted api worker must not hand that answer to its own
    first call."""
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    h = Herald(tmp, broker=broker).wait_ready()
    res = []
    t = threading.Thread(target=lambda: res.append(
        _try(lambda: api(h, "POST", "/v1/devices/late-a/requests?wait=3", {"type": "first"}))))
    t.start()
    wait_for(lambda: api(h, "GET", "/metrics", token=None)[0] == 200 and
             h.ctl("requests")["queued"] == 1, 5, what="the first call to reach the router")
    old = h.worker("api")
    os.kill(old["pid"], signal.SIGKILL)
    wait_for(lambda: (lambda w: w and w["pid"] != old["pid"] and w["state"] == "ready")(
        h.worker("api")), 10, what="the api worker to be restarted")
    t.join()
    assert isinstance(res[0], Exception), res   # its client lost the connection
    # The new life's first router call is pending when the old answer comes.
    st, rec, _ = api(h, "POST", "/v1/devices/late-b/requests?wait=6", {"type": "second"})
    assert st == 202 and rec["device"] == "late-b" and rec["type"] == "second", (st, rec)


def test_notifications_resent():
    """State changes the spool never acknowledged are sent again: the http
    worker is frozen while 5 requests are cancelled, then killed; after
    its restart the backend gets each cancellation, once."""
    tmp, broker, backend, h = start()
    ids = []
    for i in range(5):
        st, rec, _ = api(h, "POST", "/v1/devices/resend-dev/requests", {"type": "x"})
        assert st == 202
        ids.append(rec["commandId"])
    http = h.worker("http")
    os.kill(http["pid"], signal.SIGSTOP)
    try:
        for c in ids:
            st, rec, _ = api(h, "DELETE", "/v1/requests/" + c)
            assert st == 200 and rec["state"] == "cancelled", (st, rec)
    finally:
        os.kill(http["pid"], signal.SIGKILL)
    wait_for(lambda: (lambda w: w and w["pid"] != http["pid"] and w["state"] == "ready")(
        h.worker("http")), 15, what="the http worker to be restarted")
    wait_for(lambda: all(request_states(backend).get(c) == ["cancelled"] for c in ids), 20,
             what="every cancellation at the backend")
    ids_seen = [e["id"] for e in envelopes(backend)]
    assert len(ids_seen) == len(set(ids_seen)) == 5, ids_seen


def _try(fn):
    try:
        return fn()
    except Exception as e:
        return e


def test_sigterm_answers_held_wait_with_the_record():
    # SIGTERM while a POST ?wait holds: the request is stored, so the call
    # ends 202 with its record (before: 503 "shutting_down" after 3 s, and
    # a client taking that at its word created the request a second time).
    tmp, broker, backend, h = start()
    got = {}

    def post():
        got["answer"] = api(h, "POST", "/v1/devices/dev-term/requests?wait=30",
                            {"type": "ok", "commandId": "term-1", "timeout": 120})
    t = threading.Thread(target=post, daemon=True)
    t.start()
    wait_for(lambda: api(h, "GET", "/v1/requests/term-1")[0] == 200, 10,
             what="term-1 stored")
    assert t.is_alive()
    assert h.stop() == 0
    t.join(10)
    assert not t.is_alive()
    st, rec, _ = got["answer"]
    assert st == 202 and rec["commandId"] == "term-1" and rec["state"] == "queued", (st, rec)
    assert "answered 202" in h.log_text()


def test_herald_kill9():
    tmp, broker, backend, h = start()
    ids = queue_requests(h, "dur-all")
    os.killpg(h.pgid, signal.SIGKILL)
    h.proc.wait(10)
    # A fresh herald on the same state directory (and a new API port).
    h2 = Herald(tmp, broker=broker, backend=backend).wait_ready()
    warm_up(h2, broker)
    assert queued_ids(h2, "dur-all") == ids
    st, d, _ = api(h2, "GET", "/v1/devices/dur-all")
    assert st == 200 and d["pending"] == N and d["online"] is False, d
    deliver_and_check(h2, broker, backend, "dur-all", ids)


if __name__ == "__main__":
    main(test_router_kill9, test_router_kill9_device_stays_online, test_api_kill9_late_reply,
         test_notifications_resent, test_sigterm_answers_held_wait_with_the_record,
         test_herald_kill9)
