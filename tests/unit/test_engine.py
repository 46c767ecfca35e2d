"""EngineClient against a scripted engine on a unix socket: version negotiation, bodies (sized,
chunked, empty), errors, broken connections, the attach upgrade and DOCKER_HOST."""

from __future__ import annotations

import gc
import json
import socket
import warnings
from pathlib import Path

import pytest

from sandbox.engine import (
    MAX_API,
    MIN_API,
    EngineClient,
    EngineError,
    EngineUnreachable,
    container_path,
    image_path,
)
from tests.engine_stub import HANG_UP, EngineStub, Reply, error, serve, upgrade
from tests.engine_stub import engine_stub as engine_stub  # the fixture

JSON = "application/json"

# --- API version negotiation ------------------------------------------------------------------


@pytest.mark.parametrize(("server", "spoken"), [("1.41", "1.41"), ("1.44", "1.44")])
def test_requests_use_the_version_the_engine_speaks(
    tmp_path: Path, server: str, spoken: str
) -> None:
    with serve(tmp_path, api_version=server) as stub:
        stub.route("GET", "/version", Reply(200, {"ApiVersion": server}))
        client = stub.client()
        assert client.request("GET", "/version") == {"ApiVersion": server}
        assert client.api_version == spoken
        assert stub.last("GET", "/version").target == f"/v{spoken}/version"


def test_a_newer_engine_is_spoken_to_at_the_newest_checked_version(tmp_path: Path) -> None:
    with serve(tmp_path, api_version="1.50") as stub:
        stub.route("GET", "/info", Reply(200, {}))
        stub.client().request("GET", "/info")
        assert stub.last("GET", "/info").target == f"/v{MAX_API[0]}.{MAX_API[1]}/info"


def test_an_engine_older_than_the_minimum_is_unreachable_naming_the_minimum(
    tmp_path: Path,
) -> None:
    with serve(tmp_path, api_version="1.40") as stub:
        with pytest.raises(EngineUnreachable, match=r"speaks API 1\.40") as caught:
            stub.client().request("GET", "/info")
        assert f"{MIN_API[0]}.{MIN_API[1]} or newer" in str(caught.value)
        assert stub.calls[("GET", "/info")] == 0  # nothing is asked of a too-old engine


def test_the_version_is_negotiated_once_per_client(engine_stub: EngineStub) -> None:
    engine_stub.route("GET", "/info", Reply(200, {}))
    client = engine_stub.client()
    for _ in range(3):
        client.request("GET", "/info")
    assert engine_stub.calls[("GET", "/_ping")] == 1
    assert engine_stub.last("GET", "/_ping").target == "/_ping"  # unversioned


def test_a_failed_ping_means_the_engine_is_unreachable(engine_stub: EngineStub) -> None:
    engine_stub.route("GET", "/_ping", error(500))
    with pytest.raises(EngineUnreachable, match="answered /_ping with 500"):
        engine_stub.client().request("GET", "/info")


# --- bodies -----------------------------------------------------------------------------------


def test_a_json_body_with_content_length_is_decoded(engine_stub: EngineStub) -> None:
    answer = {"Id": "c1", "Warnings": [], "Labels": {"k": "v é"}}
    engine_stub.route("GET", "/containers/c1/json", Reply(200, answer))
    assert engine_stub.client().request("GET", "/containers/c1/json") == answer


def test_a_chunked_body_is_decoded(engine_stub: EngineStub) -> None:
    pieces = (b'[{"Id": "c1", ', b'"Names": ["/a"]}, ', b'{"Id": "c2", "Names": []}', b"]")
    engine_stub.route("GET", "/containers/json", Reply(200, chunks=pieces))
    assert engine_stub.client().request("GET", "/containers/json") == [
        {"Id": "c1", "Names": ["/a"]},
        {"Id": "c2", "Names": []},
    ]


def test_a_chunked_body_larger_than_one_read_is_decoded(engine_stub: EngineStub) -> None:
    big = [{"Id": f"{i:064x}", "Labels": {"io.sandbox.run_id": "r" * 40}} for i in range(4000)]
    text = json.dumps(big).encode()
    pieces = tuple(text[i : i + 50_000] for i in range(0, len(text), 50_000))
    assert len(pieces) > 5
    engine_stub.route("GET", "/containers/json", Reply(200, chunks=pieces))
    assert engine_stub.client().request("GET", "/containers/json") == big


