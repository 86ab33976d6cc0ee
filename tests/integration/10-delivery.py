"""Device -> backend: 100 devices x 500 messages over status, telemetry, events
and response reach the backend once each, per SPEC §2: every field checked, the
payload verbatim, a valid Standard Webhooks signature; with one inbound
connection each device's order is kept.  Batches (batch_max > 1) arrive as
JSON arrays.  A lone message on an idle herald reaches the backend at once,
whatever its kind (telemetry waits for the outbox sync window, 2 ms, not for a
batch to fill)."""
import json
import subprocess
import time
from heraldtest import (MOSQUITTO_PUB, Backend, Herald, Mosquitto, Publisher, TmpDir,
                        check_delivery, distinct_delivered, main, wait_for)

SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def test_every_message_once_in_order():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend(secret=SECRET)
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"workers": {"mqtt": 1}, "mqtt": {"connections_per_worker": 1},
                     "backend": {"secret": SECRET, "concurrency": 8}}).wait_ready()
    devices = ["dev-%03d" % i for i in range(100)]
    pub = Publisher(broker.port, devices, count=125).run()      # 4 kinds x 125 = 500 each
    total = pub.total()
    assert total == 50000
    wait_for(lambda: distinct_delivered(backend) >= total, 240, 0.5, "all 50,000 delivered")
    envs = backend.delivered()
    distinct, dups = check_delivery(envs, pub, ordered=True)
    assert distinct == total and dups == 0, (distinct, dups)
    assert backend.bad_signatures == 0
    # Payload verbatim: the exact bytes the device sent are in the body.
    sent = {(d, k): lines for (d, k), lines in pub.sent.items()}
    for _, headers, body, status in backend.posts[:2000]:
        e = json.loads(body)
        assert sent[(e["device"], e["payload"]["k"])][e["payload"]["seq"]].encode() in body
        assert headers["webhook-id"] == e["id"]
        assert headers["Content-Type"] == "application/json"
    # The responses answer no request herald sent: each also lands in the
    # dead-letter store as unknown_command (SPEC §3), and nothing else does.
    responses = len(devices) * 125
    wait_for(lambda: h.ctl("spool")["dead"] == responses, 20, 0.2, "unknown_command records")
    st = h.ctl("spool")
    assert st["depth"] == 0, st
    dl = h.ctl("deadletter", "list", "50")["entries"]
    assert dl and all(e["reason"].endswith("unknown_command") for e in dl), dl[:2]
    assert h.stop() == 0


def test_batches():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend(secret=SECRET)
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"backend": {"secret": SECRET, "batch_max": 100}}).wait_ready()
    pub = Publisher(broker.port, ["b-%d" % i for i in range(10)], count=100).run()
    wait_for(lambda: distinct_delivered(backend) >= pub.total(), 60, 0.2, "all delivered")
    check_delivery(backend.delivered(), pub)
    bodies = [json.loads(b) for _, _, b, _ in backend.posts]
    assert all(isinstance(b, list) and 1 <= len(b) <= 100 for b in bodies)
    assert max(len(b) for b in bodies) > 1, "no batch held more than one envelope"
    for _, headers, body, _ in backend.posts:
        b = json.loads(body)
        assert headers["webhook-id"] == "%s.%d" % (b[0]["id"], len(b)), headers["webhook-id"]
    assert backend.bad_signatures == 0
    assert h.stop() == 0


def test_lone_messages_are_prompt():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend()
    # herald's defaults (the tests' own run fsync = off and two mqtt workers)
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"spool": {"fsync": "batch"}, "workers": {"mqtt": 1}}).wait_ready()
    took = []
    for i, kind in enumerate(["telemetry", "events", "telemetry", "status", "telemetry"]):
        before = len(backend.posts)
        t0 = time.monotonic()
        subprocess.run([MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                        "-t", "device/idle-1/%s" % kind,
                        "-m", json.dumps({"type": "t", "n": i})], check=True, timeout=10)
        wait_for(lambda: len(backend.posts) > before, 10, 0.002, "message %d at the backend" % i)
        took.append(backend.posts[before][0] - t0)
    # mosquitto_pub's start-up is in each figure; a message left for the
    # outbox's resend timeout would take 5 s
    assert max(took) < 1.0, took
    assert h.stop() == 0


if __name__ == "__main__":
    main(test_every_message_once_in_order, test_batches, test_lone_messages_are_prompt)
