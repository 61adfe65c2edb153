"""Issue 14, HTTPS and the public board, against the real ``gerbang-gateway run``: the dashboard
over TLS (a CA and server certificate made here with the project's own PKI), ``Secure``
cookies with TLS or ``cookie_secure`` behind a proxy, the lock-out counting the client a
trusted proxy names, and the public board's own listener that serves the board and nothing
else, with its live streams bounded in total and per client address."""

from __future__ import annotations

import ssl
import threading
import time
from pathlib import Path

import httpx
import pytest
from gatewayproc import PASSWORD, Gateway, login

from gateway.config import load_gateway_config
from gerbang.broker import free_port
from gerbang.config import ConfigError

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def certs(tmp_path):
    from provisioning.pki import create_centre_ca, issue_server_cert

    ca = create_centre_ca("c1", tmp_path / "ca")
    server = issue_server_cert(ca, ["127.0.0.1", "localhost"], tmp_path / "tls",
                               name="dashboard")
    return (ssl.create_default_context(cafile=str(ca.cert_path)), server.cert_path,
            server.key_path)


@pytest.fixture
def run_gateway(tmp_path, mosquitto):
    started: list[Gateway] = []

    def make(verify: str | bool = True, **gateway: object) -> Gateway:
        gw = Gateway(tmp_path, mosquitto.port, verify=verify, **gateway).start()
        started.append(gw)
        return gw

    yield make
    for gw in started:
        gw.stop()


def form_login(client: httpx.Client, base: str) -> httpx.Response:
    form = client.get(f"{base}/login")
    csrf = form.text.split('name="csrf" value="', 1)[1].split('"', 1)[0]
    return client.post(f"{base}/login", data={"username": "manager1", "password": PASSWORD,
                                              "next": "/", "csrf": csrf})


def test_the_dashboard_over_https_sets_secure_cookies(run_gateway, certs):
    ca, cert, key = certs
    gw = run_gateway(verify=ca, tls_cert_file=str(cert), tls_key_file=str(key))
    assert gw.base.startswith("https://")
    with httpx.Client(verify=ca) as browser:
        done = form_login(browser, gw.base)
        assert done.status_code == 303, done.text
        cookie = done.headers["set-cookie"]
        assert "gerbang_session=" in cookie and "secure" in cookie.lower()
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        assert browser.get(f"{gw.base}/").status_code == 200
    api = login(gw.base, "manager1", PASSWORD, verify=ca)
    assert api.status_code == 200 and "secure" in api.headers["set-cookie"].lower()
    # no plain HTTP on that port, and a client that does not trust the centre CA refuses it
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"http://127.0.0.1:{gw.port}/healthz", timeout=5)
    with pytest.raises(httpx.ConnectError, match="CERTIFICATE_VERIFY_FAILED"):
        httpx.get(f"{gw.base}/healthz", timeout=5, verify=ssl.create_default_context())


def test_tls_settings_are_checked_at_start(tmp_path, certs):
    _, cert, key = certs
    with pytest.raises(ConfigError, match="tls_key_file"):
        load_gateway_config(None, {"gateway": {"tls_cert_file": str(cert)}})
    with pytest.raises(ConfigError, match=r"tls_cert_file: .* does not exist"):
        load_gateway_config(None, {"gateway": {"tls_cert_file": str(tmp_path / "nope.pem"),
                                               "tls_key_file": str(key)}})
    other = tmp_path / "other.key"
    other.write_bytes(key.read_bytes().replace(b"A", b"B", 5))
    with pytest.raises(ConfigError, match="tls_key_file"):
        load_gateway_config(None, {"gateway": {"tls_cert_file": str(cert),
                                               "tls_key_file": str(other)}})
    with pytest.raises(ConfigError, match="public_http_port"):
        load_gateway_config(None, {"gateway": {"http_port": 8080, "public_http_port": 8080}})


