#!/usr/bin/python3
"""The request store's size ([requests] max_bytes) is never filled by the
history of ended requests: while the store is more than half full they are
dropped before their 24 hours, oldest first, and new requests keep being
accepted (202, never 503).  Requests queued for a long time for offline
devices, the oldest in the store, stay, and do not hide the history after
them from the pruning."""
import http.client
import json
import threading

from apilib import TOKEN, api, check_error, start
from heraldtest import main, wait_for


def state(h, cid):
    st, rec, _ = api(h, "GET", "/v1/requests/" + cid)
    assert st == 200, (st, rec)
    return rec["state"]


def test_history_never_fills_the_store():
    # 16 MiB holds ~10,000 of these requests: post 16,000 that expire at once.
    tmp, broker, backend, h = start({"requests": {"max_bytes": "16M"}})
    host, port = h.sections["api"]["listen"].rsplit(":", 1)
    # First 2,100 live requests (an hour's timeout) for 3 offline devices:
    # more than one pruning slice reads.
    c = http.client.HTTPConnection(host, int(port), timeout=30)
    for i in range(2100):
        c.request("POST", "/v1/devices/off-%d/requests" % (i % 3),
                  body=json.dumps({"type": "t", "commandId": "old-%05d" % i, "timeout": 3600}),
                  headers={"Authorization": "Bearer " + TOKEN, "Content-Type": "application/json"})
        r = c.getresponse()
        r.read()
        assert r.status == 202, (i, r.status)
    c.close()
    total, nthreads = 16000, 6
    params = {"pad": "p" * 1000}
    statuses = {}
    lock = threading.Lock()

    def poster(k):
        c = http.client.HTTPConnection(host, int(port), timeout=30)
        seen = {}
        for i in range(k, total, nthreads):
            body = json.dumps({"type": "t", "commandId": "hs-%05d" % i, "timeout": 1,
                               "params": params})
            c.request("POST", "/v1/devices/hs-%02d/requests" % (i % 100), body=body,
                      headers={"Authorization": "Bearer " + TOKEN,
                               "Content-Type": "application/json"})
            r = c.getresponse()
            r.read()
            seen[r.status] = seen.get(r.status, 0) + 1
        c.close()
        with lock:
            for s, n in seen.items():
                statuses[s] = statuses.get(s, 0) + n

    ts = [threading.Thread(target=poster, args=(k,)) for k in range(nthreads)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(600)
    assert statuses.get(202, 0) == total, statuses
    assert "dropping ended requests before their 24 h" in h.log_text()
    # The newest are kept, the oldest went first.
    wait_for(lambda: state(h, "hs-%05d" % (total - 1)) == "expired", 10, what="the last to expire")
    check_error(*api(h, "GET", "/v1/requests/hs-00000")[:2], 404)
    assert "MDB_MAP_FULL" not in h.log_text()
    assert state(h, "old-00000") == "queued" and state(h, "old-02099") == "queued"


if __name__ == "__main__":
    main(test_history_never_fills_the_store)
