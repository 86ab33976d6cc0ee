#!/usr/bin/python3
"""An https backend.  With a certificate herald does not trust (a private
CA), every POST fails its TLS handshake: the messages are retried, the log
says why, nothing goes to the dead-letter store.  A reload that names the
CA in [backend] ca_file delivers them all, over TLS, signed; one that
removes it again goes back to the system's CAs.  A ca_file
that cannot be read is an error of `herald -t` with its line."""
import os
import shutil
import signal
import subprocess
from heraldtest import (Backend, Herald, Mosquitto, Publisher, TmpDir, check_delivery,
                        main, wait_for, HERALD)

TLS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "tls")
CERT, KEY = os.path.join(TLS, "backend.pem"), os.path.join(TLS, "backend.key")
CLIENT_CERT, CLIENT_KEY = os.path.join(TLS, "client.pem"), os.path.join(TLS, "client.key")
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def failing(h, backend, *reasons):
    """Every POST fails its handshake: retried, none taken, none
    dead-lettered, and the log says why (a line with one of `reasons`)."""
    wait_for(lambda: h.counter("http", "http_retries") >= 3, 20, 0.1, "POSTs failing over TLS")
    assert backend.posts == []
    why = [l for l in h.log_text().splitlines() if any(r in l for r in reasons)]
    assert why, "the log does not say why (%r)" % (reasons,)
    print("# " + why[0].split(": ", 2)[-1])
    assert h.counter("http", "deadlettered") == 0


def reload_delivers(h, backend, pub, nth, **keys):
    """Reload with these [backend] keys: every message of pub is delivered."""
    h.sections["backend"].update(keys)
    h.write()
    h.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: h.log_text().count("configuration reloaded") >= nth, 10, what="the reload")
    wait_for(lambda: len({e["id"] for e in backend.delivered()}) >= pub.total(), 30, 0.1,
             "every message over TLS")
    return check_delivery(backend.delivered(), pub)


def test_private_ca():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend(tls=(CERT, KEY), secret=SECRET)
    assert backend.url.startswith("https://127.0.0.1:")
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"backend": {"secret": SECRET}}).wait_ready()
    # (no responses: herald would dead-letter them as unknown commands)
    pub = Publisher(broker.port, ["tls-%d" % i for i in range(5)], count=4,
                    kinds=("telemetry", "events", "status")).run()
    failing(h, backend, "SSL certificate problem")
    distinct, dups = reload_delivers(h, backend, pub, 1, ca_file=CERT)
    print("# %d delivered over TLS after the reload, %d duplicates; %d bad signatures"
          % (distinct, dups, backend.bad_signatures))
    assert distinct == pub.total() == 60
    assert backend.bad_signatures == 0
    assert h.counter("http", "deadlettered") == 0

    # Without ca_file again: the system's CAs, which do not know this one
    # (and no connection made with the old setting is reused).
    del h.sections["backend"]["ca_file"]
    h.write()
    h.proc.send_signal(signal.SIGHUP)
    wait_for(lambda: h.log_text().count("configuration reloaded") >= 2, 10, what="reload 2")
    retries = h.counter("http", "http_retries")
    Publisher(broker.port, ["tls-late"], count=1, kinds=("telemetry",)).run()
    wait_for(lambda: h.counter("http", "http_retries") > retries, 20, 0.1,
             "the late message failing over TLS")
    assert not [e for e in backend.delivered() if e["device"] == "tls-late"]
    assert h.stop() == 0


