#!/usr/bin/python3
"""herald-bench rtt: open loop (sends keep their schedule however slow the
answers), over bare MQTT with the fleet answering (--raw), and over HTTP
against a stand-in for herald's REST API (SPEC §3): confirmed, failed, 202
and 401 answers are told apart, connections are kept alive."""
import http.server
import json
import threading
import time
import urllib.parse

from benchlib import Mosquitto, Proc, Subscriber, TmpDir, _cleanups, bench, main, wait_for


def test_raw_round_trips():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    fleet = Proc("fleet", "--port", broker.port, "--devices", 10, "--rate", 0,
                 "--answer-delay-ms", 20, "--fail-ratio", 0.1, "--json")
    st = Subscriber(broker.port, topics=("device/+/status",))
    wait_for(lambda: st.count() >= 10, 5, what="10 devices online")
    rc, out, _ = bench("rtt", "--raw", "--port", broker.port, "--devices", 10, "--rate", 200,
                       "--count", 400, "--json", timeout=20)
    r = json.loads(out)
    assert (r["sent"], r["completed"], r["ok"], r["device_failed"], r["timeouts"], r["errors"]) == \
        (400, 400, 360, 40, 0, 0), r
    assert 20000 <= r["latency_us"]["p50"] < 500000, r["latency_us"]
    assert r["latency_us"]["count"] == 400
    # sends are never early; a loaded machine can only make them late
    assert 120 < r["achieved_rate"] < 205, r["achieved_rate"]
    rc, out, _ = fleet.stop()
    f = json.loads(out)
    assert f["received"]["requests"] == 400 and f["requests_failed"] == 40, f


def test_raw_nobody_answers():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    rc, out, _ = bench("rtt", "--raw", "--port", broker.port, "--devices", 3, "--rate", 50,
                       "--count", 20, "--wait", 1, "--json", timeout=20, check=False)
    r = json.loads(out)
    assert rc == 1, rc
    assert r["sent"] == 20 and r["timeouts"] == 20 and r["completed"] == 0, r


class FakeApi:
    """POST /v1/devices/{id}/requests?wait=S as herald answers it: bench-2's
    requests fail, bench-3's are still pending when the wait ends (202),
    the rest are confirmed after `delay` seconds."""

    def __init__(self, delay=0.01, token="tok"):
        self.lock = threading.Lock()
        self.requests = []
        self.peers = set()
        api = self

        class H(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                url = urllib.parse.urlparse(self.path)
                dev = url.path.split("/")[3]
                with api.lock:
                    api.requests.append((dev, url.path, urllib.parse.parse_qs(url.query), body,
                                         self.headers.get("Authorization")))
                    api.peers.add(self.client_address)
                if self.headers.get("Authorization") != "Bearer " + token:
                    return self.answer(401, {"error": {"code": "unauthorized", "message": "no"}})
                time.sleep(delay)
                rec = {"commandId": "c", "device": dev, "type": body["type"], "params": body["params"]}
                if dev == "bench-2":
                    rec.update(state="failed", success=False, error={"code": "x", "message": "y"})
                    return self.answer(200, rec)
                if dev == "bench-3":
                    rec["state"] = "sent"
                    return self.answer(202, rec)
                rec.update(state="confirmed", success=True, result={})
                self.answer(200, rec)

            def answer(self, code, doc):
                b = json.dumps(doc).encode()
                self.send_response(code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(b)))
                self.end_headers()
                self.wfile.write(b)

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        self.url = "http://127.0.0.1:%d" % self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        _cleanups.append(self.server.shutdown)


def test_http_round_trips():
    api = FakeApi()
    rc, out, _ = bench("rtt", "--url", api.url, "--token", "tok", "--devices", 4, "--rate", 100,
                       "--count", 100, "--wait", 7, "--params", '{"n":1}', "--json", timeout=20)
    r = json.loads(out)
    assert (r["sent"], r["ok"], r["device_failed"], r["timeouts"], r["answered_202"], r["errors"]) == \
        (100, 50, 25, 25, 25, 0), r
    assert r["states"] == {"confirmed": 50, "failed": 25}, r["states"]
    assert r["latency_us"]["count"] == 75 and r["latency_us"]["p50"] >= 10000, r["latency_us"]
    devs = [d for d, *_ in api.requests]
    assert devs[:8] == ["bench-1", "bench-2", "bench-3", "bench-4"] * 2     # in turn
    assert all(q == {"wait": ["7"]} and b == {"type": "ping", "params": {"n": 1}} and
               p == "/v1/devices/%s/requests" % d for d, p, q, b, _ in api.requests)
    # Kept alive: 100 requests over a few connections (more open when the
    # machine is slow and answers overlap, never one a request).
    assert len(api.peers) <= 30, "connections not kept alive: %d" % len(api.peers)


def test_http_open_loop_keeps_schedule():
    api = FakeApi(delay=0.25)
    t0 = time.monotonic()
    rc, out, _ = bench("rtt", "--url", api.url, "--token", "tok", "--devices", 1, "--rate", 100,
                       "--duration", 1, "--json", timeout=20)
    r = json.loads(out)
    # 250 ms answers, 100 per second: about 25 at once, and the sends do not wait
    # for them (a closed loop on one device would manage 4 per second)
    assert r["sent"] == 100 and r["ok"] == 100, r
    assert 60 < r["achieved_rate"] < 105 and r["max_send_lag_us"] < 500000, r
    assert r["latency_us"]["p50"] >= 250000, r["latency_us"]
    assert time.monotonic() - t0 < 5
    assert len(api.peers) >= 10, len(api.peers)


def test_http_unauthorized():
    api = FakeApi()
    rc, out, _ = bench("rtt", "--url", api.url, "--token", "wrong", "--count", 10, "--rate", 100,
                       "--json", check=False)
    r = json.loads(out)
    assert rc == 1 and r["errors"] == 10 and r["error_kinds"] == {"http 401": 10}, r


def test_http_refused():
    from benchlib import free_port
    rc, out, _ = bench("rtt", "--url", "http://127.0.0.1:%d" % free_port(), "--count", 5,
                       "--rate", 100, "--json", check=False)
    r = json.loads(out)
    assert rc == 1 and r["errors"] == 5, r
    assert list(r["error_kinds"]) == ["curl: Couldn't connect to server"], r["error_kinds"]


if __name__ == "__main__":
    main(test_raw_round_trips, test_raw_nobody_answers, test_http_round_trips,
         test_http_open_loop_keeps_schedule, test_http_unauthorized, test_http_refused)
