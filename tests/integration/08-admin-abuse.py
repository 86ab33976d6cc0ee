"""The admin socket holds up: a client that floods commands and never reads
its answers does not grow the supervisor's memory, a flood of connections is
capped, an endless line is refused (and what follows it on that line is not
run as a command), bytes that are not UTF-8 still get an answer, and herald
keeps answering and restarting workers throughout.  heraldctl gives up after
its -t when the supervisor does not accept (stopped, backlog full), reads
an answer that holds \u0000, and refuses a bad `top` command line."""
import json
import os
import signal
import socket
import subprocess
import threading
import time
from heraldtest import HERALDCTL, Herald, Mosquitto, TmpDir, _cleanups, main, wait_for


def rss_kb(pid):
    with open("/proc/%d/status" % pid) as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


def connect(path):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)
    return s


def test_admin_abuse():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    h = Herald(tmp, conf={"workers": {"mqtt": 1}}, broker=broker).wait_ready()
    sup = h.proc.pid
    base = rss_kb(sup)

    # 1. Commands without reading the answers: 4 MB of "stats" lines.
    flood = connect(h.admin_socket)
    flood.setblocking(False)
    sent, t0 = 0, time.monotonic()
    chunk = b"stats\n" * 1000
    while sent < 4_000_000 and time.monotonic() - t0 < 5:
        try:
            sent += flood.send(chunk)
        except BlockingIOError:
            time.sleep(0.01)
    assert h.ctl("workers")["workers"], "herald stopped answering others"
    grown = rss_kb(sup) - base
    print("# flood sent %d bytes; supervisor RSS grew %d kB" % (sent, grown))
    # herald stopped reading the flood once its unread answers reached 1 MiB:
    # the rest waits in the socket (before the fix it read all 4 MB and grew
    # by 340 MB).  RSS is loose: AddressSanitizer's quarantine holds freed memory.
    assert sent < 1_000_000, sent
    assert grown < 100_000, grown
    flood.close()

    # 2. More connections than the cap: the extra ones are told so.
    # Accepted in order: the 65th and later are answered "busy" and closed.
    conns = [connect(h.admin_socket) for _ in range(70)]
    busy = 0
    for s in conns[64:]:
        s.settimeout(5)
        if b'"busy"' in s.recv(200):
            busy += 1
    assert busy == 6, busy
    for s in conns:
        s.close()

    # 3. An endless line is refused, the connection still works.  The
    # supervisor frees the 64 slots as it reads the closes above: until then
    # a new connection may still be told "busy".
    def refused_as_too_long():
        s = connect(h.admin_socket)
        s.settimeout(5)
        try:
            s.sendall(b"x" * 5000)
            answer = s.recv(4096)
        except (BrokenPipeError, ConnectionResetError):
            answer = b""            # told busy and closed before our line
        if answer == b"" or b'"busy"' in answer:
            s.close()
            time.sleep(0.05)
            return None
        assert b"too_long" in answer, answer
        return s
    s = None
    deadline = time.monotonic() + 5
    while s is None and time.monotonic() < deadline:
        s = refused_as_too_long()
    assert s is not None, "still busy 5 s after the other connections closed"
    # The rest of the refused line is not a command: the next answer is
    # the one to "workers".
    s.sendall(b" log-level notice\nworkers\n")
    data = b""
    while b"\n" not in data:
        data += s.recv(65536)
    assert data.startswith(b'{"workers"'), data[:200]
    # Bytes that are not UTF-8: an error answer, then the next command's.
    s.sendall(b"log-level \xe9\xff\nworkers\n")
    data = b""
    while data.count(b"\n") < 2:
        data += s.recv(65536)
    first, second = data.split(b"\n")[:2]
    assert b'"error"' in first, first
    assert second.startswith(b'{"workers"'), second[:200]
    # Every line gets one answer, in order: an empty line, a command with
    # arguments it does not take, a SPEC command not built yet.  Before, the
    # empty line got none (the client waited) and "stats extra" was taken
    # for "stats".
    s.sendall(b"\nstats extra\ndevice list\nworkers\n")
    data = b""
    while data.count(b"\n") < 4:
        data += s.recv(65536)
    answers = [json.loads(l) for l in data.split(b"\n")[:4]]
    assert answers[0]["error"]["code"] == "usage", answers[0]
    assert answers[1]["error"]["code"] == "usage", answers[1]
    assert answers[2]["error"]["code"] == "not_implemented", answers[2]
    assert "workers" in answers[3], answers[3]
    s.close()

    # Workers were never disturbed, and a killed one still comes back.
    assert all(w["restarts"] == 0 for w in h.workers())
    victim = h.worker("crypto")["pid"]
    os.kill(victim, 9)
    wait_for(lambda: h.worker("crypto")["pid"] not in (None, victim), 2, what="crypto restarted")
    assert h.stop() == 0


