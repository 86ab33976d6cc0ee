#!/usr/bin/python3
"""Requests end to end (issue 4, must show 1, 2, 4 and 8): an online device
confirms, fails or ignores a request (?wait answers 200 with the ended
record; no answer ends in "timeout" within 200 ms of the deadline); requests
for an offline device wait in order, a request that expires while it is
offline is never sent; a repeated commandId gives 200 or 409; cancel; and
every state change after "queued" reaches the backend as a kind "request"
envelope.  A device is online again from its first message after its Last
Will, however soon that message comes, and its view shows its last
telemetry."""
import json
import threading
import time

import paho.mqtt.client as mqtt

from apilib import (Device, api, api_text, check_error, check_record, envelopes, ms,
                    request_states, start)
from heraldtest import TmpDir, main, wait_for


def answer(cmd):
    if cmd["type"] == "ok":
        return ("ok", {"v": cmd["params"].get("x")})
    if cmd["type"] == "fail":
        return ("fail", {"code": "E42", "message": "cannot do that"})
    return None   # "silent": never answers


def check_envelopes(backend, h, want):
    """want: commandId -> its final state.  Each final state arrives as a
    kind "request" envelope shaped as SPEC §2 says, and no "queued" ones."""
    def all_there():
        got = request_states(backend)
        return all(want[c] in got.get(c, []) for c in want)
    wait_for(all_there, 15, what="request envelopes at the backend: %r" % want)
    ids = set()
    for e in envelopes(backend):
        assert set(e) == {"id", "device", "kind", "receivedAt", "gateway", "payload"}, e
        assert e["gateway"] == "test-node" and e["kind"] == "request", e
        assert e["payload"]["device"] == e["device"], e
        assert e["payload"]["state"] != "queued", e
        check_record(e["payload"])
        assert e["id"] not in ids, "envelope id %s delivered twice" % e["id"]
        ids.add(e["id"])


def test_online_round_trip():
    tmp, broker, backend, h = start()
    dev = Device(broker, "dev-online", answer).connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/dev-online")[1].get("online"), 5,
             what="dev-online to be online")

    st, rec, _ = api(h, "POST", "/v1/devices/dev-online/requests?wait=10",
                     {"type": "ok", "params": {"x": 7}})
    assert st == 200, (st, rec)
    check_record(rec)
    assert rec["state"] == "confirmed" and rec["success"] is True and rec["result"] == {"v": 7}, rec
    assert "sentAt" in rec and "completedAt" in rec, rec
    cmd = [c for c in dev.cmds() if c.get("commandId") == rec["commandId"]]
    assert len(cmd) == 1, dev.cmds()
    assert set(cmd[0]) == {"commandId", "type", "params", "expiresAt"}, cmd[0]
    assert cmd[0]["type"] == "ok" and cmd[0]["params"] == {"x": 7}, cmd[0]
    assert cmd[0]["expiresAt"] == rec["expiresAt"], (cmd[0], rec)
    ok_id = rec["commandId"]

    st, rec, _ = api(h, "POST", "/v1/devices/dev-online/requests?wait=10", {"type": "fail"})
    assert st == 200 and rec["state"] == "failed" and rec["success"] is False, (st, rec)
    assert rec["error"] == {"code": "E42", "message": "cannot do that"}, rec
    fail_id = rec["commandId"]

    # No answer: "timeout" at the deadline (createdAt + timeout = expiresAt).
    t0 = time.monotonic()
    st, rec, _ = api(h, "POST", "/v1/devices/dev-online/requests?wait=10",
                     {"type": "silent", "timeout": 2})
    took = time.monotonic() - t0
    assert st == 200 and rec["state"] == "timeout", (st, rec)
    assert "sentAt" in rec and "success" not in rec, rec
    late = ms(rec["completedAt"]) - ms(rec["expiresAt"])
    assert 0 <= late <= 200, "timed out %d ms after the deadline" % late
    assert ms(rec["expiresAt"]) - ms(rec["createdAt"]) == 2000, rec
    assert 1.8 <= took <= 2.5, took
    timeout_id = rec["commandId"]

    # ?wait shorter than the request: 202 with the record as it is now.
    t0 = time.monotonic()
    st, rec, _ = api(h, "POST", "/v1/devices/dev-online/requests?wait=1",
                     {"type": "silent", "timeout": 30})
    assert st == 202 and rec["state"] == "sent", (st, rec)
    assert 0.9 <= time.monotonic() - t0 <= 1.5
    # A sent request can still be cancelled.
    st, rec2, _ = api(h, "DELETE", "/v1/requests/" + rec["commandId"])
    assert st == 200 and rec2["state"] == "cancelled", (st, rec2)
    cancel_id = rec["commandId"]

    st, got, _ = api(h, "GET", "/v1/requests/" + ok_id)
    assert st == 200 and got["state"] == "confirmed" and got["result"] == {"v": 7}, got
    # Without ?wait the answer is 202 at once, and the request goes on.
    st, rec, _ = api(h, "POST", "/v1/devices/dev-online/requests", {"type": "ok", "params": {"x": 1}})
    assert st == 202 and rec["state"] == "queued", (st, rec)
    wait_for(lambda: api(h, "GET", "/v1/requests/" + rec["commandId"])[1]["state"] == "confirmed",
             5, what="the request without ?wait to be confirmed")

    check_envelopes(backend, h, {ok_id: "confirmed", fail_id: "failed", timeout_id: "timeout",
                                 cancel_id: "cancelled", rec["commandId"]: "confirmed"})
    states = request_states(backend)
    assert states[timeout_id] == ["sent", "timeout"], states[timeout_id]
    assert states[cancel_id] == ["sent", "cancelled"], states[cancel_id]
    stats = h.ctl("stats")
    router = [w for w in stats["workers"] if w["role"] == "router"][0]
    assert router["counters"]["req_accepted"] == 5 and router["counters"]["req_completed"] == 5, router
    dev.disconnect()


