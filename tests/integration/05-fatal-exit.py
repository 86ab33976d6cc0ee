"""A worker exiting 2 ("fatal configuration") is never respawned: herald stops
with a clear message and exits 2, leaving no process behind."""
from heraldtest import Herald, Mosquitto, TmpDir, main, wait_for


def test_fatal_worker_stops_herald():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    h = Herald(tmp, conf={"workers": {"mqtt": 1}}, broker=broker,
               env={"HERALD_TEST_FATAL": "http"})
    code = h.proc.wait(15)
    assert code == 2, code
    text = h.log_text()
    assert "http.0 exited with the fatal configuration code 2" in text, text
    assert "not restarting it, stopping herald" in text
    assert text.count("http: error: HERALD_TEST_FATAL") == 1, text   # spawned once, never again
    wait_for(lambda: h.pids() == [], 5, what="every herald process to be gone")


if __name__ == "__main__":
    main(test_fatal_worker_stops_herald)
