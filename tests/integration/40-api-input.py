#!/usr/bin/python3
"""The REST API's edges (issue 4, must show 6 and 7): missing or wrong
tokens, bad JSON, wrong field types, bodies over max_body, unknown
requests and too many pending requests each get SPEC's error body; 1,000
malformed or hostile requests (random bytes, huge headers, half-sent
requests that stall, clients gone before their ?wait answer) leave every
worker alive and /healthz at 200; /metrics is valid Prometheus text;
/healthz names a worker that is not up."""
import concurrent.futures
import json
import os
import random
import socket
import time

import apilib
from apilib import api, check_error, parse_prometheus, start
from heraldtest import Herald, Mosquitto, TmpDir, main, wait_for

CONF = {"api": {"max_body": "4K"},
        "requests": {"max_pending_per_device": 3, "max_timeout": 600}}


def api_counters(h):
    w = [w for w in h.ctl("stats")["workers"] if w["role"] == "api"][0]
    return w["counters"].get("api_requests", 0), w["counters"].get("api_errors", 0)


def test_bad_input():
    tmp, broker, backend, h = start(CONF)
    good = {"type": "reboot", "params": {}}
    calls = {"n": 0, "errors": 0}
    before = api_counters(h)

    def api(*a, **kw):
        r = apilib.api(*a, **kw)
        calls["n"] += 1
        calls["errors"] += r[0] >= 400
        return r

    # 401: no token, a wrong one, another scheme, a token with a suffix.
    for token, headers in ((None, None), ("wrong", None), ("test-token-1x", None),
                           (None, {"Authorization": "Basic dGVzdDp0ZXN0"}),
                           (None, {"Authorization": "Bearer"})):
        for method, path in (("GET", "/v1/devices"), ("POST", "/v1/devices/d1/requests"),
                             ("GET", "/v1/requests/x")):
            st, doc, hdrs = api(h, method, path, good, token=token, headers=headers)
            check_error(st, doc, 401, "unauthorized")
            assert hdrs.get("WWW-Authenticate", "").startswith("Bearer"), hdrs
    st, doc, _ = api(h, "GET", "/v1/devices", headers={"Authorization": "bearer  test-token-1"},
                     token=None)
    assert st == 200, (st, doc)

    # 400: bad JSON and bodies that are not objects.
    for raw in (b"{bad", b"", b"[1]", b'"x"', b'{"type":"a","type":"b"}', b"\xff\xfe{}"):
        st, doc, _ = api(h, "POST", "/v1/devices/d1/requests", raw=raw)
        check_error(st, doc, 400, "invalid_json")
    # 400: wrong field types and values.
    for body in ({}, {"type": 5}, {"type": ""}, {"type": "x" * 300}, {"type": "a", "params": []},
                 {"type": "a", "params": "x"}, {"type": "a", "timeout": "5"},
                 {"type": "a", "timeout": 0}, {"type": "a", "timeout": 1.5},
                 {"type": "a", "timeout": 601}, {"type": "a", "timeout": True},
                 {"type": "a", "commandId": 5}, {"type": "a", "commandId": "bad id"},
                 {"type": "a", "commandId": "-x"}, {"type": "a", "commandId": "a" * 129}):
        st, doc, _ = api(h, "POST", "/v1/devices/d1/requests", body)
        check_error(st, doc, 400, "invalid_field")
    for path in ("/v1/devices/d1/requests?wait=abc", "/v1/devices/d1/requests?wait=61",
                 "/v1/devices/d1/requests?wait=-1"):
        st, doc, _ = api(h, "POST", path, good)
        check_error(st, doc, 400, "invalid_field")
    for path in ("/v1/devices/d1/requests?state=bogus", "/v1/devices/d1/requests?state=%ff%0a",
                 "/v1/devices/d1/requests?state=" + "a" * 31 + "%C3%A9", "/v1/devices?online=maybe",
                 "/v1/devices?limit=0", "/v1/devices?limit=1001", "/v1/devices?cursor=%2Fx"):
        st, doc, _ = api(h, "GET", path)
        check_error(st, doc, 400, "invalid_field")
    for path in ("/v1/devices/-bad/requests", "/v1/devices/a%2Fb", "/v1/requests/no%20pe"):
        st, doc, _ = api(h, "GET", path)
        check_error(st, doc, 400, "invalid_id")
    st, doc, _ = api(h, "POST", "/v1/devices/d1/events", {"type": "x", "params": [1]})
    check_error(st, doc, 400, "invalid_field")
    # Valid JSON that is not an object is told so (before: "'[' or '{'
    # expected", as if it were not JSON); an unknown field is an error, not
    # silently ignored (a "timout" typo took the default 30 s).
    for raw in (b"1", b"null", b'"x"', b"true"):
        st, doc, _ = api(h, "POST", "/v1/devices/d1/requests", raw=raw)
        check_error(st, doc, 400, "invalid_json")
        assert "must be a JSON object" in doc["error"]["message"], (raw, doc)
    st, doc, _ = api(h, "POST", "/v1/devices/d1/requests", {"type": "a", "timout": 5})
    check_error(st, doc, 400, "invalid_field")
    assert 'unknown field "timout"' in doc["error"]["message"], doc
    st, doc, _ = api(h, "POST", "/v1/devices/d1/events", {"type": "a", "commandId": "c"})
    check_error(st, doc, 400, "invalid_field")
    assert 'unknown field "commandId"' in doc["error"]["message"], doc
    st, doc, _ = api(h, "POST", "/v1/devices/d1/requests", {"type": "a", "commandId": ".x"})
    check_error(st, doc, 400, "invalid_field")
    assert "starting alphanumeric" in doc["error"]["message"], doc

    # 413: a body over max_body (4 KiB), announced or chunked.
    big = {"type": "a", "params": {"blob": "x" * 5000}}
    st, doc, _ = api(h, "POST", "/v1/devices/d1/requests", big)
    check_error(st, doc, 413, "payload_too_large")
    st, doc, _ = api(h, "PUT", "/v1/devices/d1/config", {"blob": "y" * 4090})
    check_error(st, doc, 413, "payload_too_large")
    s = socket.create_connection(("127.0.0.1", int(h.sections["api"]["listen"].rsplit(":", 1)[1])))
    s.sendall(b"POST /v1/devices/d1/requests HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer test-token-1"
              b"\r\nTransfer-Encoding: chunked\r\n\r\n" + b"".join(
                  b"%x\r\n%s\r\n" % (1000, b"z" * 1000) for _ in range(6)) + b"0\r\n\r\n")
    answer = recv_all(s, 5)
    assert answer.startswith(b"HTTP/1.1 413 ") and b'"code":"payload_too_large"' in answer, answer
    assert b"max_body (4096 bytes)" in answer, answer
    calls["n"] += 1
    calls["errors"] += 1
    # The same on a connection that has answered a request before (keep-alive):
    # SPEC's JSON body, not libevent's HTML page.
    port = int(h.sections["api"]["listen"].rsplit(":", 1)[1])
    for second, status, code in (
            (b"POST /v1/devices/d1/requests HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n"
             + b"x" * 5000, 413, b"payload_too_large"),
            (b"GET /v1/devices HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n",
             400, b"bad_request")):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        first = b""
        while b"\r\n\r\n" not in first or not first.rstrip().endswith(b"}"):
            first += s.recv(4096)
        s.sendall(second)
        answer = recv_all(s, 5)
        assert answer.startswith(b"HTTP/1.1 %d " % status), answer[:200]
        head, _, body = answer.partition(b"\r\n\r\n")
        assert b"Content-Type: application/json" in head and b"<HTML>" not in answer, answer
        assert json.loads(body)["error"]["code"] == code.decode(), body
        calls["n"] += 2
        calls["errors"] += 1

    # 404: unknown request, device, resource.
    for path in ("/v1/requests/unknown-cmd", "/v1/devices/never-seen", "/v1/nothing", "/",
                 "/v2/devices", "/v1/devices/d1/frobs"):
        st, doc, _ = api(h, "GET", path)
        check_error(st, doc, 404, "not_found")
    # 405 with Allow, 501 for the registry endpoints.
    # The Allow header names HEAD wherever GET is served.
    for method, path, allow in (("PATCH", "/v1/requests/x", "GET, HEAD, DELETE"),
                                ("PUT", "/v1/devices", "GET, HEAD, POST"),
                                ("OPTIONS", "/v1/devices/d1", "GET, HEAD, DELETE"),
                                ("DELETE", "/v1/devices/d1/requests", "GET, HEAD, POST"),
                                ("TRACE", "/healthz", "GET, HEAD")):
        st, doc, hdrs = api(h, method, path, good if method != "TRACE" else None)
        check_error(st, doc, 405, "method_not_allowed")
        assert hdrs.get("Allow") == allow, (method, path, hdrs)
    st, doc, _ = api(h, "POST", "/v1/devices", {"id": "new-dev"})
    check_error(st, doc, 501, "not_implemented")
    st, doc, _ = api(h, "POST", "/v1/devices/d1/rotate", {})
    check_error(st, doc, 501, "not_implemented")

    # Methods herald serves nowhere: 501, CONNECT as any unknown one (before:
    # CONNECT got 404, its target read as no path).
    for method in (b"CONNECT", b"FOO"):
        s = socket.create_connection(("127.0.0.1", port))
        s.sendall(method + b" /v1/devices HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer "
                  b"test-token-1\r\n\r\n")
        answer = recv_all(s, 5)
        assert answer.startswith(b"HTTP/1.1 501 ") and b'"code":"not_implemented"' in answer, \
            answer
        calls["n"] += 1
        calls["errors"] += 1

    # A query parameter without a value is a parameter with the empty value:
    # an unknown one is ignored, ?wait says what it needs (before: 400
    # bad_request "malformed path or query" for all of these).
    for path in ("/v1/devices?foo", "/v1/devices?&&", "/v1/devices?foo&limit=2&&"):
        st, doc, _ = api(h, "GET", path)
        assert st == 200 and "devices" in doc, (path, st, doc)
    st, doc, _ = api(h, "POST", "/v1/devices/d1/requests?wait", good)
    check_error(st, doc, 400, "invalid_field")
    assert "wait" in doc["error"]["message"], doc

    # Messages are herald's own, not its JSON library's (before: "\\u0000 is
    # not allowed without JSON_ALLOW_NUL").
    st, doc, _ = api(h, "POST", "/v1/devices/d1/requests", raw=b'{"type":"x","params":{"a":"\\u0000"}}')
    check_error(st, doc, 400, "invalid_json")
    assert "\\u0000 is not allowed" in doc["error"]["message"] and "JSON_" not in \
        doc["error"]["message"], doc
    # Numbers of any range are JSON (RFC 8259): in params and config they are
    # accepted (before: 400 invalid_json "too big integer", "real number
    # overflow"); a timeout out of range is a bad field, not bad JSON.
    for raw in (b'{"type":"x","params":{"id":18446744073709551615}}', b'{"type":"x","params":{"v":1e400}}'):
        st, doc, _ = api(h, "POST", "/v1/devices/num-dev/events", raw=raw)
        assert st == 202, (raw, st, doc)
    st, doc, _ = api(h, "PUT", "/v1/devices/num-dev/config", raw=b'{"n":12345678901234567890123}')
    assert st == 200, (st, doc)
    for t in (b"99999999999999999999999", b"1e400", b"-1e400", b"5.5e3"):
        st, doc, _ = api(h, "POST", "/v1/devices/d1/requests", raw=b'{"type":"x","timeout":%s}' % t)
        check_error(st, doc, 400, "invalid_field")
        assert "timeout" in doc["error"]["message"], doc

    # 429: more than max_pending_per_device (3) queued or sent.
    ids = []
    for i in range(3):
        st, rec, _ = api(h, "POST", "/v1/devices/busy/requests", good)
        assert st == 202, (st, rec)
        ids.append(rec["commandId"])
    st, doc, _ = api(h, "POST", "/v1/devices/busy/requests", good)
    check_error(st, doc, 429, "too_many_pending")
    # A repeated commandId is not a new pending request.
    st, rec, _ = api(h, "GET", "/v1/requests/" + ids[0])
    st, rec2, _ = api(h, "POST", "/v1/devices/busy/requests", dict(good, commandId=ids[0]))
    assert st == 200 and rec2 == rec, (st, rec2)
    st, rec, _ = api(h, "DELETE", "/v1/requests/" + ids[0])
    assert st == 200
    st, rec, _ = api(h, "POST", "/v1/devices/busy/requests", good)
    assert st == 202, (st, rec)

    # Every call counted once, every error answer too.
    after = api_counters(h)
    assert (after[0] - before[0], after[1] - before[1]) == (calls["n"], calls["errors"]), (
        before, after, calls)


