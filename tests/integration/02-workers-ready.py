"""herald with 3 mqtt workers: heraldctl workers lists all 7 workers ready, the
admin socket answers stats/help/log-level, refuses junk, and heraldctl top shows
per-worker rates."""
import os
import stat
import subprocess
from heraldtest import HERALDCTL, Herald, Mosquitto, TmpDir, main, wait_for


def test_seven_workers_ready():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    h = Herald(tmp, conf={"workers": {"mqtt": 3}}, broker=broker).wait_ready()
    ws = h.workers()
    roles = sorted("%s.%d" % (w["role"], w["slot"]) for w in ws if w["role"] != "supervisor")
    assert roles == ["api.0", "crypto.0", "http.0", "mqtt.0", "mqtt.1", "mqtt.2", "router.0"], roles
    assert all(w["state"] == "ready" and w["pid"] > 0 and w["restarts"] == 0 for w in ws), ws
    pids = {w["pid"] for w in ws}
    assert len(pids) == 8, pids
    assert set(h.pids()) >= pids
    sup = [w for w in ws if w["role"] == "supervisor"][0]
    assert sup["pid"] == h.proc.pid

    # The human table lists the same workers.
    out = subprocess.run([HERALDCTL, "-s", h.admin_socket, "workers"], capture_output=True,
                         text=True, timeout=10).stdout
    for name in roles:
        assert name in out and "ready" in out, out

    # Admin socket: mode 0660, help, stats with counters, log-level.
    mode = stat.S_IMODE(os.stat(h.admin_socket).st_mode)
    assert mode == 0o660, oct(mode)
    cmds = [c["command"] for c in h.ctl("help")["commands"]]
    for c in ("stats", "workers", "help", "log-level", "reload", "spool", "deadletter"):
        assert c in cmds, cmds
    st = h.ctl("stats")
    assert st["herald"]["node"] == "test-node"
    assert "ipc_in" in st["totals"] and len(st["workers"]) == 8
    # Health pings flow: the control channel counts messages in both directions.
    wait_for(lambda: all(w["counters"].get("ipc_in", 0) > 0 for w in h.ctl("stats")["workers"]
                         if w["role"] != "supervisor"), 5, what="pings answered")
    ob = h.ctl("outbox", "2")
    assert ob["slot"] == 2 and ob["depth"] == 0 and ob["connections"][0]["connected"], ob
    r = subprocess.run([HERALDCTL, "-s", h.admin_socket, "outbox", "7"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "not running" in r.stderr, r.stderr
    assert h.ctl("log-level", "debug")["level"] == "debug"
    h.ctl("workers")
    wait_for(lambda: "debug: admin: workers" in h.log_text(), 5, what="a debug line after log-level debug")
    assert h.ctl("log-level", "info")["level"] == "info"
    r = subprocess.run([HERALDCTL, "-s", h.admin_socket, "log-level", "loud"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "unknown log level" in r.stderr, r.stderr
    r = subprocess.run([HERALDCTL, "-s", h.admin_socket, "frobnicate"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "unknown command" in r.stderr, r.stderr

    # top: two refreshes, one line per worker with its rates.
    out = subprocess.run([HERALDCTL, "-s", h.admin_socket, "top", "-n", "2", "-d", "0.5"],
                         capture_output=True, text=True, timeout=10).stdout
    assert out.count("mqtt.2") == 2 and "RECV/s" in out and "router.0" in out, out
    assert h.stop() == 0


if __name__ == "__main__":
    main(test_seven_workers_ready)
