"""Bring a model back when its Python-backend stub process dies: Triton 2.51 does not.

Every instance of a Python-backend model runs in a `triton_python_backend_stub` process, a child
of `tritonserver`. What Triton 2.51 (the pip server here, python_backend r24.10) does when one is
killed (SIGKILL), found by running it:

- Requests the instance is executing fail within about a second (the backend's health check waits
  1 s) with INTERNAL "Stub process 'unet_onnx_fp32_0_0' is not healthy."; so does every later
  request to that model, each after the same second. A BLS call from another model gets the same
  error (the BLS `ddpm` answered UNAVAILABLE "U-Net model 'unet_onnx_fp32' failed: Stub process
  'unet_onnx_fp32_0_0' is not healthy."). `nv_inference_request_failure{reason="BACKEND"}` counts
  them; nothing is logged at log level 0.
- The stub is never restarted: python_backend removed its restart path in r24.06 (PR #364) and
  has not brought it back (r25.10, the NGC container's, has none either; from r26.01 the model at
  least reports not ready, PR #423).
- Nothing else tells: `/v2/models/<m>/ready` stays 200, the repository index keeps the model
  `READY`, `/v2/health/ready` stays 200. The dead stub stays a zombie child of tritonserver.
- `load` of the unchanged model is a no-op (200 in 2 ms, still broken). `unload` leaves the model
  `UNLOADING` for good (and the server unready, with strict readiness). A `load` whose config
  override differs from the running config (here: one added parameter) starts a new version with
  a new stub and swaps it in (7 s for `unet_onnx_fp32` on 2 CPU cores); requests are answered
  throughout, with the old error until the swap.
- The old version is never finalized: it stays a live model until shutdown, where Triton waits out
  its whole `--exit-timeout-secs` for it and exits 1 ("failed to stop server: Internal - Exit
  timeout expired. Exiting immediately."); its shared-memory region stays in /dev/shm.
- A model that answers through response senders from a thread of its own (execute returns None)
  fares worse: requests in flight when its stub dies are never answered, in default and decoupled
  mode alike (a 5 s request to such a test model, its stub killed after 1.5 s, ended only at the
  client's 20 s deadline: DEADLINE_EXCEEDED). New requests fail after a second as above, and a
  reload brings the model back, but nothing fails the stranded ones. Only models whose execute
  holds its requests until it returns get the error above. What does end them is ending
  tritonserver: SIGKILL closes their connections at once (gRPC: UNAVAILABLE "Stream removed
  (Socket closed)"; tritonclient.http: HTTPConnectionClosed), and a new process binds the same
  ports (7 to 14 s on 2 CPU cores until `ddpm` and its U-Net are ready again). A graceful stop
  (SIGINT, SIGTERM) would not: it waits out `--exit-timeout-secs` for the stranded requests.

So the watchdog looks where the death is visible, the process table: every `interval_s` it lists
tritonserver's live stub children (argv: stub, <repository>/<model>/<version>/model.py, shm
region, ..., instance name) and compares, for each Python-backend model the repository index calls
READY, their number with the instances its config asks for (a READY model has all its stubs
running; while a model is reloaded old and new ones overlap). A model that runs fewer is reloaded
through the restricted model-repository API with the admin key, with a config override that adds
the parameter `watchdog_restart` (a nonce), which makes the load real. Each restart is
logged (logger `ddpm_triton.watchdog`) and kept in `Watchdog.restarts`; a model that keeps dying
is reloaded with exponential backoff.

How a model is mended is its config's parameter `on_stub_death`: `reload_model` (the default when
absent: the above) or `restart_server`, which export/configs.py sets for `ddpm` on every target
(it answers from its scheduler's thread, so a reload would strand its in-flight requests). For
such a model the watchdog logs why and calls its `restart_server` callback instead of reloading
(a restart brings every model back, so nothing else is reloaded then), keeps the event in
`Watchdog.server_restarts`, and stops: the server it watches goes away. Without a callback it
reloads the model and logs an error that the requests in flight on the dead stub stay unanswered
until their clients' deadlines. A server restart has no backoff of the watchdog's own.

`TritonServer` (tritonserver.py) runs one watchdog beside every server it starts; its callback
kills the process and starts a new one (with a new watchdog) on the same ports. The NVIDIA
container runs `python3 -m ddpm_triton.watchdog` next to tritonserver
(docker/tritonserver-entrypoint.sh); its callback, `end_server`, SIGKILLs tritonserver and removes
its stubs' shared memory, the wrapper exits with tritonserver, and Docker's restart policy starts
the container again (that last step not run here: no Docker engine). It needs explicit model
control (load API), the admin key, and the server's process table (same host, same PID namespace,
and tritonserver not PID 1 of it: SIGKILL from inside a namespace does not reach its PID 1).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import signal
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

LOG = logging.getLogger("ddpm_triton.watchdog")
STUB = b"triton_python_backend_stub"
REGION_PREFIX = "triton_python_backend_shm_region_"  # the Python backend's default shm-region-prefix-name
ADMIN_HEADER = "admin-key"  # as tritonserver.py restricts the APIs
NONCE = "watchdog_restart"  # the config parameter whose new value makes a reload real
POLICY = "on_stub_death"  # the config parameter that says how a model is mended
RELOAD_MODEL = "reload_model"  # the default: load the model again (a new stub)
RESTART_SERVER = "restart_server"  # end tritonserver and start it again: for models whose requests a dead stub strands
POLICIES = (RELOAD_MODEL, RESTART_SERVER)


@dataclass(frozen=True)
class Stub:
    """One live triton_python_backend_stub process."""

    pid: int
    model: str  # the model's directory: argv[1] is <repository>/<model>/<version>/model.py
    instance: str  # e.g. ddpm_0_0 (argv[8]; "" where a stub's argv has no such field)
    region: str  # its shared-memory region, a file in /dev/shm


def _stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) of a process; None if it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # the name may hold spaces
    except (OSError, IndexError):
        return None
    return fields[0], int(fields[1])


def alive(pid: int) -> bool:
    """pid exists and is not a zombie."""
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def stubs(server_pid: int) -> list[Stub]:
    """The live stub processes of the tritonserver with pid `server_pid` (zombies are dead ones)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        stat = _stat(int(entry))
        if stat is None or stat[1] != server_pid or stat[0] in ("Z", "X"):
            continue
        try:
            argv = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if len(argv) > 2 and argv[0].endswith(STUB):
            instance = argv[8].decode(errors="replace") if len(argv) > 8 else ""
            model = Path(argv[1].decode(errors="replace")).parent.parent.name
            found.append(Stub(int(entry), model, instance, argv[2].decode(errors="replace")))
    return found


