"""Answers a backend gets wrong, byte by byte: herald takes an answer only
once its headers have all come, lets the status decide whatever becomes of
the body, says where a redirect points, and keeps a dead-letter detail cut
inside a UTF-8 character, or holding a NUL, readable."""
import json
import re
import socket
import threading
import time
from heraldtest import Herald, Mosquitto, Publisher, TmpDir, main, wait_for, _cleanups


class RawBackend:
    """A backend on a plain socket: `answer(body) -> bytes or callable(conn)`
    writes whatever it likes; it records the envelope ids of every POST."""

    def __init__(self, answer):
        self.answer = answer
        self.lock = threading.Lock()
        self.posts = []                  # ids of each POST, in order
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.url = "http://127.0.0.1:%d/ingest" % self.port
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()
        _cleanups.append(self.stop)

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                break
            threading.Thread(target=self._serve, args=(c,), daemon=True).start()
        # Closed here, not by stop(): closed while this thread was about to
        # accept(), its descriptor number could go to the next test's
        # listening socket, and this backend would answer that test's POSTs.
        self.sock.close()

    def _serve(self, c):
        buf = b""
        try:
            while True:
                while b"\r\n\r\n" not in buf:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                head, buf = buf.split(b"\r\n\r\n", 1)
                n = 0
                for line in head.split(b"\r\n")[1:]:
                    k, _, v = line.partition(b":")
                    if k.strip().lower() == b"content-length":
                        n = int(v)
                while len(buf) < n:
                    d = c.recv(65536)
                    if not d:
                        return
                    buf += d
                body, buf = buf[:n], buf[n:]
                doc = json.loads(body)
                with self.lock:
                    self.posts.append([e["id"] for e in (doc if isinstance(doc, list) else [doc])])
                a = self.answer(body)
                if callable(a):
                    a(c)
                    return
                c.sendall(a)
                if b"Connection: close" in a or not a.endswith(b"\r\n\r\n"):
                    return
        except OSError:
            return
        finally:
            c.close()

    def ids(self):
        with self.lock:
            return [i for p in self.posts for i in p]

    def stop(self):
        self.stopped = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)    # wakes accept() with an error
        except OSError:
            pass


def start(backend, conf=None):
    tmp = TmpDir()
    broker = Mosquitto(tmp)
    c = {"backend": {"url": backend.url, "concurrency": 2, "timeout_ms": 3000}}
    for k, v in (conf or {}).items():
        c.setdefault(k, {}).update(v)
    h = Herald(tmp, broker=broker, conf=c).wait_ready()
    return broker, h


def test_answer_cut_inside_headers_is_no_answer():
    # A status line, half a header, and the connection closes: libcurl calls
    # that a success with status 200.  Before, herald counted it delivered
    # and deleted the envelope: the backend never finished answering.
    mode = {"ok": False}
    cut = []

    def answer(body):
        if mode["ok"]:
            # Two blanks after the version: libcurl reads it as 204, and
            # so must herald's end-of-headers check.
            return b"HTTP/1.1  204 No Content\r\n\r\n"
        cut.append(1)
        return b"HTTP/1.1 200 OK\r\nContent-Le"

    be = RawBackend(answer)
    broker, h = start(be)
    pub = Publisher(broker.port, ["cut-1", "cut-2"], kinds=["telemetry"], count=3).run()
    wait_for(lambda: len(cut) >= 6, 30, 0.1, "answers cut inside the headers")
    assert h.counter("http", "delivered") == 0, h.ctl("stats")
    assert h.ctl("spool")["depth"] == pub.total(), h.ctl("spool")
    assert "before its answer's headers ended" in h.log_text()
    mode["ok"] = True
    wait_for(lambda: h.ctl("spool")["depth"] == 0, 40, 0.2, "delivered once the backend answers")
    assert h.counter("http", "delivered") == pub.total()
    assert len(set(be.ids())) == pub.total()


def test_status_decides_whatever_the_body():
    # 200 with a body that never ends: the backend has answered; before,
    # herald waited for the body until timeout_ms and posted the same
    # envelope again, forever.  A 404 with an endless body is dead-lettered.
    def endless(status):
        def write(c):
            c.sendall(b"HTTP/1.1 %d X\r\nTransfer-Encoding: chunked\r\n\r\n" % status)
            chunk = b"4000\r\n" + b"x" * 0x4000 + b"\r\n"
            try:
                while True:
                    c.sendall(chunk)
            except OSError:
                pass
        return write

    def answer(body):
        doc = json.loads(body)
        return endless(404 if doc["device"] == "bad-1" else 200)

    be = RawBackend(answer)
    broker, h = start(be)
    good = Publisher(broker.port, ["body-1", "body-2"], kinds=["telemetry"], count=3).run()
    Publisher(broker.port, ["bad-1"], kinds=["telemetry"], count=2).run()
    wait_for(lambda: h.counter("http", "delivered") == good.total(), 30, 0.1, "delivered")
    wait_for(lambda: h.ctl("spool")["depth"] == 0, 30, 0.1, "spool empty")
    ids = be.ids()
    assert len(ids) == good.total() + 2 and len(set(ids)) == len(ids), ids
    dead = h.ctl("deadletter", "list")["entries"]
    assert len(dead) == 2 and all(d["status"] == 404 and d["device"] == "bad-1" for d in dead), dead
    assert all(d["detail"].startswith("xxxx") for d in dead), dead


