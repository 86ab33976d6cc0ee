#!/usr/bin/python3
"""herald-bench fleet on the real Mosquitto, counted by a paho subscriber:
every device's telemetry arrives exactly, numbered 1..N in order, padded to
--size; status is retained and its Last Will fires on a cut, never on a clean
exit; requests are answered after the delay with the exact failure ratio;
churned devices come back from their --source-range address."""
import base64
import ctypes
import json
import os
import re
import struct
import tempfile
import time

from benchlib import Mosquitto, Proc, Subscriber, TmpDir, bench_json, main, wait_for


def by_stream(sub):
    """{(device, kind): [payload dict, ...]} in arrival order."""
    out = {}
    for topic, payload, _ in sub.messages():
        _, dev, kind = topic.split("/")
        out.setdefault((dev, kind), []).append(json.loads(payload))
    return out


def test_exact_counts_in_order():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    sub = Subscriber(broker.port)
    t0 = time.time()
    r = bench_json("fleet", "--port", broker.port, "--devices", 20, "--id-prefix", "t-",
                   "--rate", 25, "--count", 30, "--size", 300, "--drain", "5s", timeout=20)
    t1 = time.time()
    assert r["sent"] == {"telemetry": 600, "status": 20, "response": 0, "event": 0,
                         "total": 620}, r["sent"]
    assert r["published"] == 620 and r["unacked"] == 0 and r["publish_errors"] == 0, r
    assert r["connects"] == 20 and r["drops"] == 0 and r["connect_failures"] == 0, r
    assert r["self"]["fds_per_device"] == 1.0, r["self"]
    wait_for(lambda: sub.count("telemetry") >= 600, 10, what="600 telemetry messages")
    time.sleep(0.3)                     # anything more would be a duplicate
    streams = by_stream(sub)
    assert sub.count("telemetry") == 600 and sub.count("status") == 20, \
        (sub.count("telemetry"), sub.count("status"))
    for i in range(1, 21):
        dev = "t-%d" % i
        tele = streams[(dev, "telemetry")]
        assert [p["seq"] for p in tele] == list(range(1, 31)), (dev, [p["seq"] for p in tele])
        assert all(p["dev"] == dev and t0 * 1e6 <= p["ts"] <= t1 * 1e6 for p in tele)
        status = streams[(dev, "status")]
        assert len(status) == 1 and status[0]["state"] == "online" and status[0]["seq"] == 1
    sizes = {len(json.dumps(p, separators=(",", ":"))) for (_, k), ps in streams.items()
             for p in ps if k == "telemetry"}
    assert sizes == {300}, sizes
    # the online status is retained; the clean exit left no Last Will behind
    late = Subscriber(broker.port, topics=("device/+/status",), client_id="late")
    wait_for(lambda: late.count() >= 20, 5, what="20 retained statuses")
    assert all(json.loads(p)["state"] == "online" and retain for _, p, retain in late.messages())


def test_requests_answered():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    sub = Subscriber(broker.port, topics=("device/+/response",))
    fleet = Proc("fleet", "--port", broker.port, "--devices", 4, "--rate", 0,
                 "--answer-delay-ms", 200, "--fail-ratio", 0.25, "--json")
    retained = Subscriber(broker.port, topics=("device/+/status",), client_id="st")
    wait_for(lambda: retained.count() >= 4, 5, what="4 devices online")
    sent_at = {}
    for n in range(20):
        cid = "cmd-%d" % n
        sent_at[cid] = time.monotonic()
        sub.publish("device/bench-%d/command" % (n % 4 + 1), json.dumps(
            {"commandId": cid, "type": "ping", "params": {"n": n}, "expiresAt": "2099-01-01T00:00:00.000Z"}))
    sub.publish("device/bench-1/command", json.dumps({"eventId": "ev-1", "type": "note", "params": {}}))
    sub.publish("device/bench-2/command", b"not json")
    wait_for(lambda: sub.count() >= 20, 5, what="20 responses")
    got = {}
    for topic, payload, _ in sub.messages():
        p = json.loads(payload)
        got[p["commandId"]] = (time.monotonic(), p, topic)
        assert topic == "device/%s/response" % p["dev"]
    assert set(got) == set(sent_at)
    failed = [p for _, p, _ in got.values() if not p["success"]]
    assert len(failed) == 5, len(failed)                # exactly 25 %
    assert all(p["error"]["code"] and p["error"]["message"] for p in failed)
    assert all(p["result"]["type"] == "ping" for _, p, _ in got.values() if p["success"])
    # response seqs per device: 1..5, each once
    seqs = {}
    for _, p, _ in got.values():
        seqs.setdefault(p["dev"], []).append(p["seq"])
    assert all(sorted(v) == [1, 2, 3, 4, 5] for v in seqs.values()), seqs
    assert min(got[c][0] - sent_at[c] for c in got) >= 0.19
    rc, out, _ = fleet.stop()
    assert rc == 0
    r = json.loads(out)
    assert r["received"] == {"requests": 20, "events": 1, "config": 0, "invalid": 1,
                             "unopenable": 0}, r["received"]
    assert r["requests_answered"] == 20 and r["requests_failed"] == 5, r
    assert r["sent"]["response"] == 20