def test_answer_before_the_broker_ack():
    """The device's answer can reach the router before the broker's
    acknowledgement of the command (another connection, a busy worker):
    the request still announces "sent" before its end to the backend, and
    the late acknowledgement changes nothing."""
    import os
    tmp = TmpDir()
    hold = os.path.join(tmp.path, "hold-published")
    open(hold, "w").close()
    tmp, broker, backend, h = start(tmp=tmp, env={"HERALD_TEST_HOLD_PUBLISHED": hold})
    dev = Device(broker, "dev-early", answer).connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/dev-early")[1].get("online"), 5,
             what="dev-early to be online")
    st, rec, _ = api(h, "POST", "/v1/devices/dev-early/requests?wait=10",
                     {"type": "ok", "params": {"x": 1}})
    assert st == 200 and rec["state"] == "confirmed" and "sentAt" in rec, (st, rec)
    cid = rec["commandId"]
    os.unlink(hold)          # the acknowledgement reaches the router now
    wait_for(lambda: request_states(backend).get(cid) == ["sent", "confirmed"], 10,
             what="sent then confirmed at the backend")
    # the next request goes out once that acknowledgement came
    st, rec, _ = api(h, "POST", "/v1/devices/dev-early/requests?wait=10",
                     {"type": "ok", "params": {"x": 2}})
    assert st == 200 and rec["state"] == "confirmed" and rec["result"] == {"v": 2}, (st, rec)
    assert request_states(backend).get(cid) == ["sent", "confirmed"], request_states(backend)
    assert "HERALD_TEST_HOLD_PUBLISHED" in h.log_text()


