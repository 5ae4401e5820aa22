"""/metrics: the Go proxy's etcd_proxy_* series and geproxy's own, in-process and end to end.

The counting rules are checked in-process against fake members (tests/inproc.py),
where a test decides exactly which member fails and how; the end-to-end tests run
a proxy process in front of the real cluster, with one worker and with two.
"""

import os
import re
import signal
import socket
import threading
from contextlib import contextmanager

import gevent
from prometheus_client import Histogram

from geproxy.cors import Cors
from geproxy.meter import BUCKETS, Meter
from geproxy.metrics import CONTENT_TYPE, Exporter, check_histogram_internals
from geproxy.testing import metric_value, read_metrics
from geproxy.testing.procfs import children
from tests.fakeupstream import FakeMember, Reply
from tests.helpers import poll, session, sessions
from tests.inproc import proxy_stack

GO_BUCKETS = ["0.0005", "0.001", "0.002", "0.004", "0.008", "0.016", "0.032", "0.064",
              "0.128", "0.256", "0.512", "1.024", "2.048", "+Inf"]


@contextmanager
def metered(*member_urls, **options):
    """An in-process proxy that counts; yields (base URL, exporter, a requests session)."""
    meter = Meter()
    options.setdefault("cors", Cors(("*",)))
    with proxy_stack(*member_urls, meter=meter, **options) as (port, server), \
            session() as http:
        app = server.app
        exporter = Exporter(meter, app.endpoints, app.transport, coalescer=app.coalescer)
        for listener_server in server.servers:
            exporter.track(listener_server)
        app.metrics_page = exporter.page
        yield "http://127.0.0.1:%d" % port, exporter, http


def value(exporter, name, **labels):
    exporter.flush()
    return exporter.registry.get_sample_value(name, labels) or 0.0


def put_is_201(request):
    return Reply(201 if request.method == "PUT" else 200)


def test_requests_handled_and_durations_count_forwarded_requests():
    with FakeMember(put_is_201) as member, metered(member.url) as (url, exporter, http):
        for _ in range(3):
            assert http.get(url + "/v2/keys/a").status_code == 200
        for _ in range(2):
            assert http.put(url + "/v2/keys/a", data={"value": "1"}).status_code == 201
        # answered by the proxy itself: never counted as proxied requests
        assert http.options(url + "/v2/keys/a").status_code == 200
        assert http.get(url + "/v2/config/local/proxy").status_code == 200
        assert http.post(url + "/metrics").status_code == 200

        assert value(exporter, "etcd_proxy_requests_total", method="GET") == 3
        assert value(exporter, "etcd_proxy_requests_total", method="PUT") == 2
        assert value(exporter, "etcd_proxy_requests_total", method="OPTIONS") == 0
        assert value(exporter, "etcd_proxy_handled_total", method="GET", code="200") == 3
        assert value(exporter, "etcd_proxy_handled_total", method="PUT", code="201") == 2
        assert value(exporter, "etcd_proxy_handling_duration_seconds_count", method="GET") == 3
        assert value(exporter, "etcd_proxy_handling_duration_seconds_count", method="PUT") == 2
        assert value(exporter, "geproxy_member_requests_total", member=member.url) == 5
        assert value(exporter, "geproxy_member_response_seconds_count", member=member.url) == 5
        assert value(exporter, "geproxy_member_failures_total", member=member.url) == 0
        assert len(member.requests) == 5


def test_readonly_rejections_are_not_counted_and_metrics_answer_any_method():
    with FakeMember() as member, metered(member.url, readonly=True) as (url, exporter, http):
        assert http.put(url + "/v2/keys/a", data={"value": "1"}).status_code == 501
        assert http.get(url + "/v2/keys/a").status_code == 200
        r = http.post(url + "/metrics")
        assert r.status_code == 200 and r.headers["Content-Type"] == CONTENT_TYPE
        assert 'etcd_proxy_requests_total{method="GET"} 1.0' in r.text
        assert 'method="PUT"' not in r.text
        assert [req.target for req in member.requests] == ["/v2/keys/a"]


