"""kill -9 of each role (mqtt, router, crypto, http), 5 times each at random
moments during a 50,000-message run: nothing is lost, and every duplicate
carries the id of its first delivery."""
import os
import random
import signal
import time
from heraldtest import (Backend, Herald, Mosquitto, Publisher, TmpDir, check_delivery,
                        distinct_delivered, main, wait_for)


def test_kill_roles_during_run():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend()
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"workers": {"mqtt": 2}, "backend": {"batch_max": 20}}).wait_ready()
    pub = Publisher(broker.port, ["k-%03d" % i for i in range(100)], count=125,
                    parallel=8).start()       # 50,000 messages
    rng = random.Random(int(os.environ.get("HERALD_TEST_SEED", time.time())))
    # Five rounds, each killing every role once in a random order, one kill
    # every ~1.2 s: a role dies at most 4 times within 10 s, under the
    # crash-loop throttle (5 deaths within 10 s), while the run goes on.
    roles = []
    for _ in range(5):
        r = [("mqtt", 0), ("router", 0), ("crypto", 0), ("http", 0)]
        rng.shuffle(r)
        roles += r
    killed = []
    for role, slot in roles:
        time.sleep(rng.uniform(0.8, 1.6))
        w = wait_for(lambda: (lambda x: x if x and x["state"] == "ready" and x["pid"] else None)(
            h.worker(role, slot)), 10, what="%s ready before a kill" % role)
        os.kill(w["pid"], signal.SIGKILL)
        killed.append((role, distinct_delivered(backend)))
    print("# kills (role, delivered so far):", killed)
    pub.wait(180)
    wait_for(lambda: distinct_delivered(backend) >= pub.total(), 180, 0.5,
             "all 50,000 delivered after 20 kills")
    distinct, dups = check_delivery(backend.delivered(), pub)
    print("# delivered %d distinct, %d duplicates" % (distinct, dups))
    assert distinct == pub.total()
    wait_for(h.all_ready, 10, what="every worker ready at the end")
    ws = {(w["role"], w["slot"]): w for w in h.workers()}
    for role in ("router", "crypto", "http", "mqtt"):
        assert ws[(role, 0)]["restarts"] == 5, ws[(role, 0)]
    assert h.stop() == 0


if __name__ == "__main__":
    main(test_kill_roles_during_run)