def test_mqtt_kill_resends_unconfirmed_command():
    """An mqtt worker killed after publishing a command, before the router
    heard of the broker's acknowledgement: the command goes out again as
    soon as the new worker joins (with the same commandId), not after the
    10 s acknowledgement timeout."""
    import os
    import signal
    tmp = TmpDir()
    hold = os.path.join(tmp.path, "hold-published")
    open(hold, "w").close()
    tmp, broker, backend, h = start(tmp=tmp, conf={"workers": {"mqtt": 1}},
                                    env={"HERALD_TEST_HOLD_PUBLISHED": hold})
    dev = Device(broker, "dev-redo", lambda cmd: None).connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/dev-redo")[1].get("online"), 5,
             what="dev-redo to be online")
    st, rec, _ = api(h, "POST", "/v1/devices/dev-redo/requests", {"type": "x", "timeout": 60})
    assert st == 202, (st, rec)
    cid = rec["commandId"]
    wait_for(lambda: len(dev.cmds()) == 1, 5, what="the command at the device")
    assert api(h, "GET", "/v1/requests/" + cid)[1]["state"] == "queued"   # its ack is held
    old = h.worker("mqtt")
    os.kill(old["pid"], signal.SIGKILL)
    os.unlink(hold)
    wait_for(lambda: api(h, "GET", "/v1/requests/" + cid)[1]["state"] == "sent", 4, 0.05,
             what="the command sent again and acknowledged")
    assert [c["commandId"] for c in dev.cmds()] == [cid, cid], dev.cmds()
    assert "mqtt.0 restarted: 1 publish(es) it had not confirmed" in h.log_text()


def test_offline_queue_in_order():
    tmp, broker, backend, h = start()
    # Accepted first, expires while the device is away: never sent.
    st, short, _ = api(h, "POST", "/v1/devices/dev-off/requests", {"type": "short", "timeout": 1})
    assert st == 202 and short["state"] == "queued", (st, short)
    ids = []
    for name in ("a", "b", "c"):
        st, rec, _ = api(h, "POST", "/v1/devices/dev-off/requests",
                         {"type": "ok", "params": {"x": name}, "timeout": 30})
        assert st == 202 and rec["state"] == "queued", (st, rec)
        ids.append(rec["commandId"])
    st, doc, _ = api(h, "GET", "/v1/devices/dev-off/requests?state=queued")
    assert st == 200, doc
    queued = [r["commandId"] for r in doc["requests"] if r["commandId"] in ids]
    assert queued == ids, (queued, ids)
    wait_for(lambda: api(h, "GET", "/v1/requests/" + short["commandId"])[1]["state"] == "expired",
             5, what="the short request to expire")
    st, rec, _ = api(h, "GET", "/v1/requests/" + short["commandId"])
    assert "sentAt" not in rec and "completedAt" in rec, rec
    late = ms(rec["completedAt"]) - ms(rec["expiresAt"])
    assert 0 <= late <= 200, late
    st, d, _ = api(h, "GET", "/v1/devices/dev-off")
    assert st == 200 and d["online"] is False and d["pending"] == 3, d
    st, doc, _ = api(h, "GET", "/v1/devices/dev-off/requests?state=expired")
    assert [r["commandId"] for r in doc["requests"]] == [short["commandId"]], doc

    dev = Device(broker, "dev-off", answer).connect()
    wait_for(lambda: len(dev.cmds()) >= 3, 10, what="3 commands at the device")
    for c in ids:
        wait_for(lambda: api(h, "GET", "/v1/requests/" + c)[1]["state"] == "confirmed", 5,
                 what="request %s confirmed" % c)
    dev.marker()
    got = [c["commandId"] for c in dev.cmds()]
    assert got == ids, ("order or extra commands", got, ids)
    assert [c["params"]["x"] for c in dev.cmds()] == ["a", "b", "c"]
    st, d, _ = api(h, "GET", "/v1/devices/dev-off")
    assert d["online"] is True and d["pending"] == 0 and d["status"]["state"] == "online", d
    assert "lastSeen" in d, d
    st, doc, _ = api(h, "GET", "/v1/devices?online=true")
    assert st == 200 and [x["id"] for x in doc["devices"]] == ["dev-off"] and doc["next"] is None, doc

    # The Last Will makes it offline; what is accepted then waits again.
    dev.drop()
    wait_for(lambda: api(h, "GET", "/v1/devices/dev-off")[1]["online"] is False, 10,
             what="the Last Will to mark dev-off offline")
    st, doc, _ = api(h, "GET", "/v1/devices?online=true")
    assert doc["devices"] == [], doc
    check_envelopes(backend, h, dict({c: "confirmed" for c in ids}, **{short["commandId"]: "expired"}))
    assert request_states(backend)[short["commandId"]] == ["expired"]


