"""geproxy.settings in-process: spellings, defaults, env, notes, bad input, README table."""

import os
import re

import pytest

import geproxy.upstream
from geproxy import values
from geproxy.settings import SETTINGS, UsageError, markdown_table, parse

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PEERS = "--initial-cluster=a=http://127.0.0.1:2380"


def levels(notes, level):
    return [message for lvl, message in notes if lvl == level]


@pytest.mark.parametrize("argv", [
    ["-proxy", "readonly"],
    ["--proxy", "readonly"],
    ["--proxy=readonly"],
    ["-proxy=readonly"],
])
def test_all_four_spellings(argv):
    s, notes = parse(argv, {})
    assert s.proxy == "readonly" and s.readonly
    assert s.sources["proxy"] == "flag"
    assert notes == []


@pytest.mark.parametrize("argv", [
    ["-proxy-failure-wait", "7"], ["--proxy-failure-wait", "7"],
    ["--proxy-failure-wait=7"], ["-proxy-failure-wait=7"],
])
def test_spellings_of_a_dashed_flag(argv):
    s, _ = parse(argv, {})
    assert s.proxy_failure_wait == 7


def test_defaults_are_etcds():
    s, notes = parse([], {})
    assert notes == []
    assert s.proxy == "on" and not s.readonly
    assert s.proxy_refresh_interval == 30000
    assert s.proxy_failure_wait == 5000
    assert s.proxy_dial_timeout == 1000
    assert s.proxy_write_timeout == 5000
    assert s.proxy_read_timeout == 0
    assert s.listen_client_urls == ("http://localhost:2379",)
    assert s.peer_urls == ("http://localhost:2380",)
    assert s.name == "default" and s.data_dir == ""
    assert s.data_dir_path == "default.etcd"
    assert set(s.sources.values()) == {"default"}


def test_data_dir_path_follows_name_and_data_dir():
    assert parse(["--name", "p1"], {})[0].data_dir_path == "p1.etcd"
    assert parse(["--name", "p1", "--data-dir", "/x/y"], {})[0].data_dir_path == "/x/y"