def recv_all(s, timeout):
    s.settimeout(timeout)
    out = b""
    try:
        while True:
            b = s.recv(65536)
            if not b:
                break
            out += b
    except (socket.timeout, ConnectionResetError):
        pass
    s.close()
    return out


def check_answer(raw):
    """Whatever herald answers to junk is an HTTP response with a JSON body."""
    if not raw:
        return None
    assert raw.startswith(b"HTTP/1.1 "), raw[:100]
    status = int(raw[9:12])
    head, _, body = raw.partition(b"\r\n\r\n")
    if status >= 400 and status != 503:
        assert b"application/json" in head and b'{"error":{"code":"' in body, raw[:400]
    return status


def hostile(port, kind, rnd):
    try:
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
    except OSError as e:
        return "connect: %s" % e
    if kind == "random":
        s.sendall(bytes(rnd.getrandbits(8) for _ in range(rnd.randint(1, 3000))))
        s.shutdown(socket.SHUT_WR)
        return check_answer(recv_all(s, 5))
    if kind == "headers":
        s.sendall(b"GET /v1/devices HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * rnd.randint(17000, 70000)
                  + b"\r\n\r\n")
        return check_answer(recv_all(s, 5))
    if kind == "http":
        method = rnd.choice([b"GET", b"POST", b"PUT", b"DELETE", b"PATCH", b"OPTIONS", b"FOO", b"G\x00T"])
        path = rnd.choice([b"/v1/devices/", b"/v1/requests/", b"/v1/devices/d/requests?wait=",
                           b"/%", b"/v1/devices/d/config", b"//v1//devices"]) + bytes(
            rnd.choice(b"abc%/?&=.:-_\x7f") for _ in range(rnd.randint(0, 40)))
        body = bytes(rnd.getrandbits(8) for _ in range(rnd.randint(0, 500)))
        token = rnd.choice([b"test-token-1", b"nope", b""])
        s.sendall(method + b" " + path + b" HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer " + token +
                  b"\r\nContent-Length: %d\r\nConnection: close\r\n\r\n" % len(body) + body)
        return check_answer(recv_all(s, 5))
    if kind == "abandon":
        # The answer comes after a second, to a client long gone.
        body = b'{"type":"x"}'
        s.sendall(b"POST /v1/devices/gone-%d/requests?wait=1 HTTP/1.1\r\nHost: x\r\n"
                  b"Authorization: Bearer test-token-1\r\nContent-Length: %d\r\n\r\n%s"
                  % (rnd.randint(0, 9), len(body), body))
        s.close()
        return None
    return s   # "slow": half a request, then nothing


