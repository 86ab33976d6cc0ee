#!/usr/bin/python3
"""A request store that cannot commit (issue 4, committed before answered):
while commits fail, the API answers 503 with SPEC's error body, and what was
not stored never happens -- a refused request never reaches the device and
leaves no record, a refused cancel leaves the request queued.  Once the
store works again the same calls succeed, the router never restarted, and
a restart of herald shows exactly what was stored.  What a device said while
commits failed (an answer, a Last Will) is not lost when the router then dies:
the next router gets it again, and an old Last Will does not undo what the
device said since.

The failure comes from a test-only switch: HERALD_TEST_REQSTORE_FAIL=<file>
makes every commit of the request store fail while <file> exists."""
import os
import threading
import time

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


def test_refused_create_answers_its_repeats():
    """A repeat of a POST ?wait (same commandId) that came while the first
    one's group was being written waits on it; when that write fails, the
    repeat is told so too (before: it was left without an answer until the
    api worker gave up on the router, seconds later)."""
    tmp, broker, backend, h, flag = start()
    failing(flag, True)
    body = {"type": "ok", "commandId": "cf-rep"}
    for attempt in range(5):
        got = []

        def post():
            t0 = time.monotonic()
            st, doc, _ = api(h, "POST", "/v1/devices/cf-off/requests?wait=8", body)
            got.append((st, time.monotonic() - t0))
        ts = [threading.Thread(target=post) for _ in range(4)]
        for t in ts:
            t.start()
        for t in ts:
            t.join(30)
        assert len(got) == 4 and all(st == 503 for st, _ in got), got
        assert all(took < 4 for _, took in got), got
    st, doc, _ = api(h, "GET", "/v1/requests/cf-rep")
    check_error(st, doc, 404)
    failing(flag, False)


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


def answer_outlives_the_router(dev_id, cid, chatty):
    import json
    import signal
    import threading
    tmp, broker, backend, h, flag = start()
    dev = Device(broker, dev_id, answer=lambda cmd: None).connect()
    st, rec, _ = api(h, "POST", "/v1/devices/%s/requests" % dev_id,
                     {"type": "ok", "commandId": cid, "timeout": 60})
    assert st == 202, (st, rec)
    wait_for(lambda: api(h, "GET", "/v1/requests/" + cid)[1]["state"] == "sent" and dev.cmds(),
             10, what="%s sent to the device" % cid)

    failing(flag, True)
    dev.c.publish("device/%s/response" % dev_id,
                  json.dumps({"commandId": cid, "success": True, "result": {"r": 3}}), 1)
    wait_for(lambda: "request %s: state confirmed not stored" % cid in h.log_text(), 10,
             what="the router to take the answer and fail to store it")
    wait_for(lambda: any(e["payload"].get("commandId") == cid for e in backend.delivered()
                         if e.get("kind") == "response") and
             h.ctl("stats")["gauges"].get("outbox_depth") == 0, 10,
             what="the answer spooled and gone from the outbox")
    stop = threading.Event()

    def heartbeats():
        while not stop.wait(0.02):
            dev.c.publish("device/%s/status" % dev_id, json.dumps({"state": "online"}), 1)
    beat = threading.Thread(target=heartbeats)
    if chatty:
        beat.start()
    try:
        router = h.worker("router")["pid"]
        os.kill(router, signal.SIGKILL)
        failing(flag, False)
        wait_for(lambda: (lambda w: w and w["pid"] != router and w["state"] == "ready")(
            h.worker("router")), 15, what="the router to be restarted")
        # Sent again 2 s after the first, then 4 s later (both inside the
        # wait), then 8 s later.
        st, rec, _ = wait_for(lambda: (lambda r: r[0] == 200 and r[1]["state"] != "sent" and r)(
            api(h, "GET", "/v1/requests/" + cid)), 8, what="%s to end" % cid)
    finally:
        stop.set()
        if chatty:
            beat.join()
    assert rec["state"] == "confirmed" and rec["result"] == {"r": 3}, rec
    assert h.counter("crypto", "hints_resent") >= 1
    dev.disconnect()


def test_answer_outlives_the_router():
    """A device answer the router took but could not store is not lost when
    the router then dies: the crypto worker keeps the answer until the
    router acknowledges a committed group, and gives it to the next router.
    (The answer's outbox entry is long gone by then: the spool has it.)"""
    answer_outlives_the_router("cf-answer", "cf-3", chatty=False)


def test_answer_outlives_the_router_chatty_device():
    """The same while the device sends a status every 20 ms: its record is
    always waiting to be written, and the answer is still taken at once."""
    answer_outlives_the_router("cf-chatty", "cf-4", chatty=True)


def test_resent_last_will_does_not_undo_later_messages():
    """A Last Will the router took but could not store comes again to the
    next router; by then the device spoke again (telemetry, no status): the
    old Last Will must not set it offline."""
    import json
    import signal
    import paho.mqtt.client as mqtt
    tmp, broker, backend, h, flag = start()

    def online():
        return api(h, "GET", "/v1/devices/cf-lw")[1].get("online")

    dev = Device(broker, "cf-lw").connect()
    wait_for(lambda: online() is True, 10, what="cf-lw online")
    failing(flag, True)
    dev.drop()
    wait_for(lambda: online() is False, 10, what="the router to take the Last Will")
    router = h.worker("router")["pid"]
    os.kill(router, signal.SIGKILL)
    failing(flag, False)
    wait_for(lambda: (lambda w: w and w["pid"] != router and w["state"] == "ready")(
        h.worker("router")), 15, what="the router to be restarted")
    wait_for(lambda: online() is True, 10, what="the stored presence (online)")
    before = h.counter("crypto", "hints_resent")

    c = mqtt.Client(client_id="cf-lw-helper", protocol=mqtt.MQTTv311)
    c.connect("127.0.0.1", broker.port, keepalive=30)
    c.loop_start()
    c.publish("device/cf-lw/telemetry", json.dumps({"t": 1}), 1).wait_for_publish()
    wait_for(lambda: api(h, "GET", "/v1/devices/cf-lw")[1].get("telemetry") == {"t": 1}, 10,
             what="the device's telemetry at the router")
    wait_for(lambda: h.counter("crypto", "hints_resent") > before, 10, what="the Last Will sent again")
    # Hints reach the router in order: once this answer is dead-lettered,
    # the Last Will sent before it has been handled.
    c.publish("device/cf-lw-probe/response", json.dumps({"commandId": "cf-none"}), 1)
    wait_for(lambda: any(e["device"] == "cf-lw-probe" for e in
                         h.ctl("deadletter", "list", "100")["entries"]), 10,
             what="the probe answer handled")
    assert online() is True, api(h, "GET", "/v1/devices/cf-lw")[1]
    c.disconnect()
    c.loop_stop()


if __name__ == "__main__":
    main(test_refused_create_never_happens, test_refused_create_answers_its_repeats,
         test_refused_cancel_keeps_the_request,
         test_answer_outlives_the_router, test_answer_outlives_the_router_chatty_device,
         test_resent_last_will_does_not_undo_later_messages)
