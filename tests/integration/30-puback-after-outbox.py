"""The PUBACK of a device message leaves herald only after the message is in
the outbox (issue 3, "must show" 7).

What tells the two orders apart is the broker, not the backend: once Mosquitto
has a PUBACK for a QoS 1 message it forgets the message; without one it keeps it
in the (persistent) session and sends it again, with the DUP flag, when the
session's client reconnects.  So:

  HERALD_TEST_DIE_AFTER_APPEND=1 makes the mqtt worker _exit(99) inside
  on_message, right after the outbox append of the first message.

  * PUBACK after the outbox write (correct): the PUBACK is still in
    libmosquitto's queue when the process dies, so Mosquitto never gets it
    and, when the restarted worker reconnects with the same client id,
    sends the message again with DUP=1 ("Sending PUBLISH to <herald> (d1,
    q1, ...").  The restarted worker finds the message in its outbox (it
    sends it on from there), recognises the broker's redelivery as the same
    message (same connection and packet id, same content) and acknowledges
    it without storing it twice: the backend gets it exactly once.
  * PUBACK before the outbox write (libmosquitto without threaded_set, which
    writes the PUBACK inside handle__publish before calling on_message):
    Mosquitto has its PUBACK before the worker dies, so there is no DUP
    redelivery: the d1 check below fails.

The second test holds the outbox sync off (HERALD_TEST_SYNC_FAIL: msync
fails with EIO while a file exists) to show both halves of the rule that
PUBACKs wait for the sync and nothing else does: the broker gets no PUBACK
for a device message whose record is not synced, while a request published
for a device in the meantime reaches it; once syncs work again the PUBACK
follows.

Deleting the outbox between the death and the restart would also separate the
orders (only a broker redelivery could then bring the message), but the
supervisor restarts the worker within ~100 ms, so that would be a race; the
broker's own log is exact.  The test also checks the durable half: the
restarted worker reports the record it found, and the backend gets the message
with the id of that record (sequence 1 of the outbox epoch).
"""
import os
import re
import time

import paho.mqtt.client as mqtt

from apilib import Device, api, warm_up
from heraldtest import Backend, Herald, Mosquitto, TmpDir, log, main, wait_for

CLIENT = "test-node-mqtt-0-0"


def logged_setup(env):
    """A broker logging every packet to a file, a backend, and a herald with
    one inbound connection and fsync = batch; returns them and a reader of
    the broker's log."""
    tmp = TmpDir()
    # Mosquitto buffers a log on stdout; a log file is written line by line.
    # Started as root it runs as user mosquitto: give it a directory it may use.
    logdir = TmpDir()
    os.chmod(logdir.path, 0o777)
    mlog = logdir.join("broker.log")
    broker = Mosquitto(tmp, extra="log_type all\nlog_dest file %s\n" % mlog)
    backend = Backend()
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"workers": {"mqtt": 1}, "mqtt": {"connections_per_worker": 1},
                     "spool": {"fsync": "batch"}},
               env=env).wait_ready()

    def broker_log():
        with open(mlog, errors="replace") as f:
            return f.read()
    return broker, backend, h, broker_log