def test_redirect_names_its_target():
    mode = {"ok": False}

    def endless_301(c):
        c.sendall(b"HTTP/1.1 301 Moved\r\nLocation: https://backend.example/endless\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            while True:
                c.sendall(b"4000\r\n" + b"x" * 0x4000 + b"\r\n")
        except OSError:
            pass

    def answer(body):
        if mode["ok"]:
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        if json.loads(body)["device"] == "moved-2":
            # Its body is cut off by herald: the status still names the cause.
            return endless_301
        return (b"HTTP/1.1 301 Moved Permanently\r\nLocation: https://backend.example/hook\r\n"
                b"Content-Length: 0\r\n\r\n")

    be = RawBackend(answer)
    broker, h = start(be, {"backend": {"concurrency": 8}})
    pub = Publisher(broker.port, ["moved-1", "moved-2"], kinds=["telemetry"], count=2).run()
    for target in ("https://backend.example/hook", "https://backend.example/endless"):
        wait_for(lambda: "redirecting to " + target in h.log_text(), 20, 0.1,
                 "the redirect's target %s in the log" % target)
    assert "set [backend] url to the final address" in h.log_text()
    assert h.ctl("spool")["depth"] == pub.total()
    mode["ok"] = True
    wait_for(lambda: h.ctl("spool")["depth"] == 0, 40, 0.2, "delivered after the fix")


def dead_letter_of_answer(status_line, content_type, text, device):
    """The dead-letter entry of one message the backend answered with a
    permanent status and the body `text`."""
    def answer(body):
        return (b"HTTP/1.1 %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n\r\n" % (
            status_line, content_type, len(text))) + text

    broker, h = start(RawBackend(answer))
    Publisher(broker.port, [device], kinds=["telemetry"], count=1).run()
    wait_for(lambda: h.ctl("deadletter", "list")["entries"], 20, 0.1, "dead-lettered")
    return h.ctl("deadletter", "list", "1000")["entries"][0]


def test_dead_letter_detail_cut_inside_a_character():
    # The first 512 bytes of "a" + "é" * 400 end inside an "é": the detail
    # keeps the whole characters before it (before: every é became "?").
    text = ("a" + "\u00e9" * 400).encode()
    d = dead_letter_of_answer(b"422 Unprocessable", b"text/plain; charset=utf-8", text, "utf-1")
    assert d["status"] == 422, d
    assert d["detail"] == "a" + "\u00e9" * 255, d["detail"][:40]


def test_dead_letter_detail_with_nul():
    # A binary answer: its NUL becomes "?" like an invalid byte (before: it
    # was listed as \u0000, which heraldctl's parser refuses, and no page
    # holding it could be listed).
    text = b"\x00\x01\x1f bin \x7f \"q\" \\ end \x00"
    d = dead_letter_of_answer(b"403 Forbidden", b"application/octet-stream", text, "nul-1")
    assert d["status"] == 403 and d["reason"] == "http_403", d
    assert d["detail"] == '?\x01\x1f bin \x7f "q" \\ end ?', d["detail"]


def test_spool_retry_ends_a_long_retry_after():
    # A backend that asked for an hour's pause and came back early: the
    # operator makes every lane retry now instead of restarting herald.
    mode = {"ok": False}

    def answer(body):
        if mode["ok"]:
            return b"HTTP/1.1 204 No Content\r\n\r\n"
        return b"HTTP/1.1 503 Busy\r\nRetry-After: 3000\r\nContent-Length: 0\r\n\r\n"

    be = RawBackend(answer)
    broker, h = start(be)
    pub = Publisher(broker.port, ["ra-1", "ra-2", "ra-3"], kinds=["telemetry"], count=2).run()
    def all_waiting():
        sp = h.ctl("spool")
        busy = [l for l in sp["lanes"] if l["depth"] > 0]
        return sp["depth"] == pub.total() and busy and all(
            l["state"] == "backoff" and l["next_retry_ms"] > 2900000 for l in busy) and len(busy)
    waiting = wait_for(all_waiting, 20, 0.1, "every lane waiting for the Retry-After")
    mode["ok"] = True
    r = h.ctl("spool", "retry")
    assert r.get("retried") == waiting, (r, waiting)
    wait_for(lambda: h.ctl("spool")["depth"] == 0, 10, 0.1, "delivered after spool retry")
    assert len(set(be.ids())) == pub.total()
    assert "spool retry:" in h.log_text()
    bad = h.ctl("spool", "nonsense", check=False)
    assert bad.get("error", {}).get("code") == "usage", bad


def test_spool_skip_moves_a_stuck_post_aside():
    # A backend that drops the connection on one device's message (it
    # cannot parse it, say) and never answers 4xx: that POST is retried
    # forever and every device of its lane waits behind it.  The operator
    # moves it to the dead-letter store; the lane goes on.
    def answer(body):
        if json.loads(body)["device"] == "poison-1":
            return b""          # closes without an answer
        return b"HTTP/1.1 204 No Content\r\n\r\n"

    be = RawBackend(answer)
    broker, h = start(be, {"backend": {"concurrency": 1}})
    Publisher(broker.port, ["poison-1"], kinds=["telemetry"], count=1).run()
    wait_for(lambda: any(l["state"] == "backoff" and l["attempt"] >= 2
                         for l in h.ctl("spool")["lanes"]), 20, 0.1, "the poison retried")
    after = Publisher(broker.port, ["fine-1", "fine-2"], kinds=["telemetry"], count=3).run()
    wait_for(lambda: h.ctl("spool")["depth"] == 1 + after.total(), 20, 0.1, "all spooled")
    assert h.counter("http", "delivered") == 0     # all behind the poison (one lane)
    bad = h.ctl("spool", "skip", "1", check=False)
    assert bad["error"]["code"] == "usage", bad
    r = h.ctl("spool", "skip", "0")
    assert r == {"lane": 0, "skipped": 1}, r
    wait_for(lambda: h.ctl("spool")["depth"] == 0, 20, 0.1, "the rest delivered")
    assert h.counter("http", "delivered") == after.total()
    dead = h.ctl("deadletter", "list")["entries"]
    assert len(dead) == 1 and dead[0]["device"] == "poison-1" and dead[0]["reason"] == "skipped" \
        and dead[0]["replayable"] and "after" in dead[0]["detail"] \
        and dead[0]["status"] == 0, dead        # no HTTP answer: 0, as documented
    r = h.ctl("spool", "skip", "0", check=False)
    assert r["error"]["code"] == "not_waiting", r


def test_log_counts_what_it_left_out_and_says_when_it_ends():
    # 30 dead letters log 10 warnings (at most 10 per call site in 10 s);
    # a line then says how many were left out (before: nothing did, and
    # the log understated the dead letters threefold).
    # After an outage of 503s, one line says the backend accepts again.
    mode = {"m": "404"}

    def answer(body):
        if mode["m"] == "404":
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"
        if mode["m"] == "503":
            return b"HTTP/1.1 503 Busy\r\nContent-Length: 0\r\n\r\n"
        return b"HTTP/1.1 204 No Content\r\n\r\n"

    be = RawBackend(answer)
    broker, h = start(be, {"backend": {"concurrency": 1}})
    Publisher(broker.port, ["gone-1"], kinds=["telemetry"], count=30).run()
    wait_for(lambda: h.ctl("deadletter", "list", "100")["total"] == 30, 20, 0.1, "30 dead letters")
    assert h.log_text().count("backend answered 404") < 30   # some left out
    # An outage of 5 s or more ends with one line saying so.
    mode["m"] = "503"
    Publisher(broker.port, ["later-1"], kinds=["telemetry"], count=1).run()
    wait_for(lambda: h.counter("http", "http_retries") >= 1, 10, 0.1, "a 503 retried")
    t_fail = time.monotonic()
    wait_for(lambda: time.monotonic() - t_fail > 5.5, 7, 0.2, "an outage of 5 s")
    mode["m"] = "ok"
    wait_for(lambda: h.ctl("spool")["depth"] == 0, 40, 0.1, "delivered after the 503s")
    back = re.findall(r"backend accepts again after (\d+) s", h.log_text())
    assert len(back) == 1 and int(back[0]) >= 5, back
    # Once the 10 s window is over, a line counts those left out, with no
    # further message needed (before: none came unless the same line was
    # logged again in a later window, so a burst that ended went uncounted).
    wait_for(lambda: re.search(r"\d+ more messages like", h.log_text()), 15, 0.2,
             "a count of the lines left out")
    text = h.log_text()
    left_out = sum(int(x) for x in re.findall(r"(\d+) more messages like", text))
    dead = h.ctl("deadletter", "list", "1000")["total"]
    # Every dead letter is either a line or counted in one.
    assert left_out >= 1 and left_out + text.count("backend answered 404") == dead, (left_out, dead)
    # Unless the burst straddled two windows (then the next one's first line
    # counted it), the count came from the flush, naming the message.
    if "like the next one" not in text:
        assert 'like "backend answered %ld: %zu envelope(s)' in text, text[-3000:]


if __name__ == "__main__":
    main(test_answer_cut_inside_headers_is_no_answer, test_status_decides_whatever_the_body,
         test_redirect_names_its_target, test_dead_letter_detail_cut_inside_a_character,
         test_dead_letter_detail_with_nul,
         test_spool_retry_ends_a_long_retry_after, test_spool_skip_moves_a_stuck_post_aside,
         test_log_counts_what_it_left_out_and_says_when_it_ends)
