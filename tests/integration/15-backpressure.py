"""A small spool quota with the backend down: herald stops reading, the broker
holds the messages (its $SYS dropped counter stays 0), and after recovery the
backend has every message.  While its outbox is full, an mqtt worker whose
broker connection drops (it reads nothing, so its keepalive fails) and comes
back does not spin on the unread CONNACK."""
import json
import os
import threading
import time
import paho.mqtt.client as mqtt
from apilib import api
from heraldtest import (Backend, Herald, Mosquitto, Publisher, TmpDir, check_delivery,
                        distinct_delivered, log, main, wait_for)


def test_quota_pauses_reading():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend()
    backend.refuse()                      # the backend is down from the start
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"spool": {"max_bytes": "1M"}}).wait_ready()
    dropped = {"max": 0, "seen": False}
    lock = threading.Lock()

    def on_message(c, u, m):
        with lock:
            dropped["seen"] = True
            dropped["max"] = max(dropped["max"], int(m.payload))
    sysc = mqtt.Client(client_id="sys-watch")
    sysc.on_message = on_message
    sysc.connect("127.0.0.1", broker.port)
    sysc.subscribe("$SYS/broker/publish/messages/dropped", 0)
    sysc.loop_start()

    # ~3 MB of envelopes against a 1 MB spool.
    pub = Publisher(broker.port, ["p-%d" % i for i in range(10)], kinds=("telemetry",),
                    count=300, pad=1000).run()
    wait_for(lambda: h.ctl("spool")["paused"], 30, 0.1, "herald to pause reading")
    st = h.ctl("spool")
    assert st["bytes"] >= 1024 * 1024 * 0.8 and st["depth"] < pub.total(), st
    wait_for(lambda: dropped["seen"], 5, 0.1, "a $SYS dropped report")
    assert dropped["max"] == 0, dropped
    assert "spool full" in h.log_text()

    backend.accept_again()
    wait_for(lambda: distinct_delivered(backend) >= pub.total(), 90, 0.2, "all delivered")
    check_delivery(backend.delivered(), pub)
    wait_for(lambda: not h.ctl("spool")["paused"], 10, 0.1, "reading resumed")
    assert dropped["max"] == 0, dropped
    sysc.loop_stop()
    assert h.stop() == 0


def cpu_s(pid):
    with open("/proc/%d/stat" % pid) as f:
        p = f.read().rsplit(")", 1)[1].split()
    return (int(p[11]) + int(p[12])) / os.sysconf("SC_CLK_TCK")


def test_full_outbox_reconnect_does_not_spin():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    down = threading.Event()
    down.set()
    # Down (503, retry in a second) until told otherwise.
    backend = Backend(respond=lambda handler, body: (503, {"Retry-After": "1"})
                      if down.is_set() else (204, {}))
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"workers": {"mqtt": 1}, "mqtt": {"keepalive": 5, "outbox_bytes": "1M"},
                     "spool": {"max_bytes": "1M"}}).wait_ready()
    mqtt_pid = h.worker("mqtt")["pid"]
    pub = Publisher(broker.port, ["f-%d" % i for i in range(10)], kinds=("telemetry",),
                    count=50, pad=8000).start()
    wait_for(lambda: h.ctl("outbox", "0")["paused_full"], 60, 0.2, "the outbox to fill")

    def counter(name):
        return h.counter("mqtt", name)
    connects, drops = counter("mqtt_connects"), counter("mqtt_disconnects")
    # Reading nothing, the connection misses its keepalive and drops.
    wait_for(lambda: counter("mqtt_disconnects") > drops, 30, 0.2,
             "the connection to drop while the outbox is full")
    c0, t0 = cpu_s(mqtt_pid), time.monotonic()
    wait_for(lambda: time.monotonic() - t0 >= 3, 4, 0.5, "3 s")
    used = cpu_s(mqtt_pid) - c0
    assert used < 0.6, "the mqtt worker used %.2f s of CPU in 3 s" % used
    wait_for(lambda: counter("mqtt_connects") > connects, 30, 0.2, "the connection back")
    down.clear()
    wait_for(lambda: distinct_delivered(backend) >= pub.total(), 120, 0.2, "all delivered")
    check_delivery(backend.delivered(), pub)
    assert h.worker("mqtt")["pid"] == mqtt_pid


def test_event_while_reading_is_paused():
    """While the spool holds reading back, an event still gets the broker's
    PUBACK: the backend hears 202 for an event the device got, not a 503
    (its PUBACK waited behind the paused reads, and the router gave up)."""
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend()
    backend.refuse()
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"workers": {"mqtt": 1}, "spool": {"max_bytes": "1M"}}).wait_ready()
    got, subscribed = [], threading.Event()
    dev = mqtt.Client(client_id="ev-dev")
    dev.on_message = lambda c, u, m: got.append(json.loads(m.payload))
    dev.on_subscribe = lambda c, u, mid, q: subscribed.set()
    dev.connect("127.0.0.1", broker.port)
    dev.subscribe("device/ev-dev/command", 1)
    dev.loop_start()
    assert subscribed.wait(10), "the device's SUBACK"
    pub = Publisher(broker.port, ["q-%d" % i for i in range(10)], kinds=("telemetry",),
                    count=300, pad=1000).run()
    wait_for(lambda: h.ctl("spool")["paused"], 30, 0.1, "herald to pause reading")
    wait_for(lambda: h.ctl("outbox", "0")["paused_spool"], 10, 0.05, "the mqtt worker to pause")
    received0 = h.counter("mqtt", "mqtt_received")
    # Devices keep publishing while the backend posts events.
    more = Publisher(broker.port, ["r-%d" % i for i in range(10)], kinds=("telemetry",),
                     count=200, pad=1000).start()
    i = 0
    while more.thread.is_alive() or i < 3:
        status, doc, _ = api(h, "POST", "/v1/devices/ev-dev/events",
                             {"type": "ping", "params": {"i": i}})
        assert status == 202, (i, status, doc)
        wait_for(lambda: any(e.get("eventId") == doc["eventId"] for e in got), 10, 0.05,
                 "event %d at the device" % i)
        i += 1
    more.wait()
    assert h.ctl("spool")["paused"], "reading resumed: the test proved nothing"
    # The device messages read with the events' PUBACKs keep theirs until
    # reading resumes: the broker sends no more than herald's receive
    # maximum (512) and holds the rest.
    read = h.counter("mqtt", "mqtt_received") - received0
    log("%d events posted while paused; %d device messages read meanwhile" % (i, read))
    assert read <= 512 + 64, "%d device messages read while paused" % read
    dev.loop_stop()
    backend.accept_again()
    pub.sent.update(more.sent)
    wait_for(lambda: distinct_delivered(backend) >= pub.total(), 90, 0.2, "all delivered")
    check_delivery(backend.delivered(), pub)
    assert h.stop() == 0


if __name__ == "__main__":
    main(test_quota_pauses_reading, test_full_outbox_reconnect_does_not_spin,
         test_event_while_reading_is_paused)