def test_puback_after_outbox_append():
    broker, backend, h, broker_log = logged_setup({"HERALD_TEST_DIE_AFTER_APPEND": "1"})

    # herald's connection subscribed before the device publishes (the broker
    # holds the subscription once it answers SUBACK).
    wait_for(lambda: "Sending SUBACK to %s" % CLIENT in broker_log(), 10,
             what="herald's subscription")

    dev = mqtt.Client(client_id="dev-puback", protocol=mqtt.MQTTv311)
    dev.connect("127.0.0.1", broker.port)
    dev.loop_start()
    payload = '{"dev":"dev-puback","k":"telemetry","seq":0,"cpu":40}'
    info = dev.publish("device/dev-puback/telemetry", payload, qos=1)
    # (a) the device gets its PUBACK from the broker (nothing herald decides).
    info.wait_for_publish(10)
    assert info.is_published(), "the device got no PUBACK from the broker"
    dev.loop_stop()
    dev.disconnect()

    # (b) the mqtt worker died in on_message, after the append.
    wait_for(lambda: "mqtt.0 exited with status 99" in h.log_text(), 10,
             what="the mqtt worker to exit 99")
    assert "HERALD_TEST_DIE_AFTER_APPEND: exiting 99 after append 1 (seq 1)" in h.log_text()

    # The restarted worker found the record in its outbox.
    wait_for(lambda: re.search(r"mqtt\.0: info: outbox .*: epoch \d+, 1 records to send again",
                               h.log_text()), 15, what="the restarted worker to reopen the outbox")

    # The broker's view, in order: first delivery, the dead worker's
    # connection closed without a PUBACK for it, the DUP redelivery on the
    # resumed session, and only then a PUBACK.
    c = re.escape(CLIENT)
    first_re = re.compile(r"Sending PUBLISH to %s \(d0, q1, r0, m(\d+), "
                          r"'device/dev-puback/telemetry'" % c)

    def broker_events():
        lines = broker_log().splitlines()
        first = next((i for i, l in enumerate(lines) if first_re.search(l)), None)
        if first is None:
            return None
        mid = first_re.search(lines[first]).group(1)
        closed = next((i for i, l in enumerate(lines) if i > first and
                       re.search(r"Client %s (closed its connection|disconnected)" % c, l)), None)
        dup = next((i for i, l in enumerate(lines) if re.search(
            r"Sending PUBLISH to %s \(d1, q1, r0, m%s, 'device/dev-puback/telemetry'" % (c, mid),
            l)), None)
        pubacks = [i for i, l in enumerate(lines)
                   if re.search(r"Received PUBACK from %s \(Mid: %s," % (c, mid), l)]
        session = any(re.search(r"Sending CONNACK to %s \(1, 0\)" % c, l) for l in lines)
        return dict(first=first, mid=mid, closed=closed, dup=dup, pubacks=pubacks,
                    session=session)

    ev = wait_for(lambda: (lambda e: e if e and e["dup"] is not None and e["pubacks"]
                           else None)(broker_events()), 15,
                  what="the broker's DUP redelivery and its PUBACK")
    log("broker:", ev)
    mid = ev["mid"]
    assert ev["closed"] is not None and ev["first"] < ev["closed"] < ev["dup"], ev
    # (d) no PUBACK for the message reached the broker before the worker died.
    assert all(i > ev["dup"] for i in ev["pubacks"]), \
        "the broker got the PUBACK before the worker died: %s" % ev
    assert ev["session"], "the broker did not keep herald's session (session present 0)"

    # (c) the message reaches the backend, once, with the id of its outbox record.
    wait_for(lambda: len(backend.delivered()) >= 1, 20, what="delivery to the backend")
    time.sleep(1.5)   # room for a wrong second copy to show up
    envs = [e for e in backend.delivered() if e.get("device") == "dev-puback"]
    assert len(envs) == 1, "delivered %d times: %s" % (len(envs), envs)
    assert envs[0]["topic"] == "device/dev-puback/telemetry"
    assert envs[0]["payload"] == {"dev": "dev-puback", "k": "telemetry", "seq": 0, "cpu": 40}
    # ULID layout of the id: 48-bit time, 16 node, 8 slot, 16 epoch, 40 seq.
    alphabet = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
    v = 0
    for ch in envs[0]["id"]:
        v = v * 32 + alphabet.index(ch)
    assert v & 0xffffffffff == 1, "not the outbox record of the first life: %s" % envs[0]["id"]

    # The switch fires once per state_dir and slot: the restarted worker lives.
    assert os.path.exists(os.path.join(h.sections["herald"]["state_dir"], "outbox",
                                       "0.test-died"))
    w = h.worker("mqtt", 0)
    assert w["state"] == "ready" and w["restarts"] == 1, w
    log("redelivered mid", mid, "kept id", envs[0]["id"])
    assert h.stop() == 0


def test_publish_passes_unsynced_pubacks():
    failing = TmpDir().join("sync-fails")
    broker, backend, h, broker_log = logged_setup({"HERALD_TEST_SYNC_FAIL": failing})
    warm_up(h, broker)

    c = re.escape(CLIENT)
    dev = Device(broker, "dev-held", answer=lambda cmd: None).connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/dev-held")[1].get("online"), 5,
             what="dev-held to be online")

    open(failing, "w").close()
    dev.c.publish("device/dev-held/telemetry", '{"seq":1}', 1)
    tele = re.compile(r"Sending PUBLISH to %s \(d0, q1, r0, m(\d+), "
                      r"'device/dev-held/telemetry'" % c)
    mid = wait_for(lambda: (lambda m: m.group(1) if m else None)(tele.search(broker_log())),
                   5, what="the broker to send the telemetry to herald")
    wait_for(lambda: "outbox msync: Input/output error; holding the PUBACKs" in h.log_text(),
             5, what="the failing sync to be reported")
    # herald has the telemetry (records leave for the backend before their
    # sync when syncs fail): its PUBACK is queued in the worker.
    wait_for(lambda: any(e.get("device") == "dev-held" and e.get("payload") == {"seq": 1}
                         for e in backend.delivered()), 10, what="the telemetry's delivery")
    puback = re.compile(r"Received PUBACK from %s \(Mid: %s," % (c, mid))

    # A request reaches the device while the telemetry's PUBACK is held.
    st, rec, _ = api(h, "POST", "/v1/devices/dev-held/requests", {"type": "t", "timeout": 60})
    assert st == 202, (st, rec)
    wait_for(lambda: any(x.get("commandId") == rec["commandId"] for x in dev.cmds()), 5,
             what="the request to reach the device with the sync failing")
    wait_for(lambda: api(h, "GET", "/v1/requests/" + rec["commandId"])[1]["state"] == "sent",
             5, what="the request to be sent")
    assert os.path.exists(failing)
    assert "outbox msync works again" not in h.log_text()
    assert h.ctl("outbox", "0")["sync_failing"] is True
    assert not puback.search(broker_log()), "a PUBACK left before its record's sync"

    # Syncs work again: the PUBACK follows.
    os.remove(failing)
    wait_for(lambda: puback.search(broker_log()), 5, what="the PUBACK after the sync")
    assert "outbox msync works again" in h.log_text()
    assert h.ctl("outbox", "0")["sync_failing"] is False
    assert h.worker("mqtt", 0)["restarts"] == 0
    dev.disconnect()
    assert h.stop() == 0


if __name__ == "__main__":
    main(test_puback_after_outbox_append, test_publish_passes_unsynced_pubacks)