def test_idempotency_and_cancel():
    tmp, broker, backend, h = start()
    body = {"type": "t", "params": {"a": 1}, "commandId": "cmd-1"}
    st, first, _ = api(h, "POST", "/v1/devices/dev-idem/requests", body)
    assert st == 202 and first["commandId"] == "cmd-1", (st, first)
    st, again, _ = api(h, "POST", "/v1/devices/dev-idem/requests", body)
    assert st == 200 and again == first, (st, again, first)
    # The default timeout (30) counts as the same when given explicitly.
    st, again, _ = api(h, "POST", "/v1/devices/dev-idem/requests", dict(body, timeout=30))
    assert st == 200 and again == first, (st, again)
    for other in (dict(body, params={"a": 2}), dict(body, type="u"), dict(body, timeout=31)):
        st, doc, _ = api(h, "POST", "/v1/devices/dev-idem/requests", other)
        check_error(st, doc, 409, "command_id_conflict")
    st, doc, _ = api(h, "POST", "/v1/devices/other-dev/requests", body)
    check_error(st, doc, 409, "command_id_conflict")

    st, rec, _ = api(h, "POST", "/v1/devices/dev-idem/requests", {"type": "t", "commandId": "cmd-2"})
    assert st == 202, rec
    st, rec, _ = api(h, "DELETE", "/v1/requests/cmd-2")
    assert st == 200 and rec["state"] == "cancelled" and "completedAt" in rec, (st, rec)
    check_record(rec)
    st, doc, _ = api(h, "DELETE", "/v1/requests/cmd-2")
    check_error(st, doc, 409, "already_ended")
    st, doc, _ = api(h, "DELETE", "/v1/requests/no-such-cmd")
    check_error(st, doc, 404, "not_found")
    # Cancelled stays cancelled; the same POST again returns that record.
    st, rec, _ = api(h, "POST", "/v1/devices/dev-idem/requests", {"type": "t", "commandId": "cmd-2"})
    assert st == 200 and rec["state"] == "cancelled", (st, rec)

    dev = Device(broker, "dev-idem").connect()
    wait_for(lambda: api(h, "GET", "/v1/requests/cmd-1")[1]["state"] == "confirmed", 10,
             what="cmd-1 confirmed")
    dev.marker()
    assert [c["commandId"] for c in dev.cmds()] == ["cmd-1"], dev.cmds()
    # A confirmed request cannot be cancelled.
    st, doc, _ = api(h, "DELETE", "/v1/requests/cmd-1")
    check_error(st, doc, 409, "already_ended")
    check_envelopes(backend, h, {"cmd-1": "confirmed", "cmd-2": "cancelled"})
    dev.disconnect()


def test_repeat_with_wait_waits():
    # A client that lost the answer of POST ?wait calls it again: the repeat
    # waits as the first call did (before: 200 at once with state "queued",
    # which a ?wait client reads as "ended").
    tmp, broker, backend, h = start()
    body = {"type": "ok", "params": {"x": 1}, "commandId": "rw-1"}
    st, rec, _ = api(h, "POST", "/v1/devices/dev-rw/requests?wait=1", body)
    assert st == 202 and rec["state"] == "queued", (st, rec)
    got = {}

    def repeat():
        got["answer"] = api(h, "POST", "/v1/devices/dev-rw/requests?wait=20", body)
    t = threading.Thread(target=repeat, daemon=True)
    t.start()
    t.join(1.0)
    assert t.is_alive(), "the repeat answered at once: %r" % (got,)
    dev = Device(broker, "dev-rw", answer).connect()
    t.join(15)
    assert not t.is_alive(), "the repeat was not answered when the request ended"
    st, rec, _ = got["answer"]
    assert st == 200 and rec["state"] == "confirmed" and rec["result"] == {"v": 1}, (st, rec)
    # Once ended, a repeat with ?wait answers at once.
    t0 = time.monotonic()
    st, rec, _ = api(h, "POST", "/v1/devices/dev-rw/requests?wait=20", body)
    assert st == 200 and rec["state"] == "confirmed", (st, rec)
    assert time.monotonic() - t0 < 5
    dev.disconnect()


