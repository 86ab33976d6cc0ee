#!/usr/bin/python3
"""Accepted requests survive crashes (issue 4, must show 3): 100 requests
queued for an offline device, then kill -9 of the router, and separately of
all of herald; after the restart all 100 are still queued, and when the
device comes online it receives each exactly once, in accept order, and
confirms them; the backend hears of every confirmation."""
import ctypes
import json
import os
import re
import signal
import threading
import time

from apilib import (Device, api, api_text, check_record, envelopes, request_states, start,
                    warm_up)
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


def test_router_kill9_answers_calls_in_flight():
    """Calls waiting on the router when it is killed are answered by the
    new one: two POST ?wait (one with a commandId, one without) held for a
    device that has the commands but has not answered; the router dies,
    the device answers, and each POST ends 200 confirmed with its result
    (before: 503 "did not answer in time" after wait + 5 s).  The repeated
    create made no second request."""
    tmp, broker, backend, h = start()
    dev = Device(broker, "inflight", answer=lambda cmd: None).connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/inflight")[1].get("online"), 10,
             what="inflight to be online")
    got = {}

    def post(key, body):
        got[key] = _try(lambda: api(h, "POST", "/v1/devices/inflight/requests?wait=20", body))
    ts = [threading.Thread(target=post, args=("given", {"type": "a", "params": {"n": 1},
                                                        "commandId": "inflight-1"})),
          threading.Thread(target=post, args=("ours", {"type": "b", "params": {"n": 2}}))]
    for t in ts:
        t.start()
    wait_for(lambda: len(dev.cmds()) >= 2, 10, what="both commands at the device")
    old = h.worker("router")
    os.kill(old["pid"], signal.SIGKILL)
    wait_for(lambda: (lambda w: w and w["pid"] != old["pid"] and w["state"] == "ready")(
        h.worker("router")), 15, what="the router to be restarted")
    for cmd in {c["commandId"]: c for c in dev.cmds()}.values():
        dev.c.publish("device/inflight/response", json.dumps(
            {"commandId": cmd["commandId"], "success": True, "result": {"n": cmd["params"]["n"]}}),
            1)
    for t in ts:
        t.join(30)
        assert not t.is_alive()
    for key, n in (("given", 1), ("ours", 2)):
        res = got[key]
        assert not isinstance(res, Exception), (key, res)
        st, rec, _ = res
        assert st == 200 and rec["state"] == "confirmed" and rec["result"] == {"n": n}, (key, st, rec)
    assert got["given"][1]["commandId"] == "inflight-1"
    assert "the router restarted: 2 API call(s) sent to it again" in h.log_text()
    st, doc, _ = api(h, "GET", "/v1/devices/inflight/requests")
    assert st == 200 and len(doc["requests"]) == 2, doc
    assert {c["commandId"] for c in dev.cmds()} == {r["commandId"] for r in doc["requests"]}
    dev.disconnect()


def test_router_kill9_commands_go_at_once():
    """A request made as the router dies goes to its online device as soon as
    the new router runs: the mqtt worker says hello to it at once (before,
    a command that found no mqtt worker known to the new router waited for
    its 1 s retry).  Three kills, each answered within the supervisor's
    restart delay (100, 200, 400 ms) plus 0.8 s."""
    tmp, broker, backend, h = start()
    dev = Device(broker, "quick").connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/quick")[1].get("online"), 10,
             what="quick to be online")
    for i in range(3):
        old = h.worker("router")
        os.kill(old["pid"], signal.SIGKILL)
        t0 = time.monotonic()
        st, rec, _ = api(h, "POST", "/v1/devices/quick/requests?wait=10", {"type": "ping"})
        took = time.monotonic() - t0
        assert st == 200 and rec["state"] == "confirmed", (st, rec)
        delay = [int(x) for x in re.findall(r"router\.0 .*restarting in (\d+) ms", h.log_text())][-1]
        print("# kill %d: confirmed %.0f ms after the kill (restart delay %d ms)"
              % (i, took * 1000, delay))
        assert took < delay / 1000 + 0.8, "the command waited for a retry"
        wait_for(lambda: (lambda w: w and w["pid"] != old["pid"] and w["state"] == "ready")(
            h.worker("router")), 15, what="the router ready")
    assert len(dev.cmds()) == 3, dev.cmds()
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


