"""The backend answers 503 for 20 s, then refuses connections for 20 s, then
recovers: nothing is lost; the gaps between retries grow; a Retry-After answer
is honoured.  A Retry-After of 0 or of a date already past does not make
herald retry at once, over and over: the backoff still grows."""
import json
import threading
import time
from heraldtest import (Backend, Herald, Mosquitto, Publisher, TmpDir, check_delivery,
                        distinct_delivered, main, wait_for)


def test_outage():
    state = {"mode": "503", "answers": 0, "retry_after_at": None}
    lock = threading.Lock()
    attempts = []            # (time, webhook-id) of refused POSTs of the first lane seen

    def respond(handler, body):
        with lock:
            if state["mode"] == "ok":
                return 204, {}
            state["answers"] += 1
            attempts.append((time.monotonic(), json.loads(body)["id"]))
            # The 6th refusal carries Retry-After: 4.
            if state["answers"] == 6:
                state["retry_after_at"] = (time.monotonic(), json.loads(body)["id"])
                return 503, {"Retry-After": "4"}
            return 503, {}

    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend(respond=respond)
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"backend": {"concurrency": 1, "timeout_ms": 2000}}).wait_ready()
    pub = Publisher(broker.port, ["o-%d" % i for i in range(20)], count=25).run()   # 2,000
    wait_for(lambda: h.ctl("spool")["depth"] == pub.total(), 30, 0.2, "everything spooled")
    t_start = time.monotonic()
    wait_for(lambda: time.monotonic() - t_start >= 20, 21, 0.5, "20 s of 503")
    # Retry gaps of the one lane: they grow (exponential backoff), and the
    # retry after the Retry-After answer came no sooner than 4 s.
    with lock:
        times = [t for t, _ in attempts]
        ra = state["retry_after_at"]
    assert ra is not None, "fewer than 6 attempts in 20 s"
    gaps = [b - a for a, b in zip(times, times[1:])]
    after_ra = [t for t in times if t > ra[0]]
    assert after_ra and after_ra[0] - ra[0] >= 3.9, (ra, after_ra[:1])
    before = [g for a, g in zip(times, gaps) if a < ra[0]]
    # Equal jitter: each wait at least as long as the one before (give or take
    # 0.3 s of scheduling noise, seen under the sanitizer build while the
    # worker was still spooling), doubling overall.
    assert len(before) >= 4 and before[-1] > before[0] * 2, before
    assert all(b >= a - 0.3 for a, b in zip(before, before[1:])), before
    st = h.ctl("spool")
    assert st["retrying"] >= 1 and st["depth"] == pub.total(), st
    print("# retry gaps (s):", ["%.2f" % g for g in gaps])

    # Connection refused for 20 s.
    backend.refuse()
    with lock:
        state["mode"] = "refuse"
    time.sleep(20)
    assert h.ctl("spool")["depth"] == pub.total()
    with lock:
        state["mode"] = "ok"
    backend.accept_again()
    wait_for(lambda: distinct_delivered(backend) >= pub.total(), 60, 0.2, "delivery after recovery")
    distinct, dups = check_delivery(backend.delivered(), pub)
    assert distinct == pub.total()
    wait_for(lambda: h.ctl("spool")["depth"] == 0, 10, what="an empty spool")
    assert h.all_ready()
    assert h.stop() == 0


def test_retry_after_zero():
    state = {"ok": False}
    lock = threading.Lock()
    attempts = []

    def respond(handler, body):
        with lock:
            if state["ok"]:
                return 204, {}
            attempts.append(time.monotonic())
            # "0", then a date long past, in turn
            if len(attempts) % 2:
                return 503, {"Retry-After": "0"}
            return 503, {"Retry-After": "Wed, 21 Oct 2015 07:28:00 GMT"}

    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend(respond=respond)
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"backend": {"concurrency": 1}}).wait_ready()
    pub = Publisher(broker.port, ["z-0"], count=1).run()
    wait_for(lambda: len(attempts) >= 1, 15, 0.05, "a first POST")
    time.sleep(4)
    with lock:
        times = list(attempts)
        state["ok"] = True
    # A retry at once would be hundreds of POSTs in 4 s; the backoff
    # (200 ms doubling, equal jitter) makes about six.
    assert 3 <= len(times) <= 12, len(times)
    gaps = [b - a for a, b in zip(times, times[1:])]
    assert gaps[-1] > gaps[0] * 2, gaps
    wait_for(lambda: distinct_delivered(backend) >= pub.total(), 30, 0.1, "delivery")
    assert check_delivery(backend.delivered(), pub)[0] == pub.total()
    assert h.all_ready()
    assert h.stop() == 0


def test_lanes_resume_together():
    """After an outage long enough for the lanes' backoffs to reach
    seconds, the first accepted POST sends the other lanes at once: the
    backlog goes out within a moment, not over each lane's remaining
    backoff (up to 6 s here, 30 s at most)."""
    state = {"down": True}
    oks = []
    lock = threading.Lock()

    def respond(handler, body):
        with lock:
            if state["down"]:
                return 503, {}
            oks.append(time.monotonic())
            return 204, {}

    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend(respond=respond)
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"backend": {"concurrency": 4, "timeout_ms": 2000}}).wait_ready()
    pub = Publisher(broker.port, ["w-%d" % i for i in range(40)], count=5).run()   # 200
    wait_for(lambda: h.ctl("spool")["depth"] == pub.total(), 30, 0.2, "everything spooled")
    t0 = time.monotonic()
    # Every lane fails, its backoff doubling from 0.2 s, for more than the
    # 5 s that make an outage.
    wait_for(lambda: time.monotonic() - t0 >= 9, 10, 0.5, "9 s of 503")
    with lock:
        state["down"] = False
    wait_for(lambda: distinct_delivered(backend) >= pub.total(), 40, 0.1, "the backlog delivered")
    with lock:
        span = oks[-1] - oks[0]
    assert span < 1.5, "the lanes resumed over %.1f s" % span
    assert "lane(s) waiting out their backoff retry now" in h.log_text()
    distinct, _ = check_delivery(backend.delivered(), pub)
    assert distinct == pub.total()


if __name__ == "__main__":
    main(test_outage, test_retry_after_zero, test_lanes_resume_together)
