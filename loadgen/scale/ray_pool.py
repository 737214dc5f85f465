"""Workers as Ray actors spread over a cluster's nodes (``--ray-address``).

Each actor runs :func:`loadgen.scale.worker.run_worker` — the same worker as a local
process — on its own uvloop loop in an actor thread; Ray only carries the task in,
the start signal, progress polls and the result out. Nothing Ray does is on the hot
path.

Clocks. Durations are measured on each actor's own CLOCK_MONOTONIC, so they need no
cross-node clock. The common start is a wall-clock instant: before the run the driver
measures each actor's wall-clock offset (``time.time()`` there minus the midpoint of
the driver's send and receive, the round trip with the smallest delay of a few), picks
``start = now + RAY_START_MARGIN_S`` once every actor is warmed up and connected, and
sends each actor that instant in its own clock; the actor converts it to its monotonic
clock. The start is then as common as the offset estimate (half the round trip, well
under a millisecond on one network); each actor reports how late it actually began
(``start_late_ms``).

Store files are written on the actor's node (a temporary folder) and shipped back
with its result; the driver writes and concatenates them like local workers'.

An actor or node lost mid-run shows up as an error on its result: the others finish,
the point is partial and names it.
"""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from time import perf_counter_ns
from typing import Any

from loadgen import interrupts
from loadgen.errors import LoadgenError
from loadgen.interrupts import SIGNALS
from loadgen.scale.merge import read_blobs, write_blobs
from loadgen.scale.worker import (
    SummedCounters,
    WorkerOutcome,
    WorkerResult,
    WorkerTask,
    run_worker,
    tick_if_due,
)
from loadgen.store import StoreFiles

INSTALL_HINT = "pip install 'loadgen[ray]'"
RAY_START_MARGIN_S = 0.25  # the start messages cross the network: more room than local pipes


class RayMissing(LoadgenError, RuntimeError):
    pass