ENV_CASES = [
    ("ETCD_PROXY", "readonly", "proxy", "readonly"),
    ("ETCD_LISTEN_CLIENT_URLS", "http://127.0.0.1:1,https://127.0.0.1:2",
     "listen_client_urls", ("http://127.0.0.1:1", "https://127.0.0.1:2")),
    ("ETCD_INITIAL_CLUSTER", "a=http://127.0.0.1:3,b=https://127.0.0.1:4",
     "initial_cluster", (("a", "http://127.0.0.1:3"), ("b", "https://127.0.0.1:4"))),
    ("ETCD_DATA_DIR", "/tmp/d", "data_dir", "/tmp/d"),
    ("ETCD_NAME", "p9", "name", "p9"),
    ("ETCD_PROXY_REFRESH_INTERVAL", "11", "proxy_refresh_interval", 11),
    ("ETCD_PROXY_FAILURE_WAIT", "12", "proxy_failure_wait", 12),
    ("ETCD_PROXY_DIAL_TIMEOUT", "13", "proxy_dial_timeout", 13),
    ("ETCD_PROXY_WRITE_TIMEOUT", "14", "proxy_write_timeout", 14),
    ("ETCD_PROXY_READ_TIMEOUT", "15", "proxy_read_timeout", 15),
    ("ETCD_PROXY_MAX_REQUEST_BYTES", "16", "proxy_max_request_bytes", 16),
    ("ETCD_PROXY_TRANSPORT", "requests", "proxy_transport", "requests"),
    ("ETCD_LOG_LEVEL", "debug", "log_level", "debug"),
    ("ETCD_LOG_FORMAT", "json", "log_format", "json"),
    ("ETCD_ACCESS_LOG", "true", "access_log", True),
    ("ETCD_METRICS", "off", "metrics", "off"),
    ("ETCD_CORS", "http://a.example:80,https://b.example:443", "cors",
     ("http://a.example:80", "https://b.example:443")),
    ("ETCD_PROXY_SHUTDOWN_TIMEOUT", "20", "proxy_shutdown_timeout", 20),
    ("ETCD_INITIAL_CLUSTER_TOKEN", "tok", "initial_cluster_token", "tok"),
    ("ETCD_INITIAL_CLUSTER_STATE", "existing", "initial_cluster_state", "existing"),
    ("ETCD_ADVERTISE_CLIENT_URLS", "http://127.0.0.1:5", "advertise_client_urls",
     ("http://127.0.0.1:5",)),
    ("ETCD_INITIAL_ADVERTISE_PEER_URLS", "http://127.0.0.1:6", "initial_advertise_peer_urls",
     ("http://127.0.0.1:6",)),
    ("ETCD_LISTEN_PEER_URLS", "http://127.0.0.1:7", "listen_peer_urls", ("http://127.0.0.1:7",)),
    ("ETCD_ENABLE_V2", "false", "enable_v2", False),
    ("ETCD_PROXY_HEADER_TIMEOUT", "17", "proxy_header_timeout", 17),
    ("ETCD_PROXY_BALANCE", "first", "proxy_balance", "first"),
    ("ETCD_WORKERS", "3", "workers", 3),
    ("ETCD_PROXY_COALESCE_WATCHES", "false", "proxy_coalesce_watches", False),
    ("ETCD_PROXY_CLIENT_IDLE_TIMEOUT", "18", "proxy_client_idle_timeout", 18),
    ("ETCD_PROXY_CLIENT_HEADER_TIMEOUT", "19", "proxy_client_header_timeout", 19),
    ("ETCD_PROXY_BUSY_POLL", "0", "proxy_busy_poll", 0),
    ("ETCD_PROXY_PIPELINE", "0", "proxy_pipeline", 0),
    ("ETCD_PROXY_MAX_CONNECTIONS", "19", "proxy_max_connections", 19),
    ("ETCD_DISCOVERY", "http://127.0.0.1:9/v2/keys/_disc/tok", "discovery",
     "http://127.0.0.1:9/v2/keys/_disc/tok"),
    ("ETCD_DISCOVERY_SRV", "example.test", "discovery_srv", "example.test"),
    ("ETCD_DISCOVERY_SRV_NAME", "blue", "discovery_srv_name", "blue"),
    ("ETCD_DISCOVERY_SRV_RESOLVER", "127.0.0.1:5353", "discovery_srv_resolver",
     "127.0.0.1:5353"),
    ("ETCD_DISCOVERY_PROXY", "127.0.0.1:3128", "discovery_proxy", "http://127.0.0.1:3128"),
    ("ETCD_DISCOVERY_FALLBACK", "exit", "discovery_fallback", "exit"),
    ("ETCD_CERT_FILE", "/tls/c.pem", "cert_file", "/tls/c.pem"),
    ("ETCD_KEY_FILE", "/tls/k.pem", "key_file", "/tls/k.pem"),
    ("ETCD_TRUSTED_CA_FILE", "/tls/ca.pem", "trusted_ca_file", "/tls/ca.pem"),
    ("ETCD_CLIENT_CERT_AUTH", "true", "client_cert_auth", True),
    ("ETCD_CLIENT_CRL_FILE", "/tls/crl.pem", "client_crl_file", "/tls/crl.pem"),
    ("ETCD_AUTO_TLS", "true", "auto_tls", True),
    ("ETCD_CIPHER_SUITES", "TLS_ECDHE_RSA_WITH_AES_128_GCM_SHA256, TLS_AES_128_GCM_SHA256",
     "cipher_suites", "ECDHE-RSA-AES128-GCM-SHA256"),
    ("ETCD_PEER_CERT_FILE", "/tls/pc.pem", "peer_cert_file", "/tls/pc.pem"),
    ("ETCD_PEER_KEY_FILE", "/tls/pk.pem", "peer_key_file", "/tls/pk.pem"),
    ("ETCD_PEER_TRUSTED_CA_FILE", "/tls/pca.pem", "peer_trusted_ca_file", "/tls/pca.pem"),
    ("ETCD_PEER_CLIENT_CERT_AUTH", "true", "peer_client_cert_auth", True),
    ("ETCD_PEER_CRL_FILE", "/tls/pcrl.pem", "peer_crl_file", "/tls/pcrl.pem"),
    ("ETCD_PEER_AUTO_TLS", "1", "peer_auto_tls", True),
]