def test_device_list_paging():
    tmp, broker, backend, h = start()
    names = ["pg-%d" % i for i in range(7)]
    for n in reversed(names):
        assert api(h, "POST", "/v1/devices/%s/requests" % n, {"type": "x"})[0] == 202
    dev = Device(broker, "pg-3").connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/pg-3")[1].get("online"), 10, what="pg-3 online")
    seen, cursor, pages = [], "", 0
    while True:
        st, doc, _ = api(h, "GET", "/v1/devices?limit=3&cursor=" + cursor)
        assert st == 200 and len(doc["devices"]) <= 3, doc
        seen += [d["id"] for d in doc["devices"]]
        pages += 1
        if doc["next"] is None:
            break
        cursor = doc["next"]
    # In id order, each once (the warm-up probe is a device too).
    assert seen == sorted(names + ["herald-warmup"]) and pages == 3, (seen, pages)
    for d in api(h, "GET", "/v1/devices?limit=")[1]["devices"]:
        assert set(d) >= {"id", "online", "status", "telemetry", "pending"}, d
    st, doc, _ = api(h, "GET", "/v1/devices?online=true&limit=1")
    assert [d["id"] for d in doc["devices"]] == ["pg-3"] and doc["next"] is None, doc
    st, doc, _ = api(h, "GET", "/v1/devices?online=false&limit=100&cursor=pg-4")
    assert [d["id"] for d in doc["devices"]] == ["pg-5", "pg-6"], doc
    dev.disconnect()


def test_unknown_command_dead_letter():
    """A response no request of this device owns goes to the dead-letter
    store as "unknown_command" (and, like every response, to the backend)."""
    tmp, broker, backend, h = start()
    a = Device(broker, "dl-a", lambda cmd: None).connect()
    b = Device(broker, "dl-b", lambda cmd: None).connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/dl-a")[1].get("online"), 10, what="dl-a online")
    st, rec, _ = api(h, "POST", "/v1/devices/dl-a/requests?wait=1", {"type": "x"})
    assert st == 202 and rec["state"] == "sent", (st, rec)
    # Unknown id, no id, and another device answering dl-a's request.
    a.c.publish("device/dl-a/response", json.dumps({"commandId": "ghost-1", "success": True}), 1)
    a.c.publish("device/dl-a/response", json.dumps({"success": True}), 1)
    b.c.publish("device/dl-b/response", json.dumps({"commandId": rec["commandId"], "success": True}), 1)

    def dead():
        return [e for e in h.ctl("deadletter", "list", "100")["entries"]
                if "unknown_command" in e["reason"]]
    wait_for(lambda: len(dead()) == 3, 15, what="3 unknown_command dead letters")
    got = sorted((e["device"], e["topic"]) for e in dead())
    assert got == [("dl-a", "device/dl-a/response"), ("dl-a", "device/dl-a/response"),
                   ("dl-b", "device/dl-b/response")], got
    # dl-a's request was not touched by dl-b's answer.
    st, rec2, _ = api(h, "GET", "/v1/requests/" + rec["commandId"])
    assert rec2["state"] == "sent", rec2
    wait_for(lambda: len(envelopes(backend, "response")) == 3, 15, what="3 response envelopes")
    # Its own answer, late but before the deadline, still confirms it.
    a.c.publish("device/dl-a/response", json.dumps({"commandId": rec["commandId"], "success": True,
                                                    "result": {"late": 1}}), 1)
    wait_for(lambda: api(h, "GET", "/v1/requests/" + rec["commandId"])[1]["state"] == "confirmed",
             10, what="the late answer to confirm")
    a.disconnect()
    b.disconnect()


