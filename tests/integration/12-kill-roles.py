"""kill -9 of each role (mqtt, router, crypto, http), 5 times each at random
moments during a 50,000-message run: nothing is lost, and every duplicate
carries the id of its first delivery.

And the acknowledgements of delivered envelopes dying with the router and
the http worker: the outbox sends those envelopes again, and the restarted
http worker, which knows their ids from the spool's files, does not post
them a second time."""
import os
import random
import signal
import time
from heraldtest import (Backend, Herald, Mosquitto, Publisher, TmpDir, check_delivery,
                        distinct_delivered, main, wait_for)


def test_kill_roles_during_run():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend()
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"workers": {"mqtt": 2}, "backend": {"batch_max": 20}}).wait_ready()
    pub = Publisher(broker.port, ["k-%03d" % i for i in range(100)], count=125,
                    parallel=8).start()       # 50,000 messages
    rng = random.Random(int(os.environ.get("HERALD_TEST_SEED", time.time())))
    # Five rounds, each killing every role once in a random order, one kill
    # every ~1.2 s: a role dies at most 4 times within 10 s, under the
    # crash-loop throttle (5 deaths within 10 s), while the run goes on.
    roles = []
    for _ in range(5):
        r = [("mqtt", 0), ("router", 0), ("crypto", 0), ("http", 0)]
        rng.shuffle(r)
        roles += r
    killed = []
    for role, slot in roles:
        time.sleep(rng.uniform(0.8, 1.6))
        w = wait_for(lambda: (lambda x: x if x and x["state"] == "ready" and x["pid"] else None)(
            h.worker(role, slot)), 10, what="%s ready before a kill" % role)
        os.kill(w["pid"], signal.SIGKILL)
        killed.append((role, distinct_delivered(backend)))
    print("# kills (role, delivered so far):", killed)
    pub.wait(180)
    wait_for(lambda: distinct_delivered(backend) >= pub.total(), 180, 0.5,
             "all 50,000 delivered after 20 kills")
    distinct, dups = check_delivery(backend.delivered(), pub)
    print("# delivered %d distinct, %d duplicates" % (distinct, dups))
    assert distinct == pub.total()
    wait_for(h.all_ready, 10, what="every worker ready at the end")
    ws = {(w["role"], w["slot"]): w for w in h.workers()}
    for role in ("router", "crypto", "http", "mqtt"):
        assert ws[(role, 0)]["restarts"] == 5, ws[(role, 0)]
    assert h.stop() == 0


def test_resent_after_lost_acks_not_posted_again():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend()
    # A stopped router misses health pings: the supervisor must not kill it first.
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"workers": {"mqtt": 1, "ping_timeout_ms": 60000},
                     "mqtt": {"connections_per_worker": 1}}).wait_ready()
    spool = os.path.join(h.sections["herald"]["state_dir"], "spool")
    router, http = h.worker("router")["pid"], h.worker("http")["pid"]
    # Device messages go mqtt -> crypto -> http without the router; the
    # spool's acknowledgements to the outbox go through it.
    os.kill(router, signal.SIGSTOP)
    try:
        pub = Publisher(broker.port, ["ra-%d" % i for i in range(4)], kinds=("telemetry",),
                        count=5).run()
        wait_for(lambda: distinct_delivered(backend) >= pub.total(), 15,
                 what="delivery with the router stopped")
        # Delivered and committed: a 16-byte entry per envelope in the deletion logs.
        wait_for(lambda: sum(os.path.getsize(os.path.join(spool, f)) for f in os.listdir(spool)
                             if f.endswith(".del")) >= 16 * pub.total(), 5,
                 what="the deliveries' commit")
        # No acknowledgement reached the outbox (its gauge follows within a second).
        wait_for(lambda: h.ctl("stats")["gauges"].get("outbox_depth") == pub.total(), 5,
                 what="the outbox to hold every envelope")
        os.kill(http, signal.SIGKILL)
    finally:
        os.kill(router, signal.SIGKILL)
    wait_for(lambda: all(w["pid"] not in (router, http) and w["state"] == "ready"
                         for w in (h.worker("router"), h.worker("http"))), 15,
             what="router and http restarted")
    # The outbox sends them again (5 s without an acknowledgement); this time
    # the acknowledgements arrive.
    wait_for(lambda: h.ctl("stats")["gauges"].get("outbox_depth") == 0, 20,
             what="the outbox acknowledged")
    assert h.counter("mqtt", "outbox_resent") >= pub.total()
    # The new http worker (its counters start at 0) took every resent copy
    # for what it is, by id: none went into the spool to be posted later.
    assert h.counter("http", "spool_duplicates") >= pub.total(), \
        h.counter("http", "spool_duplicates")
    envs = [e for e in backend.delivered() if e.get("kind") == "telemetry"]
    ids = [e["id"] for e in envs]
    assert len(ids) == pub.total() and len(set(ids)) == pub.total(), \
        "%d posts of %d envelopes" % (len(ids), len(set(ids)))
    check_delivery(envs, pub)
    assert h.stop() == 0