def import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise RayMissing(f"--ray-address needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


PROBE_TIMEOUT_S = 3.0
# An HTTP/2 client preface and an empty SETTINGS frame: a gRPC server (Ray's GCS, or its
# client server at ray://) answers with its own SETTINGS frame (type 4) at once.
_H2_HELLO = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n" + b"\x00\x00\x00\x04\x00\x00\x00\x00\x00"
START_HINT = "start one with `ray start --head` (then --ray-address HOST:6379) or fix --ray-address"


def _target(address: str) -> tuple[str, str] | None:
    """(the address Ray would join, where it came from); None when Ray will say quickly itself."""
    if address != "auto":
        return address, "--ray-address"
    env = os.environ.get("RAY_ADDRESS", "").strip()
    if env:
        return env, "RAY_ADDRESS"
    current = Path(tempfile.gettempdir()) / "ray" / "ray_current_cluster"  # where `ray start` notes its cluster
    try:
        text = current.read_text().strip()
    except OSError:
        return None  # no cluster noted: ray.init fails at once with its own one-line reason
    return (text, str(current)) if text else None


def reachability_problem(address: str, timeout_s: float = PROBE_TIMEOUT_S) -> str | None:
    """Why no Ray cluster answers at ``address``, in one line, within a few seconds; None if one may.

    ``ray.init`` itself retries an address for minutes, printing its own warnings,
    before it gives up; this asks the address once: is it HOST:PORT, does anything
    listen there, and does it speak gRPC (HTTP/2), as Ray does.
    """
    found = _target(address)
    if found is None:
        return None
    target, origin = found
    hostport = target[len("ray://"):] if target.startswith("ray://") else target
    host, sep, port = hostport.rpartition(":")
    host = host.strip("[]")
    if "://" in hostport or not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        return f"{origin} '{target}' is not HOST:PORT (a port in 1-65535), ray://HOST:PORT or auto"
    where = f"{origin} {target}"
    try:
        sock = socket.create_connection((host, int(port)), timeout=timeout_s)
    except socket.gaierror:
        return f"{where}: the host '{host}' is not known"
    except TimeoutError:
        return f"{where}: nothing answered within {timeout_s:g} s (a firewall, or no such machine)"
    except OSError as exc:
        return f"{where}: nothing listens there ({exc.strerror or exc})"
    with sock:
        try:
            sock.settimeout(timeout_s)
            sock.sendall(_H2_HELLO)
            data = sock.recv(64)
        except TimeoutError:
            return f"{where}: something accepts connections there but does not answer as a Ray cluster"
        except OSError:
            data = b""
    if len(data) >= 9 and data[3] == 4:
        return None
    what = ("an HTTP/1 server answers there" if data.startswith(b"HTTP/") or b"<html" in data.lower() else
            "it closed the connection without a word" if not data else f"it answered {data[:24]!r}")
    return f"{where}: not a Ray cluster ({what})"


def connect(address: str) -> Any:
    """Join the cluster at ``address`` (``auto``: the one this machine runs in) once per process."""
    ray = import_ray()
    if not ray.is_initialized():
        problem = reachability_problem(address)
        if problem is not None:
            raise RuntimeError(f"cannot join a Ray cluster: {problem}; {START_HINT}")
        # ray.init takes SIGTERM for itself; loadgen's own handling (stop, keep what was measured) stays.
        previous = interrupts.saved()
        try:
            ray.init(address=address, logging_level=logging.WARNING, log_to_driver=False)
        except (ConnectionError, RuntimeError, ValueError) as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise RuntimeError(f"cannot join the Ray cluster at '{address}' ({first}); {START_HINT}") from None
        finally:
            interrupts.restore(previous)
    return ray


def default_workers(address: str) -> int:
    """One actor per alive node."""
    ray = connect(address)
    return max(1, sum(1 for n in ray.nodes() if n.get("Alive")))


def check_capacity(address: str, actors: int) -> None:
    """Each actor takes one CPU: more actors than the cluster has CPUs would wait forever."""
    ray = connect(address)
    cpus = int(ray.cluster_resources().get("CPU", 0))
    if cpus < actors:
        raise RuntimeError(f"{actors} Ray actors need {actors} CPUs and the cluster at '{address}' has {cpus}: "
                           "lower --workers or add nodes (ray start --address ...)")


class ActorControl:
    """The worker's side in an actor: "ready" is a flag the driver polls, the start an event it sets.

    (A separate object: an ``async def`` on the actor class would make Ray run the
    whole actor on one asyncio loop, and the status calls could not get through.)
    """

    FIELDS = SummedCounters.FIELDS

    def __init__(self) -> None:
        self.ready = False
        self.go_event = threading.Event()
        self.start_wall = 0.0
        self.snapshot = [0] * len(self.FIELDS)
        self.stop: Callable[[int], None] | None = None
        self.pending_signal: int | None = None

    async def start(self) -> int:
        self.ready = True
        await asyncio.get_running_loop().run_in_executor(None, self.go_event.wait)
        return perf_counter_ns() + int((self.start_wall - time.time()) * 1e9)

    def publish(self, counters: Any) -> None:
        self.snapshot = [int(getattr(counters, f)) for f in self.FIELDS]

    def on_stop(self, stop: Callable[[int], None]) -> None:
        self.stop = stop
        if self.pending_signal is not None:
            stop(self.pending_signal)

    def loop_done(self) -> None:
        pass  # an actor's liveness is Ray's to report


class WorkerActor:
    """The actor: run one task; answer clock, status, start and stop calls meanwhile (threaded)."""

    def __init__(self) -> None:
        self.control = ActorControl()

    def clock(self) -> float:
        return time.time()

    def status(self) -> tuple[bool, list[int]]:
        return self.control.ready, list(self.control.snapshot)

    def go(self, start_wall_local: float) -> None:
        self.control.start_wall = start_wall_local
        self.control.go_event.set()

    def interrupt(self, signum: int) -> None:
        if self.control.stop is not None:
            self.control.stop(signum)
        else:
            self.control.pending_signal = signum

    def run(self, task: WorkerTask) -> WorkerResult:
        folder = Path(tempfile.mkdtemp(prefix="loadgen-actor-"))
        try:
            local = StoreFiles(
                requests=folder / task.store.requests.name,
                chunks=folder / task.store.chunks.name if task.store.chunks is not None else None,
                details=folder / task.store.details.name,
            )
            task.store = local
            task.in_thread = True
            result = _in_own_thread(lambda: run_worker(task, self.control))
            result.store_blobs = read_blobs(local)
            return result
        finally:
            shutil.rmtree(folder, ignore_errors=True)


def _in_own_thread(fn: Callable[[], Any]) -> Any:
    """Run ``fn`` in a plain thread: Ray's actor threads may already run an event loop."""
    out: dict[str, Any] = {}

    def body() -> None:
        try:
            out["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - re-raised in the caller
            out["error"] = exc

    t = threading.Thread(target=body, name="loadgen-worker", daemon=True)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


def clock_offset(ray: Any, actor: Any, rounds: int = 5, timeout_s: float = 120.0) -> float:
    """Actor wall clock minus driver wall clock, from the quickest of ``rounds`` round trips."""
    best: tuple[float, float] | None = None
    for _ in range(rounds):
        t0 = time.time()
        there = ray.get(actor.clock.remote(), timeout=timeout_s)
        t1 = time.time()
        if best is None or t1 - t0 < best[0]:
            best = (t1 - t0, there - (t0 + t1) / 2)
    return best[1] if best is not None else 0.0


def _describe(exc: BaseException) -> str:
    exc = getattr(exc, "cause", None) or exc  # a RayTaskError wraps what the actor raised
    text = str(exc).strip().splitlines()
    return f"failed ({type(exc).__name__}{': ' + text[0][:200] if text else ''})"


def run_tasks(tasks: Sequence[WorkerTask], *, counters: SummedCounters, on_tick: Callable[[], Any],
              address: str | None = None, tick_s: float = 0.25,
              on_started: Callable[[], Any] | None = None) -> list[WorkerOutcome]:
    """Run every task as a Ray actor (scheduling strategy SPREAD); one outcome per task, in order."""
    ray = connect(address or "auto")
    actor_cls = ray.remote(num_cpus=1, max_concurrency=4)(WorkerActor)
    actors = [actor_cls.options(scheduling_strategy="SPREAD", name=None).remote() for _ in tasks]
    outcomes = [WorkerOutcome(t.index, store=t.store) for t in tasks]
    if on_started is not None:
        on_started()
    seen: list[int] = []
    forwarded = 0
    previous = interrupts.saved()
    for sig in SIGNALS:
        signal.signal(sig, lambda signum, frame: seen.append(signum))
    try:
        offsets: list[float] = []
        for i, a in enumerate(actors):
            try:
                offsets.append(clock_offset(ray, a))
            except Exception as exc:  # noqa: BLE001 - an actor that never came up
                offsets.append(0.0)
                outcomes[i].error = _describe(exc)
        for o, off in zip(outcomes, offsets, strict=True):
            o.clock_offset_ms = off * 1000.0
        refs = {i: actors[i].run.remote(t) for i, t in enumerate(tasks) if outcomes[i].error is None}
        pending = dict(refs)
        ready: set[int] = set()
        started = False
        next_tick = time.monotonic() + tick_s
        while pending:
            while forwarded < len(seen):
                for i in pending:
                    actors[i].interrupt.remote(seen[forwarded])
                forwarded += 1
            done, _ = ray.wait(list(pending.values()), num_returns=1, timeout=0.02 if not started else tick_s)
            for ref in done:
                i = next(k for k, v in pending.items() if v == ref)
                del pending[i]
                try:
                    result: WorkerResult = ray.get(ref)
                except Exception as exc:  # noqa: BLE001 - RayActorError, a lost node, a worker error
                    outcomes[i].error = _describe(exc)
                    continue
                write_blobs(result.store_blobs or {}, tasks[i].store)
                result.store_blobs = None
                outcomes[i].result = result
            polls = {i: actors[i].status.remote() for i in pending}
            for i, ref in polls.items():
                try:
                    is_ready, snap = ray.get(ref, timeout=10)
                except Exception:  # noqa: BLE001 - the run ref will say what happened
                    continue
                if is_ready:
                    ready.add(i)
                counters.rows[i * len(snap):(i + 1) * len(snap)] = snap
            if not started and all(i in ready for i in pending):
                started = True
                start = time.time() + RAY_START_MARGIN_S
                for i in pending:
                    actors[i].go.remote(start + offsets[i])
            next_tick = tick_if_due(next_tick, tick_s, on_tick)
    finally:
        interrupts.restore(previous)
        for a in actors:
            try:
                ray.kill(a)
            except Exception:  # noqa: BLE001 - already gone
                pass
    if seen:
        interrupts.note(seen[0])
    return outcomes