def test_back_online_right_after_last_will():
    tmp, broker, backend, h = start()
    c = mqtt.Client(client_id="po-pub", protocol=mqtt.MQTTv311)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()

    def online():
        st, doc, _ = api(h, "GET", "/v1/devices/po-dev")
        return st == 200 and doc["online"]
    try:
        c.publish("device/po-dev/telemetry", json.dumps({"n": 1}), 1).wait_for_publish()
        wait_for(online, 10, 0.05, "po-dev online from its telemetry")
        # Its Last Will, then at once a message of the device back online.
        c.publish("device/po-dev/status", json.dumps({"state": "offline"}), 1,
                  True).wait_for_publish()
        wait_for(lambda: not online(), 10, 0.02, "po-dev offline")
        c.publish("device/po-dev/telemetry", json.dumps({"n": 2}), 1).wait_for_publish()
        wait_for(online, 10, 0.05, "po-dev online again from its next message")
        # The device's view has its last telemetry (SPEC §3), and when.
        st, doc, _ = api(h, "GET", "/v1/devices/po-dev")
        assert doc["telemetry"] == {"n": 2} and doc["telemetryAt"], doc
        assert doc["status"] == {"state": "offline"}, doc
    finally:
        c.loop_stop()
        c.disconnect()


def test_view_ends_at_the_last_telemetry():
    # A burst of telemetry, then silence: the device's view ends at the
    # burst's last message, a second later at most (before: it kept the
    # first of the burst's last second for good).  One inbound connection:
    # through several, the burst's last two may arrive swapped.
    tmp, broker, backend, h = start({"workers": {"mqtt": 1}})
    c = mqtt.Client(client_id="burst-pub", protocol=mqtt.MQTTv311)
    c.connect("127.0.0.1", broker.port)
    c.loop_start()
    try:
        for n in range(300):
            info = c.publish("device/burst-dev/telemetry", json.dumps({"n": n}), 1)
        info.wait_for_publish()

        def last():
            st, doc, _ = api(h, "GET", "/v1/devices/burst-dev")
            return st == 200 and doc.get("telemetry") == {"n": 299}
        wait_for(last, 5, 0.1, "the view at the last telemetry")
    finally:
        c.loop_stop()
        c.disconnect()

def test_params_verbatim():
    """A request's params reach the device, the record and the backend as
    the backend wrote them, whitespace between tokens aside (before:
    numbers past int64 or a double were 400 invalid_json, others rewritten:
    0.1 as 0.10000000000000001, 1e2 as 100.0)."""
    tmp, broker, backend, h = start()
    dev = Device(broker, "dev-num", answer).connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/dev-num")[1].get("online"), 5,
             what="dev-num to be online")
    params = (b'{"id":18446744073709551615,"v":1e400,"price":0.1,"ratio":1e2,"neg0":-0.0,'
              b'"pi":3.141592653589793238,"tiny":1e-7,"s":"\\u00e9\\/","a":[1.50,{"b":-0}]}')
    spaced = params.replace(b",", b" ,\n ").replace(b":", b" : ")
    assert spaced != params
    st, text = api_text(h, "POST", "/v1/devices/dev-num/requests",
                        b'{ "type" : "silent", "commandId":"num-1", "timeout": 2, "params" : '
                        + spaced + b" }")
    assert st == 202 and b'"params":' + params + b"," in text, (st, text)
    wait_for(lambda: dev.raw, 5, what="the command at the device")
    assert b'"params":' + params + b"," in dev.raw[0], dev.raw[0]
    st, text = api_text(h, "GET", "/v1/requests/num-1", None)
    assert st == 200 and b'"params":' + params + b"," in text, text
    st, text = api_text(h, "GET", "/v1/devices/dev-num/requests", None)
    assert st == 200 and b'"params":' + params + b"," in text, text
    # The same params spaced otherwise repeat the request (the rest of the
    # rule: test_repeat_params_rule).
    st, text = api_text(h, "POST", "/v1/devices/dev-num/requests",
                        b'{"type":"silent","commandId":"num-1","params":' + params + b"}")
    assert st == 200, (st, text)
    # Every kind "request" envelope (sent, timeout) carries them too.
    wait_for(lambda: "timeout" in request_states(backend).get("num-1", []), 10,
             what="num-1's timeout at the backend")
    posts = [p[2] for p in backend.posts if b'"num-1"' in p[2]]
    assert len(posts) >= 2 and all(b'"params":' + params + b"," in p for p in posts), posts
    dev.disconnect()