def mapped_regions(server_pid: int) -> set[str]:
    """The stubs' shared-memory regions (default name prefix) that tritonserver has mapped: every
    instance's it has not unloaded, a dead stub's included, even one the watchdog never saw alive."""
    try:
        maps = Path(f"/proc/{server_pid}/maps").read_text()
    except OSError:
        return set()
    return set(re.findall(rf"^.* /dev/shm/({REGION_PREFIX}[\w-]+)$", maps, re.MULTILINE))


def expected_stubs(config: dict[str, Any]) -> int:
    """How many stub processes a model's config (as Triton returns it) asks for: one per instance."""
    if config.get("backend") != "python":
        return 0
    total = 0
    for group in config.get("instance_group") or [{}]:
        count = int(group.get("count", 1))
        gpus = group.get("gpus") or []
        total += count * (len(gpus) if group.get("kind") == "KIND_GPU" and gpus else 1)
    return total


def stub_death_policy(config: dict[str, Any]) -> str:
    """What a model's config (as Triton returns it) asks for when one of its stubs dies: its
    parameter `on_stub_death`, `reload_model` when absent."""
    value = ((config.get("parameters") or {}).get(POLICY) or {}).get("string_value", RELOAD_MODEL)
    if value not in POLICIES:
        raise ValueError(f"parameter {POLICY} must be one of {', '.join(POLICIES)}, got {value!r}")
    return value


@dataclass(frozen=True)
class Restart:
    """One reload the watchdog made."""

    model: str
    dead: tuple[Stub, ...]  # the stubs seen dying
    seconds: float  # how long the reload took
    error: str | None  # None: the model serves again


@dataclass(frozen=True)
class ServerRestart:
    """One restart of tritonserver the watchdog asked its `restart_server` callback for."""

    model: str  # the model whose stub died; its config says on_stub_death: restart_server
    dead: tuple[Stub, ...]  # the stubs seen dying
    server_pid: int  # the tritonserver to end
    regions: frozenset[str]  # its stubs' shared memory, live and dead: to remove once it has gone

    def remove_regions(self) -> None:
        """Unlink `regions` from /dev/shm: tritonserver removes a region only when it unloads the
        instance, which a killed server never does."""
        for region in self.regions:
            Path("/dev/shm", region).unlink(missing_ok=True)


class WatchdogError(RuntimeError):
    """The server answered the watchdog with an error."""


