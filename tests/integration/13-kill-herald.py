"""kill -9 of herald's whole process group mid-run, then a fresh start on the
same state_dir: nothing is lost."""
import os
import signal
from heraldtest import (Backend, Herald, Mosquitto, Publisher, TmpDir, check_delivery,
                        distinct_delivered, main, wait_for)


def test_kill_everything_and_restart():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend()
    h = Herald(tmp, broker=broker, backend=backend, conf={"workers": {"mqtt": 2}}).wait_ready()
    pub = Publisher(broker.port, ["g-%02d" % i for i in range(50)], count=50, parallel=8).start()
    wait_for(lambda: distinct_delivered(backend) >= 1000, 60, 0.05, "the run under way")
    os.killpg(h.pgid, signal.SIGKILL)
    h.proc.wait(5)
    wait_for(lambda: h.pids() == [], 5, what="every herald process gone")
    at_kill = distinct_delivered(backend)
    pub.wait(120)
    h2 = Herald(tmp, broker=broker, backend=backend, conf={"workers": {"mqtt": 2}})
    h2.wait_ready()
    wait_for(lambda: distinct_delivered(backend) >= pub.total(), 120, 0.2, "all delivered after restart")
    distinct, dups = check_delivery(backend.delivered(), pub)
    print("# %d delivered before the kill; %d distinct, %d duplicates" % (at_kill, distinct, dups))
    assert distinct == pub.total() == 10000
    assert at_kill < pub.total(), "the kill came too late to test anything"
    assert h2.stop() == 0


if __name__ == "__main__":
    main(test_kill_everything_and_restart)
