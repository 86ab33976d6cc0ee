"""SIGTERM with a POST in flight: the http worker starts no new POST, waits
for the answers of those in flight (up to the stop timeout, less a margin)
and records them before it exits, so a backend that answers in time does not
get the envelope again after the restart.  A backend slower than that does
not hold the stop: herald still exits 0 before the supervisor's SIGKILL, and
the unanswered envelope stays in the spool and is posted again after the
restart, under the same id."""
import json
import threading
import time
from heraldtest import Backend, Herald, Mosquitto, Publisher, TmpDir, main, wait_for

STOP_TIMEOUT_MS = 5000
STOP_TIMEOUT = STOP_TIMEOUT_MS / 1000


class SlowFirst:
    """The backend's answer: the first POST is answered `status` after
    `delay` seconds (or once released), every other one 204 at once."""

    def __init__(self, delay, status=204, headers=None):
        self.delay = delay
        self.status = status
        self.headers = headers or {}
        self.arrived = threading.Event()
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.seen = False

    def __call__(self, handler, body):
        with self.lock:
            first, self.seen = not self.seen, True
        if first:
            self.arrived.set()
            self.release.wait(self.delay)
            return self.status, self.headers
        return 204, {}


def posts_of(backend, env_id, since=0.0):
    """How many POSTs the backend got whose body names env_id (after since)."""
    with backend.lock:
        return sum(1 for t, _, body, _ in backend.posts
                   if t >= since and env_id.encode() in body)


def start_with_a_post(delay, status=204, headers=None):
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    slow = SlowFirst(delay, status, headers)
    backend = Backend(respond=slow)
    # One lane: after the restart the spool's leftovers go before anything new.
    conf = {"workers": {"stop_timeout_ms": STOP_TIMEOUT_MS},
            "backend": {"concurrency": 1, "timeout_ms": 30000}}
    h = Herald(tmp, broker=broker, backend=backend, conf=conf).wait_ready()
    Publisher(broker.port, ["slow-1"], kinds=["telemetry"], count=1).run()
    assert slow.arrived.wait(15), "the first POST never came"
    return tmp, broker, backend, slow, conf, h


def sigterm(h):
    """SIGTERM to the supervisor; returns the seconds herald took to exit."""
    t0 = time.monotonic()
    h.proc.terminate()
    assert h.proc.wait(STOP_TIMEOUT + 5) == 0
    took = time.monotonic() - t0
    log = h.log_text()
    assert "SIGKILL" not in log and "killed by signal" not in log, log
    return took


def restart_and_flush(tmp, broker, backend, conf):
    """A fresh herald on the same state_dir; a message published now is
    delivered, so whatever the spool still held was posted before it."""
    h2 = Herald(tmp, broker=broker, backend=backend, conf=conf).wait_ready()
    Publisher(broker.port, ["after-1"], kinds=["telemetry"], count=1).run()
    wait_for(lambda: any(e["device"] == "after-1" for e in backend.delivered()),
             20, 0.05, "the message published after the restart delivered")
    wait_for(lambda: h2.ctl("spool")["depth"] == 0, 10, 0.05, "an empty spool")
    return h2


def test_stop_waits_for_the_post_in_flight():
    # 2.5 s: longer than the 2 s herald used to wait, well inside 5 s.
    tmp, broker, backend, slow, conf, h = start_with_a_post(2.5)
    took = sigterm(h)
    print("# stopped in %.2f s" % took)
    wait_for(backend.delivered, 5, 0.05, "the slow POST answered")
    first = backend.delivered()
    assert len(first) == 1, first
    env_id = first[0]["id"]
    stop_log = h.log_text()

    t_restart = time.monotonic()
    h2 = restart_and_flush(tmp, broker, backend, conf)
    assert posts_of(backend, env_id, t_restart) == 0, \
        "the envelope answered 204 during the stop was posted again"
    assert posts_of(backend, env_id) == 1
    assert "unanswered" not in stop_log, stop_log
    assert h2.stop() == 0


def test_stop_does_not_wait_past_the_stop_timeout():
    tmp, broker, backend, slow, conf, h = start_with_a_post(STOP_TIMEOUT + 10)
    took = sigterm(h)
    # It waited for the answer most of the stop timeout, and exited before
    # the supervisor had to kill it (sigterm() checks the log for that).
    assert took >= STOP_TIMEOUT * 0.6, "stopped in %.2f s" % took
    assert "1 POST(s) unanswered" in h.log_text(), h.log_text()
    print("# stopped in %.2f s, the POST unanswered" % took)
    slow.release.set()          # the backend takes it now; herald is gone
    wait_for(backend.delivered, 5, 0.05, "the slow POST recorded")
    env_id = backend.delivered()[0]["id"]

    t_restart = time.monotonic()
    h2 = restart_and_flush(tmp, broker, backend, conf)
    assert posts_of(backend, env_id, t_restart) == 1, \
        "the envelope left unanswered at the stop was not posted again"
    assert h2.stop() == 0


def test_retry_answer_during_the_stop_keeps_the_envelope():
    # A 503 during the stop: no retry in this life, and the lane's wait
    # (Retry-After: 60) does not hold the stop; posted again after the restart.
    tmp, broker, backend, slow, conf, h = start_with_a_post(
        1.0, 503, {"Retry-After": "60"})
    took = sigterm(h)
    assert took < STOP_TIMEOUT * 0.6, "stopped in %.2f s" % took
    assert "posted again after the restart" in h.log_text(), h.log_text()
    assert backend.delivered() == []
    with backend.lock:
        env_id = json.loads(backend.posts[0][2])["id"]

    t_restart = time.monotonic()
    h2 = restart_and_flush(tmp, broker, backend, conf)
    assert posts_of(backend, env_id, t_restart) == 1
    assert [e["id"] for e in backend.delivered()].count(env_id) == 1
    assert h2.stop() == 0


def test_lane_in_backoff_does_not_hold_the_stop():
    tmp, broker, backend, slow, conf, h = start_with_a_post(
        0, 503, {"Retry-After": "60"})
    wait_for(lambda: h.ctl("spool")["retrying"] == 1, 10, 0.05, "the lane waiting to retry")
    took = sigterm(h)
    # Not the drain's wait (STOP_TIMEOUT - 1 s) for a POST that will not come.
    assert took < STOP_TIMEOUT * 0.6, "stopped in %.2f s" % took
    with backend.lock:
        env_id = json.loads(backend.posts[0][2])["id"]

    h2 = restart_and_flush(tmp, broker, backend, conf)
    assert [e["id"] for e in backend.delivered()].count(env_id) == 1
    assert h2.stop() == 0


if __name__ == "__main__":
    main(test_stop_waits_for_the_post_in_flight, test_stop_does_not_wait_past_the_stop_timeout,
         test_retry_answer_during_the_stop_keeps_the_envelope,
         test_lane_in_backoff_does_not_hold_the_stop)
