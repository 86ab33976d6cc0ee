"""A reload that points [backend] url at another backend: the messages after
it go to the new backend, the ones before it stayed with the old one, none is
lost or posted to both.  A reload that changes [backend] concurrency while a
POST is in flight (the http worker restarts for it), then one back to the old
value: the old value holds and nothing is lost."""
import signal
import threading
from heraldtest import (Backend, Herald, Mosquitto, Publisher, TmpDir, check_delivery,
                        main, wait_for)


def test_reload_backend_url():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    old, new = Backend(), Backend()
    h = Herald(tmp, broker=broker, backend=old,
               conf={"backend": {"concurrency": 2}}).wait_ready()

    first = Publisher(broker.port, ["before-%d" % i for i in range(4)], count=5).run()
    wait_for(lambda: len(old.delivered()) >= first.total(), 20, 0.1,
             "the first messages at the old backend")

    h.sections["backend"]["url"] = new.url
    h.write()
    h.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: "configuration reloaded" in h.log_text(), 10, what="the reload")

    second = Publisher(broker.port, ["after-%d" % i for i in range(4)], count=5).run()
    wait_for(lambda: len(new.delivered()) >= second.total(), 20, 0.1,
             "the later messages at the new backend")

    check_delivery(old.delivered(), first)
    check_delivery(new.delivered(), second)
    assert not [e for e in old.delivered() if e["device"].startswith("after-")]
    assert not [e for e in new.delivered() if e["device"].startswith("before-")]
    assert h.all_ready()


def reload(h, n):
    h.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: h.log_text().count("configuration reloaded") >= n, 10, what="reload %d" % n)


def test_reload_concurrency_back():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    release = threading.Event()

    def respond(handler, body):
        release.wait(20)      # the first POST stays in flight until released
        return 204, {}
    backend = Backend(respond=respond)
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"backend": {"concurrency": 2}}).wait_ready()
    first = Publisher(broker.port, ["c-0"], count=1, kinds=("telemetry",)).run()
    wait_for(lambda: any(l["inflight"] for l in h.ctl("spool")["lanes"]), 15, 0.05,
             "a POST in flight")
    h.sections["backend"]["concurrency"] = 8
    h.write()
    reload(h, 1)
    h.sections["backend"]["concurrency"] = 2
    h.write()
    reload(h, 2)
    release.set()
    second = Publisher(broker.port, ["d-%d" % i for i in range(6)], count=3).run()
    wait_for(lambda: len(backend.delivered()) >= first.total() + second.total(), 20, 0.1,
             "every message delivered")
    check_delivery([e for e in backend.delivered() if e["device"] == "c-0"], first)
    check_delivery([e for e in backend.delivered() if e["device"] != "c-0"], second)
    assert len(h.ctl("spool")["lanes"]) == 2, h.ctl("spool")["lanes"]
    assert h.all_ready()


if __name__ == "__main__":
    main(test_reload_backend_url, test_reload_concurrency_back)
