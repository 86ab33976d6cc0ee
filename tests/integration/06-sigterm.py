"""SIGTERM: every worker drains and stops, herald exits 0, no process is left;
the admin socket is removed.  SIGTERM to the whole group (systemd's default)
stops it just as cleanly.  A second herald never takes over the admin socket
of a running one."""
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


def test_lock_outlives_the_supervisor():
    """A worker that outlives its supervisor (here: stopped, so it cannot see
    the supervisor go) still holds state_dir: a new herald must not open the
    outboxes and the spool under it."""
    import subprocess
    from heraldtest import HERALD
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    h = Herald(tmp, broker=broker).wait_ready()
    straggler = h.worker("http")["pid"]
    os.kill(straggler, signal.SIGSTOP)
    os.kill(h.proc.pid, signal.SIGKILL)
    h.proc.wait(5)
    wait_for(lambda: h.pids() == [straggler], 10, what="only the stopped worker left")
    second = subprocess.Popen([HERALD, "-c", h.conf_path], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        out, _ = second.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(second.pid, signal.SIGKILL)
        second.wait()
        raise AssertionError("a second herald ran on the state_dir of a live worker")
    assert second.returncode == 1 and "another herald" in out, (second.returncode, out)
    assert "supervisor (pid %d) is gone" % h.proc.pid in out, out
    os.kill(straggler, signal.SIGKILL)
    wait_for(lambda: h.pids() == [], 5, what="the stopped worker gone")
    h2 = Herald(tmp, broker=broker).wait_ready()
    assert h2.stop() == 0


def test_restart_waits_for_the_last_workers():
    """kill -9 of the process group, then at once a new herald: workers of
    the old one may still be exiting (an AddressSanitizer build takes its
    time) and hold the lock.  The new herald waits for them, instead of
    failing with "another herald" as it did (and as a CI run showed)."""
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    h = Herald(tmp, broker=broker).wait_ready()
    slow = h.worker("http")["pid"]
    os.kill(slow, signal.SIGSTOP)      # stands for a worker slow to exit
    for pid in h.pids():
        if pid != slow:
            os.kill(pid, signal.SIGKILL)
    h.proc.wait(5)
    h2 = Herald(tmp, broker=broker)
    wait_for(lambda: "waiting up to" in h2.log_text(), 5, what="the new herald to wait")
    os.kill(slow, signal.SIGKILL)      # its exit releases the lock
    h2.wait_ready()
    assert "another herald" not in h2.log_text(), h2.log_text()
    assert h2.stop() == 0


def test_admin_socket_of_a_running_herald():
    import copy
    import subprocess
    from heraldtest import HERALD, free_port, write_conf
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    h = Herald(tmp, broker=broker).wait_ready()
    # Another state_dir and run_dir, the same [admin] socket.
    other = copy.deepcopy(h.sections)
    other["herald"]["state_dir"] = tmp.join("state2")
    other["herald"]["run_dir"] = tmp.join("run2")
    other["api"]["listen"] = "127.0.0.1:%d" % free_port()
    path = tmp.join("other.conf")
    write_conf(path, other)
    r = subprocess.run([HERALD, "-c", path], capture_output=True, text=True, timeout=20)
    assert r.returncode != 0, r
    assert "is in use by a running herald" in r.stderr, r.stderr
    assert h.ctl("workers")["workers"] and h.all_ready()
    assert h.stop() == 0


if __name__ == "__main__":
    main(test_sigterm_main, test_sigterm_group, test_one_herald_per_state_dir,
         test_restart_waits_for_the_last_workers,
         test_lock_outlives_the_supervisor, test_admin_socket_of_a_running_herald)
