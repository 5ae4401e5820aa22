"""ProxyApp through WebTest, forwarding with each real transport to FakeMembers.

Behaviour matched: sections 4-6 of the etcd v2 proxy reference (status codes,
error bodies, readonly, the local config endpoint), plus geproxy's documented
differences (headers named in Connection are dropped too; writes are not
replayed on another member once they may have reached one; bounded bodies).
"""

from gevent import monkey

monkey.patch_all()  # harmless if conftest already did it; the fakes need it

import json  # noqa: E402

import pytest  # noqa: E402
from webtest import TestApp, TestRequest  # noqa: E402

from geproxy.app import ProxyApp  # noqa: E402
from geproxy.endpoints import EndpointSet  # noqa: E402
from geproxy.upstream import TRANSPORTS  # noqa: E402
from tests.fakeupstream import FakeMember, Reply  # noqa: E402

pytestmark = pytest.mark.filterwarnings("ignore:Unknown REQUEST_METHOD")

CLIENT_ADDR = "10.9.8.7"
KEY = "/v2/keys/foo"
CONFIG = "/v2/config/local/proxy"


# --- fixtures -----------------------------------------------------------------------


@pytest.fixture
def member():
    """Factory: member(behaviour="ok", **kw) -> a started FakeMember, closed afterwards."""
    made = []

    def factory(behaviour="ok", **kw):
        fake = FakeMember(behaviour, **kw)
        made.append(fake)
        return fake

    yield factory
    for fake in made:
        fake.close()


class Proxy:
    """A TestApp around ProxyApp plus the endpoint set it uses."""

    def __init__(self, members, readonly, max_body, transport):
        urls = [m.url for m in members]
        self.endpoints = EndpointSet(failure_wait=5.0)
        self.endpoints.replace(urls, shuffle=False)  # tried in the order given
        self.transport = TRANSPORTS[transport]()
        self.app = ProxyApp(self.endpoints, self.transport, readonly=readonly,
                            max_body=max_body)
        self.client = TestApp(self.app, extra_environ={"REMOTE_ADDR": CLIENT_ADDR})

    def failed_urls(self):
        return [ep.url for ep, _wait in self.endpoints.failed()]

    def available_urls(self):
        return [ep.url for ep in self.endpoints.available()]


@pytest.fixture(params=["native", "requests"])
def proxy(request):
    """Factory: proxy(*members, readonly=False, max_body=...) -> Proxy; once per transport."""
    made = []

    def factory(*members, readonly=False, max_body=4 << 20):
        made.append(Proxy(members, readonly, max_body, request.param))
        return made[-1]

    yield factory
    for p in made:
        p.transport.close()


def header_values(res, name):
    return [v for n, v in res.headerlist if n.lower() == name.lower()]


# --- readonly -----------------------------------------------------------------------


def test_readonly_forwards_get(member, proxy):
    fake = member()
    res = proxy(fake, readonly=True).client.get(KEY)
    assert res.status_int == 200
    assert res.body == fake.body
    assert [(r.method, r.target) for r in fake.requests] == [("GET", KEY)]


@pytest.mark.parametrize("method", ["HEAD", "OPTIONS", "PUT", "POST", "DELETE", "PATCH", "FOO"])
def test_readonly_rejects_everything_but_get_with_empty_501(member, proxy, method):
    fake = member()
    body = b"value=1" if method in ("PUT", "POST", "PATCH") else b""
    res = proxy(fake, readonly=True).client.request(KEY, method=method, body=body, status=501)
    assert res.body == b""
    assert header_values(res, "Content-Length") == ["0"]
    assert header_values(res, "Content-Type") == []
    assert fake.requests == []
    assert fake.connections == 0


def test_readonly_rejects_put_on_local_config(member, proxy):
    fake = member()
    res = proxy(fake, readonly=True).client.put(CONFIG, "x", status=501)
    assert res.body == b""
    assert fake.requests == []


# --- local config endpoint -----------------------------------------------------------


def test_local_config_lists_available_endpoints_in_order(member, proxy):
    first, second = member(), member()
    res = proxy(first, second).client.get(CONFIG)
    assert res.status_int == 200
    assert res.body.endswith(b"\n")
    assert json.loads(res.body) == {"endpoints": [first.url, second.url]}
    assert first.requests == second.requests == []


def test_local_config_post_is_405_allow_get(member, proxy):
    fake = member()
    res = proxy(fake).client.post(CONFIG, "x", status=405)
    assert header_values(res, "Allow") == ["GET"]
    assert res.body == b"Method Not Allowed\n"
    assert fake.requests == []


