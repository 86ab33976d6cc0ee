"""Broker sessions the configuration no longer uses are ended, not left
behind: Mosquitto keeps giving a persistent session that is away its turn
of the shared subscription's messages, so a session of an old node_name or
of a retired worker would take its share of every new device message.  And
the filters of an old share_group are dropped, or every message would come
twice.  Each test publishes after the change and checks that the backend
gets every message once, and that the broker has no session left over."""
import os
import signal
import subprocess
from heraldtest import (MOSQUITTO_PUB, Backend, Herald, Mosquitto, Publisher, TmpDir,
                        check_delivery, distinct_delivered, log, main, wait_for)


def broker_sys(broker, name):
    """A $SYS value of the broker (published every second)."""
    r = subprocess.run(["mosquitto_sub", "-p", str(broker.port), "-t", "$SYS/broker/" + name,
                        "-C", "1", "-W", "3"], capture_output=True, text=True)
    return int(r.stdout.split()[0]) if r.stdout.strip() else None


def no_session_left(broker):
    """Every persistent session herald holds is connected: none is away."""
    return broker_sys(broker, "clients/disconnected") == 0


def mqtt_workers(h):
    return sorted(w["slot"] for w in h.workers() if w["role"] == "mqtt")


def deliver_all(backend, pub, timeout=30):
    wait_for(lambda: distinct_delivered(backend) >= pub.total(), timeout, 0.05,
             "all %d messages at the backend" % pub.total())
    got = distinct_delivered(backend)
    assert got == pub.total(), "%d distinct messages, %d published" % (got, pub.total())


def setup(conf):
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend()
    h = Herald(tmp, conf=conf, broker=broker, backend=backend).wait_ready()
    return tmp, broker, backend, h


def test_node_name_change_ends_old_sessions():
    tmp, broker, backend, h = setup({"workers": {"mqtt": 1}, "herald": {"node_name": "node-a"}})
    h.sections["herald"]["node_name"] = "node-b"
    h.write()
    assert h.ctl("reload")["ok"] is True
    h.wait_ready()
    pub = Publisher(broker.port, ["nn1", "nn2"], kinds=["telemetry"], count=20).run()
    deliver_all(backend, pub)
    wait_for(lambda: no_session_left(broker), 10, 0.2, "no session left at the broker")
    assert "node-a-mqtt-0-0: broker session ended" in h.log_text()
    gateways = {e["gateway"] for e in backend.delivered()}
    assert gateways == {"node-b"}, gateways
    # The record names the new session only.
    rec = open(os.path.join(h.sections["herald"]["state_dir"], "outbox", "0.sessions")).read()
    assert "node-b-mqtt-0-0 " in rec and "node-a" not in rec, rec


def test_node_name_change_under_traffic_keeps_ids():
    """The broker sends again what was in flight when a connection went; a
    message already in the outbox must keep its id, also when the client
    id it came through is now a retiring one, and after a kill that
    follows the change."""
    tmp, broker, backend, h = setup({"workers": {"mqtt": 1}, "herald": {"node_name": "node-a"}})
    pub = Publisher(broker.port, ["tr-%d" % i for i in range(20)], kinds=["telemetry"],
                    count=300).start()
    wait_for(lambda: distinct_delivered(backend) >= 1000, 30, 0.02, "traffic flowing")
    h.sections["herald"]["node_name"] = "node-b"
    h.write()
    assert h.ctl("reload")["ok"] is True
    pub.wait()
    deliver_all(backend, pub, 60)
    wait_for(lambda: "node-a-mqtt-0-0: broker session ended" in h.log_text(), 15, 0.05,
             "the old session to end")
    # A kill under traffic after the change: the broker redelivers to
    # node-b's session what it had in flight.
    pub2 = Publisher(broker.port, ["tk-%d" % i for i in range(20)], kinds=["telemetry"],
                     count=300).start()
    wait_for(lambda: distinct_delivered(backend) >= pub.total() + 1000, 30, 0.02,
             "traffic flowing again")
    os.kill(h.worker("mqtt")["pid"], signal.SIGKILL)
    pub2.wait()
    pub2.sent.update(pub.sent)
    deliver_all(backend, pub2, 60)
    distinct, dups = check_delivery(backend.delivered(), pub2, node=("node-a", "node-b"))
    log("%d messages, %d delivered again with their first id" % (distinct, dups))


