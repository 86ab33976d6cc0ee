"""A device's retained status reaches the backend once: a restarted mqtt worker
re-subscribes, and the broker must not hand it every device's retained status
again as new messages (with new ids)."""
import os
import signal
import subprocess
from heraldtest import (MOSQUITTO_PUB, Backend, Herald, Mosquitto, TmpDir, main, wait_for)


def status_envelopes(backend, device):
    return [e for e in backend.delivered() if e["device"] == device and e["kind"] == "status"]


def test_retained_status_once():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend()
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"workers": {"mqtt": 1}}).wait_ready()
    for d in ("ret-1", "ret-2"):
        subprocess.run([MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-r", "-i", d,
                        "-t", "device/%s/status" % d, "-m", '{"state":"online"}'],
                       check=True, timeout=10)
    wait_for(lambda: len(status_envelopes(backend, "ret-1")) == 1 and
             len(status_envelopes(backend, "ret-2")) == 1, 10, what="both statuses")
    for _ in range(2):
        w = h.worker("mqtt", 0)
        os.kill(w["pid"], signal.SIGKILL)
        wait_for(lambda: h.worker("mqtt", 0)["pid"] not in (None, w["pid"]), 5,
                 what="mqtt.0 restarted")
        h.wait_ready()
    # A live message after the restarts proves the path works; then count.
    subprocess.run([MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(broker.port), "-q", "1", "-i", "ret-1",
                    "-t", "device/ret-1/telemetry", "-m", '{"after":1}'], check=True, timeout=10)
    wait_for(lambda: any(e["kind"] == "telemetry" for e in backend.delivered()), 10,
             what="the live message")
    assert len(status_envelopes(backend, "ret-1")) == 1, status_envelopes(backend, "ret-1")
    assert len(status_envelopes(backend, "ret-2")) == 1, status_envelopes(backend, "ret-2")
    assert h.stop() == 0


if __name__ == "__main__":
    main(test_retained_status_once)