def test_local_config_omits_failed_endpoint(member, proxy):
    first, second = member(), member()
    p = proxy(first, second)
    p.endpoints.mark_failed(p.endpoints.all()[0])
    res = p.client.get(CONFIG)
    assert json.loads(res.body) == {"endpoints": [second.url]}


# --- error bodies ---------------------------------------------------------------------


def test_zero_endpoints_gives_503_json(proxy):
    res = proxy().client.get(KEY, status=503)
    assert res.content_type == "application/json"
    assert res.body == b'{"message":"httpproxy: zero endpoints currently available"}'


def test_all_endpoints_refusing_gives_502_json(member, proxy):
    p = proxy(member("refuse"), member("refuse"))
    res = p.client.get(KEY, status=502)
    assert res.content_type == "application/json"
    assert res.body == b'{"message":"httpproxy: unable to get response from 2 endpoint(s)"}'
    assert len(p.failed_urls()) == 2


# --- header hygiene: request direction -------------------------------------------------

HOP_REQUEST_HEADERS = {
    "Connection": "X-Custom-Hop",
    "X-Custom-Hop": "secret",
    "Keep-Alive": "timeout=5",
    "TE": "trailers",
    "Upgrade": "websocket",
    "Proxy-Authorization": "Basic cHJveHk6cHc=",
    "Trailer": "X-Checksum",
}
END_TO_END_HEADERS = {
    "Authorization": "Basic dXNlcjpwdw==",
    "X-Other": "other-value",
}


def send_mixed_headers(member, proxy):
    fake = member()
    headers = dict(HOP_REQUEST_HEADERS, **END_TO_END_HEADERS)
    headers["X-Forwarded-For"] = "1.2.3.4"
    proxy(fake).client.get(KEY, headers=headers)
    [received] = fake.requests
    return received


def test_request_hop_by_hop_headers_not_forwarded(member, proxy):
    received = send_mixed_headers(member, proxy)
    leaked = received.header_names() & {n.lower() for n in HOP_REQUEST_HEADERS}
    assert leaked == set()


def test_request_end_to_end_headers_forwarded(member, proxy):
    received = send_mixed_headers(member, proxy)
    for name, value in END_TO_END_HEADERS.items():
        assert received.header_all(name) == [value]


def test_request_x_forwarded_for_appends_client_address(member, proxy):
    received = send_mixed_headers(member, proxy)
    assert received.header_all("X-Forwarded-For") == ["1.2.3.4, " + CLIENT_ADDR]


def test_request_x_forwarded_for_set_when_client_sent_none(member, proxy):
    fake = member()
    proxy(fake).client.get(KEY)
    assert fake.requests[0].header_all("X-Forwarded-For") == [CLIENT_ADDR]


# --- header hygiene: response direction ------------------------------------------------

MEMBER_RESPONSE_HEADERS = [
    ("X-Etcd-Index", "7"),
    ("Set-Cookie", "a=1; Path=/"),
    ("Set-Cookie", "b=2; Path=/"),
    ("Connection", "X-Hop"),
    ("X-Hop", "1"),
    ("Keep-Alive", "timeout=5"),
    ("Proxy-Authenticate", 'Basic realm="member"'),
    ("Upgrade", "h2c"),
]


def test_response_hop_by_hop_headers_removed(member, proxy):
    fake = member(headers=MEMBER_RESPONSE_HEADERS)
    res = proxy(fake).client.get(KEY)
    names = {n.lower() for n, _ in res.headerlist}
    assert names & {"connection", "x-hop", "keep-alive", "proxy-authenticate", "upgrade"} == set()


def test_response_keeps_repeated_set_cookie(member, proxy):
    fake = member(headers=MEMBER_RESPONSE_HEADERS)
    res = proxy(fake).client.get(KEY)
    assert header_values(res, "Set-Cookie") == ["a=1; Path=/", "b=2; Path=/"]


def test_response_end_to_end_headers_and_body_passed_back(member, proxy):
    fake = member(headers=MEMBER_RESPONSE_HEADERS)
    res = proxy(fake).client.get(KEY)
    assert header_values(res, "X-Etcd-Index") == ["7"]
    assert res.content_type == "application/json"
    assert res.body == fake.body


@pytest.mark.parametrize("status", [500, 404])
def test_member_error_status_passed_back_without_failover(member, proxy, status):
    body = b'{"errorCode":100,"message":"Key not found"}'
    first = member(status=status, body=body, headers=[("X-Etcd-Index", "3")])
    second = member()
    p = proxy(first, second)
    res = p.client.get(KEY, status=status)
    assert res.body == body
    assert header_values(res, "X-Etcd-Index") == ["3"]
    assert len(first.requests) == 1
    assert second.requests == []
    assert p.failed_urls() == []


