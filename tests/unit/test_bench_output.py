"""The bench's serve client accounts a run's event bytes without parsing each line; whatever
way the server's output is cut into reads, every event byte goes to its own run."""

from __future__ import annotations

import json

import pytest

from bench.drivers import ServeOutput, _Pending

RUN_A = "a" * 32
RUN_B = "b" * 32


def _assigned(rpc_id: int, run_id: str) -> bytes:
    params = {"id": rpc_id, "run_id": run_id}
    message = {"jsonrpc": "2.0", "method": "run.assigned", "params": params}
    return json.dumps(message, separators=(",", ":")).encode()


def _event(run_id: str, type_: str, body: str) -> bytes:
    frame = f'{{"v":1,"run_id":"{run_id}","seq":1,"ts":"t","type":"{type_}",'
    frame += f'"payload":{{"rows":"{body}"}}}}'
    return b'{"jsonrpc":"2.0","method":"event","params":' + frame.encode() + b"}"


def _answer(rpc_id: int, run_id: str) -> bytes:
    result = {"run_id": run_id, "status": "ok"}
    message = {"jsonrpc": "2.0", "id": rpc_id, "result": result}
    return json.dumps(message, separators=(",", ":")).encode()


def _lines(*parts: bytes) -> bytes:
    return b"".join(part + b"\n" for part in parts)


def _feed(output: ServeOutput, data: bytes, chunk: int) -> None:
    for at in range(0, len(data), chunk):
        output.feed(data[at : at + chunk])


@pytest.mark.parametrize("chunk", [1, 7, 100, 4096, 1 << 20])
def test_one_run_gets_all_its_event_bytes_however_reads_are_cut(chunk: int) -> None:
    output = ServeOutput()
    output.pending[1] = pending = _Pending()
    events = [_event(RUN_A, "start", ""), *(_event(RUN_A, "data", "x" * 500) for _ in range(20))]
    data = _lines(_assigned(1, RUN_A), *events, _answer(1, RUN_A))

    _feed(output, data, chunk)

    assert pending.done.is_set()
    assert pending.result == {"run_id": RUN_A, "status": "ok"}
    assert pending.bytes == sum(len(e) + 1 for e in events)
    assert pending.first_data > 0


@pytest.mark.parametrize("chunk", [1, 13, 1 << 20])
def test_interleaved_runs_each_get_their_own_bytes(chunk: int) -> None:
    output = ServeOutput()
    output.pending[1] = first = _Pending()
    output.pending[2] = second = _Pending()
    a_events = [_event(RUN_A, "data", "x" * 300) for _ in range(5)]
    b_events = [_event(RUN_B, "log", "y" * 40) for _ in range(3)]
    data = _lines(
        _assigned(1, RUN_A),
        a_events[0],
        _assigned(2, RUN_B),
        *[e for pair in zip(a_events[1:], b_events, strict=False) for e in pair],
        _answer(2, RUN_B),
        *a_events[4:],
        _answer(1, RUN_A),
    )

    _feed(output, data, chunk)

    assert first.bytes == sum(len(e) + 1 for e in a_events)
    assert second.bytes == sum(len(e) + 1 for e in b_events)
    assert first.first_data > 0
    assert second.first_data == 0  # only log frames
    assert first.done.is_set()
    assert second.done.is_set()


def test_events_after_a_run_is_answered_go_to_the_next_sole_run() -> None:
    output = ServeOutput()
    output.pending[1] = first = _Pending()
    output.pending[2] = second = _Pending()
    output.feed(_lines(_assigned(1, RUN_A), _event(RUN_A, "data", "x"), _answer(1, RUN_A)))
    later = _event(RUN_B, "data", "z" * 100)
    output.feed(_lines(_assigned(2, RUN_B)))
    output.feed(_lines(later, later))

    assert first.bytes == len(_event(RUN_A, "data", "x")) + 1
    assert second.bytes == 2 * (len(later) + 1)