def test_web_concurrency_sets_workers_unless_etcd_workers_given():
    assert parse([], {"WEB_CONCURRENCY": "4"})[0].workers == 4
    assert parse([], {"WEB_CONCURRENCY": "4", "ETCD_WORKERS": "2"})[0].workers == 2
    assert parse(["--workers", "3"], {"WEB_CONCURRENCY": "4"})[0].workers == 3
    with pytest.raises(UsageError, match="WEB_CONCURRENCY"):
        parse([], {"WEB_CONCURRENCY": "zero"})


@pytest.mark.parametrize("argv, environ, named", [
    (["--workers", "3"], {"ETCD_WORKERS": "2"}, "--workers"),
    ([], {"ETCD_WORKERS": "2", "WEB_CONCURRENCY": "4"}, "ETCD_WORKERS"),
    ([], {"WEB_CONCURRENCY": "4"}, "WEB_CONCURRENCY"),
    ([], {}, "--workers"),
])
def test_messages_name_a_setting_as_it_was_given(argv, environ, named):
    assert parse(argv, environ)[0].given_as("workers") == named


def test_env_cases_cover_every_setting():
    assert sorted(c[0] for c in ENV_CASES) == sorted(s.env for s in SETTINGS)


@pytest.mark.parametrize("env,text,attr,expected", ENV_CASES, ids=[c[0] for c in ENV_CASES])
def test_each_env_var_is_read(env, text, attr, expected):
    s, notes = parse([], {env: text})
    assert getattr(s, attr) == expected
    assert s.sources[attr] == "env"
    infos = levels(notes, "info")
    assert len(infos) == 1 and env in infos[0] and text in infos[0]
    assert levels(notes, "warning") == []


def test_empty_env_var_is_ignored():
    s, notes = parse([], {"ETCD_PROXY": ""})
    assert s.proxy == "on" and s.sources["proxy"] == "default" and notes == []


def test_flag_beats_env_with_a_warning():
    s, notes = parse(["--proxy", "on", "--proxy-failure-wait=9"],
                     {"ETCD_PROXY": "readonly", "ETCD_PROXY_FAILURE_WAIT": "bogus"})
    assert s.proxy == "on" and s.proxy_failure_wait == 9
    assert s.sources["proxy"] == "flag"
    warnings = levels(notes, "warning")
    assert len(warnings) == 2
    assert any("ETCD_PROXY=" in w and "--proxy" in w for w in warnings)
    assert any("ETCD_PROXY_FAILURE_WAIT" in w for w in warnings)
    assert levels(notes, "info") == []


def test_unknown_etcd_env_var_warns():
    s, notes = parse([], {"ETCD_NO_SUCH_THING": "1", "OTHER": "x"})
    warnings = levels(notes, "warning")
    assert len(warnings) == 1 and "ETCD_NO_SUCH_THING" in warnings[0]
    assert s.proxy == "on"


@pytest.mark.parametrize("argv,attr", [
    (["--initial-cluster-token", "t"], "initial_cluster_token"),
    (["--initial-cluster-state", "existing"], "initial_cluster_state"),
    (["--advertise-client-urls", "http://127.0.0.1:2379"], "advertise_client_urls"),
    (["--initial-advertise-peer-urls", "http://127.0.0.1:2380"], "initial_advertise_peer_urls"),
    (["--listen-peer-urls", "http://127.0.0.1:2380"], "listen_peer_urls"),
    (["--enable-v2"], "enable_v2"),
    (["--enable-v2=true"], "enable_v2"),
    (["-enable-v2", "--proxy", "readonly"], "enable_v2"),
])
def test_member_only_flags_accepted_with_debug_note(argv, attr):
    s, notes = parse(argv, {})
    assert s.sources[attr] == "flag"
    debugs = levels(notes, "debug")
    assert len(debugs) == 1 and "--" + attr.replace("_", "-") in debugs[0]
    assert levels(notes, "warning") == []


def test_enable_v2_values():
    assert parse(["--enable-v2"], {})[0].enable_v2 is True
    assert parse(["--enable-v2=false"], {})[0].enable_v2 is False