def test_a_new_raft_term_in_a_write_answer_makes_the_leader_doubted(member, proxy):
    """etcd names its raft term on a write it applied; a term above any seen means an
    election, so membership asks for the leader again (not only on its next refresh)."""
    fake = member(headers=[("X-Raft-Term", "7")])
    p = proxy(fake)
    p.client.get(KEY)  # reads say nothing about the leader
    assert p.endpoints.term == 0 and not p.endpoints.leader_doubted.is_set()
    p.client.put(KEY, {"value": "v"})
    assert p.endpoints.term == 7 and p.endpoints.leader_doubted.is_set()
    p.endpoints.leader_doubted.clear()
    p.client.put(KEY, {"value": "w"})  # the same term: no election since
    assert not p.endpoints.leader_doubted.is_set()


# --- methods and paths -----------------------------------------------------------------


def test_unknown_method_forwarded_in_on_mode(member, proxy):
    fake = member()
    res = proxy(fake).client.request(KEY, method="FOO")
    assert res.status_int == 200
    assert [(r.method, r.target) for r in fake.requests] == [("FOO", KEY)]


def test_raw_target_from_raw_uri_arrives_byte_exact(member, proxy):
    fake = member()
    target = "/v2/keys/a%2Fb?x=1&y=%20"
    proxy(fake).client.get(target, extra_environ={"RAW_URI": target})
    assert fake.requests[0].target == target


def test_raw_target_keeps_lowercase_escapes(member, proxy):
    fake = member()
    p = proxy(fake)
    if p.transport.name == "requests":
        pytest.skip("urllib3 upper-cases percent escapes (%2f -> %2F)")
    target = "/v2/keys/a%2fb?x=%2a"
    p.client.get(target, extra_environ={"RAW_URI": target})
    assert fake.requests[0].target == target


def test_member_gets_no_headers_of_the_transports_own(member, proxy):
    fake = member()
    p = proxy(fake)
    if p.transport.name == "requests":
        pytest.skip("urllib3 adds User-Agent and Accept-Encoding")
    p.client.get(KEY, headers={"X-Other": "1"})
    names = sorted(n.lower() for n, _ in fake.requests[0].headers)
    assert names == ["host", "x-forwarded-for", "x-other"]


def test_absolute_form_target_forwarded_in_origin_form(member, proxy):
    fake = member()
    absolute = "http://elsewhere:2379/v2/keys/a%2Fb?x=1"
    proxy(fake).client.get(KEY, extra_environ={"RAW_URI": absolute})
    assert fake.requests[0].target == "/v2/keys/a%2Fb?x=1"


def test_target_without_raw_uri_rebuilt_from_path_and_query(member, proxy):
    fake = member()
    target = "/v2/keys/a%20b?x=1&y=%20"
    proxy(fake).client.get(target)
    assert fake.requests[0].target == target


def test_encoded_slash_without_raw_uri_is_decoded_by_wsgi(member, proxy):
    # PATH_INFO is percent-decoded (PEP 3333); only RAW_URI can keep %2F.
    fake = member()
    proxy(fake).client.get("/v2/keys/a%2Fb?x=1&y=%20")
    assert fake.requests[0].target == "/v2/keys/a/b?x=1&y=%20"


def test_request_body_arrives_intact_with_content_length(member, proxy):
    fake = member(status=201)
    body = b"value=hello%20world&ttl=5"
    proxy(fake).client.put(KEY, body, content_type="application/x-www-form-urlencoded",
                           status=201)
    [received] = fake.requests
    assert received.method == "PUT"
    assert received.body == body
    assert received.header_all("Content-Length") == [str(len(body))]
    assert not received.chunked
    assert received.header_all("Content-Type") == ["application/x-www-form-urlencoded"]


# --- retries -----------------------------------------------------------------------------


def test_get_retried_on_next_member_after_drop(member, proxy):
    first, second = member("drop"), member()
    p = proxy(first, second)
    res = p.client.get(KEY)
    assert res.status_int == 200
    assert res.body == second.body
    assert [r.method for r in first.requests] == ["GET"]
    assert [r.method for r in second.requests] == ["GET"]


def test_member_that_drops_is_marked_failed(member, proxy):
    first, second = member("drop"), member()
    p = proxy(first, second)
    p.client.get(KEY)
    assert p.failed_urls() == [first.url]
    assert p.available_urls() == [second.url]


def test_post_not_replayed_after_member_drops(member, proxy):
    first, second = member("drop"), member()
    p = proxy(first, second)
    res = p.client.post(KEY, "value=1", status=502)
    assert res.content_type == "application/json"
    message = json.loads(res.body)["message"]
    assert "failed mid-request" in message
    assert first.url in message
    assert [r.method for r in first.requests] == ["POST"]
    assert second.requests == []
    assert second.connections == 0


