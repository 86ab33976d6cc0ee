"""SIGTERM: every worker drains and stops, herald exits 0, no process is left;
the admin socket is removed.  SIGTERM to the whole group (systemd's default)
stops it just as cleanly."""
import os
import signal
from heraldtest import Herald, Mosquitto, TmpDir, main, wait_for


def test_sigterm_main():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    h = Herald(tmp, conf={"workers": {"mqtt": 3}}, broker=broker).wait_ready()
    assert len(h.pids()) == 8
    assert h.stop() == 0
    wait_for(lambda: h.pids() == [], 5, what="no herald process left")
    assert not os.path.exists(h.admin_socket)
    assert "stopping: draining 7 workers" in h.log_text()


def test_sigterm_group():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    h = Herald(tmp, conf={"workers": {"mqtt": 2}}, broker=broker).wait_ready()
    os.killpg(h.pgid, signal.SIGTERM)
    assert h.proc.wait(15) == 0
    wait_for(lambda: h.pids() == [], 5, what="no herald process left")
    assert "killed by signal" not in h.log_text()


def test_one_herald_per_state_dir():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    h = Herald(tmp, broker=broker).wait_ready()
    import subprocess
    from heraldtest import HERALD
    r = subprocess.run([HERALD, "-c", h.conf_path], capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "another herald" in r.stderr, r.stderr
    assert h.stop() == 0


if __name__ == "__main__":
    main(test_sigterm_main, test_sigterm_group, test_one_herald_per_state_dir)
