"""The spool's disk fills up with the backend down: herald says so, stops
reading (the broker keeps the messages), keeps every worker alive, and once
the backend is back it delivers every message, the ones the full disk
refused included, each device's in order (one inbound connection).  The
spool directory is a 4 MB tmpfs of its own; the test
is skipped where it cannot mount one (it needs root).

An mqtt worker restarted on a full outbox disk with more connections (whose
redelivery table, <slot>.recent, then needs more room) keeps that table in
memory, says so, and delivers: it must not map a file with holes, whose
first store would be a SIGBUS."""
import os
import subprocess
from heraldtest import (Backend, Herald, Mosquitto, Publisher, Skip, TmpDir, _cleanups,
                        check_delivery, distinct_delivered, main, wait_for)


def small_disk(path, size):
    os.makedirs(path, exist_ok=True)
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=%s" % size, "tmpfs", path],
                       stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if r.returncode != 0:
        raise Skip("cannot mount a tmpfs: " + r.stderr.strip())
    # before the TmpDir removal, which runs later (cleanups run last first)
    _cleanups.append(lambda: subprocess.run(["umount", "-l", path]))


def test_disk_full():
    tmp = TmpDir()
    small_disk(tmp.join("state", "spool"), "4m")
    broker = Mosquitto(tmp)
    backend = Backend()
    backend.refuse()
    # A quota far above the disk: the disk fills first.  One inbound
    # connection: each device's order holds.
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"spool": {"max_bytes": "1G"}, "workers": {"mqtt": 1},
                     "mqtt": {"connections_per_worker": 1}}).wait_ready()
    http_pid = h.worker("http")["pid"]

    # ~6 MB of envelopes for a 4 MB disk.
    pub = Publisher(broker.port, ["d-%d" % i for i in range(10)], kinds=("telemetry",),
                    count=300, pad=1500).run()
    wait_for(lambda: "No space left on device" in h.log_text(), 60, 0.1,
             "the full disk to be reported")
    wait_for(lambda: h.ctl("spool")["paused"], 10, 0.1, "herald to pause reading")
    assert "the disk is full: pausing device reading" in h.log_text()
    w = h.worker("http")
    assert w["pid"] == http_pid and w["restarts"] == 0, w

    backend.accept_again()
    wait_for(lambda: distinct_delivered(backend) >= pub.total(), 120, 0.2, "all delivered")
    check_delivery(backend.delivered(), pub, ordered=True)
    wait_for(lambda: not h.ctl("spool")["paused"], 10, 0.1, "reading resumed")
    assert h.worker("http")["restarts"] == 0
    assert h.stop() == 0


def fill(directory):
    """Write a file in directory until its disk is full."""
    with open(os.path.join(directory, "filler"), "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 4096)
        except OSError:
            pass


def test_outbox_disk_full_more_connections():
    tmp = TmpDir()
    small_disk(tmp.join("state", "outbox"), "2m")
    broker = Mosquitto(tmp)
    backend = Backend()
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"workers": {"mqtt": 1},
                     "mqtt": {"connections_per_worker": 1, "outbox_bytes": "1M"}}).wait_ready()
    fill(tmp.join("state", "outbox"))

    h.sections["mqtt"]["connections_per_worker"] = 4
    h.write()
    old = h.worker("mqtt")["pid"]
    assert h.ctl("reload")["ok"] is True
    wait_for(lambda: h.worker("mqtt")["pid"] != old and h.worker("mqtt")["state"] == "ready",
             15, 0.1, "the mqtt worker to restart with 4 connections")
    wait_for(lambda: h.subscribed(), 15, 0.1, "the new connections to subscribe")
    pid = h.worker("mqtt")["pid"]
    assert "redeliveries after a restart may get a second id" in h.log_text()

    pub = Publisher(broker.port, ["o-%d" % i for i in range(20)], kinds=("telemetry",),
                    count=20).run()
    wait_for(lambda: distinct_delivered(backend) >= pub.total(), 60, 0.2, "all delivered")
    check_delivery(backend.delivered(), pub)
    assert h.worker("mqtt")["pid"] == pid, "the mqtt worker died: " + h.log_text()[-2000:]
    assert h.stop() == 0


if __name__ == "__main__":
    main(test_disk_full, test_outbox_disk_full_more_connections)
