"""
Helpers for the REST API tests (40-*.py): an HTTP client for herald's API,
a simulated device over real MQTT (paho-mqtt), checks of SPEC's error body,
and a strict parser of the Prometheus text format.
"""
import http.client
import json
import os
import re
import socket
import struct
import threading
import time

import paho.mqtt.client as mqtt

from heraldtest import Backend, Herald, Mosquitto, TmpDir, wait_for

TOKEN = "test-token-1"


def start(conf=None, tmp=None, broker=None, backend=None, env=None):
    """A broker, a recording backend and a herald whose device path works."""
    tmp = tmp or TmpDir()
    broker = broker or Mosquitto(tmp)
    backend = backend or Backend()
    h = Herald(tmp, conf=conf, broker=broker, backend=backend, env=env).wait_ready()
    warm_up(h, broker)
    return tmp, broker, backend, h


def warm_up(h, broker, timeout=15):
    """Workers say ready before their fabric connections are up; a device
    message in that window is dropped and comes again with the mqtt
    outbox's resend.  Wait until a probe's status reached the router."""
    c = mqtt.Client(client_id="herald-warmup", protocol=mqtt.MQTTv311)
    c.connect("127.0.0.1", broker.port, keepalive=30)
    c.loop_start()
    c.publish("device/herald-warmup/status", json.dumps({"state": "offline"}), 1).wait_for_publish()
    c.disconnect()
    c.loop_stop()
    wait_for(lambda: api(h, "GET", "/v1/devices/herald-warmup")[0] == 200, timeout,
             what="herald's device path to work")


def api(h, method, path, body=None, token=TOKEN, raw=None, headers=None, timeout=70):
    """One REST call on a fresh connection: (status, parsed JSON or None, headers)."""
    host, port = h.sections["api"]["listen"].rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    hdrs = dict(headers or {})
    if token is not None:
        hdrs["Authorization"] = "Bearer " + token
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    if data is not None:
        hdrs.setdefault("Content-Type", "application/json")
    c.request(method, path, body=data, headers=hdrs)
    r = c.getresponse()
    text = r.read()
    c.close()
    doc = json.loads(text) if text and r.getheader("Content-Type", "").startswith(
        "application/json") else None
    return r.status, doc, dict(r.getheaders())


def api_text(h, method, path, raw, token=TOKEN):
    """One REST call with a raw body: (status, the answer's bytes)."""
    host, port = h.sections["api"]["listen"].rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=70)
    c.request(method, path, body=raw, headers={"Authorization": "Bearer " + token})
    r = c.getresponse()
    text = r.read()
    c.close()
    return r.status, text


def check_error(status, doc, want_status, want_code=None):
    """SPEC §3: {"error":{"code":"<snake_case>","message":"..."}}."""
    assert status == want_status, (status, doc)
    assert isinstance(doc, dict) and set(doc) == {"error"}, doc
    err = doc["error"]
    assert set(err) == {"code", "message"}, err
    assert re.fullmatch(r"[a-z][a-z0-9_]*", err["code"]), err
    assert isinstance(err["message"], str) and err["message"], err
    if want_code:
        assert err["code"] == want_code, err


RFC3339 = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
RECORD_FIELDS = {"commandId", "device", "type", "params", "state", "createdAt", "sentAt",
                 "completedAt", "expiresAt", "success", "result", "error"}


def check_record(rec):
    assert isinstance(rec, dict), rec
    assert set(rec) <= RECORD_FIELDS, set(rec) - RECORD_FIELDS
    for k in ("commandId", "device", "type", "params", "state", "createdAt", "expiresAt"):
        assert k in rec, (k, rec)
    # SPEC §1: params is an object (a string there was e727283's store
    # format leaking out, as 8ecd678 shows such a record after a downgrade).
    assert isinstance(rec["params"], dict), rec
    for k in ("createdAt", "sentAt", "completedAt", "expiresAt"):
        if k in rec:
            assert RFC3339.match(rec[k]), (k, rec[k])
    return rec


def ms(ts):
    """RFC 3339 (ms, UTC) to unix milliseconds."""
    t = time.strptime(ts[:19], "%Y-%m-%dT%H:%M:%S")
    import calendar
    return calendar.timegm(t) * 1000 + int(ts[20:23])


