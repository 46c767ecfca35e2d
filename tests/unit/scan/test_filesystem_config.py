"""Tar-based filesystem findings and image-config checks, on tars built here."""

from __future__ import annotations

from typing import Any

from sandbox.scan.config import PolicyCommand, check_config, secret_findings
from sandbox.scan.filesystem import check_filesystem
from sandbox.scan.model import Severity
from sandbox.scan.tarfs import distro, resolve, snapshot_from_stream

from .tarbuild import base_root


def test_setuid_world_writable_cache_and_compiler_findings_from_a_tar() -> None:
    tar = (
        base_root()
        .file("usr/bin/passwd", b"x", 0o4755)
        .file("usr/bin/wall", b"x", 0o2755)
        .dir("opt/data", 0o777)
        .dir("run/lock", 0o1777)
        .dir("tmp/scratch", 0o777)
        .file("etc/app.conf", b"x", 0o666)
        .file("var/cache/apt/archives/bash_5.2_amd64.deb", b"x" * 100)
        .file("var/lib/apt/lists/deb.debian.org_dists_bookworm_InRelease", b"x")
        .file("var/lib/apt/lists/lock", b"")
        .file("root/.cache/pip/http/ab/cd", b"x")
        .file("usr/bin/x86_64-linux-gnu-gcc-12", b"\x7fELF", 0o755)
        .symlink("usr/bin/cc", "/etc/alternatives/cc")
        .symlink("usr/bin/link-to-suid", "passwd")
    )
    snapshot = snapshot_from_stream(tar.stream())
    result, findings = check_filesystem(snapshot, {})
    got = {(f.rule_id, f.location.image_path) for f in findings}
    assert ("fs.setuid", "/usr/bin/passwd") in got
    assert ("fs.setuid", "/usr/bin/wall") in got
    assert ("fs.world-writable-directory", "/opt/data") in got
    assert ("fs.world-writable-file", "/etc/app.conf") in got
    assert not any(path in ("/tmp", "/var/tmp", "/run/lock", "/tmp/scratch") for _, path in got)
    caches = {
        f.properties["cache"]: f.properties["files"]
        for f in findings
        if f.rule_id == "fs.package-cache"
    }
    assert caches == {"apt": 1, "apt-lists": 1, "pip": 1}
    compilers = {f.properties["compiler"] for f in findings if f.rule_id == "fs.compiler"}
    assert compilers == {"gcc", "cc"}
    assert result.status == "findings"
    assert result.checked > 10
    assert next(f for f in findings if f.rule_id == "fs.setuid").severity == Severity.HIGH


def test_declared_compilers_and_a_clean_root_pass() -> None:
    tar = base_root().file("usr/bin/gcc", b"x", 0o755)
    snapshot = snapshot_from_stream(tar.stream())
    result, findings = check_filesystem(snapshot, {"io.sandbox.compilers": "gcc"})
    assert (result.status, findings) == ("passed", [])


def test_sticky_bit_missing_on_var_tmp_is_a_finding() -> None:
    snapshot = snapshot_from_stream(base_root().dir("var/tmp", 0o777).stream())
    _, findings = check_filesystem(snapshot, {})
    assert [f.location.image_path for f in findings] == ["/var/tmp"]


def test_symlinks_resolve_through_merged_usr_and_os_release_names_the_distro() -> None:
    snapshot = snapshot_from_stream(base_root().stream())
    assert resolve(snapshot, "/bin/python3") == "/usr/bin/python3.11"
    assert resolve(snapshot, "/usr/bin/nope") is None
    assert distro(snapshot) == "debian-12"


CONFIG: dict[str, Any] = {
    "User": "65532:65532",
    "Env": ["PATH=/usr/local/bin:/usr/bin:/bin", "LANG=C.UTF-8"],
    "Cmd": ["/bin/bash"],
    "Entrypoint": None,
    "Labels": {"org.opencontainers.image.title": "x"},
}
POLICY = PolicyCommand("demo", ("python3", "/opt/tool/main.py"), {})


def _config(**changes: Any) -> dict[str, Any]:
    return {**CONFIG, **changes}


def test_clean_config_with_a_runnable_policy_command_passes() -> None:
    snapshot = snapshot_from_stream(base_root().file("opt/tool/main.py", "print(1)").stream())
    result, findings = check_config(CONFIG, [POLICY], snapshot)
    assert (result.status, findings) == ("passed", [])


def test_root_user_ports_entrypoint_and_missing_script_are_findings() -> None:
    snapshot = snapshot_from_stream(base_root().stream())
    config = _config(User="", ExposedPorts={"8080/tcp": {}}, Entrypoint=["/entry.sh"])
    _, findings = check_config(config, [POLICY], snapshot)
    rules = sorted(f.rule_id for f in findings)
    assert rules == [
        "config.command-missing",
        "config.entrypoint",
        "config.exposed-ports",
        "config.root-user",
    ]
    assert (
        "/opt/tool/main.py"
        in next(f for f in findings if f.rule_id == "config.command-missing").message
    )


def test_root_by_name_or_uid_with_group_is_root() -> None:
    snapshot = snapshot_from_stream(base_root().stream())
    for user in ("root", "0", "0:0", "root:sandbox"):
        _, findings = check_config(_config(User=user), [], snapshot)
        assert [f.rule_id for f in findings] == ["config.root-user"], user


def test_missing_timeout_wrapper_is_reported() -> None:
    snapshot = snapshot_from_stream(
        base_root().file("opt/tool/main.py", "x").file("usr/bin/timeout", b"", 0o644).stream()
    )
    _, findings = check_config(CONFIG, [POLICY], snapshot)
    assert [f.properties["program"] for f in findings] == ["timeout"]


def test_missing_launcher_is_reported() -> None:
    # Every run starts `python3 -I -S /opt/sandbox/lib/sandbox_launch.py -- timeout …`: an image
    # not built FROM sandbox/base (a team's own root with python3 and timeout) passed the scan
    # and then failed every run at start.
    tar = base_root().file("opt/tool/main.py", "x")
    tar.members = [m for m in tar.members if not m[0].name.startswith("opt/sandbox")]
    _, findings = check_config(CONFIG, [POLICY], snapshot_from_stream(tar.stream()))
    assert [f.properties["program"] for f in findings] == ["/opt/sandbox/lib/sandbox_launch.py"]
    assert "launcher" in findings[0].message


def test_secrets_in_env_and_labels_are_found_and_never_echoed() -> None:
    config = _config(
        Env=[
            "API_TOKEN=abc123",
            "PIP_INDEX_URL=https://user:hunter2@pypi.example/simple",
            "EMPTY_PASSWORD=",
        ],
        Labels={"aws": "AKIAABCDEFGHIJKLMNOP", "org.opencontainers.image.authors": "someone"},
    )
    findings = secret_findings(config)
    assert {f.properties["name"] for f in findings} == {"API_TOKEN", "PIP_INDEX_URL", "aws"}
    text = " ".join(f.message for f in findings)
    assert "abc123" not in text
    assert "hunter2" not in text
    assert "AKIA" not in text
    assert all(f.severity == Severity.CRITICAL for f in findings)
