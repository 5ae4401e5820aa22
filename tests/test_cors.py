"""CORS as etcd 3.4 (--cors, default *), without the Go proxy's duplicate headers.

Headers are counted on raw answers (http.client keeps repeated headers apart),
so "exactly once" means once on the wire.
"""

import http.client
from contextlib import contextmanager

import pytest

from geproxy.cors import Answer, Cors
from tests.fakeupstream import FakeMember, Reply
from tests.inproc import proxy_stack

NAMES = ("Access-Control-Allow-Methods", "Access-Control-Allow-Origin",
         "Access-Control-Allow-Headers")
MEMBER_CORS = [("access-control-allow-origin", "*"),  # lower case, as any member may send
               ("Access-Control-Allow-Methods", "POST, GET, OPTIONS, PUT, DELETE"),
               ("Access-Control-Allow-Headers", "accept, content-type, authorization")]


def ask(port, method, target, headers=None, host="127.0.0.1"):
    """(status, {lower-case name: [values]}, body) of one request on a new connection."""
    conn = http.client.HTTPConnection(host, port, timeout=10)
    try:
        conn.request(method, target, headers=headers or {})
        resp = conn.getresponse()
        body = resp.read()
        fields = {}
        for name, value in resp.getheaders():
            fields.setdefault(name.lower(), []).append(value)
        return resp.status, fields, body
    finally:
        conn.close()


def cors_of(fields):
    return {name: fields.get(name.lower(), []) for name in NAMES}


ONCE_ANY = {"Access-Control-Allow-Methods": ["POST, GET, OPTIONS, PUT, DELETE"],
            "Access-Control-Allow-Origin": ["*"],
            "Access-Control-Allow-Headers": ["accept, content-type, authorization"]}
NONE = {name: [] for name in NAMES}


@contextmanager
def stack(*members, origins=("*",), **options):
    with proxy_stack(*[m.url for m in members], cors=Cors(origins), **options) as (port, _):
        yield port


# --- the merging itself ----------------------------------------------------------------


@pytest.mark.parametrize("raw,added", [
    (b"", 3),
    (b"Content-Type: application/json", 3),
    (b"access-control-allow-origin: *\r\nX-Etcd-Index: 4", 2),
    (b"X-A: 1\r\nACCESS-CONTROL-ALLOW-METHODS: GET\r\nAccess-Control-Allow-Origin: *\r\n"
     b"Access-Control-Allow-Headers: accept", 0),
    (b"X-Note: access-control-allow-origin: in a value", 3),
])
def test_raw_header_block_gets_only_the_missing_ones(raw, added):
    merged = Answer("*").add_block(raw)
    fields = [line for line in merged.split(b"\r\n") if line]
    assert len(fields) == len([line for line in raw.split(b"\r\n") if line]) + added
    lower = merged.lower()
    for name in NAMES:
        assert lower.count(b"\n" + name.lower().encode() + b":") + \
            lower.startswith(name.lower().encode() + b":") == 1
    assert merged.endswith(raw)


def test_header_list_gets_only_the_missing_ones():
    answer = Answer("http://a.example:80")
    member = [("Content-Type", "application/json"), ("access-control-allow-origin", "*")]
    merged = answer.add_fields(member)
    assert merged[:2] == member and len(merged) == 4
    assert [n for n, _ in merged[2:]] == ["Access-Control-Allow-Methods",
                                         "Access-Control-Allow-Headers"]
    assert len(member) == 2  # the member's list itself is left alone


# --- in front of fake members ------------------------------------------------------------


@pytest.mark.parametrize("member_headers", [[], MEMBER_CORS], ids=["member adds none",
                                                                    "member adds all"])
@pytest.mark.parametrize("hop", [False, True], ids=["relayed head", "rebuilt head"])
def test_forwarded_answer_has_each_header_once(member_headers, hop):
    extra = [("Connection", "x-drop"), ("X-Drop", "1")] if hop else []  # not relayable
    with FakeMember(headers=member_headers + extra) as member, stack(member) as port:
        status, fields, _ = ask(port, "GET", "/v2/keys/a")
    assert status == 200
    got = cors_of(fields)
    assert {name: len(values) for name, values in got.items()} == dict.fromkeys(NAMES, 1)