class Device:
    """A simulated device: connects with client id = device id, sets its
    retained Last Will, subscribes to its command and config topics, then
    reports online.  `answer(cmd)` decides each response: ("ok", result),
    ("fail", error) or None (no answer)."""

    def __init__(self, broker, dev_id, answer=None, clean=True):
        self.id = dev_id
        self.broker = broker
        self.answer = answer if answer is not None else (lambda cmd: ("ok", {"done": cmd["type"]}))
        self.lock = threading.Lock()
        self.commands = []      # every JSON message received on device/<id>/command
        self.raw = []           # ... and its bytes
        self.configs = []       # (payload bytes, retained flag)
        self.markers = []
        self.ready = threading.Event()
        self.c = mqtt.Client(client_id=dev_id, clean_session=clean, protocol=mqtt.MQTTv311)
        self.c.username_pw_set(dev_id, "token")
        self.c.will_set("device/%s/status" % dev_id, json.dumps({"state": "offline"}), 1, True)
        self.c.on_connect = self._on_connect
        self.c.on_subscribe = self._on_subscribe
        self.c.on_message = self._on_message
        self.c.on_disconnect = self._on_disconnect
        self.gone = threading.Event()

    def _on_connect(self, c, userdata, flags, rc):
        if rc == 0:
            c.subscribe([("device/%s/command" % self.id, 1), ("device/%s/config" % self.id, 1),
                         ("test/marker/%s" % self.id, 1)])

    def _on_disconnect(self, c, userdata, rc):
        self.gone.set()

    def _on_subscribe(self, c, userdata, mid, granted):
        # Online only once the subscriptions hold: a command published
        # before would find no subscriber.
        c.publish("device/%s/status" % self.id,
                  json.dumps({"state": "online", "version": "1.0", "ip": "127.0.0.1"}), 1, True)
        self.ready.set()

    def _on_message(self, c, userdata, msg):
        if msg.topic.endswith("/config"):
            with self.lock:
                self.configs.append((msg.payload, bool(msg.retain)))
            return
        if msg.topic.startswith("test/marker/"):
            with self.lock:
                self.markers.append(msg.payload)
            return
        cmd = json.loads(msg.payload)
        with self.lock:
            self.commands.append(cmd)
            self.raw.append(msg.payload)
        if "commandId" not in cmd:
            return
        a = self.answer(cmd)
        if a is None:
            return
        kind, val = a
        if kind == "ok":
            resp = {"commandId": cmd["commandId"], "success": True, "result": val}
        else:
            resp = {"commandId": cmd["commandId"], "success": False, "error": val}
        c.publish("device/%s/response" % self.id, json.dumps(resp), 1)

    def connect(self, timeout=10):
        self.c.connect("127.0.0.1", self.broker.port, keepalive=30)
        self.c.loop_start()
        if not self.ready.wait(timeout):
            raise AssertionError("device %s did not get its subscriptions" % self.id)
        return self

    def marker(self, timeout=5):
        """A round trip through the broker: anything retained or queued for
        this device's earlier subscriptions has arrived once it returns."""
        n = len(self.markers)
        self.c.publish("test/marker/%s" % self.id, b"m", 1)
        wait_for(lambda: len(self.markers) > n, timeout, what="marker round trip")

    def cmds(self):
        with self.lock:
            return list(self.commands)

    def disconnect(self):
        """A clean disconnect does not fire the Last Will: say offline first."""
        self.c.publish("device/%s/status" % self.id, json.dumps({"state": "offline"}), 1, True)
        self.leave()

    def leave(self, timeout=5):
        """A clean DISCONNECT, and nothing else: the Last Will does not fire.
        Returns once the DISCONNECT is written and the socket closed, so that
        what the test does next comes after it; when the broker has let go of
        the session is another matter (see puback_reason)."""
        self.gone.clear()
        if self.c.disconnect() == mqtt.MQTT_ERR_SUCCESS and not self.gone.wait(timeout):
            raise AssertionError("device %s: DISCONNECT not written in %ss" % (self.id, timeout))
        self.c.loop_stop()

    def drop(self):
        """Vanish without a DISCONNECT, so the broker sends the Last Will."""
        self.c.loop_stop()
        self.c.socket().close()


