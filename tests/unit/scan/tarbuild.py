"""Build small image-like filesystem tars in tests (what `docker export` streams)."""

from __future__ import annotations

import io
import tarfile
from dataclasses import dataclass, field


@dataclass
class TarBuilder:
    """Collects entries, then renders a tar (names without a leading slash, as docker does)."""

    members: list[tuple[tarfile.TarInfo, bytes]] = field(default_factory=list)

    def dir(self, path: str, mode: int = 0o755) -> TarBuilder:
        info = tarfile.TarInfo(path.lstrip("/"))
        info.type, info.mode = tarfile.DIRTYPE, mode
        self.members.append((info, b""))
        return self

    def file(self, path: str, data: bytes | str = b"", mode: int = 0o644) -> TarBuilder:
        raw = data.encode() if isinstance(data, str) else data
        info = tarfile.TarInfo(path.lstrip("/"))
        info.size, info.mode = len(raw), mode
        self.members.append((info, raw))
        return self

    def symlink(self, path: str, target: str) -> TarBuilder:
        info = tarfile.TarInfo(path.lstrip("/"))
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
        self.members.append((info, b""))
        return self

    def dist(
        self, site: str, name: str, version: str, requires: tuple[str, ...] = ()
    ) -> TarBuilder:
        lines = ["Metadata-Version: 2.1", f"Name: {name}", f"Version: {version}"]
        lines += [f"Requires-Dist: {r}" for r in requires]
        folder = f"{site}/{name.replace('-', '_')}-{version}.dist-info"
        return self.file(f"{folder}/METADATA", "\n".join(lines) + "\n")

    def venv(self, root: str, version: str = "3.11.2") -> str:
        self.file(f"{root}/pyvenv.cfg", f"home = /usr/bin\nversion = {version}\n")
        return f"{root}/lib/python3.11/site-packages"

    def bytes(self) -> bytes:
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            for info, data in self.members:
                tar.addfile(info, io.BytesIO(data) if info.isreg() else None)
        return out.getvalue()

    def stream(self) -> io.BytesIO:
        return io.BytesIO(self.bytes())


def base_root() -> TarBuilder:
    """A minimal merged-/usr root with python3, timeout, the launcher (as sandbox/base has them)
    and the scratch directories."""
    return (
        TarBuilder()
        .dir("usr/bin")
        .symlink("bin", "usr/bin")
        .file("usr/bin/python3.11", b"\x7fELF", 0o755)
        .symlink("usr/bin/python3", "python3.11")
        .file("usr/bin/timeout", b"\x7fELF", 0o755)
        .file("opt/sandbox/lib/sandbox_launch.py", "import os\n")
        .dir("tmp", 0o1777)
        .dir("var/tmp", 0o1777)
        .file("etc/os-release", 'ID=debian\nVERSION_ID="12"\n')
    )