@pytest.mark.parametrize("reply", [Reply(204), Reply(200), Reply(200, chunks=())])
def test_an_empty_body_is_none(engine_stub: EngineStub, reply: Reply) -> None:
    engine_stub.route("POST", "/containers/c1/start", reply)
    assert engine_stub.client().request("POST", "/containers/c1/start") is None


def test_a_text_body_is_returned_as_text(engine_stub: EngineStub) -> None:
    engine_stub.route("GET", "/containers/c1/logs", Reply(200, b"plain words\n"))
    assert engine_stub.client().request("GET", "/containers/c1/logs") == "plain words\n"


# --- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (404, "No such container: c1"),
        (409, 'Conflict. The container name "/x" is already in use'),
        (500, "driver failed programming external connectivity"),
    ],
)
def test_an_error_status_raises_engine_error_with_the_engines_message(
    engine_stub: EngineStub, status: int, message: str
) -> None:
    engine_stub.route("DELETE", "/containers/c1", error(status, message))
    with pytest.raises(EngineError) as caught:
        engine_stub.client().request("DELETE", "/containers/c1", params={"force": "1"})
    assert caught.value.status == status
    assert caught.value.message == message
    assert caught.value.method == "DELETE"
    assert caught.value.path == "/containers/c1"
    assert str(caught.value) == f"{status} {message}"


def test_a_chunked_error_body_gives_the_message(engine_stub: EngineStub) -> None:
    pieces = (b'{"message": "No such ', b'image: x"}')
    engine_stub.route("GET", "/images/x/json", Reply(404, chunks=pieces))
    with pytest.raises(EngineError) as caught:
        engine_stub.client().request("GET", "/images/x/json")
    assert (caught.value.status, caught.value.message) == (404, "No such image: x")


@pytest.mark.parametrize("body", [b"page not found\n", b'["not", "an object"]'])
def test_a_non_json_error_body_is_the_message(engine_stub: EngineStub, body: bytes) -> None:
    engine_stub.route("GET", "/info", Reply(502, body))
    with pytest.raises(EngineError) as caught:
        engine_stub.client().request("GET", "/info")
    assert caught.value.status == 502
    assert caught.value.message == body.decode().strip()


# --- unreachable engines and broken connections -----------------------------------------------


def test_a_missing_socket_path_is_unreachable_naming_the_address(tmp_path: Path) -> None:
    url = f"unix://{tmp_path}/no-such.sock"
    with pytest.raises(EngineUnreachable, match="cannot connect") as caught:
        EngineClient(url, timeout_s=5).request("GET", "/info")
    assert url in str(caught.value)


def test_a_refused_connection_is_unreachable_naming_the_address(tmp_path: Path) -> None:
    path = tmp_path / "refusing.sock"
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as bound:
        bound.bind(str(path))  # bound, never listening: connect() is refused
        with pytest.raises(EngineUnreachable, match="refused") as caught:
            EngineClient(f"unix://{path}", timeout_s=5).request("GET", "/info")
    assert f"unix://{path}" in str(caught.value)


def test_a_failed_connect_leaves_no_socket_open(tmp_path: Path) -> None:
    client = EngineClient(f"unix://{tmp_path}/no-such.sock", timeout_s=5)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(EngineUnreachable):
            client.request("GET", "/info")
        gc.collect()
    assert [str(w.message) for w in caught if issubclass(w.category, ResourceWarning)] == []


def test_a_connection_closed_before_any_header_is_unreachable(engine_stub: EngineStub) -> None:
    engine_stub.route("POST", "/containers/create", HANG_UP)
    with pytest.raises(EngineUnreachable, match="closed the connection during POST"):
        engine_stub.client().request("POST", "/containers/create", body={})


def test_an_answer_that_is_not_http_is_unreachable(engine_stub: EngineStub) -> None:
    engine_stub.route("GET", "/info", Reply(raw=b"SSH-2.0-OpenSSH_9.6\r\n\r\n"))
    with pytest.raises(EngineUnreachable, match="malformed answer: 'SSH-2.0-OpenSSH_9.6'"):
        engine_stub.client().request("GET", "/info")


