"""A worker that crashes at start-up is throttled: at most 5 spawns within 10 s,
then shown as throttled (in heraldctl workers and the log) while the others run."""
import re
import time
from heraldtest import Herald, Mosquitto, TmpDir, main, wait_for


def test_crash_loop_throttled():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    h = Herald(tmp, conf={"workers": {"mqtt": 1}}, broker=broker,
               env={"HERALD_TEST_CRASH": "crypto"})
    t0 = time.monotonic()
    w = wait_for(lambda: (lambda x: x if x and x["state"] == "throttled" else None)(
        h.worker("crypto")), 10, 0.05, "crypto to be throttled")
    assert time.monotonic() - t0 < 10
    assert w["last_exit"]["signal"] == "SIGABRT", w
    assert "throttled_until" in w, w
    assert "HERALD_TEST_CRASH" in w.get("last_error", ""), w
    # Stays throttled (no further spawns) for the rest of the 10 s window.
    deadline = t0 + 10
    while time.monotonic() < deadline:
        assert h.worker("crypto")["state"] == "throttled"
        time.sleep(0.2)
    spawns = len(re.findall(r"crypto\.0 killed by signal 6", h.log_text()))
    assert 1 <= spawns <= 5, spawns
    assert "throttled, next start in 60 s" in h.log_text()
    # The other workers are unaffected.
    others = [x for x in h.workers() if x["role"] not in ("supervisor", "crypto")]
    assert all(x["state"] == "ready" for x in others), others
    assert h.stop() == 0


if __name__ == "__main__":
    main(test_crash_loop_throttled)