def test_repeat_params_rule():
    """README: a repeat's params match when they are the same text, or the
    same JSON once parsed (numbers as int64 or double; one past both ranges
    only as text).  One case each, every one against its own request."""
    tmp, broker, backend, h = start()
    base = b'{"a":1,"f":0.1,"l":[1,2]}'
    cases = (
        ("same text", base, base, 200),
        ("spacing", base, b'{ "a" : 1 ,\n "f":0.1, "l":[ 1,2 ] }', 200),
        ("key order", base, b'{"l":[1,2],"f":0.1,"a":1}', 200),
        ("escapes", b'{"s":"/\xc3\xa9"}', b'{"s":"\\/\\u00e9"}', 200),
        ("0.1 vs 0.10: the same double", base, base.replace(b"0.1", b"0.10"), 200),
        ("absent vs {}", None, b"{}", 200),
        ("another value", base, base.replace(b'"a":1', b'"a":2'), 409),
        ("array order", base, base.replace(b"[1,2]", b"[2,1]"), 409),
        ("1 vs 1.0: int64 vs double", base, base.replace(b'"a":1', b'"a":1.0'), 409),
        ("past int64, same text", b'{"n":18446744073709551615,"a":1}',
         b'{"n":18446744073709551615,"a":1}', 200),
        ("past a double, key order", b'{"v":1e400,"a":1}', b'{"a":1,"v":1e400}', 409),
        ("past a double, other number", b'{"v":1e400}', b'{"v":1e401}', 409),
    )
    for i, (what, first, again, want) in enumerate(cases):
        def post(params):
            return api_text(h, "POST", "/v1/devices/dev-rule/requests",
                            b'{"type":"t","commandId":"rule-%d"' % i
                            + (b',"params":' + params if params is not None else b"") + b"}")
        st, text = post(first)
        assert st == 202, (what, st, text)
        st, text = post(again)
        assert st == want, (what, st, text)


def test_device_requests_paging():
    """GET /v1/devices/{id}/requests pages as GET /v1/devices does: limit,
    cursor and next.  Without a cursor it is the newest ones in accept
    order, as before paging came (e727283 gave the oldest); next leads to
    older pages, each in accept order."""
    tmp, broker, backend, h = start()
    ids = []
    for i in range(7):
        st, rec, _ = api(h, "POST", "/v1/devices/dev-pg/requests", {"type": "t%d" % i})
        assert st == 202, rec
        ids.append(rec["commandId"])
    for c in ids[:5]:
        assert api(h, "DELETE", "/v1/requests/" + c)[0] == 200
    st, doc, _ = api(h, "GET", "/v1/devices/dev-pg/requests")
    assert [r["commandId"] for r in doc["requests"]] == ids and doc["next"] is None, doc
    st, doc, _ = api(h, "GET", "/v1/devices/dev-pg/requests?limit=2")
    assert [r["commandId"] for r in doc["requests"]] == ids[5:] and doc["next"], doc
    for query, want, size in (("", ids, 3), ("state=cancelled&", ids[:5], 2),
                              ("state=queued&", ids[5:], 1)):
        pages, cursor = [], ""
        while True:
            st, doc, _ = api(h, "GET", "/v1/devices/dev-pg/requests?%slimit=%d&cursor=%s"
                             % (query, size, cursor))
            assert st == 200 and 0 < len(doc["requests"]) <= size, (query, doc)
            pages.append([r["commandId"] for r in doc["requests"]])
            if doc["next"] is None:
                break
            cursor = doc["next"]
        expect = [want[max(0, e - size):e] for e in range(len(want), 0, -size)]
        assert pages == expect, (query, pages, expect)
    # The largest cursor there is: every request is before it.
    st, doc, _ = api(h, "GET", "/v1/devices/dev-pg/requests?cursor=9223372036854775807")
    assert st == 200 and [r["commandId"] for r in doc["requests"]] == ids, doc
    for bad in ("limit=0", "limit=1001", "cursor=x1", "cursor=-1",
                "cursor=9223372036854775808", "cursor=9999999999999999999",
                "cursor=18446744073709551616"):
        st, doc, _ = api(h, "GET", "/v1/devices/dev-pg/requests?" + bad)
        check_error(st, doc, 400, "invalid_field")
    st, doc, _ = api(h, "GET", "/v1/devices/nobody/requests?limit=5")
    assert st == 200 and doc == {"requests": [], "next": None}, doc


