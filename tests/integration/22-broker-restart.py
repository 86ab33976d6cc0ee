"""The broker restarts under herald.  A broker with persistence gives back,
after a clean restart, what it queued for herald's sessions while herald was
down; a kill -9 of the broker costs herald one reconnect (no worker dies, new
device messages arrive within seconds); and a broker that lost everything
(no persistence: CONNACK session-present 0) gets herald's subscriptions
again, so new device messages still reach the backend.  A request made
while the device is still away after the broker's death is confirmed once
it is back, not marked "sent" into the void; one made while the broker is
dead goes out as soon as herald is subscribed again.

Mosquitto 2.0.11 persists sessions and their queued messages but not shared
subscriptions (persist__subs_save walks a node's plain subscribers only): a
restored session of herald's has no subscription until herald subscribes
again after its CONNACK, and a device message published before that reaches
no one.  So after a broker restart the tests publish once herald says every
connection is subscribed again, and assert how soon that is.  With an
empty [mqtt] share_group herald subscribes plainly, and a broker restarted
while herald is stopped still queues what devices publish for it."""
import os
import re
import time
from apilib import Device, api, request_states, warm_up
from heraldtest import (Backend, Herald, Mosquitto, Publisher, TmpDir, check_delivery,
                        distinct_delivered, log, main, wait_for)

CONF = {"workers": {"mqtt": 2}}
LOG_LEVEL = re.compile(r" herald\[\d+\] [^:]+: (\w+): ")


def setup(persist):
    tmp = TmpDir()
    broker = Mosquitto(tmp, persist=persist)
    backend = Backend()
    h = Herald(tmp, broker=broker, backend=backend, conf=CONF).wait_ready()
    return tmp, broker, backend, h


def worker_pids(h):
    return {(w["role"], w["slot"]): w["pid"] for w in h.workers()}


def connects(h):
    return [h.counter("mqtt", "mqtt_connects", slot) for slot in range(CONF["workers"]["mqtt"])]


def back_and_subscribed(h, before):
    """Every mqtt worker connected again since `before` and has its SUBACK."""
    return all(b > a for a, b in zip(before, connects(h))) and h.subscribed()


def bad_log_lines(h):
    """Errors, and any worker that died: losing the broker is a warning."""
    bad = []
    for line in h.log_text().splitlines():
        m = LOG_LEVEL.search(line)
        if (m and m.group(1) in ("emerg", "alert", "crit", "error")) or \
                "killed by signal" in line or "exited with" in line:
            bad.append(line)
    return bad


def test_broker_restart_keeps_what_it_held():
    tmp, broker, backend, h = setup(persist=True)
    assert h.stop() == 0
    # herald is down: the broker queues every message for herald's sessions.
    pub = Publisher(broker.port, ["br-%02d" % i for i in range(20)], count=50).run()
    assert backend.delivered() == []
    broker.restart()          # SIGTERM: Mosquitto saves its state as it exits
    h2 = Herald(tmp, broker=broker, backend=backend, conf=CONF).wait_ready()
    wait_for(lambda: distinct_delivered(backend) >= pub.total(), 60, 0.1,
             "every message the broker held")
    distinct, dups = check_delivery(backend.delivered(), pub)
    log("%d published while herald was down; %d distinct delivered after the broker "
        "restart, %d duplicates" % (pub.total(), distinct, dups))
    assert distinct == pub.total() == 4000
    assert h2.stop() == 0


