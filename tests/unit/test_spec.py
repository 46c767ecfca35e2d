"""The container spec: every hardening flag of contract section 6, one assertion each."""

from __future__ import annotations

from typing import Any

import pytest

from sandbox.policy import Policy
from sandbox.spec import (
    RUNSC_PIDS_HEADROOM,
    WRAPPER_PIDS,
    ContainerSpec,
    Owner,
    build_spec,
)

from .conftest import policy_data

MIB = 1024 * 1024


def make_spec(stdout_pipe: str | None = None, **overrides: Any) -> ContainerSpec:
    policy = Policy.model_validate(policy_data(**overrides))
    return build_spec(
        policy,
        run_id="r1",
        policy_sha256="f" * 64,
        inputs={"data": "/srv/data", "cfg": "/srv/cfg.json"},
        staging_dir="/srv/out/.sandbox-staging/r1",
        timeout_s=7.5,
        owner=Owner(pid=10, start_time=123.456, host="h1"),
        deadline=2000.0,
        stdout_pipe=stdout_pipe,
    )


@pytest.fixture
def kwargs() -> dict[str, Any]:
    return make_spec().create_kwargs()


def test_root_filesystem_is_read_only(kwargs: dict[str, Any]) -> None:
    assert kwargs["read_only"] is True


def test_tmp_is_a_size_limited_noexec_tmpfs(kwargs: dict[str, Any]) -> None:
    assert kwargs["tmpfs"] == {"/tmp": f"rw,noexec,nosuid,nodev,size={16 * MIB},mode=1777"}


def test_all_capabilities_dropped(kwargs: dict[str, Any]) -> None:
    assert kwargs["cap_drop"] == ["ALL"]
    assert "cap_add" not in kwargs


def test_no_new_privileges_and_default_seccomp(kwargs: dict[str, Any]) -> None:
    assert kwargs["security_opt"] == ["no-new-privileges:true"]
    assert not any("seccomp" in opt for opt in kwargs["security_opt"])


def test_not_privileged_no_devices_no_host_namespaces(kwargs: dict[str, Any]) -> None:
    assert kwargs["privileged"] is False
    for key in ("devices", "pid_mode", "userns_mode", "uts_mode", "volumes", "volumes_from"):
        assert key not in kwargs
    assert kwargs["ipc_mode"] == "private"
    assert kwargs["cgroupns"] == "private"


def test_runs_as_the_policy_user(kwargs: dict[str, Any]) -> None:
    assert kwargs["user"] == "65532:65532"


def test_memory_limit_equals_memory_plus_swap(kwargs: dict[str, Any]) -> None:
    assert kwargs["mem_limit"] == 128 * MIB
    assert kwargs["memswap_limit"] == 128 * MIB
    assert kwargs["mem_swappiness"] == 0


def test_tmpfs_and_shm_fit_within_memory(kwargs: dict[str, Any]) -> None:
    assert 16 * MIB + kwargs["shm_size"] < kwargs["mem_limit"]


def test_cpu_quota_from_policy(kwargs: dict[str, Any]) -> None:
    assert kwargs["nano_cpus"] == 500_000_000


def test_pids_limit_covers_the_tool_and_our_wrappers(kwargs: dict[str, Any]) -> None:
    assert kwargs["pids_limit"] == 32 + WRAPPER_PIDS


def test_runsc_gets_pids_headroom_for_gvisor_threads() -> None:
    kwargs = make_spec(runtime="runsc").create_kwargs()
    assert kwargs["runtime"] == "runsc"
    assert kwargs["pids_limit"] == 32 + WRAPPER_PIDS + RUNSC_PIDS_HEADROOM


def test_no_network_by_default_and_network_disabled_for_a_lean_start(
    kwargs: dict[str, Any],
) -> None:
    assert kwargs["network_mode"] == "none"
    assert kwargs["network_disabled"] is True


def test_network_enabled_policy_produces_that_network_only() -> None:
    kwargs = make_spec(network="bridge", justification={"network": "fetches X"}).create_kwargs()
    assert kwargs["network_mode"] == "bridge"
    assert kwargs["network_disabled"] is False


def test_init_process(kwargs: dict[str, Any]) -> None:
    assert kwargs["init"] is True


def test_inputs_are_read_only_binds_from_resolved_paths_and_output_is_the_only_writable(
    kwargs: dict[str, Any],
) -> None:
    assert kwargs["mounts"] == [
        {"Type": "bind", "Source": "/srv/cfg.json", "Target": "/inputs/cfg", "ReadOnly": True},
        {"Type": "bind", "Source": "/srv/data", "Target": "/inputs/data", "ReadOnly": True},
        {
            "Type": "bind",
            "Source": "/srv/out/.sandbox-staging/r1",
            "Target": "/output",
            "ReadOnly": False,
        },
    ]


