#!/usr/bin/python3
"""The request store's size ([requests] max_bytes) is never filled by the
history of ended requests: while the store is more than half full they are
dropped before their 24 hours, oldest first, and new requests keep being
accepted (202, never 503).  Requests queued for a long time for offline
devices, the oldest in the store, stay, and do not hide the history after
them from the pruning."""
import http.client
import json
import os
import signal
import threading

from apilib import TOKEN, api, check_error, start
from heraldtest import main, wait_for


def state(h, cid):
    st, rec, _ = api(h, "GET", "/v1/requests/" + cid)
    assert st == 200, (st, rec)
    return rec["state"]


def post_many(h, total, body, path, nthreads=6):
    """POST total requests over nthreads keep-alive connections: body(i) and
    path(i) make the i-th.  Returns {status: count} and {error code: count}."""
    host, port = h.sections["api"]["listen"].rsplit(":", 1)
    statuses, codes = {}, {}
    lock = threading.Lock()

    def poster(k):
        c = http.client.HTTPConnection(host, int(port), timeout=30)
        seen, seen_codes = {}, {}
        for i in range(k, total, nthreads):
            c.request("POST", path(i), body=json.dumps(body(i)),
                      headers={"Authorization": "Bearer " + TOKEN,
                               "Content-Type": "application/json"})
            r = c.getresponse()
            answer = r.read()
            seen[r.status] = seen.get(r.status, 0) + 1
            if r.status >= 400:
                code = json.loads(answer)["error"]["code"]
                seen_codes[code] = seen_codes.get(code, 0) + 1
        c.close()
        with lock:
            for d, m in ((statuses, seen), (codes, seen_codes)):
                for key, n in m.items():
                    d[key] = d.get(key, 0) + n

    ts = [threading.Thread(target=poster, args=(k,)) for k in range(nthreads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(600)
    return statuses, codes


PAD = {"pad": "p" * 1000}


def settled(h, live=2100):
    """Only the `live` long requests are left, and no notification waits."""
    r = h.ctl("requests", timeout=30)
    return r["queued"] == live and r["notifications"] == 0


def test_history_never_fills_the_store():
    # 32 MiB holds ~20,000 of these requests: post 24,000 that expire at once.
    tmp, broker, backend, h = start({"requests": {"max_bytes": "32M"}})
    # First 2,100 live requests (an hour's timeout) for 3 offline devices:
    # more than one pruning slice reads.
    statuses, _ = post_many(h, 2100, lambda i: {"type": "t", "commandId": "old-%05d" % i,
                                                "timeout": 3600},
                            lambda i: "/v1/devices/off-%d/requests" % (i % 3), nthreads=1)
    assert statuses == {202: 2100}, statuses
    # In rounds, each waiting until the spool took the last one's "expired"
    # notifications: they live in the store until then, and on a starved
    # machine (a loaded CI) they are what fills it; this test is about the
    # history of ended requests.
    total, rounds = 24000, 6
    statuses = {}
    for k in range(rounds):
        wait_for(lambda: settled(h), 60, 0.2,
                 "the last round's requests ended and their notifications at the spool")
        got, _ = post_many(h, total // rounds,
                           lambda i: {"type": "t", "commandId": "hs-%05d" % (k * total // rounds + i),
                                      "timeout": 1, "params": PAD},
                           lambda i: "/v1/devices/hs-%02d/requests" % (i % 100))
        for st, n in got.items():
            statuses[st] = statuses.get(st, 0) + n
    assert statuses.get(202, 0) == total, statuses
    assert "dropping ended requests before their 24 h" in h.log_text()
    # The newest are kept, the oldest went first.
    wait_for(lambda: state(h, "hs-%05d" % (total - 1)) == "expired", 10, what="the last to expire")
    check_error(*api(h, "GET", "/v1/requests/hs-00000")[:2], 404)
    assert "MDB_MAP_FULL" not in h.log_text()
    assert state(h, "old-00000") == "queued" and state(h, "old-02099") == "queued"


def test_full_of_live_requests():
    """A store full of live requests (nothing to drop) refuses new ones with
    503 store_full, keeps every accepted one, and takes new ones again once
    some end."""
    tmp, broker, backend, h = start({"requests": {"max_bytes": "16M"}})
    total = 12000
    statuses, codes = post_many(h, total, lambda i: {"type": "t", "commandId": "lv-%05d" % i,
                                                     "timeout": 3600, "params": PAD},
                                lambda i: "/v1/devices/lv-%02d/requests" % (i % 12))
    assert 0 < statuses.get(503, 0) and statuses.get(202, 0) + statuses[503] == total, statuses
    assert codes == {"store_full": statuses[503]}, codes
    accepted = statuses[202]
    # Every accepted request is there and queued (a sample across the range).
    for i in range(0, total, 997):
        st, rec, _ = api(h, "GET", "/v1/requests/lv-%05d" % i)
        assert st == 404 or rec["state"] == "queued", (i, st, rec)
    assert state(h, "lv-00000") == "queued"
    # Cancelling ends some; once pruned (the store is over half full), new
    # requests fit again.
    for i in range(0, 3000):
        st, rec, _ = api(h, "DELETE", "/v1/requests/lv-%05d" % i)
        assert st == 200 or (st == 404 and i >= accepted), (i, st, rec)
    wait_for(lambda: api(h, "POST", "/v1/devices/new/requests",
                         {"type": "t", "params": PAD})[0] == 202, 20, 0.2, "room again")
    assert h.all_ready()


def test_full_store_all_expire():
    """A store filled with live requests up to store_full, which then all
    expire while the http worker takes nothing (stopped): each one's state
    and its notification to the backend, which waits in the store, still
    fit (no MDB_MAP_FULL); every one ends "expired" and, once the http
    worker goes on, the backend is told of each."""
    tmp, broker, backend, h = start({"requests": {"max_bytes": "16M"},
                                     "workers": {"ping_timeout_ms": "120000"}})
    total = 12000
    statuses, _ = post_many(h, total, lambda i: {"type": "t", "commandId": "ex-%05d" % i,
                                                 "timeout": 20, "params": PAD},
                            lambda i: "/v1/devices/ex-%02d/requests" % (i % 100))
    assert statuses.get(503, 0) > 0, statuses
    accepted = statuses[202]
    http = h.worker("http")["pid"]
    os.kill(http, signal.SIGSTOP)
    try:
        wait_for(lambda: h.ctl("requests", timeout=30)["queued"] == 0, 60, 0.5,
                 "every request to end")
        notes = h.ctl("requests", timeout=30)["notifications"]
    finally:
        os.kill(http, signal.SIGCONT)

    def told():
        return {e["payload"]["commandId"] for e in backend.delivered()
                if e.get("kind") == "request" and e["payload"]["state"] == "expired"}
    wait_for(lambda: len(told()) >= accepted, 60, 0.5,
             "an 'expired' notification for each of the %d accepted" % accepted)
    print("# %d accepted, %d refused store_full; %d notifications waiting in the store, "
          "%d 'expired' ones delivered" % (accepted, statuses[503], notes, len(told())))
    assert "MDB_MAP_FULL" not in h.log_text()
    assert "not stored" not in h.log_text()
    assert h.all_ready()


if __name__ == "__main__":
    main(test_history_never_fills_the_store, test_full_of_live_requests,
         test_full_store_all_expire)
