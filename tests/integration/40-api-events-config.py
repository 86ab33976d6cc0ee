#!/usr/bin/python3
"""Events and retained configuration (issue 4, must show 5): an event
reaches an online device; configuration set with PUT reaches a device that
connects later (retained), a connected device gets updates, and DELETE
clears it so a new connection receives nothing."""
import json

from apilib import Device, api, api_text, check_error, start
from heraldtest import main, wait_for


def test_event_online():
    tmp, broker, backend, h = start()
    dev = Device(broker, "ev-dev").connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/ev-dev")[1].get("online"), 10,
             what="ev-dev to be online")
    st, doc, _ = api(h, "POST", "/v1/devices/ev-dev/events", {"type": "blink", "params": {"n": 3}})
    assert st == 202 and set(doc) == {"eventId", "state"} and doc["state"] == "sent", (st, doc)
    wait_for(lambda: dev.cmds(), 5, what="the event at the device")
    assert dev.cmds() == [{"eventId": doc["eventId"], "type": "blink", "params": {"n": 3}}], dev.cmds()
    # params may be left out; each event has its own id.
    st, doc2, _ = api(h, "POST", "/v1/devices/ev-dev/events", {"type": "ping"})
    assert st == 202 and doc2["eventId"] != doc["eventId"], doc2
    wait_for(lambda: len(dev.cmds()) == 2, 5, what="the second event")
    assert dev.cmds()[1] == {"eventId": doc2["eventId"], "type": "ping", "params": {}}, dev.cmds()
    st, err, _ = api(h, "POST", "/v1/devices/ev-dev/events", {"params": {}})
    check_error(st, err, 400, "invalid_field")
    # Events are fire and forget: no request envelopes, nothing pending.
    st, d, _ = api(h, "GET", "/v1/devices/ev-dev")
    assert d["pending"] == 0, d
    dev.disconnect()
    # Gone (a clean session): the broker drops the event, and the answer says so.
    st, doc3, _ = api(h, "POST", "/v1/devices/ev-dev/events", {"type": "blink"})
    assert st == 202 and doc3["state"] == "no_subscriber" and doc3["eventId"], (st, doc3)
    assert len(dev.cmds()) == 2, dev.cmds()


def test_config_retained():
    tmp, broker, backend, h = start()
    st, doc, _ = api(h, "PUT", "/v1/devices/cfg-dev/config", {"brightness": 80, "mode": "day"})
    assert st == 200, (st, doc)
    # The device connects afterwards: the broker kept it.
    dev = Device(broker, "cfg-dev").connect()
    wait_for(lambda: dev.configs, 5, what="the retained config")
    payload, retained = dev.configs[0]
    assert json.loads(payload) == {"brightness": 80, "mode": "day"} and retained, dev.configs
    # An update reaches the connected device at once.
    st, doc, _ = api(h, "PUT", "/v1/devices/cfg-dev/config", {"brightness": 50})
    assert st == 200
    wait_for(lambda: len(dev.configs) == 2, 5, what="the config update")
    assert json.loads(dev.configs[1][0]) == {"brightness": 50}
    st, doc, hdrs = api(h, "DELETE", "/v1/devices/cfg-dev/config")
    assert st == 204 and doc is None, (st, doc)
    wait_for(lambda: len(dev.configs) == 3, 5, what="the clearing message")
    assert dev.configs[2][0] == b"", dev.configs
    dev.disconnect()
    # A new connection finds nothing retained any more.
    dev2 = Device(broker, "cfg-dev").connect()
    dev2.marker()
    assert dev2.configs == [], dev2.configs
    st, err, _ = api(h, "PUT", "/v1/devices/cfg-dev/config", raw=b"[1,2]")
    check_error(st, err, 400, "invalid_json")
    st, err, _ = api(h, "PUT", "/v1/devices/bad%20id/config", {"a": 1})
    check_error(st, err, 400, "invalid_id")
    dev2.disconnect()


def test_verbatim_numbers():
    """Event params and configuration reach the device as the backend wrote
    them, whitespace between tokens aside (before: numbers past int64 or a
    double were 400 invalid_json, 0.1 became 0.10000000000000001, -0 in an
    event 0)."""
    tmp, broker, backend, h = start()
    dev = Device(broker, "num-dev").connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/num-dev")[1].get("online"), 10,
             what="num-dev to be online")
    obj = (b'{"price":0.1,"ratio":1e2,"neg0":-0.0,"z":-0,"big":9007199254740993,'
           b'"huge":12345678901234567890123,"inf":1e400,"pi":3.141592653589793238,"tiny":1e-7}')
    spaced = obj.replace(b",", b", ").replace(b"{", b"{\n\t")
    st, text = api_text(h, "POST", "/v1/devices/num-dev/events",
                        b'{"type":"n","params":' + spaced + b"}")
    assert st == 202, (st, text)
    wait_for(lambda: dev.raw, 5, what="the event at the device")
    assert dev.raw[0].endswith(b'"type":"n","params":' + obj + b"}"), dev.raw[0]
    st, text = api_text(h, "PUT", "/v1/devices/num-dev/config", b" " + spaced + b"\r\n")
    assert st == 200 and json.loads(text) == {"id": "num-dev", "state": "sent"}, (st, text)
    wait_for(lambda: dev.configs, 5, what="the config at the device")
    assert dev.configs[0][0] == obj, dev.configs
    dev.disconnect()


if __name__ == "__main__":
    main(test_event_online, test_config_retained, test_verbatim_numbers)
