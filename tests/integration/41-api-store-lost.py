#!/usr/bin/python3
"""A request store write that fails while herald keeps running (no restart
to tidy up): the API never shows, and no waiter is told, what the store does
not hold, and nothing the store does hold is forgotten.

- A refused cancel leaves the request live in memory too: the cancel can be
  retried, and a device that comes online still gets the command.
- A device's answer whose write was lost is written again once the store
  works: the request ends `confirmed` (not `timeout`), its waiter gets it
  then, and the backend hears of it once.
- A failed put (not only a failed commit) answers 503, not a record that
  was never stored.
- A device's answer that comes with a cancel, in the group the store loses,
  is not lost with the cancel: the request ends `confirmed`.
- The spool's acknowledgements of notifications whose deletion was lost do
  not leave them in the store: they are sent again, acknowledged again and
  deleted then.

HERALD_TEST_REQSTORE_FAIL=<file>: while <file> exists every commit of the
request store fails; if it says "put", every put and delete fails too."""
import json
import os
import signal
import threading
import time

from apilib import Device, api, check_error, request_states, warm_up
from heraldtest import Backend, Herald, Mosquitto, TmpDir, main, wait_for


def start(conf=None):
    tmp = TmpDir()
    flag = tmp.join("reqstore-fail")
    broker = Mosquitto(tmp)
    backend = Backend()
    h = Herald(tmp, conf=conf, broker=broker, backend=backend,
               env={"HERALD_TEST_REQSTORE_FAIL": flag}).wait_ready()
    warm_up(h, broker)
    return tmp, broker, backend, h, flag


def failing(flag, mode):
    """mode: None (the store works), "commit" or "put"."""
    if mode is None:
        os.unlink(flag)
    else:
        with open(flag, "w") as f:
            f.write(mode)


def state(h, cid):
    st, rec, _ = api(h, "GET", "/v1/requests/" + cid)
    assert st == 200, (st, rec)
    return rec["state"]


def post_async(h, path, body):
    """POST in a thread (for ?wait): returns the thread and where the answer lands."""
    res = {}
    t = threading.Thread(target=lambda: res.setdefault("r", api(h, "POST", path, body)))
    t.start()
    return t, res


def test_refused_cancel_leaves_the_request_live():
    tmp, broker, backend, h, flag = start()
    for cid in ("rl-1", "rl-2"):
        st, rec, _ = api(h, "POST", "/v1/devices/rl-dev/requests",
                         {"type": "ok", "commandId": cid, "timeout": 60})
        assert st == 202 and rec["state"] == "queued", (st, rec)

    failing(flag, "commit")
    for cid in ("rl-1", "rl-2"):
        st, doc, _ = api(h, "DELETE", "/v1/requests/" + cid)
        check_error(st, doc, 503, "unavailable")
    failing(flag, None)

    # The same herald, not restarted: rl-2's cancel can be repeated ...
    st, rec, _ = api(h, "DELETE", "/v1/requests/rl-2")
    assert st == 200 and rec["state"] == "cancelled", (st, rec)
    st, doc, _ = api(h, "GET", "/v1/devices/rl-dev/requests?state=queued")
    assert [r["commandId"] for r in doc["requests"]] == ["rl-1"], doc
    # ... and rl-1 still goes to the device.
    dev = Device(broker, "rl-dev").connect()
    wait_for(lambda: state(h, "rl-1") == "confirmed", 15, what="rl-1 to be confirmed")
    assert [c["commandId"] for c in dev.cmds()] == ["rl-1"], dev.cmds()
    assert all(w["restarts"] == 0 for w in h.workers()), h.workers()
    wait_for(lambda: request_states(backend).get("rl-1") == ["sent", "confirmed"], 10,
             what="rl-1's notifications")
    assert request_states(backend).get("rl-2") == ["cancelled"], request_states(backend)
    dev.disconnect()


def lost_answer(mode):
    """The device answers while the store fails (mode); a waiter is waiting."""
    tmp, broker, backend, h, flag = start()
    dev = Device(broker, "la-dev", answer=lambda cmd: None).connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/la-dev")[1].get("online"), 10,
             what="la-dev to be online")
    t, res = post_async(h, "/v1/devices/la-dev/requests?wait=30",
                        {"type": "ok", "commandId": "la-1", "timeout": 60})
    wait_for(lambda: api(h, "GET", "/v1/requests/la-1")[0] == 200 and
             state(h, "la-1") == "sent", 10, what="la-1 to be sent")

    failing(flag, mode)
    dev.c.publish("device/la-dev/response", json.dumps(
        {"commandId": "la-1", "success": True, "result": {"n": 7}}), 1).wait_for_publish()
    # Not stored: nobody is told it ended, in 2.5 s of failing writes.
    deadline = time.time() + 2.5
    while time.time() < deadline:
        assert "r" not in res, res
        assert state(h, "la-1") == "sent"
        time.sleep(0.1)
    assert "could not be stored" in h.log_text()

    failing(flag, None)
    t.join(10)
    assert not t.is_alive(), "the waiter was never answered"
    st, rec, _ = res["r"]
    assert st == 200 and rec["state"] == "confirmed" and rec["result"] == {"n": 7}, (st, rec)
    st, got, _ = api(h, "GET", "/v1/requests/la-1")
    assert got == rec, (got, rec)
    wait_for(lambda: request_states(backend).get("la-1") == ["sent", "confirmed"], 10,
             what="la-1's notifications")
    # It stays confirmed past its deadline and across a restart.
    h.stop()
    h.start()
    h.wait_ready()
    wait_for(lambda: api(h, "GET", "/v1/requests/la-1")[0] == 200, 10, what="the router")
    assert state(h, "la-1") == "confirmed"
    dev.disconnect()