def puback_reason(broker, topic, timeout=5):
    """Publish an empty message at QoS 1 over MQTT 5 and return the reason
    code of the broker's PUBACK: 0x10 when no subscription matched the topic.
    Raw packets, because paho 1.6 does not hand PUBACK reasons over."""
    def string(b):
        return struct.pack("!H", len(b)) + b

    def packet(first, body):
        assert len(body) < 128
        return bytes([first, len(body)]) + body

    def read_packet(s):
        head = b""
        while len(head) < 2:
            chunk = s.recv(2 - len(head))
            if not chunk:
                raise AssertionError("broker closed the probe connection")
            head += chunk
        body = b""
        while len(body) < head[1]:
            chunk = s.recv(head[1] - len(body))
            if not chunk:
                raise AssertionError("broker closed the probe connection")
            body += chunk
        return head[0], body

    with socket.create_connection(("127.0.0.1", broker.port), timeout) as s:
        # CONNECT: MQTT 5, clean start, keepalive 10 s, no properties.
        s.sendall(packet(0x10, string(b"MQTT") + bytes([5, 0x02]) + struct.pack("!H", 10)
                         + b"\x00" + string(b"probe-%d" % os.getpid())))
        kind, body = read_packet(s)
        assert kind == 0x20 and body[1] == 0, ("CONNACK", kind, body)
        s.sendall(packet(0x32, string(topic.encode()) + struct.pack("!H", 1) + b"\x00"))
        kind, body = read_packet(s)
        assert kind == 0x40 and body[:2] == b"\x00\x01", ("PUBACK", kind, body)
        s.sendall(b"\xe0\x00")
        return body[2] if len(body) > 2 else 0


def envelopes(backend, kind="request"):
    return [e for e in backend.delivered() if e.get("kind") == kind]


def request_states(backend):
    """commandId -> list of states announced to the backend, in arrival order."""
    out = {}
    for e in envelopes(backend):
        out.setdefault(e["payload"]["commandId"], []).append(e["payload"]["state"])
    return out


_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
_LABEL = r'[a-zA-Z_][a-zA-Z0-9_]*="(?:[^"\\\n]|\\[\\"n])*"'
_SAMPLE = re.compile(r"^(%s)(\{(?:%s(?:,%s)*)?\})? (\S+)( -?\d+)?$" % (_NAME, _LABEL, _LABEL))
_VALUE = re.compile(r"^(?:[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?|NaN|[+-]Inf)$")


def parse_prometheus(text):
    """Strict text exposition format 0.0.4: every sample line is
    `name{labels} value`, its family has a # TYPE before it, a family's
    samples are contiguous and declared once.  Returns
    {family: {"type", "help", "samples": [(labels dict, value)]}}."""
    fams = {}
    current = None
    assert text.endswith("\n"), "the exposition must end with a newline"
    for n, line in enumerate(text.split("\n")[:-1], 1):
        assert line == line.strip() and line, "line %d: empty or padded: %r" % (n, line)
        if line.startswith("#"):
            parts = line.split(" ", 3)
            if len(parts) >= 3 and parts[1] in ("HELP", "TYPE"):
                name = parts[2]
                assert re.fullmatch(_NAME, name), "line %d: bad name %r" % (n, name)
                f = fams.setdefault(name, {"type": None, "help": None, "samples": [], "closed": False})
                assert not f["closed"], "line %d: family %s declared again" % (n, name)
                if parts[1] == "TYPE":
                    assert f["type"] is None, "line %d: second TYPE for %s" % (n, name)
                    assert not f["samples"], "line %d: TYPE after samples of %s" % (n, name)
                    assert len(parts) == 4 and parts[3] in (
                        "counter", "gauge", "histogram", "summary", "untyped"), line
                    f["type"] = parts[3]
                else:
                    assert f["help"] is None, "line %d: second HELP for %s" % (n, name)
                    f["help"] = parts[3] if len(parts) == 4 else ""
                if current is not None and current != name:
                    fams[current]["closed"] = True
                current = name
            continue
        m = _SAMPLE.match(line)
        assert m, "line %d: not `name{labels} value`: %r" % (n, line)
        name, labels, value = m.group(1), m.group(2), m.group(3)
        assert _VALUE.match(value), "line %d: bad value %r" % (n, value)
        fam = name
        if fam not in fams:
            for suffix in ("_bucket", "_sum", "_count"):
                if name.endswith(suffix) and name[:-len(suffix)] in fams:
                    fam = name[:-len(suffix)]
        assert fam in fams and fams[fam]["type"], "line %d: %s has no # TYPE before it" % (n, name)
        assert not fams[fam]["closed"], "line %d: samples of %s are not contiguous" % (n, fam)
        if current is not None and current != fam:
            fams[current]["closed"] = True
        current = fam
        lab = {}
        if labels and labels != "{}":
            for kv in re.findall(_LABEL, labels[1:-1]):
                k, v = kv.split("=", 1)
                assert k not in lab, "line %d: label %s twice" % (n, k)
                lab[k] = v[1:-1]
        keys = [s[0] for s in fams[fam]["samples"]]
        assert lab not in keys, "line %d: duplicate series %s%s" % (n, name, labels)
        fams[fam]["samples"].append((lab, float(value)))
    for name, f in fams.items():
        f.pop("closed")
    return fams
