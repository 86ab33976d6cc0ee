"""A backend that answers 400 for one device: its messages go to the dead-letter
store with status and reason while the others flow; once the backend is fixed,
`heraldctl deadletter replay` delivers them.  Invalid JSON, oversized and
too deeply nested payloads land in the dead-letter store with their reasons;
the store can be listed page by page."""
import json
import subprocess
from heraldtest import (MOSQUITTO_PUB, Backend, Herald, Mosquitto, Publisher, TmpDir,
                        check_delivery, distinct_delivered, main, wait_for)


def test_deadletter_and_replay():
    state = {"broken": True}

    def respond(handler, body):
        doc = json.loads(body)
        if state["broken"] and doc["device"] == "bad-1":
            return 400, {}
        return 204, {}

    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend(respond=respond)
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"limits": {"max_payload": 1024}}).wait_ready()
    # No responses here: they would add unknown_command records (SPEC §3).
    kinds = ("status", "telemetry", "events")
    good = Publisher(broker.port, ["good-%d" % i for i in range(5)], kinds=kinds, count=20)
    bad = Publisher(broker.port, ["bad-1"], kinds=kinds, count=20)
    good.run()
    bad.run()
    wait_for(lambda: distinct_delivered(backend) >= good.total(), 30, 0.1, "the good devices")
    check_delivery(backend.delivered(), good)
    wait_for(lambda: h.ctl("deadletter", "list", "1000")["total"] == bad.total(), 30, 0.1,
             "bad-1's messages in the dead-letter store")
    dl = h.ctl("deadletter", "list", "1000")
    assert all(e["device"] == "bad-1" and e["status"] == 400 and e["reason"] == "http_400"
               and e["replayable"] for e in dl["entries"]), dl["entries"][:2]
    assert not any(e["device"] == "bad-1" for e in backend.delivered())
    # Pages: oldest first, "next" names where the next one starts after.
    pages, after = [], []
    while True:
        page = h.ctl("deadletter", "list", "7", *after)
        assert page["total"] == bad.total() and 0 < len(page["entries"]) <= 7, page
        pages += [e["id"] for e in page["entries"]]
        if "next" not in page:
            break
        assert page["next"] == page["entries"][-1]["id"] and len(page["entries"]) == 7, page
        after = [page["next"]]
    assert pages == [e["id"] for e in dl["entries"]] == sorted(pages), pages[:3]
    assert "next" not in dl
    for bad_args in (("0",), ("x",), ("5", "x" * 600)):
        err = h.ctl("deadletter", "list", *bad_args, check=False)
        assert err["error"]["code"] == "usage" and "AFTER_ID" in err["error"]["message"], \
            (bad_args, err)

    # Device payloads that cannot become envelopes.
    for topic, msg in (("device/junk-1/telemetry", "not json {"),
                       ("device/junk-1/telemetry", json.dumps({"pad": "y" * 2000})),
                       ("device/junk-1/events", json.dumps({"no": "type"})),
                       # an empty type names nothing: as if missing
                       ("device/junk-1/events", json.dumps({"type": ""})),
                       # valid JSON, 65 levels deep: over [limits] max_depth (64)
                       ("device/junk-1/telemetry", '{"a":' * 65 + "1" + "}" * 65),
                       # longer than the mqtt worker keeps (max_payload + 64 KiB)
                       ("device/junk-1/telemetry", json.dumps({"pad": "z" * 100000})),
                       ("device/.lead/telemetry", json.dumps({"n": 1}))):
        subprocess.run([MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-t", topic, "-m", msg],
                       check=True, timeout=10)
    wait_for(lambda: h.ctl("deadletter", "list", "1000")["total"] == bad.total() + 7, 20, 0.1,
             "rejected payloads in the dead-letter store")
    junk = [e for e in h.ctl("deadletter", "list", "1000")["entries"] if e["device"] == "junk-1"]
    # The reasons whole, as the README and heraldctl(8) give them.
    reasons = sorted(e["reason"] for e in junk)
    assert reasons == ["rejected: invalid_json", "rejected: missing_type", "rejected: missing_type",
                       "rejected: too_deep", "rejected: too_large", "rejected: too_large"], reasons
    assert all(e["status"] == 0 and not e["replayable"] for e in junk), junk
    deep = [e for e in junk if e["reason"] == "rejected: too_deep"]
    assert len(deep) == 1 and deep[0]["detail"] == \
        "nesting deeper than [limits] max_depth 64 at byte %d" % (64 * 5), deep
    # The size said is the one received, or what is known of it (before: the
    # cut length, as if the device had sent 66560 bytes).
    # A bad device id is named as such (before: "topic is not device/<id>/<kind>").
    lead = [e for e in h.ctl("deadletter", "list", "1000")["entries"]
            if e["topic"] == "device/.lead/telemetry"]
    assert len(lead) == 1 and lead[0]["reason"] == "rejected: bad_device_id" and \
        lead[0]["detail"].startswith('device id ".lead" (5 bytes) does not match'), lead
    details = sorted(e["detail"] for e in junk if "too_large" in e["reason"])
    assert details == ["payload of 2011 bytes is over [limits] max_payload 1024",
                       "payload of more than 66559 bytes is over [limits] max_payload 1024"], details

    # Fixed backend: replay delivers bad-1's messages; rejected payloads stay.
    state["broken"] = False
    r = h.ctl("deadletter", "replay", "all")
    assert r["replayed"] == bad.total() and r["skipped"] == 7, r
    wait_for(lambda: distinct_delivered(backend) >= good.total() + bad.total(), 30, 0.1, "replayed")
    check_delivery([e for e in backend.delivered() if e["device"] == "bad-1"], bad)
    assert h.ctl("deadletter", "list", "1000")["total"] == 7
    assert h.ctl("deadletter", "purge", "all")["purged"] == 7
    assert h.ctl("deadletter", "list")["total"] == 0
    assert h.stop() == 0


def test_rejected_entries_bounded():
    """A device that sends only invalid JSON fills the dead-letter store,
    which is outside the spool's quota: its rejected entries may take a
    quarter of [spool] max_bytes (1M here: 256 KiB), then the oldest go.
    The entries of envelopes the backend refused (older still) all stay,
    the newest rejected ones stay, and other devices' messages flow."""
    def respond(handler, body):
        return (400, {}) if json.loads(body)["device"] == "refused-1" else (204, {})

    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend(respond=respond)
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"spool": {"max_bytes": "1M"}}).wait_ready()
    refused = Publisher(broker.port, ["refused-1"], kinds=("telemetry",), count=5).run()
    wait_for(lambda: h.ctl("spool")["dead"] == 5, 30, 0.1, "the backend's 5 refusals")
    n = 3000
    lines = "".join("not json {%d %s\n" % (i, "z" * 300) for i in range(n))
    subprocess.run([MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                    "-i", "junk-2", "-t", "device/junk-2/telemetry", "-l"],
                   input=lines.encode(), check=True, timeout=60)
    subprocess.run([MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1",
                    "-i", "junk-late", "-t", "device/junk-late/telemetry", "-l"],
                   input=b"not json\n" * 20, check=True, timeout=60)
    good = Publisher(broker.port, ["fine-%d" % i for i in range(3)], kinds=("telemetry",),
                     count=20).run()
    wait_for(lambda: distinct_delivered(backend) >= good.total(), 30, 0.1, "the good devices")
    check_delivery([e for e in backend.delivered() if e["device"].startswith("fine-")], good)
    limit = 1024 * 1024 // 4

    def settled():
        sp = h.ctl("spool")
        return h.counter("http", "dead_trimmed") > 0 and sp["dead_bytes"] <= limit and \
            h.counter("crypto", "rejected") >= n + 20
    wait_for(settled, 30, 0.2, "the dead-letter store back under a quarter of max_bytes")
    sp = h.ctl("spool")
    entries = h.ctl("deadletter", "list", "10000")["entries"]
    junk = [e for e in entries if e["device"] == "junk-2"]
    kept = [e for e in entries if e["device"] == "refused-1"]
    print("# %d rejected messages: %d kept in %d bytes (limit %d), %d dropped; %d refused "
          "envelopes kept" % (n, len(junk), sp["dead_bytes"], limit,
                              h.counter("http", "dead_trimmed"), len(kept)))
    assert len(kept) == 5 and all(e["replayable"] and e["reason"] == "http_400" for e in kept)
    assert 0 < len(junk) < n
    assert len(junk) + h.counter("http", "dead_trimmed") == n
    assert all(e["reason"] == "rejected: invalid_json" for e in junk), junk[:1]
    # Oldest first: the newest entries all stayed.
    assert len([e for e in entries if e["device"] == "junk-late"]) == 20
    assert h.all_ready()


if __name__ == "__main__":
    main(test_deadletter_and_replay, test_rejected_entries_bounded)