def test_client_certificate():
    """A backend that wants a client certificate (mutual TLS): without
    [backend] cert_file every POST fails and is retried, nothing is lost or
    dead-lettered; a reload that sets cert_file and key_file delivers them
    all, each POST showing the certificate.  A certificate written over the
    old one (same names) is used after a reload: the http worker restarts,
    no connection goes on with the old one."""
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend(tls=(CERT, KEY), client_ca=CLIENT_CERT, secret=SECRET)
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"backend": {"secret": SECRET, "ca_file": CERT}}).wait_ready()
    pub = Publisher(broker.port, ["mtls-%d" % i for i in range(5)], count=4,
                    kinds=("telemetry", "events", "status")).run()
    # TLS 1.3: the backend's alert comes after the handshake, and it may
    # close the connection before curl reads it.
    refused = ("certificate required", "unknown ca", "Connection reset", "SSL_write", "SSL_read")
    failing(h, backend, *refused)
    cert, key = tmp.join("herald.pem"), tmp.join("herald.key")
    shutil.copyfile(CLIENT_CERT, cert)
    shutil.copyfile(CLIENT_KEY, key)
    distinct, dups = reload_delivers(h, backend, pub, 1, cert_file=cert, key_file=key)
    names = set(backend.client_names)
    print("# %d delivered after the reload, %d duplicates; client certificate %s"
          % (distinct, dups, names))
    assert distinct == pub.total() == 60
    assert names == {"herald test client"}, names
    assert backend.bad_signatures == 0 and h.counter("http", "deadlettered") == 0

    # Another certificate, one the backend does not vouch for, written over
    # the files: after a reload the next message is refused, though the
    # connections made with the old one were alive.
    def replace_and_reload(src_cert, src_key, nth):
        gen = h.worker("http")["generation"]
        shutil.copyfile(src_cert, cert)
        shutil.copyfile(src_key, key)
        h.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: h.log_text().count("configuration reloaded") >= nth
                 and h.worker("http")["generation"] == gen + 1 and h.all_ready(), 15,
                 what="the http worker restarted by the reload")
    replace_and_reload(CERT, KEY, 2)
    retries = h.counter("http", "http_retries")
    late = Publisher(broker.port, ["mtls-late"], count=1, kinds=("telemetry",)).run()
    wait_for(lambda: h.counter("http", "http_retries") > retries, 20, 0.1,
             "the late message refused with the other certificate")
    assert not [e for e in backend.delivered() if e["device"] == "mtls-late"]
    # The right one back: delivered.
    replace_and_reload(CLIENT_CERT, CLIENT_KEY, 3)
    wait_for(lambda: [e for e in backend.delivered() if e["device"] == "mtls-late"], 20, 0.1,
             "the late message delivered with the right certificate again")
    assert late.total() == 1 and set(backend.client_names) == {"herald test client"}
    assert h.stop() == 0


def test_ca_file_checked():
    tmp = TmpDir()
    conf = tmp.join("herald.conf")
    with open(conf, "w") as f:
        f.write("[backend]\nurl = https://127.0.0.1:1/x\nca_file = %s\n" % tmp.join("nope.pem"))
    r = subprocess.run([HERALD, "-t", "-c", conf], capture_output=True, text=True, timeout=10)
    assert r.returncode == 1, (r.returncode, r.stderr)
    assert r.stderr.startswith("%s:3: " % conf) and "No such file" in r.stderr, r.stderr
    with open(conf, "w") as f:
        f.write("[backend]\nurl = https://127.0.0.1:1/x\nca_file = %s\n" % TLS)
    r = subprocess.run([HERALD, "-t", "-c", conf], capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and "is not a file" in r.stderr, (r.returncode, r.stderr)
    # A key without its certificate; a certificate that is not there.
    with open(conf, "w") as f:
        f.write("[backend]\nurl = https://127.0.0.1:1/x\nkey_file = %s\n" % CLIENT_KEY)
    r = subprocess.run([HERALD, "-t", "-c", conf], capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and r.stderr.startswith("%s:3: " % conf) \
        and "without cert_file" in r.stderr, (r.returncode, r.stderr)
    with open(conf, "w") as f:
        f.write("[backend]\nurl = https://127.0.0.1:1/x\ncert_file = %s\n" % tmp.join("c.pem"))
    r = subprocess.run([HERALD, "-t", "-c", conf], capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and r.stderr.startswith("%s:3: " % conf) \
        and "No such file" in r.stderr, (r.returncode, r.stderr)
    with open(conf, "w") as f:
        f.write("[api]\ntokens = a-token-long-enough\n[backend]\nurl = https://127.0.0.1:1/x\n"
                "cert_file = %s\nkey_file = %s\n" % (CLIENT_CERT, CLIENT_KEY))
    r = subprocess.run([HERALD, "-t", "-c", conf], capture_output=True, text=True, timeout=10)
    assert r.returncode == 0, (r.returncode, r.stderr)
    # An encrypted key: herald has no passphrase to give.
    enc = tmp.join("enc.key")
    with open(enc, "w") as f:
        f.write("-----BEGIN ENCRYPTED PRIVATE KEY-----\nMIIB\n"
                "-----END ENCRYPTED PRIVATE KEY-----\n")
    with open(conf, "w") as f:
        f.write("[api]\ntokens = a-token-long-enough\n[backend]\nurl = https://127.0.0.1:1/x\n"
                "cert_file = %s\nkey_file = %s\n" % (CLIENT_CERT, enc))
    r = subprocess.run([HERALD, "-t", "-c", conf], capture_output=True, text=True, timeout=10)
    assert r.returncode == 1 and r.stderr.startswith("%s:6: " % conf) \
        and "encrypted private key" in r.stderr, (r.returncode, r.stderr)


if __name__ == "__main__":
    main(test_private_ca, test_client_certificate, test_ca_file_checked)