def test_api_kill9_refuses_no_connection():
    """The REST API's listening socket outlives the api worker: clients
    that connect while a killed api worker is being restarted wait and are
    served by the next one (before: connection refused until it listened
    again)."""
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    h = Herald(tmp, broker=broker).wait_ready()
    old = h.worker("api")
    os.kill(old["pid"], signal.SIGKILL)
    answers = [_try(lambda: api(h, "GET", "/v1/devices/nobody", timeout=15)[0]) for _ in range(5)]
    assert answers == [404] * 5, answers
    new = h.worker("api")
    assert new["pid"] != old["pid"] and new["restarts"] == 1, new


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


class MDBVal(ctypes.Structure):
    _fields_ = [("mv_size", ctypes.c_size_t), ("mv_data", ctypes.c_void_p)]


class RequestStore:
    """The request store's records (LMDB database "rec": commandId -> the
    record's JSON), read and written as another herald would, through
    liblmdb itself; herald must be stopped."""

    def __init__(self, tmp):
        self.lib = lib = ctypes.CDLL("liblmdb.so.0")
        lib.mdb_strerror.restype = ctypes.c_char_p
        self.env, self.txn, self.dbi = ctypes.c_void_p(), ctypes.c_void_p(), ctypes.c_uint()
        self.check(lib.mdb_env_create(ctypes.byref(self.env)))
        self.check(lib.mdb_env_set_maxdbs(self.env, 16))
        self.check(lib.mdb_env_open(self.env, tmp.join("state", "requests").encode(), 0, 0o600))
        self.check(lib.mdb_txn_begin(self.env, None, 0, ctypes.byref(self.txn)))
        self.check(lib.mdb_dbi_open(self.txn, b"rec", 0, ctypes.byref(self.dbi)))

    def check(self, rc):
        assert rc == 0, self.lib.mdb_strerror(rc)

    def get(self, cid):
        k, v = MDBVal(len(cid), ctypes.cast(ctypes.c_char_p(cid.encode()), ctypes.c_void_p)), MDBVal()
        self.check(self.lib.mdb_get(self.txn, self.dbi, ctypes.byref(k), ctypes.byref(v)))
        return json.loads(ctypes.string_at(v.mv_data, v.mv_size))

    def put(self, cid, rec):
        data = json.dumps(rec, separators=(",", ":"), ensure_ascii=False).encode()
        k = MDBVal(len(cid), ctypes.cast(ctypes.c_char_p(cid.encode()), ctypes.c_void_p))
        v = MDBVal(len(data), ctypes.cast(ctypes.c_char_p(data), ctypes.c_void_p))
        self.check(self.lib.mdb_put(self.txn, self.dbi, ctypes.byref(k), ctypes.byref(v), 0))

    def close(self):
        self.check(self.lib.mdb_txn_commit(self.txn))
        self.lib.mdb_env_close(self.env)