def test_a_body_cut_short_of_its_length_is_unreachable(engine_stub: EngineStub) -> None:
    cut = Reply(200, b'[{"Id": "c1"}, {"Id": "c', headers=(("Content-Type", JSON),), length=4096)
    engine_stub.route("GET", "/containers/json", cut)
    with pytest.raises(EngineUnreachable):
        engine_stub.client().request("GET", "/containers/json")


# --- the attach upgrade -----------------------------------------------------------------------

ATTACH = container_path("c1", "/attach")
ATTACH_PARAMS = {"stdin": 1, "stdout": 1, "stderr": 1, "stream": 1, "logs": 0}


def test_hijack_returns_the_socket_and_the_bytes_that_came_with_the_head(
    engine_stub: EngineStub,
) -> None:
    frame = b"\x01\x00\x00\x00\x00\x00\x00\x05early"
    engine_stub.route("POST", ATTACH, upgrade(early=frame, later=b"later bytes"))
    sock, early = engine_stub.client().hijack(ATTACH, ATTACH_PARAMS)
    with sock:
        assert early == frame
        sock.sendall(b"stdin for the tool")
        sock.shutdown(socket.SHUT_WR)
        rest = b""
        while data := sock.recv(65536):
            rest += data
    assert rest == b"later bytes"
    sent = engine_stub.last("POST", ATTACH)
    assert sent.headers["connection"] == "Upgrade"
    assert sent.headers["upgrade"] == "tcp"
    assert sent.target == "/v1.41/containers/c1/attach?stdin=1&stdout=1&stderr=1&stream=1&logs=0"
    assert sent.stream_in == b"stdin for the tool"


def test_hijack_with_nothing_early_returns_empty_bytes(engine_stub: EngineStub) -> None:
    engine_stub.route("POST", ATTACH, upgrade(later=b"x"))
    sock, early = engine_stub.client().hijack(ATTACH, ATTACH_PARAMS)
    with sock:
        assert early == b""
        sock.shutdown(socket.SHUT_WR)
        assert sock.recv(16) == b"x"


def test_hijack_with_an_error_answer_raises_engine_error(engine_stub: EngineStub) -> None:
    engine_stub.route("POST", ATTACH, error(404, "No such container: c1"))
    with pytest.raises(EngineError) as caught:
        engine_stub.client().hijack(ATTACH, ATTACH_PARAMS)
    assert (caught.value.status, caught.value.message) == (404, "No such container: c1")
    assert (caught.value.method, caught.value.path) == ("POST", ATTACH)


def test_hijack_closed_before_the_head_is_unreachable(engine_stub: EngineStub) -> None:
    engine_stub.route("POST", ATTACH, HANG_UP)
    with pytest.raises(EngineUnreachable, match="closed the connection during POST"):
        engine_stub.client().hijack(ATTACH, ATTACH_PARAMS)


# --- DOCKER_HOST ------------------------------------------------------------------------------