def test_preflight_is_answered_here_and_never_forwarded():
    with FakeMember() as member, stack(member) as port:
        status, fields, body = ask(port, "OPTIONS", "/v2/keys/a",
                                   {"Origin": "http://app.example:8080",
                                    "Access-Control-Request-Method": "PUT"})
        assert member.requests == []
    assert (status, body) == (200, b"")
    assert cors_of(fields) == ONCE_ANY


def test_proxy_errors_carry_the_headers_readonly_501_and_metrics_do_not():
    with proxy_stack(cors=Cors(("*",))) as (port, _):  # no member at all
        status, fields, _ = ask(port, "GET", "/v2/keys/a")
        assert status == 503 and cors_of(fields) == ONCE_ANY
        status, fields, _ = ask(port, "POST", "/v2/config/local/proxy")
        assert status == 405 and cors_of(fields) == ONCE_ANY
        status, fields, _ = ask(port, "GET", "/metrics")
        assert cors_of(fields) == NONE
    with proxy_stack(cors=Cors(("*",)), readonly=True) as (port, _):
        status, fields, _ = ask(port, "OPTIONS", "/v2/keys/a")
        assert status == 501 and cors_of(fields) == NONE


def test_origin_list_answers_allowed_origins_only():
    origin = "http://a.example:80"
    with FakeMember() as member, stack(member, origins=(origin,)) as port:
        _, fields, _ = ask(port, "GET", "/v2/keys/a")
        assert cors_of(fields) == NONE  # no Origin: nothing added
        _, fields, _ = ask(port, "GET", "/v2/keys/a", {"Origin": "http://b.example:80"})
        assert cors_of(fields) == NONE
        _, fields, _ = ask(port, "GET", "/v2/keys/a", {"Origin": origin})
        assert cors_of(fields)["Access-Control-Allow-Origin"] == [origin]
        assert all(len(v) == 1 for v in cors_of(fields).values())
        status, fields, body = ask(port, "OPTIONS", "/v2/keys/a", {"Origin": "http://b.example:80"})
        assert (status, body, cors_of(fields)) == (200, b"", NONE)  # answered, not allowed
        assert len(member.requests) == 3


def test_member_cors_header_is_kept_not_doubled_with_an_origin_list():
    """Go would send the member's * and the proxy's origin: two values, refused by browsers."""
    origin = "http://a.example:80"
    with FakeMember(lambda req: Reply(headers=MEMBER_CORS)) as member, \
            stack(member, origins=(origin,)) as port:
        _, fields, _ = ask(port, "GET", "/v2/keys/a", {"Origin": origin})
    assert cors_of(fields)["Access-Control-Allow-Origin"] == ["*"]
    assert all(len(v) == 1 for v in cors_of(fields).values())


# --- a proxy process in front of the real cluster (members on etcd's default --cors *) ---


def test_default_proxy_and_default_members_send_each_header_once(proxy, key):
    for method, target in (("PUT", key + "?value=1"), ("GET", key), ("GET", "/v2/keys/"),
                           ("GET", "/version")):
        status, fields, _ = ask(proxy.port, method, target)
        assert status < 300, (method, target)
        assert cors_of(fields) == ONCE_ANY, (method, target, fields)


def test_origin_list_on_a_proxy_process(cluster, start_proxy, key):
    origin = "http://a.example:80"
    proxy = start_proxy(cluster.initial_cluster, args=["--cors", origin])
    _, fields, _ = ask(proxy.port, "GET", "/v2/config/local/proxy", {"Origin": origin})
    assert cors_of(fields)["Access-Control-Allow-Origin"] == [origin]
    status, fields, body = ask(proxy.port, "OPTIONS", key, {"Origin": origin})
    assert (status, body) == (200, b"")
    assert cors_of(fields)["Access-Control-Allow-Origin"] == [origin]
    _, fields, _ = ask(proxy.port, "GET", "/v2/keys/", {"Origin": origin})
    assert all(len(v) == 1 for v in cors_of(fields).values())  # the member's, not doubled
