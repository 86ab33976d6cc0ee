"""Presence follows the broker's order of a device's status messages, even
with several mqtt workers: devices that drop (their Last Will says offline)
and reconnect (they say online) over and over end up online in herald, as
the broker's last retained status says, and a request to them goes out."""
import socket
import struct
import threading

from apilib import api, warm_up
from heraldtest import Backend, Herald, Mosquitto, TmpDir, main, wait_for

DEVICES = 100
FLAPS = 20


def s16(b):
    return struct.pack(">H", len(b)) + b


def remaining(n):
    out = b""
    while True:
        d, n = n % 128, n // 128
        out += bytes([d | (0x80 if n else 0)])
        if not n:
            return out


def connect_packet(cid, will_topic, will_msg):
    # MQTT 3.1.1, clean session, Will QoS 1 retained, keepalive 30 s.
    vh = s16(b"MQTT") + b"\x04" + bytes([0x02 | 0x04 | 0x08 | 0x20]) + struct.pack(">H", 30)
    body = vh + s16(cid.encode()) + s16(will_topic.encode()) + s16(will_msg)
    return b"\x10" + remaining(len(body)) + body


def publish_packet(topic, msg, mid):
    body = s16(topic.encode()) + struct.pack(">H", mid) + msg   # QoS 1, retained
    return b"\x33" + remaining(len(body)) + body


def subscribe_packet(topic, mid):
    body = struct.pack(">H", mid) + s16(topic.encode()) + b"\x01"
    return b"\x82" + remaining(len(body)) + body


def read_exactly(sk, n):
    b = b""
    while len(b) < n:
        d = sk.recv(n - len(b))
        if not d:
            raise EOFError
        b += d
    return b


def online(port, dev):
    """Connect with a Last Will, say online (retained), return the socket."""
    sk = socket.create_connection(("127.0.0.1", port))
    topic = "device/%s/status" % dev
    sk.sendall(connect_packet(dev, topic, b'{"state":"offline"}'))
    assert read_exactly(sk, 4)[3] == 0, "CONNACK refused"
    sk.sendall(publish_packet(topic, b'{"state":"online"}', 1))
    read_exactly(sk, 4)    # PUBACK
    return sk


def test_flapping_devices_end_online():
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    backend = Backend()
    h = Herald(tmp, broker=broker, backend=backend,
               conf={"workers": {"mqtt": 2}, "mqtt": {"connections_per_worker": 2}}).wait_ready()
    warm_up(h, broker)
    base = len(backend.delivered())
    kept = {}

    def flap(devs):
        for dev in devs:
            for _ in range(FLAPS):
                sk = online(broker.port, dev)
                sk.shutdown(socket.SHUT_RDWR)     # no DISCONNECT: the Will fires
                sk.close()
            kept[dev] = online(broker.port, dev)
    names = ["flap-%d" % i for i in range(DEVICES)]
    ts = [threading.Thread(target=flap, args=(names[i::4],)) for i in range(4)]
    for t in ts:
        t.start()
    for t in ts:
        t.join(120)
    # Every status reached the backend: FLAPS onlines and Wills, and the last online.
    want = DEVICES * (2 * FLAPS + 1)
    wait_for(lambda: len(backend.delivered()) - base >= want, 60, 0.2,
             "%d status messages delivered" % want)

    def offline_ones():
        return [d for d in names if not api(h, "GET", "/v1/devices/" + d)[1]["online"]]
    try:
        wait_for(lambda: not offline_ones(), 10, 0.5, "every device online")
    except AssertionError:
        raise AssertionError("connected, online at the broker, offline in herald: %s"
                             % offline_ones())
    # A request to one of them goes out at once, once it listens for
    # commands (with no subscriber the broker drops a command: not "sent").
    sk = kept[names[-1]]
    sk.sendall(subscribe_packet("device/%s/command" % names[-1], 2))
    assert read_exactly(sk, 5)[0] == 0x90, "SUBACK"
    st, rec, _ = api(h, "POST", "/v1/devices/%s/requests" % names[-1], {"type": "ping"})
    assert st == 202, (st, rec)
    wait_for(lambda: api(h, "GET", "/v1/requests/" + rec["commandId"])[1]["state"] == "sent",
             10, 0.1, "the request sent")
    for sk in kept.values():
        sk.close()


if __name__ == "__main__":
    main(test_flapping_devices_end_online)