def test_lost_answer_commit():
    lost_answer("commit")


def test_lost_answer_put():
    lost_answer("put")


def test_refused_put_answers_503():
    tmp, broker, backend, h, flag = start()
    st, rec, _ = api(h, "POST", "/v1/devices/rp-dev/requests",
                     {"type": "ok", "commandId": "rp-1", "timeout": 60})
    assert st == 202, (st, rec)
    failing(flag, "put")
    st, doc, _ = api(h, "DELETE", "/v1/requests/rp-1")
    check_error(st, doc, 503, "unavailable")
    st, doc, _ = api(h, "POST", "/v1/devices/rp-dev/requests", {"type": "ok", "commandId": "rp-2"})
    check_error(st, doc, 503)
    failing(flag, None)
    assert state(h, "rp-1") == "queued"
    check_error(*api(h, "GET", "/v1/requests/rp-2")[:2], 404)
    st, rec, _ = api(h, "DELETE", "/v1/requests/rp-1")
    assert st == 200 and rec["state"] == "cancelled", (st, rec)
    st, rec, _ = api(h, "POST", "/v1/devices/rp-dev/requests", {"type": "ok", "commandId": "rp-2"})
    assert st == 202 and rec["state"] == "queued", (st, rec)


def test_answer_behind_lost_cancel():
    tmp, broker, backend, h, flag = start()
    dev = Device(broker, "ca-dev", answer=lambda cmd: None).connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/ca-dev")[1].get("online"), 10,
             what="ca-dev to be online")
    st, rec, _ = api(h, "POST", "/v1/devices/ca-dev/requests",
                     {"type": "ok", "commandId": "ca-1", "timeout": 60})
    assert st == 202, (st, rec)
    wait_for(lambda: state(h, "ca-1") == "sent", 10, what="ca-1 to be sent")
    router = h.worker("router")["pid"]
    calls, answers = h.counter("api", "ipc_out"), h.counter("crypto", "envelopes")
    # The router stopped: the cancel, then the device's answer, wait for it
    # together, and it takes them in one pass, whose commit fails.
    os.kill(router, signal.SIGSTOP)
    try:
        res = {}
        t = threading.Thread(target=lambda: res.setdefault("r", api(h, "DELETE", "/v1/requests/ca-1")))
        t.start()
        wait_for(lambda: h.counter("api", "ipc_out") > calls, 10, what="the cancel")
        dev.c.publish("device/ca-dev/response", json.dumps(
            {"commandId": "ca-1", "success": True, "result": {"n": 1}}), 1).wait_for_publish()
        wait_for(lambda: h.counter("crypto", "envelopes") > answers, 10, what="the answer")
        failing(flag, "commit")
    finally:
        os.kill(router, signal.SIGCONT)
    t.join(10)
    st, doc, _ = res["r"]
    assert st in (503, 409), (st, doc)
    failing(flag, None)
    wait_for(lambda: state(h, "ca-1") == "confirmed", 10, what="ca-1 confirmed")
    st, rec, _ = api(h, "GET", "/v1/requests/ca-1")
    assert rec["result"] == {"n": 1}, rec
    wait_for(lambda: request_states(backend).get("ca-1") == ["sent", "confirmed"], 10,
             what="ca-1's notifications")
    assert len(dev.cmds()) == 1, dev.cmds()
    dev.disconnect()


def notifications(h):
    return h.ctl("requests")["notifications"]


def test_lost_ack_is_taken_again():
    tmp, broker, backend, h, flag = start()
    http_pid = h.worker("http")["pid"]
    # The http worker stopped: the notifications of 50 requests that expire
    # (to an offline device) wait for it, stored.
    os.kill(http_pid, signal.SIGSTOP)
    try:
        for i in range(50):
            st, rec, _ = api(h, "POST", "/v1/devices/la-dev/requests",
                             {"type": "t", "commandId": "la-%02d" % i, "timeout": 1})
            assert st == 202, (st, rec)
        wait_for(lambda: state(h, "la-49") == "expired", 10, what="the requests to expire")
        wait_for(lambda: notifications(h) >= 50, 10, what="their notifications stored")
        # Its acknowledgements come while no commit succeeds.
        failing(flag, "commit")
        os.kill(http_pid, signal.SIGCONT)
        wait_for(lambda: "a group of changes could not be stored" in h.log_text(), 10,
                 what="a lost group")
    finally:
        os.kill(http_pid, signal.SIGCONT)
    failing(flag, None)
    # Every notification reached the backend, and none stays in the store.
    wait_for(lambda: notifications(h) == 0, 20, 0.2, "the store to hold no notification")
    wait_for(lambda: all("expired" in request_states(backend).get("la-%02d" % i, [])
                         for i in range(50)), 10, what="every notification delivered")
    assert h.all_ready()


if __name__ == "__main__":
    main(test_refused_cancel_leaves_the_request_live, test_lost_answer_commit,
         test_lost_answer_put, test_refused_put_answers_503, test_answer_behind_lost_cancel,
         test_lost_ack_is_taken_again)
