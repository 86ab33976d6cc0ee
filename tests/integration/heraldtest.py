"""
Helpers for herald's integration tests: start the real Mosquitto, the real
herald and a recording HTTP backend on free ports, wait for conditions with
deadlines, and clean every process up.  A test file calls main(test_fn, ...):
exit 0 = pass, 1 = fail, 77 = skip (automake's convention).
"""
import atexit
import base64
import hashlib
import hmac
import http.server
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import traceback

BUILDDIR = os.environ.get("HERALD_BUILDDIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
SRCDIR = os.environ.get("HERALD_SRCDIR") or os.path.abspath(
    os.path.join(os.path.dirname(__file__), "..", ".."))
HERALD = os.path.join(BUILDDIR, "herald")
HERALDCTL = os.path.join(BUILDDIR, "heraldctl")
MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

_cleanups = []


class Skip(Exception):
    pass


def log(*a):
    print("#", *a, flush=True)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_for(cond, timeout=10.0, interval=0.02, what="condition"):
    """Poll cond() until it returns a truthy value; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    last = None
    while True:
        try:
            last = cond()
        except Exception as e:  # a condition may race with a restart
            last = None
            err = e
        if last:
            return last
        if time.monotonic() >= deadline:
            raise AssertionError("timed out after %.1fs waiting for %s" % (timeout, what))
        time.sleep(interval)


def port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.2):
            return True
    except OSError:
        return False


class TmpDir:
    def __init__(self):
        # Short paths: unix socket paths are limited to 107 bytes.
        self.path = tempfile.mkdtemp(prefix="hrld.", dir="/tmp")
        _cleanups.append(self.remove)

    def join(self, *p):
        return os.path.join(self.path, *p)

    def remove(self):
        if os.environ.get("HERALD_KEEP_TMP"):
            log("kept", self.path)
            return
        shutil.rmtree(self.path, ignore_errors=True)


class Mosquitto:
    """A real broker on a free loopback port.  With persist=True it keeps its
    sessions, subscriptions and queued messages in a file in its directory
    (saved every second and at a clean exit), so a restart() brings them back."""

    def __init__(self, tmp, extra="", persist=False):
        self.port = free_port()
        self.dir = tmp.join("mosquitto")
        os.makedirs(self.dir, exist_ok=True)
        self.conf = os.path.join(self.dir, "mosquitto.conf")
        if persist:
            # As root, Mosquitto drops to its own user, which could not
            # write into the test's private directory.
            storage = "persistence true\npersistence_location %s/\nautosave_interval 1\n%s" % (
                self.dir, "user root\n" if os.geteuid() == 0 else "")
        else:
            storage = "persistence false\n"
        with open(self.conf, "w") as f:
            f.write("listener %d 127.0.0.1\nallow_anonymous true\n"
                    "max_queued_messages 1000000\nmax_inflight_messages 100\n"
                    "set_tcp_nodelay true\n%s"
                    "sys_interval 1\n%s" % (self.port, storage, extra))
        self.logpath = os.path.join(self.dir, "mosquitto.log")
        self.logf = open(self.logpath, "w")
        self.proc = None
        _cleanups.append(self.stop)
        self._start()

    def _start(self):
        self.proc = subprocess.Popen([MOSQUITTO, "-c", self.conf], stdout=self.logf,
                                     stderr=subprocess.STDOUT)
        wait_for(lambda: port_open(self.port), 10, what="mosquitto to listen")

    def restart(self, kill=False):
        """Stop the broker (SIGTERM: it saves its state; kill=True: SIGKILL,
        it keeps only its last autosave) and start it again on the same port."""
        if self.proc.poll() is None:
            if kill:
                self.proc.kill()
            else:
                self.proc.terminate()
            self.proc.wait(10)
        self.logf.close()
        self.logf = open(self.logpath, "a")
        self._start()

    def log_text(self):
        with open(self.logpath, errors="replace") as f:
            return f.read()

    def stop(self):
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()


class Backend:
    """A recording HTTP backend.  `respond(handler, body) -> (status, headers)`
    decides each answer; the default accepts with 204.  tls=(certfile,
    keyfile): HTTPS; client_ca (a PEM file) with it: a client certificate
    it vouches for is required, and `client_names` has the common name of
    the client certificate of each POST."""

    def __init__(self, secret=None, respond=None, tls=None, client_ca=None):
        self.lock = threading.Lock()
        self.posts = []          # (time, headers dict, body bytes, status answered)
        self.envelopes = []      # every envelope accepted with 2xx
        self.secret = secret
        self.respond = respond
        self.bad_signatures = 0
        self.client_names = []
        backend = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                n = int(self.headers.get("Content-Length", "0"))
                body = self.rfile.read(n)
                status, headers = 204, {}
                if backend.respond:
                    status, headers = backend.respond(self, body)
                if backend.secret and not backend.check_signature(self.headers, body):
                    backend.bad_signatures += 1
                with backend.lock:
                    backend.posts.append((time.monotonic(), dict(self.headers), body, status))
                    if backend.tls is not None:
                        cert = self.connection.getpeercert() or {}
                        backend.client_names.append(
                            dict(kv for rdn in cert.get("subject", ()) for kv in rdn)
                            .get("commonName"))
                    if 200 <= status < 300:
                        doc = json.loads(body)
                        backend.envelopes.extend(doc if isinstance(doc, list) else [doc])
                self.send_response(status)
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("Content-Length", "0")
                self.end_headers()

        self.handler = Handler
        self.port = 0
        self.tls = None
        if tls is not None:
            self.tls = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.tls.load_cert_chain(*tls)
            if client_ca is not None:
                self.tls.verify_mode = ssl.CERT_REQUIRED
                self.tls.load_verify_locations(client_ca)
        self.serve()
        self.url = "%s://127.0.0.1:%d/ingest" % ("https" if tls else "http", self.port)
        _cleanups.append(self.stop)

    def serve(self):
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), self.handler)
        self.server.daemon_threads = True
        if self.tls is not None:
            # The handshake runs in each connection's thread, not in accept().
            self.server.socket = self.tls.wrap_socket(self.server.socket, server_side=True,
                                                      do_handshake_on_connect=False)
            # a client that does not trust us ends its handshake: not news
            self.server.handle_error = lambda request, address: None
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def refuse(self):
        """Stop listening: connections are refused until accept_again()."""
        self.server.shutdown()
        self.server.server_close()

    def accept_again(self):
        self.serve()

    def check_signature(self, headers, body):
        secret = self.secret
        key = base64.b64decode(secret[6:]) if secret.startswith("whsec_") else secret.encode()
        mid, ts, sig = (headers.get("webhook-id"), headers.get("webhook-timestamp"),
                        headers.get("webhook-signature"))
        if not (mid and ts and sig):
            return False
        want = base64.b64encode(hmac.new(key, b"%s.%s.%s" % (mid.encode(), ts.encode(), body),
                                         hashlib.sha256).digest()).decode()
        return any(s == "v1," + want for s in sig.split())

    def delivered(self):
        with self.lock:
            return list(self.envelopes)

    def stop(self):
        self.server.shutdown()
        self.server.server_close()


DEFAULT_CONF = {
    "herald": {"node_name": "test-node", "log_level": "info"},
    "workers": {"mqtt": 2, "ping_interval_ms": 300, "ping_timeout_ms": 2000,
                "stop_timeout_ms": 5000},
    "mqtt": {"host": "127.0.0.1"},
    "api": {"tokens": "test-token-1"},
    "backend": {"url": "http://127.0.0.1:9/unused"},
    # off: fast; HERALD_TEST_FSYNC=batch runs the suite with herald's default
    "spool": {"fsync": os.environ.get("HERALD_TEST_FSYNC", "off")},
}


def write_conf(path, sections):
    with open(path, "w") as f:
        for sec, kv in sections.items():
            f.write("[%s]\n" % sec)
            for k, v in kv.items():
                f.write("%s = %s\n" % (k, v))


class Herald:
    """The real herald, in its own process group."""

    def __init__(self, tmp, conf=None, env=None, broker=None, backend=None, start=True):
        self.tmp = tmp
        self.conf_path = tmp.join("herald.conf")
        self.sections = json.loads(json.dumps(DEFAULT_CONF))
        self.sections["herald"]["state_dir"] = tmp.join("state")
        self.sections["herald"]["run_dir"] = tmp.join("run")
        self.sections["admin"] = {"socket": tmp.join("run", "admin.sock")}
        self.sections["api"]["listen"] = "127.0.0.1:%d" % free_port()
        if broker:
            self.sections["mqtt"]["port"] = broker.port
        if backend:
            self.sections["backend"]["url"] = backend.url
        for sec, kv in (conf or {}).items():
            self.sections.setdefault(sec, {}).update(kv)
        self.write()
        self.env = dict(os.environ)
        self.env.update(env or {})
        self.proc = None
        self.has_broker = broker is not None
        self.logpath = tmp.join("herald.log")
        _cleanups.append(self.kill_all)
        if start:
            self.start()

    @property
    def admin_socket(self):
        return self.sections["admin"]["socket"]

    @property
    def api_url(self):
        return "http://" + self.sections["api"]["listen"]

    def write(self):
        write_conf(self.conf_path, self.sections)

    def start(self):
        self.logf = open(self.logpath, "a")
        self.proc = subprocess.Popen([HERALD, "-c", self.conf_path], stdout=self.logf,
                                     stderr=subprocess.STDOUT, env=self.env,
                                     start_new_session=True)
        self.pgid = self.proc.pid
        return self

    def log_text(self):
        with open(self.logpath, errors="replace") as f:
            return f.read()

    def ctl(self, *args, check=True, timeout=10):
        r = subprocess.run([HERALDCTL, "-s", self.admin_socket, "-j"] + list(args),
                           capture_output=True, text=True, timeout=timeout)
        if check and r.returncode != 0:
            raise AssertionError("heraldctl %s failed (%d): %s %s" % (
                " ".join(args), r.returncode, r.stdout, r.stderr))
        return json.loads(r.stdout) if r.stdout.strip() else None

    def workers(self):
        return self.ctl("workers")["workers"]

    def worker(self, role, slot=0):
        for w in self.workers():
            if w["role"] == role and w["slot"] == slot:
                return w
        return None

    def counter(self, role, name, slot=0):
        """One worker's counter from `heraldctl stats` (0 when not counted yet)."""
        for w in self.ctl("stats")["workers"]:
            if w["role"] == role and w.get("slot", 0) == slot:
                return w["counters"].get(name, 0)
        raise AssertionError("no %s.%d worker in stats" % (role, slot))

    def expected_workers(self):
        return 4 + int(self.sections["workers"].get("mqtt", 1))

    def all_ready(self):
        try:
            ws = [w for w in self.workers() if w["role"] != "supervisor"]
        except Exception:
            return False
        return len(ws) == self.expected_workers() and all(w["state"] == "ready" for w in ws)

    def subscribed(self):
        """Every broker connection has its device subscriptions: from here on
        the broker keeps device messages for herald, whatever happens."""
        want = int(self.sections["workers"].get("mqtt", 1)) * \
            int(self.sections["mqtt"].get("connections_per_worker", 1))
        return self.ctl("stats")["gauges"].get("mqtt_subscribed", 0) == want

    def wait_ready(self, timeout=15):
        wait_for(self.all_ready, timeout, 0.05, "every herald worker to be ready")
        if self.has_broker:
            wait_for(self.subscribed, timeout, 0.05, "herald's broker subscriptions")
        return self

    def pids(self):
        """Every live process of herald's process group."""
        out = subprocess.run(["pgrep", "-g", str(self.pgid)], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]

    def stop(self, timeout=20):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(timeout)
        return self.proc.returncode

    def kill_all(self):
        if self.proc is None:
            return
        try:
            os.killpg(self.pgid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(5)
        except Exception:
            pass


def cleanup():
    for fn in reversed(_cleanups):
        try:
            fn()
        except Exception:
            pass
    _cleanups.clear()


atexit.register(cleanup)


SANITIZER_MARKS = ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:")


def sanitizer_reports():
    """What AddressSanitizer, LeakSanitizer or UBSan wrote into the logs of
    this test's heralds: a worker they stopped is restarted by the
    supervisor, so the test itself may not notice."""
    found = []
    for c in list(_cleanups):
        owner = getattr(c, "__self__", None)
        if isinstance(owner, Herald) and os.path.exists(owner.logpath):
            lines = owner.log_text().splitlines()
            for i, line in enumerate(lines):
                if any(m in line for m in SANITIZER_MARKS):
                    found.append("\n".join(lines[i:i + 30]))
                    break
    return found


def main(*tests):
    """Run each test function; print one line per test; exit 0/1/77."""
    if not os.access(HERALD, os.X_OK):
        print("SKIP: %s not built" % HERALD)
        sys.exit(77)
    failed = 0
    for t in tests:
        t0 = time.monotonic()
        try:
            t()
            reports = sanitizer_reports()
            assert not reports, "sanitizer report in herald's log:\n" + reports[0]
            print("ok - %s (%.1fs)" % (t.__name__, time.monotonic() - t0), flush=True)
        except Skip as e:
            print("skip - %s: %s" % (t.__name__, e), flush=True)
        except Exception:
            failed += 1
            print("FAIL - %s (%.1fs)" % (t.__name__, time.monotonic() - t0), flush=True)
            traceback.print_exc()
            for c in list(_cleanups):
                owner = getattr(c, "__self__", None)
                if isinstance(owner, Herald) and os.path.exists(owner.logpath):
                    print("---- herald log (last 60 lines) ----")
                    print("\n".join(owner.log_text().splitlines()[-60:]))
        finally:
            cleanup()
    sys.exit(1 if failed else 0)


# ---- device traffic ----

MOSQUITTO_PUB = shutil.which("mosquitto_pub") or "/usr/bin/mosquitto_pub"
KINDS = ("status", "telemetry", "events", "response")
ENVELOPE_KIND = {"status": "status", "telemetry": "telemetry", "events": "event",
                 "response": "response"}


def payload_for(device, kind, seq, pad=0):
    """A device payload that names its device, kind and sequence number."""
    p = {"dev": device, "k": kind, "seq": seq}
    if kind == "events":
        p["type"] = "tick"
    elif kind == "response":
        p.update({"commandId": "c-%s-%d" % (device, seq), "success": True, "result": {}})
    elif kind == "status":
        p["state"] = "online"
    if pad:
        p["pad"] = "x" * pad
    return json.dumps(p, separators=(",", ":"))


class Publisher:
    """Publishes numbered payloads with real MQTT clients (mosquitto_pub -l:
    one connection per device and kind, one QoS 1 message per line)."""

    def __init__(self, broker_port, devices, kinds=KINDS, count=10, pad=0, qos=1, parallel=40):
        self.port, self.devices, self.kinds = broker_port, devices, kinds
        self.count, self.pad, self.qos, self.parallel = count, pad, qos, parallel
        self.sent = {}      # (device, kind) -> [payload text]
        for d in devices:
            for k in kinds:
                self.sent[(d, k)] = [payload_for(d, k, i, pad) for i in range(count)]
        self.thread = None
        self.failures = []

    def total(self):
        return sum(len(v) for v in self.sent.values())

    def _run(self):
        jobs = list(self.sent.items())
        running = []
        while jobs or running:
            while jobs and len(running) < self.parallel:
                (d, k), lines = jobs.pop(0)
                p = subprocess.Popen([MOSQUITTO_PUB, "-h", "127.0.0.1", "-p", str(self.port), "-q", str(self.qos),
                                      "-i", "%s-%s" % (d, k), "-t", "device/%s/%s" % (d, k), "-l"],
                                     stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
                p.stdin.write(("\n".join(lines) + "\n").encode())
                p.stdin.close()
                running.append(((d, k), p))
            for item in list(running):
                if item[1].poll() is not None:
                    running.remove(item)
                    if item[1].returncode != 0:
                        self.failures.append((item[0], item[1].stderr.read()))
            time.sleep(0.01)

    def start(self):
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def run(self):
        self._run()
        assert not self.failures, self.failures[:3]
        return self

    def wait(self, timeout=120):
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "publishers still running"
        assert not self.failures, self.failures[:3]


def check_delivery(envelopes, pub, ordered=False, node="test-node"):
    """Every published message delivered at least once, each checked against
    SPEC §2.  Returns (distinct, duplicates).  Duplicates must carry the id of
    the first delivery of the same message."""
    first_id = {}
    dups = 0
    last_seq = {}
    for e in envelopes:
        p = e["payload"]
        key = (p["dev"], p["k"], p["seq"])
        if key in first_id:
            assert e["id"] == first_id[key], ("duplicate with a new id", key, e["id"], first_id[key])
            dups += 1
            continue
        first_id[key] = e["id"]
        assert e["device"] == p["dev"], e
        assert e["kind"] == ENVELOPE_KIND[p["k"]], e
        assert e["topic"] == "device/%s/%s" % (p["dev"], p["k"]), e
        assert e["gateway"] == node if isinstance(node, str) else e["gateway"] in node, e
        assert len(e["id"]) == 26, e
        assert e["receivedAt"].endswith("Z") and len(e["receivedAt"]) == 24, e
        if ordered:
            k2 = (p["dev"], p["k"])
            assert last_seq.get(k2, -1) < p["seq"], ("order broken", k2, last_seq.get(k2), p["seq"])
            last_seq[k2] = p["seq"]
    missing = [(d, k, i) for (d, k), lines in pub.sent.items() for i in range(len(lines))
               if (d, k, i) not in first_id]
    assert not missing, "%d messages lost, e.g. %s" % (len(missing), missing[:5])
    assert len(set(first_id.values())) == len(first_id), "two messages share an id"
    return len(first_id), dups


def distinct_delivered(backend):
    return len({(e["payload"].get("dev"), e["payload"].get("k"), e["payload"].get("seq"))
                for e in backend.delivered() if isinstance(e.get("payload"), dict)})