def test_behind_a_proxy_cookies_are_secure_and_lockouts_count_the_real_client(run_gateway):
    gw = run_gateway(cookie_secure=True, trusted_proxies=["127.0.0.1"])
    api = login(gw.base, "manager1", PASSWORD)
    assert "secure" in api.headers["set-cookie"].lower()
    # the proxy (127.0.0.1) names the client; 20 failures lock that client, not the proxy
    for i in range(20):
        r = httpx.post(f"{gw.base}/api/login", json={"username": f"u{i}", "password": "wrong!"},
                       headers={"X-Forwarded-For": "203.0.113.7"}, timeout=30)
        assert r.status_code == 401
    blocked = httpx.post(f"{gw.base}/api/login", headers={"X-Forwarded-For": "203.0.113.7"},
                         json={"username": "manager1", "password": PASSWORD}, timeout=30)
    assert blocked.status_code == 429
    assert httpx.post(f"{gw.base}/api/login", headers={"X-Forwarded-For": "203.0.113.8"},
                      json={"username": "manager1", "password": PASSWORD}).status_code == 200
    # an address that is not a trusted proxy cannot name another client
    spoofed = [httpx.Client(transport=httpx.HTTPTransport(local_address="127.0.0.2")).post(
        f"{gw.base}/api/login", json={"username": f"v{i}", "password": "wrong!"},
        headers={"X-Forwarded-For": f"198.51.100.{i}"}, timeout=30).status_code
        for i in range(21)]
    assert spoofed == [401] * 20 + [429]


def open_stream(url: str, source: str, results: list, stop: threading.Event) -> None:
    """Hold a live stream from ``source`` until ``stop``; record its status."""
    transport = httpx.HTTPTransport(local_address=source)
    try:
        with httpx.Client(transport=transport, timeout=10) as client, \
                client.stream("GET", url) as response:
            results.append(response.status_code)
            if response.status_code == 200:
                for _ in response.iter_lines():
                    if stop.is_set():
                        break
    except httpx.HTTPError as exc:
        results.append(repr(exc))


def test_the_public_listener_serves_the_board_and_nothing_else(run_gateway):
    public_port = free_port()
    gw = run_gateway(public_http_port=public_port, public_stream_max=6,
                     public_stream_per_address=2)
    public = f"http://127.0.0.1:{public_port}"
    manager = login(gw.base, "manager1", PASSWORD).json()["token"]
    cookie = {"gerbang_session": manager}
    assert httpx.get(f"{public}/api/public/sessions/S1").json()["session"]["name"] == "SKD"
    board = httpx.get(f"{public}/board/S1", cookies=cookie)
    assert board.status_code == 200 and 'data-live="/live/board?session=S1"' in board.text
    assert "manager1" not in board.text  # a dashboard cookie means nothing there
    assert httpx.get(f"{public}/static/gerbang.css").status_code == 200
    headers = {"Authorization": f"Bearer {manager}"}
    for path in ("/", "/login", "/api/sessions", "/api/me", "/openapi.json", "/docs",
                 "/healthz", "/devices", "/sessions/S1", "/live/overview", "/api/stream",
                 "/api/audit"):
        assert httpx.get(f"{public}{path}", cookies=cookie, headers=headers
                         ).status_code == 404, path
    assert httpx.post(f"{public}/api/login", json={"username": "manager1",
                                                   "password": PASSWORD}).status_code == 404
    # the dashboard's listener still answers its own routes (and keeps 127.0.0.1)
    assert httpx.get(f"{gw.base}/api/sessions", headers=headers).status_code == 200
    # live streams: at most 2 from one address, 6 in all
    url = f"{public}/live/board?session=S1"
    stop, results = threading.Event(), []
    threads = [threading.Thread(target=open_stream, args=(url, "127.0.0.20", results, stop))
               for _ in range(3)]
    threads += [threading.Thread(target=open_stream,
                                 args=(url, f"127.0.0.{21 + i}", results, stop))
                for i in range(5)]
    for t in threads:
        t.start()
        time.sleep(0.2)
    time.sleep(1.0)
    counts = {s: results.count(s) for s in set(results)}
    print(f"\npublic live streams: {counts}")
    assert counts == {200: 6, 429: 1, 503: 1}, counts
    stop.set()
    for t in threads:
        t.join(timeout=20)
    # closed streams are given back
    def can_open() -> bool:
        again: list = []
        done = threading.Event()
        done.set()
        open_stream(url, "127.0.0.20", again, done)
        return again == [200]
    deadline = time.monotonic() + 20
    while not can_open() and time.monotonic() < deadline:
        time.sleep(0.5)
    assert can_open()


def test_the_example_config_keeps_the_dashboard_off_the_network():
    config = load_gateway_config(REPO / "examples" / "gateway.toml").gateway
    assert config.http_host == "127.0.0.1"
    assert config.public_http_port is not None and config.public_http_port != config.http_port
    assert load_gateway_config(None).gateway.http_host == "127.0.0.1"
    assert load_gateway_config(None).gateway.public_http_port is None
