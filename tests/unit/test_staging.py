"""Host-side output staging: what a script leaves is listed, refused or published, and the
private directories beside the output directory cannot be someone else's."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from sandbox import staging
from sandbox.errors import InvalidRequest, ResourceLimit

LISTING = 16 << 20


@pytest.fixture
def stage(tmp_path: Path) -> staging.OutputStaging:
    return staging.prepare_output(tmp_path / "out", "run1")


def test_a_name_that_is_not_utf8_is_refused_not_a_crash(stage: staging.OutputStaging) -> None:
    # A script can make such names; frames and the audit log are UTF-8 (the run once ended
    # with a traceback and no exit frame).
    root = os.fsencode(stage.staging)
    Path(os.fsdecode(root + b"/bad\xff.txt")).write_text("x")
    Path(os.fsdecode(root + b"/dir\xfe")).mkdir()
    Path(os.fsdecode(root + b"/dir\xfe/inner.txt")).write_text("y")
    (stage.staging / "good.txt").write_text("ok")
    outputs, refused = staging.publish(stage, 1 << 20, max_listing_bytes=LISTING)
    assert [o["path"] for o in outputs] == ["good.txt"]
    assert refused == [
        {"path": "bad\ufffd.txt", "reason": "name is not valid UTF-8"},
        {"path": "dir\ufffd", "reason": "name is not valid UTF-8"},
    ]
    assert [p.name for p in stage.output_dir.iterdir()] == ["good.txt"]


def test_entries_nested_too_deep_are_refused_not_dropped(stage: staging.OutputStaging) -> None:
    deep = stage.staging.joinpath(*["d"] * (staging.MAX_DEPTH + 6))
    deep.mkdir(parents=True)
    (deep / "bottom.txt").write_text("x")
    (stage.staging / "top.txt").write_text("y")
    outputs, refused = staging.publish(stage, 1 << 20, max_listing_bytes=LISTING)
    assert [o["path"] for o in outputs] == ["top.txt"]
    too_deep = "/".join(["d"] * (staging.MAX_DEPTH + 1))
    assert refused == [
        {"path": too_deep, "reason": f"directory nested more than {staging.MAX_DEPTH} levels deep"}
    ]


@pytest.mark.parametrize("mode", [0o777, 0o750, 0o705])
def test_a_staging_root_others_can_enter_is_refused(tmp_path: Path, mode: int) -> None:
    # In a shared directory such as /tmp another user could pre-create it and then read or
    # swap what a run publishes (as root: into any directory they like).
    root = tmp_path / staging.STAGING_DIRNAME
    root.mkdir()
    root.chmod(mode)
    with pytest.raises(InvalidRequest, match="not a private directory") as caught:
        staging.prepare_output(tmp_path / "out", "run1")
    assert caught.value.details["key"] == "output_dir"
    assert list(root.iterdir()) == []


def test_a_staging_root_that_is_a_link_is_refused(tmp_path: Path) -> None:
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir(mode=0o700)
    (tmp_path / staging.STAGING_DIRNAME).symlink_to(elsewhere)
    with pytest.raises(InvalidRequest, match="not a private directory"):
        staging.prepare_output(tmp_path / "out", "run1")
    assert list(elsewhere.iterdir()) == []


def test_a_staging_root_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / staging.STAGING_DIRNAME).mkdir(mode=0o700)
    monkeypatch.setattr(staging.os, "geteuid", lambda: tmp_path.stat().st_uid + 1)
    with pytest.raises(InvalidRequest, match="owner uid"):
        staging.prepare_output(tmp_path / "out", "run1")


def test_failed_outputs_are_not_set_aside_into_someone_elses_directory(
    stage: staging.OutputStaging,
) -> None:
    (stage.staging / "half.txt").write_text("x")
    failed = stage.output_dir.parent / staging.FAILED_DIRNAME
    failed.mkdir()
    failed.chmod(0o777)
    with pytest.raises(InvalidRequest, match="not a private directory"):
        staging.set_aside(stage)
    assert list(failed.iterdir()) == []


def test_a_staging_tree_left_behind_after_publishing_does_not_undo_the_publish(
    stage: staging.OutputStaging, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A non-root coordinator cannot empty directories the container's user made: the outputs
    # are published all the same (the run once reported infrastructure_error here).
    (stage.staging / "a.csv").write_text("x,y\n")

    def cannot(_stage: staging.OutputStaging) -> None:
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(staging, "discard", cannot)
    outputs, _ = staging.publish(stage, 1 << 20, max_listing_bytes=LISTING)
    assert [o["path"] for o in outputs] == ["a.csv"]
    assert (stage.output_dir / "a.csv").read_text() == "x,y\n"


def test_an_output_dir_under_a_file_is_an_invalid_request(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(InvalidRequest, match="is not a directory"):
        staging.check_output_dir(str(tmp_path / "afile" / "sub" / "out"))


def test_an_output_dir_that_is_a_link_is_refused_as_a_link(tmp_path: Path) -> None:
    # A link to an empty directory was refused as "exists and is not a directory": `ls` shows
    # a directory, and the message neither said what was wrong nor how to fix it.
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(InvalidRequest, match="is a symbolic link") as refused:
        staging.check_output_dir(str(tmp_path / "link"))
    assert refused.value.fix is not None
    assert "real path" in refused.value.fix


def test_publishing_many_files_beside_many_refused_entries_takes_linear_time(
    stage: staging.OutputStaging,
) -> None:
    # Each file was once checked against every refused path: 20,000 entries took half a
    # minute of the coordinator's CPU after the run, past any deadline (100,000: over an hour).
    count = 10_000
    for i in range(count):
        (stage.staging / f"f{i}").touch()
        (stage.staging / f"l{i}").symlink_to("/etc/passwd")
    began = time.monotonic()
    outputs, refused = staging.publish(stage, 1 << 20, max_listing_bytes=LISTING)
    elapsed = time.monotonic() - began
    assert (len(outputs), len(refused)) == (count, count)
    assert elapsed < 10, f"publishing took {elapsed:.1f}s"


def test_outputs_too_many_to_list_in_the_exit_frame_are_refused_whole(
    stage: staging.OutputStaging,
) -> None:
    for i in range(50):
        (stage.staging / f"f{i}").write_text("x")
        (stage.staging / f"l{i}").symlink_to("/etc/passwd")
    manifest = staging.survey(stage.staging)
    needed = staging.listing_bytes(manifest)
    with pytest.raises(ResourceLimit, match="frame_kb"):
        staging.publish(stage, 1 << 20, max_listing_bytes=needed - 1)
    assert not stage.output_dir.exists()
    outputs, refused = staging.publish(stage, 1 << 20, max_listing_bytes=needed)
    assert (len(outputs), len(refused)) == (50, 50)
    listed = json.dumps([outputs, refused], ensure_ascii=False, separators=(",", ":"))
    assert len(listed.encode()) == needed


def test_paths_too_long_to_publish_are_refused_not_an_infrastructure_error(
    stage: staging.OutputStaging,
) -> None:
    # Ten directories of 254-byte names (2,549 bytes): under PATH_MAX, over MAX_PATH_BYTES.
    # Thirty (7,650 bytes, past PATH_MAX) made publishing fail with ENAMETOOLONG, reported as
    # infrastructure_error (exit 6) for what the script did.
    fd = _deep_tree(stage.staging, 10)
    os.close(os.open("f", os.O_WRONLY | os.O_CREAT, dir_fd=fd))
    os.close(fd)
    (stage.staging / "top.txt").write_text("y")
    outputs, refused = staging.publish(stage, 1 << 20, max_listing_bytes=LISTING)
    assert [o["path"] for o in outputs] == ["top.txt"]
    names = [f"d{i:02}" + "x" * 251 for i in range(5)]  # 4 * 254 + 3 = 1019 bytes fit; 5 do not
    assert refused == [
        {"path": "/".join(names), "reason": f"path longer than {staging.MAX_PATH_BYTES} bytes"}
    ]


def test_paths_past_path_max_are_a_resource_limit_at_publish_too(
    stage: staging.OutputStaging,
) -> None:
    # The watchdog cannot measure below them; a run that ends before it looks gets the same.
    os.close(_deep_tree(stage.staging, 30))
    with pytest.raises(ResourceLimit, match="PATH_MAX"):
        staging.publish(stage, 1 << 20, max_listing_bytes=LISTING)
    assert not stage.output_dir.exists()


def _deep_tree(root: Path, levels: int) -> int:
    """``levels`` nested 254-byte directory names under root; an fd of the deepest."""
    fd = os.open(root, os.O_RDONLY)
    for i in range(levels):
        name = f"d{i:02}" + "x" * 251
        os.mkdir(name, dir_fd=fd)
        inner = os.open(name, os.O_RDONLY, dir_fd=fd)
        os.close(fd)
        fd = inner
    return fd


def test_the_output_watchdog_is_not_blind_below_paths_too_long_to_open(
    stage: staging.OutputStaging,
) -> None:
    # A script wrote 210 MB under an 8 MB output limit, nested past PATH_MAX, and the run
    # ended ok: the watchdog's scan skipped what it could not open by name.
    fd = _deep_tree(stage.staging, 20)
    big = os.open("big", os.O_WRONLY | os.O_CREAT, dir_fd=fd)
    os.write(big, b"z" * (2 << 20))
    os.close(big)
    os.close(fd)
    used = staging.measure(stage.staging)
    assert used.unmeasured
    assert used.over(1 << 20)
    assert not staging.measure(stage.staging.parent / "elsewhere").over(1 << 20)
    (stage.staging.parent / "shallow").mkdir()
    (stage.staging.parent / "shallow" / "small").write_text("x")
    assert not staging.measure(stage.staging.parent / "shallow").over(1 << 20)


_PUBLISH_AS_ANOTHER_USER = """
import json, sys
from pathlib import Path
from sandbox import staging
stage = staging.OutputStaging(Path(sys.argv[1]), Path(sys.argv[2]), "run1")
try:
    outputs, refused = staging.publish(stage, 1 << 20, max_listing_bytes=1 << 20)
    print(json.dumps({"outputs": [o["path"] for o in outputs], "refused": refused}))