def test_store_of_older_heralds():
    """Records as herald 8ecd678 wrote them (params an object) and as
    e727283 did (params a JSON string of its text) are read, listed,
    repeated and delivered; and a record this herald writes keeps params an
    object, so that 8ecd678 after a downgrade sends the device an object
    (e727283's string reached devices as "params":"{...}"), with the text
    kept aside in "_params" when jansson would write it otherwise."""
    tmp, broker, backend, h = start()
    old = {"k": [1, 2], "f": 0.5, "s": "\u00e9"}
    text = b'{"n":18446744073709551615,"x":1e400,"d":21.30}'
    plain = b'{"a":"x","n":1}'
    bodies = {"fmt-old": json.dumps(old).encode(), "fmt-e727": text, "fmt-new": text,
              "fmt-plain": plain}
    for cid, params in bodies.items():
        st, body = api_text(h, "POST", "/v1/devices/dev-fmt/requests",
                            b'{"type":"t","timeout":120,"commandId":"%s","params":%s}'
                            % (cid.encode(), params))
        assert st == 202, body
    assert h.stop() == 0
    store = RequestStore(tmp)
    try:
        recs = {cid: store.get(cid) for cid in bodies}
        for rec in recs.values():
            assert isinstance(rec["params"], dict), rec
        assert recs["fmt-new"]["params"] == {"n": None, "x": None, "d": 21.3}, recs["fmt-new"]
        assert recs["fmt-new"]["_params"] == text.decode(), recs["fmt-new"]
        assert recs["fmt-plain"]["params"] == {"a": "x", "n": 1} and \
            "_params" not in recs["fmt-plain"], recs["fmt-plain"]
        # 8ecd678: the object, nothing aside; e727283: the text as a string.
        store.put("fmt-old", dict({k: v for k, v in recs["fmt-old"].items() if k != "_params"},
                                  params=old))
        store.put("fmt-e727", dict({k: v for k, v in recs["fmt-e727"].items()
                                    if k != "_params"}, params=text.decode()))
    finally:
        store.close()
    h = Herald(tmp, broker=broker, backend=backend).wait_ready()
    warm_up(h, broker)
    shown = {"fmt-e727": text, "fmt-new": text, "fmt-plain": plain}
    st, listed = api_text(h, "GET", "/v1/devices/dev-fmt/requests", None)
    assert st == 200 and [r["commandId"] for r in json.loads(listed)["requests"]] == \
        list(bodies), listed
    for cid in bodies:
        st, body = api_text(h, "GET", "/v1/requests/" + cid, None)
        rec = check_record(json.loads(body))
        assert st == 200 and rec["state"] == "queued", body
        if cid in shown:
            assert b'"params":%s,' % shown[cid] in body and \
                b'"params":%s,' % shown[cid] in listed, (body, listed)
        else:
            assert rec["params"] == old, body
        # The same params again: the same request.
        st, again = api_text(h, "POST", "/v1/devices/dev-fmt/requests",
                             b'{"type":"t","commandId":"%s","params":%s}'
                             % (cid.encode(), bodies[cid]))
        assert st == 200, (cid, again)
    dev = Device(broker, "dev-fmt").connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/dev-fmt")[1]["pending"] == 0, 10,
             what="every request of dev-fmt to end")
    raw = dict(zip([c["commandId"] for c in dev.cmds()], dev.raw))
    assert list(raw) == list(bodies), dev.cmds()
    assert json.loads(raw["fmt-old"])["params"] == old, raw
    for cid, t in shown.items():
        assert b'"params":%s,' % t in raw[cid], raw[cid]
    wait_for(lambda: all("confirmed" in request_states(backend).get(c, []) for c in bodies), 15,
             what="every confirmation at the backend")
    dev.disconnect()
    assert h.stop() == 0
    # What this herald wrote over the older records is what 8ecd678 reads.
    store = RequestStore(tmp)
    try:
        for cid in bodies:
            rec = store.get(cid)
            assert rec["state"] == "confirmed" and isinstance(rec["params"], dict), rec
            assert rec.get("_params") == (text.decode() if cid in ("fmt-e727", "fmt-new")
                                          else None), rec
    finally:
        store.close()


if __name__ == "__main__":
    main(test_router_kill9, test_router_kill9_device_stays_online,
         test_router_kill9_answers_calls_in_flight, test_router_kill9_commands_go_at_once,
         test_api_kill9_late_reply,
         test_api_kill9_refuses_no_connection,
         test_notifications_resent, test_sigterm_answers_held_wait_with_the_record,
         test_herald_kill9, test_store_of_older_heralds)
