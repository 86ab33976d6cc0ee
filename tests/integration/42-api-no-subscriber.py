#!/usr/bin/python3
"""A command the broker takes with no subscriber to get it is not "sent".

herald may take a device to be online that is not connected: the broker lost
it without publishing its Last Will (a broker restart does that), or it left
without saying so.  Mosquitto acknowledges a QoS 1 publish that matched no
subscription with the MQTT 5 reason "no matching subscribers", and drops it.
Such a request stays "queued": it goes out when the device announces itself
again (an "online" status), or, for a device that subscribes without saying
so, on a retry after a wait that doubles from 1 s; one whose timeout passes
first ends "expired", never sent."""
import time

import paho.mqtt.client as mqtt

from apilib import Device, api, puback_reason, request_states, start
from heraldtest import main, wait_for


def vanish(dev):
    """Leave without the Last Will and without saying offline: to herald the
    device is still online (as after a broker restart).  Returns once the
    broker has dropped the device's subscriptions: Mosquitto frees a
    disconnected session on its next loop, and a command it takes before
    that counts the dying session as a subscriber."""
    dev.leave()
    wait_for(lambda: puback_reason(dev.broker, "device/%s/command" % dev.id) == 0x10, 5,
             what="the broker to drop %s's subscriptions" % dev.id)


def no_subscriber_answers(h):
    return h.counter("mqtt", "mqtt_no_subscriber")


def state(h, cid):
    st, rec, _ = api(h, "GET", "/v1/requests/%s" % cid)
    assert st == 200, (st, rec)
    return rec


def test_command_waits_for_the_device_to_come_back():
    tmp, broker, backend, h = start()
    dev = Device(broker, "gone-1").connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/gone-1")[1].get("online"), 5,
             what="gone-1 to be online")
    vanish(dev)
    assert api(h, "GET", "/v1/devices/gone-1")[1]["online"] is True

    st, rec, _ = api(h, "POST", "/v1/devices/gone-1/requests",
                     {"type": "reboot", "params": {"n": 1}, "timeout": 60})
    assert st == 202, (st, rec)
    cid = rec["commandId"]
    # ...and one that cannot wait that long: it must end "expired", not "timeout".
    st, short, _ = api(h, "POST", "/v1/devices/gone-1/requests", {"type": "short", "timeout": 2})
    assert st == 202, (st, short)
    wait_for(lambda: no_subscriber_answers(h) >= 1, 10,
             what="the broker to answer 'no matching subscribers'")
    rec = state(h, cid)
    assert rec["state"] == "queued" and "sentAt" not in rec, rec
    wait_for(lambda: state(h, short["commandId"])["state"] != "queued", 10,
             what="the short request to end")
    rec2 = state(h, short["commandId"])
    assert rec2["state"] == "expired" and "sentAt" not in rec2, rec2

    # The device comes back (subscribes, then says online) just after a
    # retry, whose next one is 2 s or more away: it gets the command once,
    # at once, and confirms it.
    n = no_subscriber_answers(h)
    wait_for(lambda: no_subscriber_answers(h) > n, 10, what="a retry")
    t0 = time.monotonic()
    dev2 = Device(broker, "gone-1").connect()
    wait_for(lambda: any(c.get("commandId") == cid for c in dev2.cmds()), 10,
             what="the command at the device")
    took = time.monotonic() - t0
    wait_for(lambda: state(h, cid)["state"] == "confirmed", 10, what="confirmed")
    print("# command delivered %.0f ms after the device came back" % (took * 1000))
    assert took < 1.5, "the command waited for a retry, not for the device's status"
    got = [c["commandId"] for c in dev2.cmds()]
    assert got == [cid], got     # the expired one never went
    wait_for(lambda: request_states(backend).get(cid) == ["sent", "confirmed"], 10,
             what="sent and confirmed at the backend, once each: %r" % request_states(backend).get(cid))
    assert request_states(backend).get(short["commandId"]) == ["expired"], request_states(backend)


def test_silent_subscriber_gets_it_on_a_retry():
    """A device that subscribes to its commands without a status message:
    the retry after 1 s finds it."""
    tmp, broker, backend, h = start()
    dev = Device(broker, "quiet-1").connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/quiet-1")[1].get("online"), 5,
             what="quiet-1 to be online")
    vanish(dev)
    st, rec, _ = api(h, "POST", "/v1/devices/quiet-1/requests", {"type": "ping", "timeout": 30})
    assert st == 202, (st, rec)
    cid = rec["commandId"]
    wait_for(lambda: no_subscriber_answers(h) >= 1, 10, what="'no matching subscribers'")
    assert state(h, cid)["state"] == "queued"

    got = []
    c = mqtt.Client(client_id="quiet-1", protocol=mqtt.MQTTv311)
    c.on_message = lambda cl, u, msg: got.append(msg.payload)
    c.connect("127.0.0.1", broker.port, keepalive=30)
    c.loop_start()
    try:
        c.subscribe("device/quiet-1/command", 1)
        wait_for(lambda: got, 10, what="the command on a retry")
    finally:
        c.disconnect()
        c.loop_stop()
    rec = state(h, cid)
    assert rec["state"] == "sent" and "sentAt" in rec, rec


if __name__ == "__main__":
    main(test_command_waits_for_the_device_to_come_back, test_silent_subscriber_gets_it_on_a_retry)
