#!/usr/bin/python3
"""A request store that cannot commit (issue 4, committed before answered):
while commits fail, the API answers 503 with SPEC's error body, and what was
not stored never happens -- a refused request never reaches the device and
leaves no record, a refused cancel leaves the request queued.  Once the
store works again the same calls succeed, the router never restarted, and
a restart of herald shows exactly what was stored.

The failure comes from a test-only switch: HERALD_TEST_REQSTORE_FAIL=<file>
makes every commit of the request store fail while <file> exists."""
import os

from apilib import Device, api, check_error, warm_up
from heraldtest import Backend, Herald, Mosquitto, TmpDir, main, wait_for


def start():
    tmp = TmpDir()
    flag = tmp.join("reqstore-fail")
    broker = Mosquitto(tmp)
    backend = Backend()
    h = Herald(tmp, broker=broker, backend=backend,
               env={"HERALD_TEST_REQSTORE_FAIL": flag}).wait_ready()
    warm_up(h, broker)
    return tmp, broker, backend, h, flag


def failing(flag, on):
    if on:
        open(flag, "w").close()
    else:
        os.unlink(flag)


def test_refused_create_never_happens():
    tmp, broker, backend, h, flag = start()
    dev = Device(broker, "cf-online").connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/cf-online")[1].get("online"), 10,
             what="cf-online to be online")

    failing(flag, True)
    for path in ("/v1/devices/cf-online/requests?wait=5", "/v1/devices/cf-online/requests"):
        st, doc, _ = api(h, "POST", path, {"type": "ok", "commandId": "cf-1"})
        check_error(st, doc, 503, "unavailable")
    st, doc, _ = api(h, "GET", "/v1/requests/cf-1")
    check_error(st, doc, 404)
    dev.marker()
    assert dev.cmds() == [], dev.cmds()
    assert "request store: commit (HERALD_TEST_REQSTORE_FAIL)" in h.log_text()

    failing(flag, False)
    st, rec, _ = api(h, "POST", "/v1/devices/cf-online/requests?wait=10",
                     {"type": "ok", "commandId": "cf-1"})
    assert st == 200 and rec["state"] == "confirmed", (st, rec)
    dev.marker()
    assert [c["commandId"] for c in dev.cmds()] == ["cf-1"], dev.cmds()
    assert all(w["restarts"] == 0 for w in h.workers()), h.workers()
    dev.disconnect()


def test_refused_cancel_keeps_the_request():
    tmp, broker, backend, h, flag = start()
    st, rec, _ = api(h, "POST", "/v1/devices/cf-offline/requests",
                     {"type": "ok", "commandId": "cf-2", "timeout": 120})
    assert st == 202 and rec["state"] == "queued", (st, rec)

    failing(flag, True)
    st, doc, _ = api(h, "DELETE", "/v1/requests/cf-2")
    check_error(st, doc, 503, "unavailable")
    failing(flag, False)
    # What the API shows is what the store holds: still queued.
    st, got, _ = api(h, "GET", "/v1/requests/cf-2")
    assert st == 200 and got["state"] == "queued", (st, got)
    h.stop()
    h.start()
    h.wait_ready()
    st, got, _ = wait_for(lambda: (lambda r: r[0] == 200 and r)(api(h, "GET", "/v1/requests/cf-2")),
                          10, what="the restarted router to answer")
    assert got["state"] == "queued", got

    # The device comes online and gets it: the refused cancel undid nothing.
    dev = Device(broker, "cf-offline").connect()
    wait_for(lambda: api(h, "GET", "/v1/requests/cf-2")[1]["state"] == "confirmed", 15,
             what="cf-2 to be confirmed")
    assert [c["commandId"] for c in dev.cmds()] == ["cf-2"], dev.cmds()
    dev.disconnect()


def test_answer_outlives_the_router():
    """A device answer the router took but could not store is not lost when
    the router then dies: the crypto worker keeps the answer until the
    router acknowledges a committed group, and gives it to the next router.
    (The answer's outbox entry is long gone by then: the spool has it.)"""
    import json
    import signal
    tmp, broker, backend, h, flag = start()
    dev = Device(broker, "cf-answer", answer=lambda cmd: None).connect()
    st, rec, _ = api(h, "POST", "/v1/devices/cf-answer/requests",
                     {"type": "ok", "commandId": "cf-3", "timeout": 60})
    assert st == 202, (st, rec)
    wait_for(lambda: api(h, "GET", "/v1/requests/cf-3")[1]["state"] == "sent" and dev.cmds(),
             10, what="cf-3 sent to the device")

    failing(flag, True)
    dev.c.publish("device/cf-answer/response",
                  json.dumps({"commandId": "cf-3", "success": True, "result": {"r": 3}}), 1)
    wait_for(lambda: "request cf-3: state confirmed not stored" in h.log_text(), 10,
             what="the router to take the answer and fail to store it")
    wait_for(lambda: any(e["payload"].get("commandId") == "cf-3" for e in backend.delivered()
                         if e.get("kind") == "response") and
             h.ctl("stats")["gauges"].get("outbox_depth") == 0, 10,
             what="the answer spooled and gone from the outbox")
    router = h.worker("router")["pid"]
    os.kill(router, signal.SIGKILL)
    failing(flag, False)
    wait_for(lambda: (lambda w: w and w["pid"] != router and w["state"] == "ready")(
        h.worker("router")), 15, what="the router to be restarted")
    st, rec, _ = wait_for(lambda: (lambda r: r[0] == 200 and r[1]["state"] != "sent" and r)(
        api(h, "GET", "/v1/requests/cf-3")), 15, what="cf-3 to end")
    assert rec["state"] == "confirmed" and rec["result"] == {"r": 3}, rec
    crypto = [w for w in h.ctl("stats")["workers"] if w["role"] == "crypto"][0]
    assert crypto["counters"]["hints_resent"] >= 1, crypto
    dev.disconnect()


if __name__ == "__main__":
    main(test_refused_create_never_happens, test_refused_cancel_keeps_the_request,
         test_answer_outlives_the_router)
