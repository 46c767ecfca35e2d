"""Hostile outputs: links, FIFOs, sockets, device nodes, setuid bits and cross-mount hard links
left in /output are never followed or published."""

from __future__ import annotations

import os
import stat

import pytest

from .conftest import RunResult, SecurityEnv, assert_exit, assert_host_invariants

pytestmark = pytest.mark.docker


def test_link_fifo_socket_and_setuid_tricks_are_refused(security_env: SecurityEnv) -> None:
    result = security_env.result("output_link_tricks")
    exit_frame = assert_exit(result, "ok", 0)
    inside = result.result
    assert inside["hardlink_from_tmp"] == "EXDEV"
    assert inside["hardlink_from_input"] == "EXDEV"
    assert inside["write_input"] in ("EROFS", "EACCES")
    assert inside["mknod"] == "EPERM"
    published = {o["path"] for o in exit_frame["outputs"]}
    assert published == {"ok.txt", "setuid.sh", "evil\nname.txt"}
    refused = {r["path"]: r["reason"] for r in exit_frame["refused"]}
    expected = {
        "fifo": "FIFO",
        "loop-a": "symbolic link",
        "loop-b": "symbolic link",
        "root-link": "symbolic link",
        "sock": "socket",
        "sub/shadow-link": "symbolic link",
        "up-link": "symbolic link",
    }
    if security_env.runtime == "runsc":
        # gVisor keeps FIFOs and sockets inside its own kernel: they never reach the host
        # directory at all, so there is nothing to refuse.
        del expected["fifo"], expected["sock"]
    assert refused == expected
    out = result.output_dir
    assert out is not None
    for path in out.rglob("*"):
        st = path.lstat()
        assert not stat.S_ISLNK(st.st_mode), path
        assert st.st_uid == os.geteuid(), path
        assert not st.st_mode & (stat.S_ISUID | stat.S_ISGID), path
    assert_host_invariants(security_env, result)


def test_symlink_fifo_and_in_tree_hardlink(security_env: SecurityEnv) -> None:
    result = security_env.result("output_links_fifo_hardlink")
    exit_frame = assert_exit(result, "ok", 0)
    assert {o["path"] for o in exit_frame["outputs"]} == {
        "data/a.csv",
        "report.txt",
        "report-hardlink.txt",
    }
    expected = {"passwd-link": "symbolic link", "pipe": "FIFO"}
    if security_env.runtime == "runsc":
        del expected["pipe"]  # the FIFO stays inside gVisor (see above)
    assert {r["path"]: r["reason"] for r in exit_frame["refused"]} == expected
    assert_host_invariants(security_env, result)


def assert_nothing_published(security_env: SecurityEnv, case: str, named: str) -> RunResult:
    """The case ended resource_limit, its error naming ``named``, with no output directory."""
    result = security_env.result(case)
    exit_frame = assert_exit(result, "resource_limit", 5)
    assert named in result.errors[-1]["message"]
    assert exit_frame["outputs"] == []
    assert result.output_dir is not None
    assert not result.output_dir.exists()
    assert_host_invariants(security_env, result)
    return result


def test_a_fill_hidden_past_path_max_is_stopped_and_nothing_published(
    security_env: SecurityEnv,
) -> None:
    # The watchdog's scan once skipped what it could not open by name: 210 MiB under an 8 MiB
    # limit, and the run ended ok.
    assert_nothing_published(security_env, "output_fill_past_path_max", "output directory")


def test_a_path_too_long_is_refused_not_an_infrastructure_error(
    security_env: SecurityEnv,
) -> None:
    result = security_env.result("output_path_too_long")
    exit_frame = assert_exit(result, "ok", 0)
    assert [o["path"] for o in exit_frame["outputs"]] == ["top.txt"]
    [refused] = exit_frame["refused"]
    assert refused["reason"] == "path longer than 1024 bytes"
    assert_host_invariants(security_env, result)


def test_outputs_too_many_to_list_in_one_frame_are_not_published(
    security_env: SecurityEnv,
) -> None:
    result = assert_nothing_published(security_env, "output_listing_over_frame_limit", "frame_kb")
    assert all(len(line) + 1 <= 1024 * 1024 for line in result.stdout.splitlines())