class Watchdog:
    """Polls one tritonserver and mends each READY model that has lost a stub process: reloads it,
    or, where its config says `on_stub_death: restart_server`, calls `restart_server`.

    `restart_server` is called on the watchdog's own thread; the watchdog stops once it returns
    (the server it watches is going away; the new one needs a watchdog of its own).
    """

    def __init__(
        self,
        url: str,
        admin_key: str,
        server_pid: int,
        interval_s: float = 1.0,
        backoff_s: float = 5.0,
        max_backoff_s: float = 300.0,
        backoff_window_s: float = 600.0,
        load_timeout_s: float = 600.0,
        log: logging.Logger = LOG,
        restart_server: Callable[[ServerRestart], None] | None = None,
    ) -> None:
        if interval_s <= 0:
            raise ValueError(f"interval_s must be > 0, got {interval_s}")
        self.url = url if "://" in url else f"http://{url}"
        self.admin_key = admin_key
        self.server_pid = server_pid
        self.interval_s = interval_s
        self.backoff_s, self.max_backoff_s, self.backoff_window_s = backoff_s, max_backoff_s, backoff_window_s
        self.load_timeout_s = load_timeout_s
        self.log = log
        self.restart_server = restart_server
        self.restarts: list[Restart] = []
        self.server_restarts: list[ServerRestart] = []
        self._seen: dict[int, Stub] = {}  # live stubs at the last check
        self._died: dict[str, list[Stub]] = {}  # per model: stubs gone since it last had all of them
        self._configs: dict[str, tuple[frozenset[int], dict[str, Any]]] = {}  # per model, per stub pid set
        self._attempts: dict[str, list[float]] = {}  # per model: monotonic times of its reloads
        self._deferred: dict[str, int] = {}  # per model: attempt count whose backoff was logged
        self._unwatched: set[str] = set()  # models whose stubs do not match their config's count
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- running -------------------------------------------------------------------------------

    def start(self) -> Watchdog:
        self._thread = threading.Thread(target=self.run, name="triton-watchdog", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout_s: float = 5.0) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout_s)

    def run(self) -> None:
        """Check every interval until stopped or the server process is gone."""
        while not self._stop.wait(self.interval_s):
            if not alive(self.server_pid):
                return
            try:
                self.check()
            except Exception:  # noqa: BLE001 - a watchdog that dies of one bad answer watches nothing
                self.log.exception("watchdog: check failed; trying again in %.1f s", self.interval_s)

    def seen_alive(self) -> frozenset[int]:
        """The pids of the stubs alive at the last check. A stub that dies before any check saw it
        is still mended, but its restart cannot name it (`Restart.dead` is empty)."""
        return frozenset(self._seen)

    def leaked_regions(self) -> set[str]:
        """Shared-memory regions of stubs that died: Triton never finalizes their instances, so it
        never removes these from /dev/shm. Safe to unlink once the server has exited."""
        dead = [s for r in self.restarts for s in r.dead] + [s for d in self._died.values() for s in d]
        return {s.region for s in dead}

    # ---- one check -----------------------------------------------------------------------------

    def check(self) -> list[Restart]:
        """Look once; mend each READY model that runs fewer stubs than it has instances. The reloads made."""
        states = self._states()
        if states is None:  # not up yet, or going down
            return []
        live = stubs(self.server_pid)
        pids = {s.pid for s in live}
        for pid, stub in self._seen.items():
            if pid not in pids:  # for the log: which stub it was, when it was seen alive before
                self._died.setdefault(stub.model, []).append(stub)
        self._seen = {s.pid: s for s in live}
        by_model: dict[str, list[Stub]] = {}
        for stub in live:
            by_model.setdefault(stub.model, []).append(stub)

        lost: dict[str, dict[str, Any]] = {}
        for model, state in states.items():
            if state != "READY" or model in self._unwatched:
                if state != "LOADING":  # unloaded, or gone from the repository: not ours to bring back
                    self._died.pop(model, None)
                continue
            running = by_model.get(model, [])
            config = self._config(model, running)
            if len(running) >= expected_stubs(config):  # whole, or replaced by someone's reload
                self._died.pop(model, None)
                continue
            lost[model] = config
        if not lost:
            return []
        states = self._states() or {}  # an unload may have begun while the processes were listed
        lost = {model: config for model, config in lost.items() if states.get(model) == "READY"}
        return self._mend(lost, {model: len(running) for model, running in by_model.items()})

    def _mend(self, lost: dict[str, dict[str, Any]], running: dict[str, int]) -> list[Restart]:
        """Restart the server if a lost model's policy asks for it and there is a callback (that
        brings every model back); otherwise reload each lost model whose backoff allows it."""
        stranding = [model for model, config in lost.items() if self._policy(model, config) == RESTART_SERVER]
        if stranding and self.restart_server is not None:
            model = stranding[0]
            self._restart_server(self.restart_server, model, lost[model], running.get(model, 0))
            return []
        made = []
        for model, config in lost.items():
            if self._due(model):
                if model in stranding:
                    self.log.error(
                        "watchdog: model %r asks for a server restart when a stub dies (%s: %s), but no one "
                        "can restart this tritonserver; reloading it instead: requests that were in flight on "
                        "the dead stub stay unanswered until their clients' deadlines", model, POLICY, RESTART_SERVER,
                    )  # fmt: skip
                made.append(self._restart(model, config, running.get(model, 0)))
        return made

    def _policy(self, model: str, config: dict[str, Any]) -> str:
        """stub_death_policy; a value it does not know is logged and taken as reload_model."""
        try:
            return stub_death_policy(config)
        except ValueError as err:
            self.log.error("watchdog: model %r: %s; reloading it", model, err)
            return RELOAD_MODEL

    def _describe(self, model: str, running: int, expected: int) -> tuple[tuple[Stub, ...], str]:
        """The stubs of `model` seen dying, and words for the log."""
        dead = tuple(self._died.get(model, []))
        what = ", ".join(f"instance {s.instance or '?'} pid {s.pid}" for s in dead)
        return dead, what or f"{running} of {expected} running"  # died before the watchdog first saw it

    def _restart_server(self, callback: Callable[[ServerRestart], None], model: str, config: dict[str, Any],
                        running: int) -> None:  # fmt: skip
        dead, what = self._describe(model, running, expected_stubs(config))
        self.log.warning(
            "watchdog: stub process of model %r died (%s); restarting tritonserver (pid %d), as its config "
            "asks (%s: %s): a reload would not do, because Triton 2.51 never answers the requests that were "
            "in flight on a dead stub of a model that answers them from a thread of its own; ending the "
            "server closes their connections, so their clients get an error now instead of at their deadlines",
            model, what, self.server_pid, POLICY, RESTART_SERVER,
        )  # fmt: skip
        # mapped_regions finds them all under the default name prefix; the stubs' argv, under another.
        regions = frozenset({s.region for s in stubs(self.server_pid)} | self.leaked_regions()
                            | mapped_regions(self.server_pid))  # fmt: skip
        event = ServerRestart(model, dead, self.server_pid, regions)
        callback(event)
        self.server_restarts.append(event)
        self._stop.set()  # the server goes away; whoever restarts it starts a new watchdog

    def _due(self, model: str) -> bool:
        """No backoff for a first restart; then 5 s, 10 s, ... up to max_backoff_s within the window."""
        now = time.monotonic()
        recent = [t for t in self._attempts.get(model, []) if now - t < self.backoff_window_s]
        if not recent:
            return True
        wait = min(self.max_backoff_s, self.backoff_s * 2 ** (len(recent) - 1))
        if now - recent[-1] >= wait:
            return True
        if self._deferred.get(model) != len(recent):
            self._deferred[model] = len(recent)
            self.log.warning(
                "watchdog: %r lost a stub again (%d restarts in %.0f s); next reload in %.0f s",
                model, len(recent), self.backoff_window_s, wait - (now - recent[-1]),
            )  # fmt: skip
        return False

    def _restart(self, model: str, config: dict[str, Any], running: int) -> Restart:
        expected = expected_stubs(config)
        dead, what = self._describe(model, running, expected)
        self.log.warning("watchdog: stub process of model %r died (%s); reloading %r", model, what, model)
        config = dict(config)
        config["parameters"] = dict(config.get("parameters") or {})
        config["parameters"][NONCE] = {"string_value": str(time.time_ns())}
        self._attempts.setdefault(model, []).append(time.monotonic())
        started = time.monotonic()
        try:
            self._post(f"/v2/repository/models/{model}/load", {"parameters": {"config": json.dumps(config)}},
                       self.load_timeout_s)  # fmt: skip
            error = None
        except (WatchdogError, OSError) as err:
            error = str(err)
        restart = Restart(model, dead, time.monotonic() - started, error)
        self.restarts.append(restart)
        if error is not None:
            self.log.error("watchdog: reloading model %r failed after %.1f s: %s", model, restart.seconds, error)
            return restart
        self._died.pop(model, None)
        new = sorted(s.pid for s in stubs(self.server_pid) if s.model == model)
        self.log.warning(
            "watchdog: model %r serves again: reloaded in %.1f s (restart %d, stub pid %s)",
            model, restart.seconds, len(self._attempts[model]), ", ".join(map(str, new)) or "?",
        )  # fmt: skip
        if len(new) < expected:  # the count from its config is wrong: reloading again would not help
            self._unwatched.add(model)
            self.log.error(
                "watchdog: model %r runs %d stub processes after a reload, its config asks for %d; "
                "no longer watching it", model, len(new), expected,
            )  # fmt: skip
        return restart

    # ---- talking to the server -----------------------------------------------------------------

    def _states(self) -> dict[str, str] | None:
        """Model name -> state from the repository index (READY wins over a version's other state)."""
        try:
            index = self._post("/v2/repository/index", {}, 10)
        except (WatchdogError, OSError):
            return None
        states: dict[str, str] = {}
        for entry in index:
            name, state = entry.get("name", ""), entry.get("state", "")
            if states.get(name) != "READY":
                states[name] = state
        return states

    def _config(self, model: str, running: Iterable[Stub]) -> dict[str, Any]:
        """The model's config, fetched again whenever its set of stub processes changes."""
        key = frozenset(s.pid for s in running)
        cached = self._configs.get(model)
        if cached is None or cached[0] != key:
            cached = (key, self._get(f"/v2/models/{model}/config"))
            self._configs[model] = cached
        return cached[1]

    def _get(self, path: str) -> Any:
        return self._call(urllib.request.Request(self.url + path), 10)

    def _post(self, path: str, body: dict[str, Any], timeout_s: float) -> Any:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(body).encode(), method="POST",
            headers={ADMIN_HEADER: self.admin_key, "Content-Type": "application/json"},
        )  # fmt: skip
        return self._call(request, timeout_s)

    @staticmethod
    def _call(request: urllib.request.Request, timeout_s: float) -> Any:
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                body = response.read()
        except urllib.error.HTTPError as err:
            text = err.read().decode(errors="replace")
            try:
                text = json.loads(text).get("error", text)
            except (ValueError, AttributeError):
                pass
            raise WatchdogError(f"HTTP {err.code}: {text}") from None
        return json.loads(body) if body else None