def test_docker_host_unix_url_is_used(
    engine_stub: EngineStub, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DOCKER_HOST", engine_stub.url)
    engine_stub.route("GET", "/info", Reply(200, {"ok": True}))
    client = EngineClient(timeout_s=5)
    assert client.base_url == engine_stub.url
    assert client.request("GET", "/info") == {"ok": True}


def test_docker_host_tcp_url_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_TLS_VERIFY", raising=False)
    with serve(tmp_path, tcp=True) as stub:
        monkeypatch.setenv("DOCKER_HOST", stub.url)
        stub.route("GET", "/info", Reply(200, {"ok": True}))
        assert stub.url.startswith("tcp://127.0.0.1:")
        assert EngineClient(timeout_s=5).request("GET", "/info") == {"ok": True}


def test_the_default_address_is_the_local_socket(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DOCKER_HOST", raising=False)
    assert EngineClient().base_url == "unix:///var/run/docker.sock"


@pytest.mark.parametrize("url", ["ssh://me@build-host", "npipe:////./pipe/docker_engine"])
def test_other_docker_hosts_are_refused_with_how_to_forward_the_socket(url: str) -> None:
    with pytest.raises(EngineUnreachable) as caught:
        EngineClient(url)
    message = str(caught.value)
    assert url in message
    assert "ssh -NL /tmp/docker.sock:/var/run/docker.sock" in message
    assert "DOCKER_HOST=unix:///tmp/docker.sock" in message


# --- what is sent -----------------------------------------------------------------------------


def test_the_body_is_json_and_the_query_is_url_encoded(engine_stub: EngineStub) -> None:
    engine_stub.route("POST", "/containers/create", Reply(201, {"Id": "c1"}))
    body = {"Image": "sandbox/testkit", "Labels": {"io.sandbox.run_id": "r1", "note": "é ü"}}
    params = {"name": "sbx r1/&x=y", "filters": json.dumps({"label": ["a=b"]})}
    made = engine_stub.client().request("POST", "/containers/create", params=params, body=body)
    assert made == {"Id": "c1"}
    sent = engine_stub.last("POST", "/containers/create")
    assert sent.headers["content-type"] == "application/json"
    assert int(sent.headers["content-length"]) == len(sent.body)
    assert json.loads(sent.body) == body
    assert {k: v for k, (v,) in sent.query.items()} == params
    # The space, slash, & and = inside values are escaped: no value leaks into another field.
    assert sent.raw_query == (
        "name=sbx+r1%2F%26x%3Dy&filters=%7B%22label%22%3A+%5B%22a%3Db%22%5D%7D"
    )


def test_a_request_without_a_body_sends_no_content_type(engine_stub: EngineStub) -> None:
    engine_stub.route("POST", "/containers/c1/start", Reply(204))
    engine_stub.client().request("POST", "/containers/c1/start")
    sent = engine_stub.last("POST", "/containers/c1/start")
    assert "content-type" not in sent.headers
    assert sent.headers["content-length"] == "0"
    assert sent.headers["connection"] == "close"
    assert sent.target == "/v1.41/containers/c1/start"  # no empty "?"


def test_container_path_quotes_the_id(engine_stub: EngineStub) -> None:
    assert container_path("a/b", "/json") == "/containers/a%2Fb/json"
    assert container_path("c1") == "/containers/c1"
    assert container_path("../x") == "/containers/..%2Fx"
    engine_stub.route("GET", "/containers/a%2Fb/json", Reply(200, {"Id": "a/b"}))
    assert engine_stub.client().request("GET", container_path("a/b", "/json")) == {"Id": "a/b"}


def test_a_chunked_body_cut_short_is_unreachable(engine_stub: EngineStub) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n"
    engine_stub.route("GET", "/containers/json", Reply(raw=head + b'\r\n20\r\n[{"Id": '))
    with pytest.raises(EngineUnreachable, match="cut short"):
        engine_stub.client().request("GET", "/containers/json")


def test_hijack_error_whose_body_trails_the_head_gives_the_message(
    engine_stub: EngineStub,
) -> None:
    message = b'{"message": "No such container: c1"}'
    engine_stub.route(
        "POST", ATTACH, Reply(404, headers=(("Content-Type", JSON),), chunks=(message,))
    )
    with pytest.raises(EngineError) as caught:
        engine_stub.client().hijack(ATTACH, ATTACH_PARAMS)
    assert (caught.value.status, caught.value.message) == (404, "No such container: c1")


@pytest.mark.parametrize(("tls", "port"), [("", 2375), ("1", 2376)])
def test_a_tcp_host_without_a_port_gets_dockers_conventional_one(
    monkeypatch: pytest.MonkeyPatch, tls: str, port: int
) -> None:
    monkeypatch.setenv("DOCKER_TLS_VERIFY", tls)
    client = EngineClient("tcp://engine.example")
    assert client._address == ("engine.example", port)  # noqa: SLF001 - where it connects


def test_a_json_answer_that_does_not_parse_is_unreachable_not_a_crash(
    engine_stub: EngineStub,
) -> None:
    head = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n"  # ends at close
    engine_stub.route("GET", "/info", Reply(raw=head + b'{"ID": "abc", "Na'))
    with pytest.raises(EngineUnreachable, match="is not JSON"):
        engine_stub.client().request("GET", "/info")


def test_image_path_keeps_the_repository_slash_and_tag_colon() -> None:
    assert image_path("sandbox/dbt:1.0", "/json") == "/images/sandbox/dbt:1.0/json"
    assert image_path("a b?c") == "/images/a%20b%3Fc"
