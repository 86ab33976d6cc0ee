#!/usr/bin/python3
"""Request round trips through herald's REST API to herald-bench fleet's
devices (herald-bench rtt): every request ends as the fleet answered it,
with its exact failure ratio, and the devices' answers and the requests'
ends reach herald-bench sink as response and request envelopes, "sent"
included."""
import json

from benchlib import Proc, bench, herald_between, main, wait_for


def test_request_round_trips():
    tmp, broker, sink, h = herald_between()
    fleet = Proc("fleet", "--port", broker.port, "--devices", 5, "--rate", 0,
                 "--fail-ratio", 0.2, "--duration", "20s", "--json")
    # herald knows a device is online once its status arrived
    wait_for(lambda: sink.report()["kinds"].get("status", {}).get("distinct", 0) >= 5, 10, 0.1,
             "5 devices online at herald")
    _, out, _ = bench("rtt", "--url", h.api_url, "--token", "test-token-1", "--devices", 5,
                      "--rate", 25, "--count", 50, "--wait", 10, "--json", timeout=30, check=False)
    r = json.loads(out)
    assert r["sent"] == 50 and r["completed"] == 50, r
    assert r["ok"] == 40 and r["device_failed"] == 10, r        # exactly the fleet's 20 %
    assert r["states"] == {"confirmed": 40, "failed": 10}, r["states"]
    _, fout, _ = fleet.stop()
    assert json.loads(fout)["received"]["requests"] == 50
    # the devices' answers and the requests' ends reach the backend
    wait_for(lambda: sum(sink.report()["request_states"].get(s, 0) for s in ("confirmed", "failed"))
             >= 50, 10, 0.1, "50 request envelopes of ended requests")
    rep = sink.report()
    k = rep["kinds"]
    assert k["response"]["distinct"] == 50 and k["response"]["lost"] == 0, k["response"]
    states = rep["request_states"]
    assert states.get("confirmed") == 40 and states.get("failed") == 10, states
    # each answered request was "sent" first, even when the device's answer
    # beat the broker's acknowledgement of the command to the router
    wait_for(lambda: sink.report()["request_states"].get("sent", 0) >= 50, 10, 0.1,
             "50 \"sent\" envelopes")
    assert sink.report()["request_states"]["sent"] == 50
    print("# request envelopes by state:", states)


if __name__ == "__main__":
    main(test_request_round_trips)
