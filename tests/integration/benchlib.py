"""
Helpers for herald-bench's integration tests: run the built herald-bench
(sink, fleet, rtt) next to the real Mosquitto of heraldtest.py, and count
what devices publish with a paho subscriber.  A test file calls
main(test_fn, ...): exit 0 = pass, 1 = fail, 77 = skip.
"""
import base64
import hashlib
import hmac
import json
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import urllib.error
import urllib.request

from heraldtest import Herald, Mosquitto, Skip, TmpDir, _cleanups, cleanup, free_port, log, wait_for  # noqa: F401

BUILDDIR = os.environ.get("HERALD_BUILDDIR")
BENCH = os.path.join(BUILDDIR, "herald-bench") if BUILDDIR else None


def bench(*args, timeout=30, check=True):
    """Run herald-bench to its end; returns (exit code, stdout, stderr)."""
    r = subprocess.run([BENCH] + [str(a) for a in args], capture_output=True, text=True,
                       timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError("herald-bench %s exited %d: %s %s" % (
            " ".join(map(str, args)), r.returncode, r.stdout[-2000:], r.stderr[-2000:]))
    return r.returncode, r.stdout, r.stderr


def bench_json(*args, timeout=30):
    _, out, _ = bench(*(list(args) + ["--json"]), timeout=timeout)
    return json.loads(out)


class Proc:
    """herald-bench running in the background; stop() sends SIGTERM and
    returns (exit code, stdout, stderr)."""

    def __init__(self, *args):
        self.args = [str(a) for a in args]
        self.proc = subprocess.Popen([BENCH] + self.args, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True)
        _cleanups.append(self.kill)

    def stop(self, sig=signal.SIGTERM, timeout=15):
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def wait(self, timeout=30):
        out, err = self.proc.communicate(timeout=timeout)
        return self.proc.returncode, out, err

    def kill(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)


class Sink(Proc):
    """herald-bench sink on a free port (it prints "listening H:P" first)."""

    def __init__(self, *args):
        super().__init__("sink", "--listen", "127.0.0.1:0", *args)
        line = self.proc.stdout.readline()
        assert line.startswith("listening 127.0.0.1:"), "sink said %r" % line
        self.port = int(line.split(":")[1])
        self.url = "http://127.0.0.1:%d/" % self.port

    def report(self, devices=False):
        with urllib.request.urlopen(self.url + "report" + ("?devices=1" if devices else ""),
                                    timeout=5) as r:
            return json.load(r)

    def post(self, body, headers=None, timeout=5):
        """POST body (bytes, str or JSON-able); returns (status, headers)."""
        if not isinstance(body, (bytes, str)):
            body = json.dumps(body)
        if isinstance(body, str):
            body = body.encode()
        req = urllib.request.Request(self.url + "ingest", data=body, method="POST",
                                     headers=dict({"Content-Type": "application/json"},
                                                  **(headers or {})))
        try:
            with urllib.request.urlopen(req, timeout=timeout) as r:
                return r.status, dict(r.headers)
        except urllib.error.HTTPError as e:
            return e.code, dict(e.headers)


def sign(secret, wid, body, ts=None):
    """Standard Webhooks headers for body, as herald signs (SPEC §2)."""
    key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
    ts = str(int(time.time()) if ts is None else ts)
    mac = hmac.new(key, b"%s.%s.%s" % (wid.encode(), ts.encode(), body), hashlib.sha256)
    return {"webhook-id": wid, "webhook-timestamp": ts,
            "webhook-signature": "v1," + base64.b64encode(mac.digest()).decode()}


def envelope(eid, device, kind, payload):
    topic = {"telemetry": "telemetry", "status": "status", "event": "events",
             "response": "response"}.get(kind)
    e = {"id": eid, "device": device, "kind": kind, "receivedAt": "2026-11-22T00:00:00.000Z",
         "gateway": "bench-test", "payload": payload}
    if topic:
        e["topic"] = "device/%s/%s" % (device, topic)
    return e


class Subscriber:
    """A paho client that records every message on `topics`, in arrival
    order, as (topic, payload bytes, retain)."""

    def __init__(self, port, topics=("device/+/+",), qos=1, client_id=None):
        import paho.mqtt.client as mqtt
        self.lock = threading.Lock()
        self.msgs = []
        self.subscribed = threading.Event()
        self.c = mqtt.Client(client_id=client_id or "bench-test-sub-%d" % os.getpid(),
                             clean_session=True)
        self.c.on_connect = lambda c, u, f, rc: c.subscribe([(t, qos) for t in topics])
        self.c.on_subscribe = lambda c, u, mid, granted: self.subscribed.set()
        self.c.on_message = self._on_message
        self.c.connect("127.0.0.1", port, 60)
        self.c.loop_start()
        _cleanups.append(self.stop)
        assert self.subscribed.wait(10), "subscription not acknowledged"

    def _on_message(self, c, u, m):
        with self.lock:
            self.msgs.append((m.topic, m.payload, m.retain))

    def messages(self):
        with self.lock:
            return list(self.msgs)

    def count(self, kind=None):
        return sum(1 for t, _, _ in self.messages() if kind is None or t.endswith("/" + kind))

    def publish(self, topic, payload, qos=1):
        info = self.c.publish(topic, payload, qos)
        info.wait_for_publish()

    def stop(self):
        self.c.loop_stop()
        self.c.disconnect()


def main(*tests):
    """Run each test function; print one line per test; exit 0, 1, or 77 when
    herald-bench is not built or every test skipped."""
    if not BENCH or not os.access(BENCH, os.X_OK):
        print("SKIP: herald-bench not built (HERALD_BUILDDIR=%s)" % BUILDDIR)
        sys.exit(77)
    failed = skipped = 0
    for t in tests:
        t0 = time.monotonic()
        try:
            t()
            print("ok - %s (%.1fs)" % (t.__name__, time.monotonic() - t0), flush=True)
        except Skip as e:
            skipped += 1
            print("skip - %s: %s" % (t.__name__, e), flush=True)
        except Exception:
            failed += 1
            print("FAIL - %s (%.1fs)" % (t.__name__, time.monotonic() - t0), flush=True)
            traceback.print_exc()
        finally:
            cleanup()
    sys.exit(1 if failed else 77 if skipped == len(tests) else 0)


def run_scenarios(only):
    """contrib/bench/run --quick --only `only` into a temporary file; returns
    {scenario number: [row cells, ...]} of its tables and the whole text."""
    tmp = TmpDir()
    out = tmp.join("BENCHMARKS.md")
    script = os.path.join(os.environ.get("HERALD_SRCDIR") or
                          os.path.join(os.path.dirname(__file__), "..", ".."), "contrib", "bench", "run")
    r = subprocess.run(["bash", script, "--quick", "--only", only, "-o", out, BUILDDIR],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, (r.returncode, r.stderr[-2000:])
    text = open(out).read()
    tables, cur = {}, None
    for line in text.splitlines():
        if line.startswith("## ") and line[3].isdigit():
            cur = int(line[3])
            tables[cur] = []
        elif cur and line.startswith("| ") and not line.startswith("|---"):
            tables[cur].append([c.strip() for c in line.strip("|").split("|")])
    for n in only.split(","):
        assert int(n) in tables, "scenario %s missing:\n%s" % (n, text)
    return {n: rows[1:] for n, rows in tables.items()}, text


def herald_built():
    return all(os.access(os.path.join(BUILDDIR, b), os.X_OK) for b in ("herald", "heraldctl"))


def check_herald_row(row, text):
    """A herald row: 'not run' only because herald is not built; else numbers."""
    if not herald_built():
        assert row[1].startswith("not run: herald is not built"), row
        return False
    assert not row[1].startswith("not run"), "herald is built but did not run:\n" + text
    return True


SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"


def herald_between(batch_max=1):
    """The real herald between a fresh broker and a checking sink (signed
    deliveries; the sink counts missing messages against tmp/seq, the
    fleet's --seq-out).  Skips the test while herald is not built."""
    if not herald_built():
        raise Skip("herald is not built")
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    sink = Sink("--secret", SECRET, "--seq-in", tmp.join("seq"))
    h = Herald(tmp, broker=broker, conf={
        "backend": {"url": sink.url, "secret": SECRET, "batch_max": batch_max}}).wait_ready()
    return tmp, broker, sink, h


def settled(sink):
    """The sink's report once nothing the fleet sent is missing, else None."""
    r = sink.report()
    return r if r.get("missing") == 0 else None