def test_response_verbatim():
    """A device's result and error reach the record and the backend as it
    wrote them, whitespace between tokens aside (before: read with jansson,
    a number past int64 or a double made the response unknown_command and
    the request timed out; 21.3 became 21.300000000000001)."""
    tmp, broker, backend, h = start()
    dev = Device(broker, "dev-resp", lambda cmd: None).connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/dev-resp")[1].get("online"), 5,
             what="dev-resp to be online")
    result = b'{"big":18446744073709551615,"huge":1e400,"t":21.3,"s":"a b\\u00e9","l":[1.50,-0]}'
    error = b'{"code":"E1","message":"m","at":-1e400,"n":-99999999999999999999}'
    answers = {
        "rv-ok": b'{ "commandId" : "rv-ok", "success" : true, "result" : '
                 + result.replace(b",", b" ,\n ") + b" }",
        "rv-fail": b'{"error":' + error + b',"success":false,"commandId":"rv-fail"}',
        # A number there does not hide the rest either.
        "rv-num": b'{"commandId":"rv-num","success":true,"result":1e999}',
    }
    for cid in answers:
        st, rec, _ = api(h, "POST", "/v1/devices/dev-resp/requests",
                         {"type": "t", "commandId": cid, "timeout": 5})
        assert st == 202, rec
    wait_for(lambda: len(dev.cmds()) == 3, 5, what="the commands at the device")
    for cid, payload in answers.items():
        dev.c.publish("device/dev-resp/response", payload, 1)
    want = {"rv-ok": ("confirmed", b'"result":' + result),
            "rv-fail": ("failed", b'"error":' + error),
            "rv-num": ("confirmed", b'"result":1e999')}
    for cid, (state, text) in want.items():
        wait_for(lambda: api(h, "GET", "/v1/requests/" + cid)[1]["state"] != "sent", 4,
                 what="%s answered" % cid)
        st, body = api_text(h, "GET", "/v1/requests/" + cid, None)
        assert st == 200 and b'"state":"%s"' % state.encode() in body and text in body, body
        check_record(json.loads(body))
        st, body = api_text(h, "GET", "/v1/devices/dev-resp/requests", None)
        assert text in body, body
    check_envelopes(backend, h, {c: w[0] for c, w in want.items()})
    for cid, (state, text) in want.items():
        posts = [p[2] for p in backend.posts if b'"%s"' % cid.encode() in p[2]
                 and b'"state":"%s"' % state.encode() in p[2]]
        assert posts and all(text in p for p in posts), (cid, posts)
    dev.disconnect()


if __name__ == "__main__":
    main(test_online_round_trip, test_answer_before_the_broker_ack,
         test_mqtt_kill_resends_unconfirmed_command, test_offline_queue_in_order,
         test_idempotency_and_cancel,
         test_repeat_with_wait_waits, test_device_list_paging, test_unknown_command_dead_letter,
         test_back_online_right_after_last_will, test_view_ends_at_the_last_telemetry,
         test_params_verbatim, test_repeat_params_rule, test_device_requests_paging,
         test_response_verbatim)