def test_hostile_requests():
    tmp, broker, backend, h = start(CONF)
    port = int(h.sections["api"]["listen"].rsplit(":", 1)[1])
    rnd = random.Random(int(os.environ.get("HERALD_TEST_SEED", "4")))
    # 100 slow clients hold half a request open while 900 others hammer.
    slow = []
    for i in range(100):
        s = socket.create_connection(("127.0.0.1", port), timeout=5)
        s.sendall(b"POST /v1/devices/d%d/requests HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n"
                  b"Authorization: Bearer test-token-1\r\n\r\n{\"ty" % i if i % 2 else b"GET /v1/dev")
        slow.append(s)
    kinds = ["random"] * 500 + ["headers"] * 100 + ["http"] * 280 + ["abandon"] * 20
    rnd.shuffle(kinds)
    seeds = [rnd.getrandbits(32) for _ in kinds]
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda ks: hostile(port, ks[0], random.Random(ks[1])),
                                zip(kinds, seeds)))
    statuses = {}
    for r in results:
        statuses[r] = statuses.get(r, 0) + 1
    print("# 900 hostile requests in %.1fs; answers: %s" % (time.monotonic() - t0, statuses))
    assert not any(isinstance(r, str) for r in results), statuses
    # Herald still answers properly while the slow clients hang on.
    st, doc, _ = api(h, "GET", "/healthz", token=None)
    assert st == 200 and doc == {"status": "ok"}, (st, doc)
    st, rec, _ = api(h, "POST", "/v1/devices/after/requests", {"type": "still-works"})
    assert st == 202, (st, rec)
    # Ends after every abandoned ?wait=1 was answered into the void.
    st, rec, _ = api(h, "POST", "/v1/devices/after/requests?wait=2", {"type": "barrier"})
    assert st == 202 and rec["state"] == "queued", (st, rec)
    for s in slow:
        s.close()
    ws = h.workers()
    assert all(w["state"] == "ready" and w["restarts"] == 0 for w in ws), ws
    assert len(set(h.pids()) & {w["pid"] for w in ws}) == len(ws)
    st, doc, _ = api(h, "GET", "/healthz", token=None)
    assert st == 200, (st, doc)