def end_server(event: ServerRestart, wait_s: float = 10.0) -> None:
    """The command line's `restart_server`: SIGKILL tritonserver, for whoever started it to start it
    again (in the container: docker/tritonserver-entrypoint.sh exits with it, and Docker's restart
    policy starts the container again). SIGKILL, because a graceful stop (SIGINT, SIGTERM) waits
    out --exit-timeout-secs for the stranded requests, which never finish. Raises if it lives on
    (the watchdog then keeps watching and tries again)."""
    try:
        os.kill(event.server_pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    deadline = time.monotonic() + wait_s
    while alive(event.server_pid):
        if time.monotonic() > deadline:  # e.g. PID 1 of a PID namespace, which ignores SIGKILL from inside it
            raise RuntimeError(f"tritonserver pid {event.server_pid} still runs {wait_s:.0f} s after SIGKILL")
        time.sleep(0.1)
    event.remove_regions()
    LOG.warning("watchdog: ended tritonserver pid %d; whoever started it starts it again", event.server_pid)


def main(argv: list[str] | None = None) -> None:
    """`python -m ddpm_triton.watchdog --server-pid PID`: watch a tritonserver started elsewhere.

    A model whose config says `on_stub_death: restart_server` gets its server ended (end_server)."""
    parser = argparse.ArgumentParser(prog="python -m ddpm_triton.watchdog", description=main.__doc__)
    parser.add_argument("--server-pid", type=int, required=True,
                        help="tritonserver's pid (stubs are its children); not PID 1 of a PID namespace: "
                             "SIGKILL does not reach that from inside")  # fmt: skip
    parser.add_argument("--url", default="127.0.0.1:8000", help="its HTTP endpoint")
    parser.add_argument("--interval", type=float, default=1.0, help="seconds between checks")
    parser.add_argument("--load-timeout", type=float, default=600.0, help="seconds one reload may take")
    args = parser.parse_args(argv)
    key = os.environ.get("TRITON_ADMIN_KEY")
    if not key:
        parser.error("TRITON_ADMIN_KEY must hold the server's admin key (reloads use the model-repository API)")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    LOG.info("watchdog: watching tritonserver pid %d at %s every %.1f s", args.server_pid, args.url, args.interval)
    Watchdog(args.url, key, args.server_pid, args.interval, load_timeout_s=args.load_timeout,
             restart_server=end_server).run()  # fmt: skip
    LOG.info("watchdog: tritonserver pid %d is gone; stopping", args.server_pid)


if __name__ == "__main__":
    main()
