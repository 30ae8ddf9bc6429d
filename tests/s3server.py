"""A real S3 API for tests: moto in server mode, as a subprocess on a free loopback port.

    server = MotoServer.start()        # or the session fixture `moto` (tests/conftest.py)
    server.create_bucket("b")          # a fresh bucket per test keeps tests apart
    server.env                         # AWS_* variables for an lfsserve subprocess (the standard chain)
    server.storage_toml("b", transfer="direct")   # the [storage] section of a config file
    server.stop(); server.restart()    # S3 gone / back (moto keeps nothing across a restart)

Shared by the blob-store contract tests, the S3 interop tests and the several-instances tests.
"""

from __future__ import annotations

import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from .support import free_port, require_interop_marker

ACCESS_KEY = "lfsserve-test"
SECRET_KEY = "lfsserve-test-secret"
REGION = "us-east-1"


@dataclass
class MotoServer:
    port: int
    proc: subprocess.Popen | None = None
    buckets: list[str] = field(default_factory=list)
    _sync_client: Any = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """The environment an lfsserve process finds its S3 credentials in (no keys in its config)."""
        return {"AWS_ACCESS_KEY_ID": ACCESS_KEY, "AWS_SECRET_ACCESS_KEY": SECRET_KEY,
                "AWS_DEFAULT_REGION": REGION, "AWS_EC2_METADATA_DISABLED": "true",
                "AWS_CONFIG_FILE": os.devnull, "AWS_SHARED_CREDENTIALS_FILE": os.devnull}

    @classmethod
    def start(cls, port: int | None = None) -> MotoServer:
        require_interop_marker("an S3 server (moto)")
        server = cls(port or free_port())
        server._spawn()
        return server

    def _spawn(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"moto server exited with {self.proc.returncode}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError("moto server did not start listening within 60 s")

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self) -> None:
        """Stop the server (by its pid); its buckets and objects are gone."""
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

    def restart(self) -> None:
        """Start again on the same port, with the buckets created so far (empty)."""
        self.stop()
        self._spawn()
        for bucket in self.buckets:
            self._client().create_bucket(Bucket=bucket)

    def _client(self):
        # One client per server (creating one loads botocore's service model: ~0.3 s).
        if self._sync_client is None:
            import botocore.session

            self._sync_client = botocore.session.get_session().create_client(
                "s3", endpoint_url=self.url, region_name=REGION, aws_access_key_id=ACCESS_KEY,
                aws_secret_access_key=SECRET_KEY)
        return self._sync_client

    def create_bucket(self, name: str | None = None) -> str:
        name = name or f"lfs-{secrets.token_hex(6)}"
        self._client().create_bucket(Bucket=name)
        self.buckets.append(name)
        return name

    def client(self):
        """A plain (sync) botocore S3 client, to look at or damage what lfsserve stored."""
        return self._client()

    def storage_toml(self, bucket: str, *, transfer: str = "proxy", prefix: str = "") -> str:
        return (f'[storage]\nbackend = "s3"\nbucket = "{bucket}"\nprefix = "{prefix}"\n'
                f'endpoint_url = "{self.url}"\nregion = "{REGION}"\naddressing_style = "path"\n'
                f'transfer = "{transfer}"\n')