def test_broker_kill9_under_traffic():
    """The broker dies (kill -9) after a run of traffic and comes back from
    its last autosave: herald's sessions are there (session-present 1) but
    not their shared subscriptions, so herald must subscribe again even on
    a session it kept."""
    tmp, broker, backend, h = setup(persist=True)
    pub1 = Publisher(broker.port, ["k1-%02d" % i for i in range(10)], count=25).run()
    wait_for(lambda: distinct_delivered(backend) >= pub1.total(), 30, 0.05, "phase 1 delivered")
    # The broker's next autosave holds herald's sessions, all acknowledged.
    db = os.path.join(broker.dir, "mosquitto.db")
    saved_after = time.time()
    wait_for(lambda: os.stat(db).st_mtime > saved_after, 10, 0.05, "a broker autosave")
    before = worker_pids(h)
    conn0 = connects(h)
    broker.restart(kill=True)
    t_kill = time.monotonic()
    # herald sees the connection drop at once and retries after 50-100 ms,
    # then 100-200 ms, doubling to at most 10 s.  The broker is back before
    # restart() returns, so the first or second attempt gets it: ~0.3 s at
    # worst.  15 s for all of phase 2 leaves room for a sanitizer build and
    # is still far from what the 10 s backoff cap or a crash would cost.
    deadline = t_kill + 15
    wait_for(lambda: back_and_subscribed(h, conn0), 15, 0.01,
             "herald connected and subscribed again")
    t_back = time.monotonic()
    pub2 = Publisher(broker.port, ["k2-%02d" % i for i in range(10)], count=25).run()
    wait_for(lambda: distinct_delivered(backend) >= pub1.total() + pub2.total(),
             max(0.1, deadline - time.monotonic()), 0.05,
             "phase 2 delivered within 15 s of the broker's kill")
    with backend.lock:
        first = min(t for t, _, body, st in backend.posts if b'"k2-' in body and st < 300)
    log("broker killed: herald subscribed again after %.2f s; first phase-2 message at the "
        "backend after %.2f s, all %d after %.2f s" % (t_back - t_kill, first - t_kill,
                                                      pub2.total(), time.monotonic() - t_kill))
    pub2.sent.update(pub1.sent)
    distinct, dups = check_delivery(backend.delivered(), pub2)
    log("%d distinct, %d duplicates" % (distinct, dups))
    assert distinct == pub2.total() == 2000
    # herald reconnected: every worker is the process it was before.
    after = worker_pids(h)
    assert after == before, (before, after)
    bad = bad_log_lines(h)
    assert not bad, bad[:5]
    text = h.log_text()
    assert "lost its connection" in text
    # The autosave gave herald its sessions back (CONNACK session-present 1).
    assert "the broker had no session for us" not in text
    assert h.stop() == 0


def test_broker_restart_without_persistence():
    tmp, broker, backend, h = setup(persist=False)
    pub1 = Publisher(broker.port, ["np1-%02d" % i for i in range(5)], count=20).run()
    wait_for(lambda: distinct_delivered(backend) >= pub1.total(), 30, 0.05, "round 1 delivered")
    before = worker_pids(h)
    conn0 = connects(h)
    broker.restart()          # no persistence: herald's sessions are gone
    t0 = time.monotonic()
    wait_for(lambda: back_and_subscribed(h, conn0), 15, 0.01,
             "herald connected and subscribed again")
    log("herald subscribed again %.2f s after the broker restart" % (time.monotonic() - t0))
    pub2 = Publisher(broker.port, ["np2-%02d" % i for i in range(5)], count=20).run()
    wait_for(lambda: distinct_delivered(backend) >= pub1.total() + pub2.total(), 30, 0.05,
             "round 2 delivered")
    pub2.sent.update(pub1.sent)
    distinct, dups = check_delivery(backend.delivered(), pub2)
    log("%d distinct, %d duplicates" % (distinct, dups))
    assert distinct == pub2.total() == 800
    assert worker_pids(h) == before
    bad = bad_log_lines(h)
    assert not bad, bad[:5]
    # Both connections were answered session-present 0.
    assert h.log_text().count("the broker had no session for us") == 2
    assert h.stop() == 0


def test_plain_subscription_outlives_a_broker_restart_without_herald():
    """share_group empty: one plain subscription, which Mosquitto 2.0.11
    saves with the session.  herald first runs with the default group (its
    shared filters are dropped when it comes back without one); then it is
    stopped, the broker restarts, devices publish; herald started again gets
    all of it, each message once."""
    tmp = TmpDir()
    broker = Mosquitto(tmp, persist=True)
    backend = Backend()
    shared = {"workers": {"mqtt": 1}}
    plain = {"workers": {"mqtt": 1}, "mqtt": {"share_group": ""}}
    h = Herald(tmp, broker=broker, backend=backend, conf=shared).wait_ready()
    pub0 = Publisher(broker.port, ["ps0-%d" % i for i in range(5)], count=10).run()
    wait_for(lambda: distinct_delivered(backend) >= pub0.total(), 30, 0.05, "round 0")
    assert h.stop() == 0
    h = Herald(tmp, broker=broker, backend=backend, conf=plain).wait_ready()
    wait_for(h.subscribed, 15, 0.05, "subscribed without a group")
    pub1 = Publisher(broker.port, ["ps1-%d" % i for i in range(5)], count=10).run()
    wait_for(lambda: distinct_delivered(backend) >= pub0.total() + pub1.total(), 30, 0.05,
             "round 1")
    assert h.stop() == 0
    broker.restart()          # herald is stopped
    pub2 = Publisher(broker.port, ["ps2-%d" % i for i in range(5)], count=10).run()
    h = Herald(tmp, broker=broker, backend=backend, conf=plain).wait_ready()
    total = pub0.total() + pub1.total() + pub2.total()
    wait_for(lambda: distinct_delivered(backend) >= total, 30, 0.05,
             "what the broker queued across its restart")
    n2 = pub2.total()
    pub2.sent.update(pub0.sent)
    pub2.sent.update(pub1.sent)
    distinct, dups = check_delivery(backend.delivered(), pub2)
    log("%d published after the broker restarted with herald stopped, all delivered; "
        "%d distinct in all, %d duplicates" % (n2, distinct, dups))
    assert distinct == total == 600
    assert dups == 0, "a message came twice: the shared filters were not dropped"
    assert h.stop() == 0