def test_metrics_and_health():
    tmp, broker, backend, h = start(CONF)
    api(h, "POST", "/v1/devices/m1/requests", {"type": "a"})
    api(h, "GET", "/v1/requests/nope")
    st, _, hdrs = api(h, "GET", "/metrics", token=None)
    assert st == 200 and hdrs["Content-Type"].startswith("text/plain; version=0.0.4"), hdrs
    # A trailing slash is ignored here as on the API's paths (before: 401).
    for path in ("/metrics/", "/healthz/"):
        st, _, _ = api(h, "GET", path, token=None)
        assert st == 200, (path, st)
    # HEAD: GET's headers and Content-Length, no body (before: the body
    # went out, without a length, and spoiled the next answer on the
    # connection).  http.client reads no body after a HEAD: stray bytes
    # would be taken for the next status line.
    import http.client
    host, port = h.sections["api"]["listen"].rsplit(":", 1)
    c = http.client.HTTPConnection(host, int(port), timeout=10)
    for path, token in (("/healthz", None), ("/metrics", None), ("/v1/devices", apilib.TOKEN),
                        ("/v1/devices/never-seen", apilib.TOKEN), ("/v1/nothing", apilib.TOKEN)):
        hdrs = {"Authorization": "Bearer " + token} if token else {}
        c.request("GET", path, headers=hdrs)
        r = c.getresponse()
        body = r.read()
        c.request("HEAD", path, headers=hdrs)
        rh = c.getresponse()
        assert rh.read() == b"" and rh.status == r.status, (path, rh.status)
        if path != "/metrics":     # its counters move between the two calls
            assert rh.getheader("Content-Length") == str(len(body)), (path, rh.getheaders())
        else:
            assert int(rh.getheader("Content-Length")) > 1000, rh.getheaders()
        assert rh.getheader("Content-Type") == r.getheader("Content-Type"), path
    c.request("GET", "/healthz")
    r = c.getresponse()
    assert r.status == 200 and json.loads(r.read()) == {"status": "ok"}
    c.close()
    import urllib.request
    text = urllib.request.urlopen(h.api_url + "/metrics", timeout=10).read().decode()
    fams = parse_prometheus(text)
    assert fams["herald_api_requests_total"]["type"] == "counter"
    by_role = {s[0]["role"]: s[1] for s in fams["herald_api_requests_total"]["samples"]}
    assert by_role["api"] >= 3, by_role
    errors = {s[0]["role"]: s[1] for s in fams["herald_api_errors_total"]["samples"]}
    assert errors["api"] >= 1, errors
    up = {"%s.%s" % (s[0]["role"], s[0]["slot"]): s[1] for s in fams["herald_worker_up"]["samples"]}
    for w in ("router.0", "crypto.0", "http.0", "api.0", "mqtt.0", "mqtt.1"):
        assert up[w] == 1, up
    assert fams["herald_worker_restarts_total"]["type"] == "counter"
    queued = {s[0]["role"]: s[1] for s in fams["herald_req_queued"]["samples"]}
    assert fams["herald_req_queued"]["type"] == "gauge" and queued["router"] == 1, queued
    accepted = {s[0]["role"]: s[1] for s in fams["herald_req_accepted_total"]["samples"]}
    assert accepted["router"] == 1, accepted
    for name in ("herald_devices_online", "herald_req_sent", "herald_spool_depth",
                 "herald_req_completed_total"):
        assert name in fams and fams[name]["help"], name
    # The parser is strict: it refuses what Prometheus would.
    for bad in ("x 1\n", "# TYPE x counter\nx{a=\"1\"} one\n", "# TYPE x gauge\nx 1\n# TYPE y gauge\ny 1\nx 2\n",
                "# TYPE x gauge\nx{a=b} 1\n"):
        try:
            parse_prometheus(bad)
        except AssertionError:
            continue
        raise AssertionError("parser accepted %r" % bad)

    # /healthz names what is not up: a crypto worker that crashes at start.
    tmp2 = TmpDir()
    broker2 = Mosquitto(tmp2)
    h2 = Herald(tmp2, broker=broker2, env={"HERALD_TEST_CRASH": "crypto"})

    def only_crypto_down():
        st, doc, _ = api(h2, "GET", "/healthz", token=None)
        return st == 503 and [x["worker"] for x in doc["notReady"]] == ["crypto.0"] and doc
    doc = wait_for(only_crypto_down, 15, what="/healthz to say 503 for crypto.0 alone")
    assert doc["status"] == "unavailable" and doc["notReady"][0]["state"] != "ready", doc


if __name__ == "__main__":
    main(test_bad_input, test_hostile_requests, test_metrics_and_health)
