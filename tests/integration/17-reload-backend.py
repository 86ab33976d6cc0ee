"""A reload that points [backend] url at another backend: the messages after
it go to the new backend, the ones before it stayed with the old one, none is
lost or posted to both."""
import signal
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


if __name__ == "__main__":
    main(test_reload_backend_url)