def test_request_across_broker_restart():
    """A request made just after the broker died reaches the device once it
    is back.  A broker killed does not publish Last Wills (a clean stop
    does), so herald still takes the device to be online and publishes the
    command before the device (a clean session: no subscription while
    away) reconnects: the broker answers "no matching subscribers", the
    request stays queued, and goes with the device's "online" status."""
    tmp, broker, backend, h = setup(persist=True)
    warm_up(h, broker)
    dev = Device(broker, "br-dev").connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/br-dev")[1].get("online"), 5,
             what="br-dev online")
    conn0 = connects(h)
    broker.restart(kill=True)
    wait_for(lambda: back_and_subscribed(h, conn0), 15, 0.01, "herald subscribed again")
    assert api(h, "GET", "/v1/devices/br-dev")[1]["online"] is True
    t0 = time.monotonic()
    st, rec, _ = api(h, "POST", "/v1/devices/br-dev/requests?wait=20", {"type": "ping"})
    took = time.monotonic() - t0
    assert st == 200 and rec["state"] == "confirmed", (st, rec)
    log("confirmed %.2f s after the request (the device reconnects after its own 1 s delay)" % took)
    got = [c["commandId"] for c in dev.cmds()]
    assert got == [rec["commandId"]], got
    assert h.counter("mqtt", "mqtt_no_subscriber") + h.counter("mqtt", "mqtt_no_subscriber", 1) >= 1
    wait_for(lambda: request_states(backend).get(rec["commandId"]) == ["sent", "confirmed"], 10,
             what="sent and confirmed at the backend")
    dev.disconnect()
    assert h.stop() == 0


def test_request_made_while_the_broker_is_down():
    """A request made while the broker is dead goes out as soon as herald is
    subscribed again, not at the router's 1 s retry of the failed publish.
    The device has a persistent session, which the broker restores with its
    subscription: the command is "sent" as soon as herald publishes it."""
    tmp, broker, backend, h = setup(persist=True)
    warm_up(h, broker)
    dev = Device(broker, "down-dev", clean=False).connect()
    wait_for(lambda: api(h, "GET", "/v1/devices/down-dev")[1].get("online"), 5,
             what="down-dev online")
    db = os.path.join(broker.dir, "mosquitto.db")
    saved_after = time.time()
    wait_for(lambda: os.stat(db).st_mtime > saved_after, 10, 0.05, "a broker autosave")
    conn0 = connects(h)
    broker.proc.kill()
    broker.proc.wait(10)
    st, rec, _ = api(h, "POST", "/v1/devices/down-dev/requests", {"type": "ping"})
    assert st == 202 and rec["state"] == "queued", (st, rec)
    cid = rec["commandId"]
    wait_for(lambda: "no broker connection" in h.log_text(), 10, what="the publish to fail")
    broker.restart()          # (already dead: it just starts again)
    t0 = time.monotonic()
    wait_for(lambda: back_and_subscribed(h, conn0), 15, 0.01, "herald subscribed again")
    t_sub = time.monotonic() - t0
    wait_for(lambda: api(h, "GET", "/v1/requests/" + cid)[1]["state"] != "queued", 10, 0.01,
             what="the request sent")
    took = time.monotonic() - t0
    log("broker back: herald subscribed after %.2f s, the request sent after %.2f s"
        % (t_sub, took))
    assert api(h, "GET", "/v1/requests/" + cid)[1]["state"] in ("sent", "confirmed")
    assert took - t_sub < 0.5, "the command waited for the router's retry"
    dev.c.loop_stop()
    assert h.stop() == 0


if __name__ == "__main__":
    main(test_broker_restart_keeps_what_it_held, test_broker_kill9_under_traffic,
         test_broker_restart_without_persistence,
         test_plain_subscription_outlives_a_broker_restart_without_herald,
         test_request_across_broker_restart, test_request_made_while_the_broker_is_down)