def test_kill_mqtt_under_load_keeps_ids():
    """Under a publishing load the broker reads herald's PUBACKs one per
    loop pass and keeps thousands of messages unacknowledged; a kill -9
    resets the connection (its unread PUBACKs are lost) and the broker
    sends all of them again, first thing.  Each is in the outbox already:
    none may come back under a new id."""
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend()
    h = Herald(tmp, conf={"workers": {"mqtt": 1}}, broker=broker, backend=backend).wait_ready()
    pub = Publisher(broker.port, ["ld-%d" % i for i in range(40)], kinds=("telemetry",),
                    count=800).start()
    for i in range(2):
        wait_for(lambda: distinct_delivered(backend) >= 5000 * (i + 1), 60, 0.02,
                 "traffic before kill %d" % i)
        os.kill(h.worker("mqtt")["pid"], signal.SIGKILL)
    pub.wait()
    wait_for(lambda: distinct_delivered(backend) >= pub.total(), 120, 0.2, "all delivered")
    distinct, dups = check_delivery(backend.delivered(), pub)
    print("# %d messages, %d delivered again with their first id, %d redelivery notices logged" % (
        distinct, dups, h.log_text().count("the broker delivered packet")))
    assert h.stop() == 0


def test_crypto_kill_messages_go_again_at_once():
    """Messages in the crypto worker's hands when it is killed: the mqtt
    worker sends them again as soon as it sees the new crypto worker (the
    stats region's generation), within 3 s, not 5 s after their last try."""
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend()
    # the frozen worker must not be killed for its missed pings first
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"workers": {"ping_timeout_ms": 60000}}).wait_ready()
    crypto = h.worker("crypto")
    os.kill(crypto["pid"], signal.SIGSTOP)
    try:
        pub = Publisher(broker.port, ["c-%d" % i for i in range(10)], count=10).run()
        wait_for(lambda: h.ctl("stats")["gauges"].get("outbox_depth") == pub.total(), 2, 0.05,
                 what="the messages in the outbox, on their way to the frozen crypto worker")
    finally:
        os.kill(crypto["pid"], signal.SIGKILL)
    t_kill = time.monotonic()
    wait_for(lambda: distinct_delivered(backend) >= pub.total(), 10, 0.05, what="delivery")
    took = time.monotonic() - t_kill
    assert took < 3, "delivered %.1f s after the kill" % took
    distinct, _ = check_delivery(backend.delivered(), pub)
    assert distinct == pub.total()
    assert "the crypto or http worker restarted" in h.log_text()


if __name__ == "__main__":
    main(test_kill_roles_during_run, test_resent_after_lost_acks_not_posted_again,
         test_kill_mqtt_under_load_keeps_ids, test_crypto_kill_messages_go_again_at_once)