def test_heraldctl_gives_up():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    h = Herald(tmp, conf={"workers": {"mqtt": 1}}, broker=broker).wait_ready()
    ctl = [HERALDCTL, "-s", h.admin_socket]
    for bad in ("-1", "0", "x", "1s"):
        r = subprocess.run(ctl + ["-t", bad, "workers"], capture_output=True, text=True, timeout=10)
        assert r.returncode != 0 and "-t wants seconds" in r.stderr, (bad, r)
    os.kill(h.proc.pid, signal.SIGSTOP)
    held = []
    try:
        # Fill the admin socket's backlog while the supervisor accepts nothing.
        for _ in range(64):
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.setblocking(False)
            try:
                s.connect(h.admin_socket)
                held.append(s)
            except BlockingIOError:
                s.close()
                break
        t0 = time.monotonic()
        r = subprocess.run(ctl + ["-t", "0.5", "workers"], capture_output=True, text=True,
                           timeout=20)
        took = time.monotonic() - t0
        assert r.returncode != 0, r
        assert "does not accept within 500 ms" in r.stderr, r.stderr
        assert took < 5, took
    finally:
        os.kill(h.proc.pid, signal.SIGCONT)
        for s in held:
            s.close()
    wait_for(lambda: subprocess.run(ctl + ["-t", "2", "workers"], capture_output=True,
                                    timeout=10).returncode == 0, 10, 0.2, "heraldctl to work again")
    assert h.stop() == 0


def fake_admin(tmp, answer):
    """A unix socket that answers each connection's first line with `answer`
    (bytes, one line); its path."""
    path = tmp.join("fake.sock")
    srv = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    srv.bind(path)
    srv.listen(8)

    def serve():
        while True:
            try:
                c, _ = srv.accept()
            except OSError:
                return
            with c:
                buf = b""
                while b"\n" not in buf:
                    d = c.recv(4096)
                    if not d:
                        break
                    buf += d
                c.sendall(answer)

    threading.Thread(target=serve, daemon=True).start()
    _cleanups.append(srv.close)
    return path


def test_heraldctl_reads_nul():
    # An entry an older herald stored with a NUL in its detail came as
    # \u0000: heraldctl refused the whole answer ("bad answer"), so the
    # dead-letter store could not be listed.
    tmp = TmpDir()
    path = fake_admin(tmp, b'{"entries":[{"id":"x","detail":"a\\u0000b"}],"total":1}\n')
    r = subprocess.run([HERALDCTL, "-s", path, "deadletter", "list"], capture_output=True,
                       text=True, timeout=10)
    assert r.returncode == 0, r
    assert json.loads(r.stdout)["entries"][0]["detail"] == "a\0b", r.stdout


def test_heraldctl_top_arguments():
    # Before, `top` took any -d (atof: "abc" and "1s" polled at 10 Hz), any
    # -n (-1 ran forever, 0 printed nothing) and ignored extra arguments.
    tmp = TmpDir()
    path = fake_admin(tmp, json.dumps({
        "herald": {"version": "t", "node": "n", "uptime_ms": 1000, "time_ms": 1},
        "gauges": {}, "workers": []}).encode() + b"\n")
    top = [HERALDCTL, "-s", path, "top"]
    for bad in (["-d", "abc", "-n", "1"], ["-d", "1s", "-n", "1"], ["-d", "-5", "-n", "1"],
                ["-d", "0", "-n", "1"], ["-d", "0.05", "-n", "1"], ["-d", "nan", "-n", "1"],
                ["-n", "-1"], ["-n", "0"], ["-n", "x"], ["-n", "1", "extra"], ["-x"]):
        r = subprocess.run(top + bad, capture_output=True, text=True, timeout=10)
        assert r.returncode == 1 and "usage: heraldctl top" in r.stderr and not r.stdout, (bad, r)
    r = subprocess.run(top + ["-d", "0.1", "-n", "2"], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0 and r.stdout.count("herald t on n") == 2, r


def test_heraldctl_c_and_s():
    # -c and -s are alternatives: before, both were taken and -s won unsaid.
    tmp = TmpDir()
    path = fake_admin(tmp, b'{"ok":true}\n')
    r = subprocess.run([HERALDCTL, "-c", tmp.join("none.conf"), "-s", path, "stats"],
                       capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "usage: heraldctl" in r.stderr and not r.stdout, r
    r = subprocess.run([HERALDCTL, "-s", path, "stats"], capture_output=True, text=True,
                       timeout=10)
    assert r.returncode == 0 and json.loads(r.stdout) == {"ok": True}, r


if __name__ == "__main__":
    main(test_admin_abuse, test_heraldctl_gives_up, test_heraldctl_reads_nul,
         test_heraldctl_top_arguments, test_heraldctl_c_and_s)