# (argv, environ, text that must appear in the message)
BAD_INPUTS = [
    (["--proxy", "bogus"], {}, "--proxy"),
    (["--proxy", "off"], {}, "only runs as a proxy"),
    (["--proxy-failure-wait", "1.5"], {}, "--proxy-failure-wait"),
    (["--initial-cluster", "nonsense"], {}, "--initial-cluster"),
    (["--listen-client-urls", "http://127.0.0.1:2379/v2"], {}, "--listen-client-urls"),
    (["--listen-client-urls", "http://127.0.0.1"], {}, "--listen-client-urls"),
    (["--cipher-suites", "TLS_NO_SUCH_SUITE"], {}, "--cipher-suites"),
    ([], {"ETCD_CIPHER_SUITES": "RC4"}, "ETCD_CIPHER_SUITES"),
    ([], {"ETCD_PROXY_FAILURE_WAIT": "soon"}, "ETCD_PROXY_FAILURE_WAIT"),
    ([], {"ETCD_PROXY": "bogus"}, "ETCD_PROXY"),
    (["--cors", "http://a.example"], {}, "--cors"),  # etcd 3.4: no port, exit 2
    (["--cors", ""], {}, "--cors"),
    (["--cors", "http://a.example:80,*"], {}, "--cors"),
    (["--cors", "http://a.example:80/path"], {}, "--cors"),
    ([], {"ETCD_CORS": "ftp://a.example:21"}, "ETCD_CORS"),
    (["--listen-client-urls", "unix://"], {}, "--listen-client-urls"),
    (["--log-format", "xml"], {}, "--log-format"),
    (["--metrics", "none"], {}, "--metrics"),
]


@pytest.mark.parametrize("argv,environ,needle", BAD_INPUTS)
def test_bad_input_raises_usage_error_naming_the_flag(argv, environ, needle):
    with pytest.raises(UsageError) as info:
        parse(argv, environ)
    message = str(info.value)
    assert needle in message
    assert "\n" not in message


def test_proxy_off_message_names_the_flag():
    with pytest.raises(UsageError, match="--proxy"):
        parse(["--proxy", "off"], {})


def test_unknown_flag_is_a_usage_error():
    with pytest.raises(UsageError, match="--bogus-flag"):
        parse(["--bogus-flag"], {})


def test_readme_flag_table_is_fresh():
    path = os.path.join(REPO, "README.md")
    assert os.path.exists(path), "README.md is missing"
    with open(path, encoding="utf-8") as f:
        text = f.read()
    assert text.count("<!-- flags:start -->") == 1
    assert text.count("<!-- flags:end -->") == 1
    match = re.search(r"^<!-- flags:start -->\n(.*)^<!-- flags:end -->$", text, re.M | re.S)
    assert match, "markers must each be on their own line, start before end"
    assert match.group(1) == markdown_table(), \
        "README flag table is stale: regenerate with python -m geproxy.settings --markdown"


def test_markdown_table_has_a_row_per_setting():
    rows = markdown_table().splitlines()
    assert len(rows) == 2 + len(SETTINGS)
    for s in SETTINGS:
        assert any(r.startswith("| `--%s` | `%s` |" % (s.name, s.env)) for r in rows)


def test_transports_match_upstream():
    assert values.TRANSPORTS == tuple(geproxy.upstream.TRANSPORTS)


def test_listen_urls_keep_ipv6_brackets_and_unix_paths():
    urls = "http://[::1]:2379,unix:///tmp/geproxy.sock,unix://localhost:2380"
    s, _ = parse(["--listen-client-urls", urls], {})
    assert s.listen_client_urls == ("http://[::1]:2379", "unix:///tmp/geproxy.sock",
                                    "unix://localhost:2380")


@pytest.mark.parametrize("text,origins", [
    ("*", ("*",)),
    ("http://a.example:80", ("http://a.example:80",)),
    (" https://b.example:443 , unix://c:1 ", ("https://b.example:443", "unix://c:1")),
])
def test_cors_values_as_etcd(text, origins):
    assert parse(["--cors", text], {})[0].cors == origins