def test_dropped_once_per_failed_attempt_and_once_at_the_end():
    """As observed on the Go proxy: a PUT over two dead members counts
    failed_sending_request 2 and failed_getting_response 1; the next request,
    with both marked failed, zero_endpoints."""
    a, b = FakeMember("refuse"), FakeMember("refuse")
    with a, b, metered(a.url, b.url) as (url, exporter, http):
        r = http.put(url + "/v2/keys/a", data={"value": "1"})
        assert r.status_code == 502
        assert value(exporter, "etcd_proxy_dropped_total", method="PUT",
                     proxying_error="failed_sending_request") == 2
        assert value(exporter, "etcd_proxy_dropped_total", method="PUT",
                     proxying_error="failed_getting_response") == 1
        assert http.get(url + "/v2/keys/a").status_code == 503
        assert value(exporter, "etcd_proxy_dropped_total", method="GET",
                     proxying_error="zero_endpoints") == 1
        assert value(exporter, "etcd_proxy_requests_total", method="PUT") == 1
        assert value(exporter, "etcd_proxy_requests_total", method="GET") == 1
        assert value(exporter, "etcd_proxy_handled_total", method="PUT", code="502") == 0
        for member in (a, b):
            assert value(exporter, "geproxy_member_requests_total", member=member.url) == 1
            assert value(exporter, "geproxy_member_failures_total", member=member.url) == 1


def test_a_write_that_may_have_landed_counts_one_attempt():
    dropper, spare = FakeMember("drop"), FakeMember()
    with dropper, spare, metered(dropper.url, spare.url) as (url, exporter, http):
        assert http.put(url + "/v2/keys/a", data={"value": "1"}).status_code == 502
        assert value(exporter, "etcd_proxy_dropped_total", method="PUT",
                     proxying_error="failed_sending_request") == 1
        assert value(exporter, "etcd_proxy_dropped_total", method="PUT",
                     proxying_error="failed_getting_response") == 1
        assert value(exporter, "geproxy_member_failures_total", member=dropper.url) == 1
        assert spare.requests == []


def test_each_client_of_a_coalesced_watch_counts_once_the_shared_request_once():
    event = threading.Event()

    def watch(request):
        event.wait(5)  # holds the answer until both clients joined
        return Reply(200)

    with FakeMember(watch) as member, metered(member.url) as (url, exporter, http):
        other = session()
        clients = [gevent.spawn(c.get, url + "/v2/keys/w?wait=true") for c in (http, other)]
        poll(lambda: exporter.coalescer.clients() == 2, what="both watches to join one group")
        assert value(exporter, "geproxy_watch_groups") == 1
        assert value(exporter, "geproxy_watch_group_clients") == 2
        event.set()
        assert [c.get(timeout=10).status_code for c in clients] == [200, 200]
        assert value(exporter, "etcd_proxy_requests_total", method="GET") == 2
        assert value(exporter, "etcd_proxy_handled_total", method="GET", code="200") == 2
        assert value(exporter, "geproxy_member_requests_total", member=member.url) == 1
        assert value(exporter, "geproxy_watch_groups") == 0
        other.close()


def test_histogram_has_the_go_buckets():
    with FakeMember() as member, metered(member.url) as (url, _exporter, http):
        http.get(url + "/v2/keys/a")
        text = http.get(url + "/metrics").text
    bounds = re.findall(r'etcd_proxy_handling_duration_seconds_bucket\{le="([^"]+)",'
                        r'method="GET"\}', text)
    assert bounds == GO_BUCKETS
    assert [float(b) for b in GO_BUCKETS[:-1]] == list(BUCKETS)
    assert "# TYPE etcd_proxy_requests_total counter" in text
    assert "_created" not in text  # the Go proxy has no *_created series


def test_metrics_off_answers_404_here_and_never_forwards():
    with FakeMember() as member, proxy_stack(member.url) as (port, _server), \
            session() as http:
        r = http.get("http://127.0.0.1:%d/metrics" % port)
        assert r.status_code == 404
        assert member.requests == []


def test_histogram_internals_are_the_ones_add_histogram_uses():
    check_histogram_internals(Histogram("geproxy_test_seconds", "x", ["m"], registry=None,
                                        buckets=BUCKETS).labels("m"))


# --- a proxy process in front of the real cluster -------------------------------------


def test_go_series_rise_as_requests_go_through(http, proxy, key):
    before = read_metrics(proxy.url)
    for _ in range(20):
        assert http.get(proxy.url + "/v2/keys/").status_code == 200
    for i in range(5):
        assert http.put(proxy.url + key + str(i), data={"value": "x"}).status_code == 201
    after = read_metrics(proxy.url)

    def rise(name, **labels):
        return metric_value(after, name, **labels) - metric_value(before, name, **labels)

    assert rise("etcd_proxy_requests_total", method="GET") == 20
    assert rise("etcd_proxy_requests_total", method="PUT") == 5
    assert rise("etcd_proxy_handled_total", method="GET", code="200") == 20
    assert rise("etcd_proxy_handled_total", method="PUT", code="201") == 5
    assert rise("etcd_proxy_handling_duration_seconds_count", method="GET") == 20
    assert rise("geproxy_member_requests_total") == 25
    assert metric_value(after, "process_resident_memory_bytes") > 0