except Exception as exc:
    print(json.dumps({"error": f"{type(exc).__name__}: {exc}"}))
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root")
@pytest.mark.parametrize("hide_a_directory", [False, True])
def test_outputs_a_non_root_coordinator_cannot_read_are_refused_or_a_resource_limit(
    hide_a_directory: bool,
) -> None:
    # A coordinator that is not root cannot read what the container's user (65532) made mode
    # 0600 (mkstemp, an atomic write) or 0700: publishing failed as a whole on the first such
    # entry, reported as infrastructure_error (exit 6).
    coordinator_uid = 65534
    with tempfile.TemporaryDirectory() as top:  # pytest's tmp_path is root's alone (0700)
        Path(top).chmod(0o755)
        _publish_as_another_user(Path(top) / "parent", coordinator_uid, hide_a_directory)


def _publish_as_another_user(parent: Path, coordinator_uid: int, hide_a_directory: bool) -> None:
    parent.mkdir()
    os.chown(parent, coordinator_uid, coordinator_uid)
    staging_dir = parent / staging.STAGING_DIRNAME / "run1"
    staging_dir.mkdir(parents=True)
    for path in (staging_dir.parent, staging_dir):
        os.chown(path, coordinator_uid, coordinator_uid)
    staging_dir.parent.chmod(0o700)
    staging_dir.chmod(0o777)
    made: list[tuple[str, int]] = [
        ("ok.txt", 0o644),
        ("atomic.tmp", 0o600),
        ("open/inner.txt", 0o644),
        ("open", 0o700 if hide_a_directory else 0o755),
    ]
    for rel, mode in made:
        target = staging_dir / rel
        target.parent.mkdir(exist_ok=True)
        if rel != "open":
            target.write_text("x")
        target.chmod(mode)
        os.chown(target, 65532, 65532)
    done = subprocess.run(  # noqa: S603 - fixed command
        [
            shutil.which("setpriv") or "setpriv",
            f"--reuid={coordinator_uid}",
            f"--regid={coordinator_uid}",
            "--clear-groups",
            sys.executable,
            "-c",
            _PUBLISH_AS_ANOTHER_USER,
            str(parent / "out"),
            str(staging_dir),
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(staging.__file__).parent.parent,
        env={**os.environ, "PYTHONPATH": str(Path(staging.__file__).parent.parent)},
    )
    answer = json.loads(done.stdout)
    if hide_a_directory:
        # What it cannot list, it cannot measure: a script could fill the disk below it.
        assert answer == {
            "error": "ResourceLimit: the output directory holds a directory this user cannot "
            "list, hiding how much was written"
        }
    else:
        assert answer == {
            "outputs": ["ok.txt", "open/inner.txt"],
            "refused": [
                {"path": "atomic.tmp", "reason": "not readable by this user (mode -rw-------)"}
            ],
        }


def test_an_output_dir_filled_meanwhile_fails_the_publish_without_a_copy_left_behind(
    stage: staging.OutputStaging,
) -> None:
    # The copy made for publishing stayed in .sandbox-staging/RUN.publish, unreported.
    (stage.staging / "result.csv").write_text("a,b\n")
    stage.output_dir.mkdir()
    (stage.output_dir / "someone-elses.txt").write_text("x")
    with pytest.raises(OSError, match="not empty"):
        staging.publish(stage, 1 << 20, max_listing_bytes=LISTING)
    assert [p.name for p in stage.output_dir.iterdir()] == ["someone-elses.txt"]
    assert sorted(p.name for p in stage.staging.parent.iterdir()) == ["run1"]
    kept = staging.set_aside(stage)
    assert kept is not None
    assert (kept / "result.csv").read_text() == "a,b\n"
    assert not stage.staging.parent.exists()