def test_churn_last_will_and_source_range():
    tmp = TmpDir()
    broker = Mosquitto(tmp, extra="log_type all\n")
    sub = Subscriber(broker.port)
    fd, seqfile = tempfile.mkstemp(prefix="bench-seq.")
    os.close(fd)
    try:
        r = bench_json("fleet", "--port", broker.port, "--devices", 30, "--rate", 10,
                       "--duration", "4s", "--churn", 600, "--churn-down", "300ms",
                       "--source-range", "127.0.0.2-127.0.0.4", "--seq-out", seqfile,
                       "--drain", "3s", timeout=20)
        with open(seqfile) as f:
            last = {(d, k): int(n) for d, k, n in (l.split() for l in f)}
    finally:
        os.unlink(seqfile)
    drops = r["churn_drops"]
    assert drops >= 6, r                                # 10 % a second of 30 devices, 4 s
    assert r["drops"] == 0 and r["connect_failures"] == 0, r
    assert r["connects"] == 30 + r["reconnects"], r
    # one Last Will per cut, and only then
    wait_for(lambda: sum(1 for t, p, _ in sub.messages() if t.endswith("/status")
                         and json.loads(p)["state"] == "offline") >= drops, 5,
             what="%d Last Wills" % drops)
    time.sleep(0.3)
    streams = by_stream(sub)
    offline = sum(1 for (d, k), ps in streams.items() if k == "status"
                  for p in ps if p["state"] == "offline")
    assert offline == drops, (offline, drops)
    online = [p for (d, k), ps in streams.items() if k == "status" for p in ps if p["state"] == "online"]
    assert len(online) == r["connects"], (len(online), r["connects"])
    # nothing lost: each device's telemetry 1..last (QoS 1 may repeat what a cut left unacked)
    total = 0
    for (dev, kind), n in last.items():
        if kind != "telemetry":
            continue
        seen = {p["seq"] for p in streams.get((dev, "telemetry"), [])}
        assert seen == set(range(1, n + 1)), (dev, n, sorted(set(range(1, n + 1)) - seen)[:5])
        total += n
    assert total == r["sent"]["telemetry"], (total, r["sent"])
    # bound before connect: the broker saw the devices come from 127.0.0.2-4 only
    with open(os.path.join(broker.dir, "mosquitto.log")) as f:
        addrs = set(re.findall(r"New client connected from (127\.0\.0\.\d+):\d+ as bench-\d+ ", f.read()))
    assert addrs == {"127.0.0.2", "127.0.0.3", "127.0.0.4"}, addrs


class Sodium:
    """XChaCha20-Poly1305 of libsodium through ctypes: opens and makes SPEC §1 boxes."""

    def __init__(self):
        self.lib = ctypes.CDLL("libsodium.so.23")
        assert self.lib.sodium_init() >= 0

    def open(self, key, topic, box):
        ad = box[:10] + topic.encode()
        out = ctypes.create_string_buffer(len(box))
        n = ctypes.c_ulonglong()
        rc = self.lib.crypto_aead_xchacha20poly1305_ietf_decrypt(
            out, ctypes.byref(n), None, box[34:], ctypes.c_ulonglong(len(box) - 34), ad,
            ctypes.c_ulonglong(len(ad)), box[10:34], key)
        assert rc == 0, "box does not open"
        return box[1], struct.unpack(">Q", box[2:10])[0], out.raw[:n.value]

    def seal(self, key, topic, counter, plain):
        hdr = b"\x01\x01" + struct.pack(">Q", counter) + os.urandom(24)
        ad = hdr[:10] + topic.encode()
        out = ctypes.create_string_buffer(len(plain) + 16)
        n = ctypes.c_ulonglong()
        self.lib.crypto_aead_xchacha20poly1305_ietf_encrypt(
            out, ctypes.byref(n), plain, ctypes.c_ulonglong(len(plain)), ad,
            ctypes.c_ulonglong(len(ad)), None, hdr[10:34], key)
        return hdr + out.raw[:n.value]


def test_e2e_sealed():
    na = Sodium()
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    keys = {"e-1": os.urandom(32), "e-2": os.urandom(32)}
    path = tmp.join("devices")
    with open(path, "w") as f:
        f.write("# id token key\n")
        for d, k in keys.items():
            f.write("%s - %s\n" % (d, base64.b64encode(k).decode()))
    sub = Subscriber(broker.port)
    fleet = Proc("fleet", "--port", broker.port, "--devices-file", path, "--e2e", "--key-version", 3,
                 "--rate", 20, "--duration", "3s", "--json")
    wait_for(lambda: sub.count("telemetry") >= 20, 5, what="20 sealed telemetry messages")
    counters = {}
    for topic, box, _ in sub.messages():
        dev = topic.split("/")[1]
        kv, ctr, plain = na.open(keys[dev], topic, box)
        assert kv == 3
        assert ctr > counters.get(dev, 0), "counter not increasing"    # one counter for every topic
        counters[dev] = ctr
        assert json.loads(plain)["dev"] == dev
    # a sealed request is answered sealed; a box that does not open is counted
    req = json.dumps({"commandId": "sealed-1", "type": "ping", "params": {}}).encode()
    sub.publish("device/e-1/command", na.seal(keys["e-1"], "device/e-1/command", 1, req))
    sub.publish("device/e-2/command", na.seal(keys["e-1"], "device/e-2/command", 1, req))
    wait_for(lambda: sub.count("response") >= 1, 5, what="the sealed response")
    topic, box, _ = [m for m in sub.messages() if m[0].endswith("/response")][0]
    assert topic == "device/e-1/response"
    doc = json.loads(na.open(keys["e-1"], topic, box)[2])
    assert doc["commandId"] == "sealed-1" and doc["success"] is True, doc
    rc, out, _ = fleet.wait(10)
    r = json.loads(out)
    assert rc == 0 and r["received"]["requests"] == 1 and r["received"]["unopenable"] == 1, r


if __name__ == "__main__":
    main(test_exact_counts_in_order, test_requests_answered, test_churn_last_will_and_source_range,
         test_e2e_sealed)
