"""Build and run the project's Dockerfile with podman or docker, for interop tests.

podman is driven as machines without a Docker engine or registry access need it: vfs storage
(PODMAN_STORAGE_DRIVER), builds with --isolation chroot, --network host, --pull=never (the python
base image is a local stand-in, which .ci/run builds with the shared tools' podman-base.sh)
and --layers=false (with vfs every cached layer is a full copy of the root fs); runc as runtime
when installed (crun refuses hybrid cgroups); ulimits within what podman may set.

Skips are loud and, under LFSSERVE_NO_SKIP=1, failures, except where .ci/run could not prepare a
container engine and said so with LFSSERVE_ALLOW_SKIP_CONTAINER=1.
"""

from __future__ import annotations

import json
import os
import resource
import secrets
import shutil
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass, field

import pytest

from ..support import REPO_ROOT, free_port, require

BASE_IMAGE = "python:3.11-slim"


def require_container(condition: bool, reason: str) -> None:
    if condition:
        return
    if os.environ.get("LFSSERVE_ALLOW_SKIP_CONTAINER") == "1":
        message = f"SKIPPED, NOT TESTED: {reason} (allowed: LFSSERVE_ALLOW_SKIP_CONTAINER=1)"
        print(f"\n*** {message} ***", file=sys.stderr)
        pytest.skip(message)
    require(False, reason)


@dataclass
class Engine:
    exe: str
    podman: bool
    created: list[tuple[str, str]] = field(default_factory=list)  # (kind, name) to remove

    def cmd(self, *args: str) -> list[str]:
        if self.podman:
            return [self.exe, "--storage-driver", os.environ.get("PODMAN_STORAGE_DRIVER", "vfs"), *args]
        return [self.exe, *args]

    def __call__(self, *args: str, check: bool = True, timeout: float = 120, input: bytes | None = None
                 ) -> subprocess.CompletedProcess:
        res = subprocess.run(self.cmd(*args), capture_output=True, timeout=timeout, input=input)
        if check and res.returncode != 0:
            raise AssertionError(f"{' '.join(self.cmd(*args))} failed ({res.returncode}):\n"
                                 f"{res.stdout.decode(errors='replace')[-3000:]}\n"
                                 f"{res.stderr.decode(errors='replace')[-3000:]}")
        return res

    def run_args(self) -> list[str]:
        """Options every `run` needs on this machine."""
        if not self.podman:
            return []
        args = []
        if shutil.which("runc"):
            args += ["--runtime", "runc"]
        nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
        nproc = resource.getrlimit(resource.RLIMIT_NPROC)[1]
        nofile = 1048576 if nofile == resource.RLIM_INFINITY else nofile
        nproc = 32768 if nproc == resource.RLIM_INFINITY or nproc > 32768 else nproc
        return args + ["--ulimit", f"nofile={nofile}:{nofile}", "--ulimit", f"nproc={nproc}:{nproc}"]

    def image_exists(self, image: str) -> bool:
        args = ("image", "exists", image) if self.podman else ("image", "inspect", image)
        return self(*args, check=False).returncode == 0

    def build(self, tag: str) -> None:
        args = ["build", "-t", tag, "-f", str(REPO_ROOT / "Dockerfile")]
        if self.podman:
            args += ["--isolation", "chroot", "--network", "host", "--pull=never", "--layers=false",
                     "--format", "docker"]
        self.created.append(("image", tag))
        self(*args, str(REPO_ROOT), timeout=900)

    def volume(self) -> str:
        name = f"lfsserve-test-{secrets.token_hex(4)}"
        self("volume", "create", name)
        self.created.append(("volume", name))
        return name

    def run(self, image: str, *args: str, volume: str, env: dict[str, str] | None = None,
            input: bytes | None = None) -> subprocess.CompletedProcess:
        """A one-off `run --rm` of the image (an admin command) on the data volume."""
        envs = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
        return self("run", "--rm", "-i", *self.run_args(), "-v", f"{volume}:/data", *envs, image, *args,
                    input=input)

    def start(self, image: str, *, volume: str, env: dict[str, str] | None = None) -> "Container":
        name = f"lfsserve-test-{secrets.token_hex(4)}"
        port = free_port()
        envs = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
        self.created.append(("container", name))
        self("run", "-d", "--name", name, *self.run_args(), "-p", f"127.0.0.1:{port}:8080",
             "-v", f"{volume}:/data", *envs, image)
        container = Container(self, name, f"http://127.0.0.1:{port}")
        container.wait_healthy()
        return container

    def cleanup(self) -> None:
        for kind, name in reversed(self.created):
            if kind == "container":
                self("rm", "-f", "-v", name, check=False)
            elif kind == "volume":
                self("volume", "rm", "-f", name, check=False)
            else:
                self("rmi", "-f", name, check=False, timeout=300)
        self.created.clear()


@dataclass
class Container:
    engine: Engine
    name: str
    url: str

    def inspect(self, fmt: str) -> str:
        return self.engine("inspect", self.name, "--format", fmt).stdout.decode().strip()

    def running(self) -> bool:
        return self.inspect("{{.State.Running}}") == "true"

    def logs(self) -> str:
        res = self.engine("logs", self.name, check=False)
        return (res.stdout + res.stderr).decode(errors="replace")

    def exec(self, *args: str, input: bytes | None = None, check: bool = True) -> subprocess.CompletedProcess:
        return self.engine("exec", "-i", self.name, *args, input=input, check=check)

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/healthz", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            if not self.running():
                raise AssertionError(f"container exited ({self.inspect('{{.State.ExitCode}}')}):\n{self.logs()}")
            time.sleep(0.3)
        raise AssertionError(f"{self.url}/healthz did not answer 200 within {timeout}s:\n{self.logs()}")

    def stop(self, timeout: int = 40) -> int:
        self.engine("stop", "-t", str(timeout), self.name, timeout=timeout + 30)
        return int(self.inspect("{{.State.ExitCode}}"))


def find_engine() -> Engine:
    """podman or docker, with the base image available; skips (loudly) otherwise."""
    for exe, podman in ((shutil.which("podman"), True), (shutil.which("docker"), False)):
        if exe is None:
            continue
        engine = Engine(exe, podman)
        if engine("info", check=False, timeout=60).returncode != 0:
            continue
        if podman:
            require_container(engine.image_exists(BASE_IMAGE),
                              f"podman has no {BASE_IMAGE} image (no registry here: build the local stand-in "
                              "with shared/tools/podman-base.sh, as .ci/run does)")
        return engine
    require_container(False, "no working container engine (apt-get install -y podman runc, or install docker)")
    raise AssertionError("unreachable")


def image_healthcheck(engine: Engine, image: str) -> list[str]:
    """The image's HEALTHCHECK command (exec form), from `image inspect`."""
    data = json.loads(engine("image", "inspect", image).stdout)[0]
    check = data.get("Healthcheck") or (data.get("Config") or {}).get("Healthcheck") or {}
    test = check.get("Test") or ["NONE"]
    assert test[0] == "CMD", f"HEALTHCHECK should be exec form, got {test}"
    return test[1:]