def test_per_member_series_split_as_the_traffic_did(cluster, start_proxy):
    proxy = start_proxy(cluster.initial_cluster, endpoints=len(cluster.members))
    clients = sessions(3)  # three connections: least-connections binds one to each member
    try:
        for n, client in zip((3, 5, 7), clients):
            for _ in range(n):
                assert client.get(proxy.url + "/v2/keys/").status_code == 200
        samples = read_metrics(proxy.url)
        per_member = sorted(metric_value(samples, "geproxy_member_requests_total", member=url)
                            for url in cluster.client_urls)
        bound = [metric_value(samples, "geproxy_member_bound_connections", member=url)
                 for url in cluster.client_urls]
    finally:
        for client in clients:
            client.close()
    assert per_member == [3, 5, 7]
    assert bound == [1, 1, 1]
    assert metric_value(samples, "geproxy_client_connections") == 4  # and the scrape's own


def test_with_two_workers_a_scrape_sums_over_both(cluster, start_proxy):
    proxy = start_proxy(cluster.initial_cluster, args=["--workers", "2"],
                        endpoints=len(cluster.members))
    poll(lambda: len(children(proxy.pid)) == 2, timeout=10, what="two workers")
    sent = 40
    for _ in range(sent):  # a new connection each: both workers take some
        client = session()
        assert client.get(proxy.url + "/v2/keys/").status_code == 200
        client.close()

    def summed():
        samples = read_metrics(proxy.url)
        return (metric_value(samples, "etcd_proxy_requests_total", method="GET") == sent
                and metric_value(samples, "geproxy_member_requests_total") == sent
                and len({s.labels["pid"] for s in samples
                         if s.name == "process_resident_memory_bytes"}) == 2)

    poll(summed, timeout=10, what="the scrape to count %d requests over both workers" % sent)


def test_a_dead_workers_gauges_do_not_linger(cluster, start_proxy):
    proxy = start_proxy(cluster.initial_cluster, args=["--workers", "2"])
    poll(lambda: len(children(proxy.pid)) == 2, timeout=10, what="two workers")
    workers = children(proxy.pid)

    def live():  # the workers with live gauges in a scrape
        return {int(s.labels["pid"]) for s in read_metrics(proxy.url)
                if s.name == "process_resident_memory_bytes"}

    poll(lambda: live() == set(workers), timeout=10, what="both workers' gauges")
    os.kill(workers[0], signal.SIGKILL)  # gunicorn reaps it and starts another
    poll(lambda: workers[0] not in live() and len(live()) == 2, timeout=15,
         what="the dead worker's gauges to go and its replacement's to come")


def test_readonly_proxy_serves_metrics_for_any_method(http, readonly_proxy):
    assert http.get(readonly_proxy.url + "/v2/keys/").status_code == 200
    for method in ("GET", "POST", "PUT"):
        r = http.request(method, readonly_proxy.url + "/metrics")
        assert r.status_code == 200
        assert "# TYPE etcd_proxy_requests_total counter" in r.text
        assert "Access-Control-Allow-Origin" not in r.headers


def test_refused_requests_are_counted_and_nothing_else_moves(cluster, start_proxy):
    proxy = start_proxy(cluster.initial_cluster, endpoints=len(cluster.members))
    before = read_metrics(proxy.url)
    for raw in (b"GET /v2/keys/a HTTP/1.1\r\nX : y\r\nHost: x\r\n\r\n",  # space before the colon
                b"GET /v2/keys/a HTTP/2.0\r\nHost: x\r\n\r\n",
                b"PUT /v2/keys/a HTTP/1.1\r\nHost: x\r\nContent-Length: +1\r\n\r\nx"):
        sock = socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
        sock.sendall(raw)
        assert sock.recv(65536).split(b" ")[1] in (b"400", b"505")
        sock.close()
    after = read_metrics(proxy.url)
    assert metric_value(after, "geproxy_rejected_requests_total") - \
        metric_value(before, "geproxy_rejected_requests_total") == 3
    assert metric_value(after, "etcd_proxy_requests_total") == \
        metric_value(before, "etcd_proxy_requests_total")