def test_labels_name_the_run_and_its_owner(kwargs: dict[str, Any]) -> None:
    labels = kwargs["labels"]
    assert labels["io.sandbox.managed"] == "1"
    assert labels["io.sandbox.run_id"] == "r1"
    assert labels["io.sandbox.tool"] == "echo"
    assert labels["io.sandbox.owner_pid"] == "10"
    assert labels["io.sandbox.owner_start"] == "123.456"
    assert labels["io.sandbox.owner_host"] == "h1"
    assert labels["io.sandbox.deadline"] == "2000.000"


def test_output_never_piles_up_in_docker_logs(kwargs: dict[str, Any]) -> None:
    assert kwargs["log_config"] == {"type": "none", "config": {}}


def test_host_proxy_settings_never_leak_in(kwargs: dict[str, Any]) -> None:
    assert kwargs["use_config_proxy"] is False


def test_environment_is_the_policy_env_plus_the_frame_limit_only() -> None:
    kwargs = make_spec(env={"A": "1"}).create_kwargs()
    assert set(kwargs["environment"]) == {"A", "SANDBOX_MAX_FRAME_BYTES"}


def test_ulimits_no_core_dumps_bounded_files_and_file_size(kwargs: dict[str, Any]) -> None:
    assert {u["name"]: (u["soft"], u["hard"]) for u in kwargs["ulimits"]} == {
        "core": (0, 0),
        "nofile": (4096, 4096),
        "fsize": (1 * MIB, 1 * MIB),
    }


def test_command_is_a_list_under_the_launcher_and_a_deadline(kwargs: dict[str, Any]) -> None:
    assert kwargs["command"] == [
        "python3",
        "-I",
        "-S",
        "/opt/sandbox/lib/sandbox_launch.py",
        "--",
        "timeout",
        "-s",
        "KILL",
        "13s",
        "python3",
        "/opt/testkit/main.py",
    ]


def test_a_stdout_pipe_is_a_read_only_bind_and_the_launchers_stdout() -> None:
    kwargs = make_spec(stdout_pipe="/tmp/sandbox-pipe-x/stdout").create_kwargs()
    assert kwargs["mounts"][-1] == {
        "Type": "bind",
        "Source": "/tmp/sandbox-pipe-x/stdout",
        "Target": "/run/sandbox/stdout",
        "ReadOnly": True,
    }
    # The option goes to the launcher, before its `--`: never to the tool.
    launcher = kwargs["command"][: kwargs["command"].index("--")]
    assert launcher[-2:] == ["--stdout", "/run/sandbox/stdout"]
    assert make_spec(stdout_pipe="/p").stdout_pipe == "/p"


def test_without_a_stdout_pipe_neither_mount_nor_option(kwargs: dict[str, Any]) -> None:
    assert "/run/sandbox/stdout" not in [m["Target"] for m in kwargs["mounts"]]
    assert "--stdout" not in kwargs["command"]
    assert make_spec().stdout_pipe is None


def test_stdin_is_open_once_and_no_tty(kwargs: dict[str, Any]) -> None:
    assert kwargs["stdin_open"] is True
    assert kwargs["tty"] is False
    # detach=True would make the SDK create the container without stdout/stderr attached.
    assert "detach" not in kwargs


def test_image_is_the_pinned_id_not_a_tag(kwargs: dict[str, Any]) -> None:
    assert kwargs["image"] == "sha256:" + "ab" * 32


def test_container_is_removed_by_us_not_auto_removed(kwargs: dict[str, Any]) -> None:
    assert kwargs["auto_remove"] is False


def test_no_volumes_keyword_ever(kwargs: dict[str, Any]) -> None:
    assert "volumes" not in kwargs
    assert "binds" not in kwargs


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        {"runtime": "runsc"},
        {"network": "bridge", "justification": {"network": "fetches X"}},
        {"env": {"A": "1", "B": "x=y"}, "user": "1000:1000"},
    ],
)
def test_engine_body_is_what_the_docker_sdk_sends_for_create_kwargs(
    overrides: dict[str, Any],
) -> None:
    """The run path posts ``engine_body()`` itself; the flag-by-flag tests above check
    ``create_kwargs()``; the two must be one container, field for field."""
    from docker import APIClient
    from docker.models.containers import (  # type: ignore[attr-defined]
        _create_container_args,
    )

    spec = make_spec(**overrides)
    # An explicit version: the SDK builds the config without contacting any engine.
    api = APIClient(base_url="unix:///nonexistent.sock", version="1.41")
    args = _create_container_args({**spec.create_kwargs(), "version": "1.41"})
    assert args.pop("name") == spec.name
    assert args.pop("use_config_proxy") is False  # a client-side option, nothing is sent
    sent = {k: v for k, v in api.create_container_config(**args).items() if v is not None}
    assert spec.engine_body() == sent


@pytest.mark.parametrize(
    "change", [{"privileged": True}, {"auto_remove": True}, {"cap_add": ["SYS_ADMIN"]}]
)
def test_a_create_kwarg_without_a_translation_is_refused_not_dropped(
    kwargs: dict[str, Any], change: dict[str, Any]
) -> None:
    from sandbox.spec import engine_body

    with pytest.raises(ValueError, match="no Engine API translation"):
        engine_body({**kwargs, **change})