@pytest.mark.parametrize("method", ["PUT", "DELETE"])
def test_idempotent_write_sent_once_when_member_drops(member, proxy, method):
    """No transport-level retry either: a write reaches a member at most once."""
    first, second = member("drop"), member()
    p = proxy(first, second)
    body = "value=1" if method == "PUT" else ""
    p.client.request(KEY, method=method, body=body.encode(), status=502)
    assert [r.method for r in first.requests] == [method]
    assert first.connections == 1
    assert second.requests == []


def test_post_goes_to_next_member_when_first_refuses(member, proxy):
    first, second = member("refuse"), member(status=201)
    p = proxy(first, second)
    res = p.client.post(KEY, "value=1", status=201)
    assert res.body == second.body
    assert [(r.method, r.body) for r in second.requests] == [("POST", b"value=1")]
    assert p.failed_urls() == [first.url]


# --- body limit ---------------------------------------------------------------------------


def test_body_over_limit_gives_413_and_is_not_forwarded(member, proxy):
    fake = member()
    res = proxy(fake, max_body=10).client.put(KEY, b"x" * 11, status=413)
    assert res.content_type == "application/json"
    assert "message" in json.loads(res.body)
    assert fake.requests == []
    assert fake.connections == 0


def chunked_put(body):
    """A PUT as pywsgi presents a chunked upload: no CONTENT_LENGTH, input terminated."""
    req = TestRequest.blank(KEY, method="PUT", body=body,
                            headers={"Transfer-Encoding": "chunked"})
    del req.environ["CONTENT_LENGTH"]
    req.environ["wsgi.input_terminated"] = True
    return req


def test_chunked_body_over_limit_gives_413_and_is_not_forwarded(member, proxy):
    fake = member()
    res = proxy(fake, max_body=10).client.do_request(chunked_put(b"x" * 11), status=413)
    assert res.content_type == "application/json"
    assert fake.requests == []


def test_chunked_body_forwarded_with_content_length(member, proxy):
    fake = member()
    proxy(fake).client.do_request(chunked_put(b"value=chunky"), status=200)
    [received] = fake.requests
    assert received.body == b"value=chunky"
    assert received.header_all("Content-Length") == ["12"]
    assert "transfer-encoding" not in received.header_names()


def test_body_at_limit_is_forwarded(member, proxy):
    fake = member()
    proxy(fake, max_body=10).client.put(KEY, b"x" * 10)
    assert fake.requests[0].body == b"x" * 10


# --- HEAD and watches ---------------------------------------------------------------------


def test_head_forwarded_and_answered_without_body(member, proxy):
    fake = member(headers=[("X-Etcd-Index", "9")])
    res = proxy(fake).client.head(KEY)
    assert res.status_int == 200
    assert res.body == b""
    assert header_values(res, "X-Etcd-Index") == ["9"]
    assert [r.method for r in fake.requests] == ["HEAD"]


def test_head_keeps_upstream_connection_alive(member, proxy):
    fake = member()
    p = proxy(fake)
    p.client.head(KEY)
    p.client.head(KEY)
    assert len(fake.requests) == 2
    assert fake.connections == 1


def test_watch_response_passes_through(member, proxy):
    pieces = [b'{"action":"set",', b'"node":{"key":"/foo","value":"bar","modifiedIndex":8}}\n']
    fake = member(body=pieces, chunked=True, headers=[("X-Etcd-Index", "7")])
    res = proxy(fake).client.get(KEY + "?wait=true&waitIndex=8")
    assert res.status_int == 200
    assert res.body == b"".join(pieces)
    assert header_values(res, "X-Etcd-Index") == ["7"]
    assert header_values(res, "Transfer-Encoding") == []
    assert fake.requests[0].target == KEY + "?wait=true&waitIndex=8"


def test_watch_error_status_passes_through(member, proxy):
    body = b'{"errorCode":401,"message":"The event in requested index is outdated"}\n'
    fake = member(status=400, body=body)
    res = proxy(fake).client.get(KEY + "?wait=true&waitIndex=1", status=400)
    assert res.body == body


def test_keep_alive_connection_reused_for_second_request(member, proxy):
    fake = member()
    p = proxy(fake)
    p.client.get(KEY)
    p.client.get(KEY)
    assert len(fake.requests) == 2
    assert fake.connections == 1


def test_fake_member_callable_behaviour(member, proxy):
    fake = member(lambda req: Reply(200, body=req.method.encode(), content_type="text/plain"))
    res = proxy(fake).client.get(KEY)
    assert res.body == b"GET"
