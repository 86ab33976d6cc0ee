"""A small spool quota with the backend down: herald stops reading, the broker
holds the messages (its $SYS dropped counter stays 0), and after recovery the
backend has every message."""
import threading
import paho.mqtt.client as mqtt
from heraldtest import (Backend, Herald, Mosquitto, Publisher, TmpDir, check_delivery,
                        distinct_delivered, main, wait_for)


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


if __name__ == "__main__":
    main(test_quota_pauses_reading)
