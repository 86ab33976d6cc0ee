"""herald -t: a valid file exits 0; a bad one prints FILE:LINE: message and exits 1;
herald refuses to start on a bad file the same way."""
import json
import subprocess
from heraldtest import HERALD, SRCDIR, TmpDir, main, write_conf, DEFAULT_CONF
import os


def run(*args):
    return subprocess.run([HERALD] + list(args), capture_output=True, text=True, timeout=10)


def test_good_file():
    tmp = TmpDir()
    path = tmp.join("good.conf")
    write_conf(path, DEFAULT_CONF)
    r = run("-t", "-c", path)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    assert "valid" in r.stdout


def test_shipped_example():
    r = run("-t", "-c", os.path.join(SRCDIR, "etc", "herald.conf"))
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)


def test_bad_lines():
    tmp = TmpDir()
    cases = [
        ("[herald]\nnode_name = a\n[mqtt]\nport = 99999\n", 4, "port"),
        ("[herald]\nbogus = 1\n", 2, "unknown key \"bogus\""),
        ("[nosuch]\n", 1, "nosuch"),
        ("[mqtt]\nport = 1883\nport = 1884\n", 3, "duplicate"),
        ("[workers]\nmqtt = many\n", 2, "mqtt"),
        ("[mqtt]\nport\n", 2, ""),
    ]
    for text, line, needle in cases:
        path = tmp.join("bad.conf")
        with open(path, "w") as f:
            f.write(text)
        r = run("-t", "-c", path)
        assert r.returncode == 1, (text, r.returncode, r.stderr)
        assert r.stderr.startswith("%s:%d: " % (path, line)), (text, r.stderr)
        assert needle in r.stderr, (text, r.stderr)


def test_checks_between_keys_name_a_line():
    # Values each valid alone but not together, or refused by this build,
    # name the line that set them (SPEC 4: FILE:LINE: message); before,
    # these said only FILE: message.
    tmp = TmpDir()
    cases = [
        ({"security": {"e2e": "optional"}}, "e2e", "[security] e2e = optional"),
        ({"requests": {"max_timeout": 50, "default_timeout": 100}}, "default_timeout",
         "greater than max_timeout"),
        ({"requests": {"default_timeout": 100, "max_timeout": 50}}, "max_timeout",
         "greater than max_timeout"),
        ({"workers": {"ping_timeout_ms": 200}}, "ping_timeout_ms", "must be greater"),
        # [limits] comes after [mqtt] in the file: its line is named.
        ({"limits": {"max_payload": "1M"}, "mqtt": {"outbox_bytes": "1M"}}, "max_payload",
         "too small"),
        ({"herald": {"run_dir": "relative/dir"}}, "run_dir", "not an absolute path"),
    ]
    for extra, key, needle in cases:
        sections = json.loads(json.dumps(DEFAULT_CONF))
        for sec, kv in extra.items():
            sections.setdefault(sec, {}).update(kv)
        path = tmp.join("pair.conf")
        write_conf(path, sections)
        with open(path) as f:
            line = [i + 1 for i, l in enumerate(f) if l.startswith(key + " =")][0]
        r = run("-t", "-c", path)
        assert r.returncode == 1, (extra, r.returncode, r.stderr)
        assert r.stderr.startswith("%s:%d: " % (path, line)), (extra, line, r.stderr)
        assert needle in r.stderr, (extra, r.stderr)
    # What no line set has no line to name.
    sections = json.loads(json.dumps(DEFAULT_CONF))
    del sections["backend"]
    path = tmp.join("nourl.conf")
    write_conf(path, sections)
    r = run("-t", "-c", path)
    assert r.returncode == 1 and r.stderr.startswith(path + ": [backend] url is not set"), r.stderr


def test_unreadable_and_start_refused():
    tmp = TmpDir()
    missing = tmp.join("missing.conf")
    r = run("-t", "-c", missing)
    assert r.returncode == 1 and r.stderr.startswith(missing + ":"), r.stderr
    # Starting (not just checking) with a bad file fails the same way, before any fork.
    path = tmp.join("bad.conf")
    with open(path, "w") as f:
        f.write("[mqtt]\nkeepalive = 1\n")
    r = run("-c", path)
    assert r.returncode == 1 and r.stderr.startswith(path + ":2: "), r.stderr


def test_usage():
    r = run("-x")
    assert r.returncode == 1 and "usage" in r.stderr
    # The first line gives every option, as herald(8)'s SYNOPSIS does.
    r = run("-h")
    assert r.returncode == 0 and r.stdout.splitlines()[0] == \
        "usage: herald [-t] [-c FILE] [-V] [-h]", r.stdout


if __name__ == "__main__":
    main(test_checks_between_keys_name_a_line, test_good_file, test_shipped_example, test_bad_lines,
         test_unreadable_and_start_refused, test_usage)