def test_fewer_workers_after_a_restart_drains_the_retired_session():
    tmp, broker, backend, h = setup({"workers": {"mqtt": 2}})
    assert h.stop() == 0
    # Herald is down: the broker queues each message for one of the two
    # sessions, in turn.
    pub = Publisher(broker.port, ["fw1", "fw2"], kinds=["telemetry", "events"], count=10).run()
    h.sections["workers"]["mqtt"] = 1
    h.write()
    h.start()
    # Slot 1 runs to take what its session held, then ends it and goes.
    deliver_all(backend, pub)
    wait_for(lambda: mqtt_workers(h) == [0], 15, 0.1, "the retiring slot 1 to finish")
    assert "mqtt.1 retired" in h.log_text()
    state = h.sections["herald"]["state_dir"]
    for name in ("1.ring", "1.recent", "1.sessions"):
        assert not os.path.exists(os.path.join(state, "outbox", name)), name
    wait_for(lambda: no_session_left(broker), 10, 0.2, "no session left at the broker")
    # New messages all reach the backend through the one worker left.
    pub2 = Publisher(broker.port, ["fw3"], kinds=["telemetry"], count=20).run()
    pub2.sent.update(pub.sent)
    deliver_all(backend, pub2)
    assert h.stop() == 0


def test_reload_with_fewer_workers_ends_their_sessions():
    tmp, broker, backend, h = setup({"workers": {"mqtt": 2}})
    h.sections["workers"]["mqtt"] = 1
    h.write()
    assert h.ctl("reload")["ok"] is True
    wait_for(lambda: mqtt_workers(h) == [0], 15, 0.1, "mqtt.1 to retire")
    wait_for(lambda: no_session_left(broker), 10, 0.2, "no session left at the broker")
    pub = Publisher(broker.port, ["rw1", "rw2"], kinds=["telemetry"], count=20).run()
    deliver_all(backend, pub)
    # Raised again: slot 1 is an ordinary worker once more.
    h.sections["workers"]["mqtt"] = 2
    h.write()
    assert h.ctl("reload")["ok"] is True
    h.wait_ready()
    pub2 = Publisher(broker.port, ["rw3"], kinds=["telemetry"], count=20).run()
    pub2.sent.update(pub.sent)
    deliver_all(backend, pub2)


def test_share_group_change_drops_old_filters():
    tmp, broker, backend, h = setup({"workers": {"mqtt": 1}})
    h.sections["mqtt"]["share_group"] = "other"
    h.write()
    assert h.ctl("reload")["ok"] is True
    h.wait_ready()
    pub = Publisher(broker.port, ["sg1"], kinds=["telemetry"], count=20).run()
    deliver_all(backend, pub)
    # A last message: a copy through the old group would come before it.
    subprocess.run([MOSQUITTO_PUB, "-p", str(broker.port), "-q", "1", "-t",
                    "device/sg1/events", "-m", '{"type":"last"}'], check=True)
    wait_for(lambda: any(e["payload"].get("type") == "last" for e in backend.delivered()),
             15, 0.05, "the last message")
    n = len(backend.delivered())
    log("%d envelopes for 21 messages" % n)
    assert n == 21, "%d envelopes for 21 messages: the old group still delivers" % n
    assert "dropped the subscriptions of an earlier configuration" in h.log_text()


def test_damaged_record_names_no_foreign_session():
    """Only client ids of the slot's own form are taken from the record: a
    damaged line must not make herald resume and end a device's session."""
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend()
    os.makedirs(tmp.join("state", "outbox"))
    with open(tmp.join("state", "outbox", "0.sessions"), "w") as f:
        f.write("display-42 $share/herald/device/+/telemetry\n"
                "old-node-mqtt-0-0 $share/herald/device/+/telemetry\n"
                "x-mqtt-1-0 $share/herald/device/+/telemetry\n"
                "\x00garbage \xff\n")
    h = Herald(tmp, conf={"workers": {"mqtt": 1}}, broker=broker, backend=backend).wait_ready()
    wait_for(lambda: "old-node-mqtt-0-0: broker session ended" in h.log_text(), 15, 0.05,
             "the recorded session of an old node name to end")
    brokerlog = open(os.path.join(broker.dir, "mosquitto.log")).read()
    assert " as old-node-mqtt-0-0 " in brokerlog, brokerlog
    assert " as display-42 " not in brokerlog and " as x-mqtt-1-0 " not in brokerlog, brokerlog
    rec = open(tmp.join("state", "outbox", "0.sessions")).read()
    assert "display-42" not in rec and "x-mqtt-1-0" not in rec, rec
    pub = Publisher(broker.port, ["dm1"], kinds=["telemetry"], count=20).run()
    deliver_all(backend, pub)


if __name__ == "__main__":
    main(test_node_name_change_ends_old_sessions,
         test_node_name_change_under_traffic_keeps_ids,
         test_fewer_workers_after_a_restart_drains_the_retired_session,
         test_reload_with_fewer_workers_ends_their_sessions,
         test_share_group_change_drops_old_filters,
         test_damaged_record_names_no_foreign_session)
