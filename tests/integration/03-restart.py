"""kill -9 of each worker in turn: a new pid within 1 s, its restart count +1,
its last exit shown as SIGKILL; a worker that stops answering health pings is
killed and restarted."""
import os
import signal
import time
from heraldtest import Herald, Mosquitto, TmpDir, main, wait_for


def test_kill_each_worker():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    h = Herald(tmp, conf={"workers": {"mqtt": 3}}, broker=broker).wait_ready()
    for w in [w for w in h.workers() if w["role"] != "supervisor"]:
        role, slot, old = w["role"], w["slot"], w["pid"]
        os.kill(old, signal.SIGKILL)
        t0 = time.monotonic()

        def replaced():
            n = h.worker(role, slot)
            return n if n["pid"] not in (None, old) else None
        n = wait_for(replaced, 1.0, 0.01, "%s.%d to get a new pid" % (role, slot))
        took = time.monotonic() - t0
        assert n["restarts"] == w["restarts"] + 1, n
        assert n["last_exit"] == {"signal": "SIGKILL", "number": 9}, n
        n = wait_for(lambda: (lambda x: x if x["state"] == "ready" else None)(h.worker(role, slot)),
                     5, what="%s.%d ready again" % (role, slot))
        print("# %s.%d: pid %d -> %d in %.0f ms" % (role, slot, old, n["pid"], took * 1000))
    # Nobody else was disturbed: each worker restarted exactly once.
    assert all(w["restarts"] == 1 for w in h.workers() if w["role"] != "supervisor")
    assert h.stop() == 0


def test_missed_health_ping():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    h = Herald(tmp, conf={"workers": {"mqtt": 1, "ping_interval_ms": 200,
                                      "ping_timeout_ms": 800}}, broker=broker).wait_ready()
    victim = h.worker("crypto")
    os.kill(victim["pid"], signal.SIGSTOP)      # alive, but deaf
    n = wait_for(lambda: (lambda x: x if x["pid"] not in (None, victim["pid"]) else None)(
        h.worker("crypto")), 5, what="the frozen worker to be replaced")
    assert n["last_exit"]["signal"] == "SIGKILL", n
    assert "missed its health ping" in h.log_text()
    wait_for(h.all_ready, 5, what="all ready again")
    assert h.stop() == 0


if __name__ == "__main__":
    main(test_kill_each_worker, test_missed_health_ping)
