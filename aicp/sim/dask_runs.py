"""Runs on a Dask cluster: ``--dask tcp://host:8786`` or ``--dask local[:N]``.

Workers only compute. Each run comes back as its summary plus the arrays its run
folder keeps (timelines, and per-task records only when the folder keeps them), and
the client writes them: workers need no shared filesystem. The files a scenario reads
(trace arrivals, empirical samples) travel the other way: the client reads them, Dask
sends them once to each worker that needs them, and the worker keeps a copy in its
temp folder, named by content. A run's result depends
only on its spec (scenario, strategy, replication, seed), so it is the same on any
worker, and ``aggregate.json`` is byte-identical to a local ``--jobs`` run.

Faults:

- a worker that dies mid-run (SIGKILL, lost machine): the scheduler sends its runs to
  another worker (up to ``distributed.scheduler.allowed-failures`` times); each run
  still has exactly one outcome, and ``RunLog.retried`` names the runs that were sent
  to a worker more than once (counted on the scheduler by ``AttemptCounter``);
- a run that raises: ``run_one`` records the error and its traceback in the run's
  summary, as in local processes; a run Dask itself gives up on (``KilledWorker``)
  is reported the same way, with its spec; the other runs go on;
- Ctrl-C: the futures are cancelled, the cluster (if started here) is closed, and the
  caller writes the runs finished so far.

``local[:N]`` starts a ``LocalCluster`` of N worker processes (default: CPUs) with one
thread each, on 127.0.0.1, its dashboard on a free port, and ``QUIET`` settings: Dask's
own background work (a profiler sampling the running task's stack every 10 ms, event-loop
and memory checks every 20 and 100 ms) took 40 ms of CPU per second on each idle worker
and 60 ms/s in the client, scheduler and nannies, CPU the runs need on the same cores.
"""

from __future__ import annotations

import hashlib
import io
import os
import sys
import tempfile
import traceback
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

try:
    import dask
    from distributed import Client, Future, LocalCluster, as_completed
    from distributed.diagnostics.plugin import SchedulerPlugin
except ImportError as exc:  # pragma: no cover - depends on the install
    raise ImportError("--dask needs the dask extra: pip install 'aicp[dask]'") from exc
import msgspec
import numpy as np
from tqdm import tqdm

import aicp
from aicp.sim.runner import RunLog, RunOutcome, RunSpec, kept_arrays, run_one
from aicp.sim.scenario import EmpiricalDist, Scenario, TraceArrival

#: Dask settings for a cluster whose workers run simulations of seconds each: no statistical
#: profiler (it interrupts the run's thread every 10 ms to walk its stack), and the event
#: loop's periodic checks every second or two instead of every 20-500 ms. Applied to the
#: ``local`` clusters started here; docs/SIMULATOR.md gives them as a config file for others.
QUIET: dict[str, Any] = {
    "distributed.worker.profile.enabled": False,
    "distributed.admin.tick.interval": "1s",
    "distributed.worker.memory.monitor-interval": "1s",
    "distributed.admin.system-monitor.interval": "2s",
}

#: what a run's folder keeps, as the bytes of each .npz file: {"timelines": b"PK...", "records": b"PK..."}
Kept = dict[str, bytes]


def parse_address(text: str) -> tuple[str, int | None]:
    """``local`` -> ("local", None); ``local:N`` -> ("local", N); ``tcp://host:port`` -> (text, None)."""
    if text == "local":
        return "local", None
    if text.startswith("local:"):
        n = text.partition(":")[2]
        if not n.isdigit() or int(n) < 1:
            raise ValueError(f"--dask {text!r}: N in local:N must be a positive integer")
        return "local", int(n)
    if "://" in text and text.partition("://")[2]:
        return text, None
    raise ValueError(f"--dask {text!r}: expected a scheduler address (tcp://HOST:8786) or local[:N]")


@contextmanager
def connect(address: str, dashboard: bool = True) -> Iterator[Client]:
    """A client of the scheduler at ``address``, or of a LocalCluster started (and closed) here."""
    kind, n = parse_address(address)
    cluster: LocalCluster | None = None
    client: Client | None = None
    try:
        if kind == "local":
            with dask.config.set(QUIET):  # read by the scheduler here and passed on by each nanny to its worker
                cluster = LocalCluster(
                    n_workers=n or os.cpu_count() or 1,
                    threads_per_worker=1,
                    processes=True,
                    host="127.0.0.1",
                    dashboard_address="127.0.0.1:0" if dashboard else None,
                )
            client = Client(cluster)
        else:
            client = Client(address, timeout=30)
        yield client
    finally:
        if client is not None:
            client.close()
        if cluster is not None:
            cluster.close()


class AttemptCounter(SchedulerPlugin):
    """On the scheduler: how many times each key of one batch was sent to a worker.

    A key goes to ``processing`` once per attempt; when its worker dies it goes back
    to ``waiting`` and then to ``processing`` on another worker. O(1) per transition.
    """

    def __init__(self, prefix: str) -> None:
        self.name = f"{prefix}-attempts"
        self.prefix = prefix
        self.attempts: dict[str, int] = {}

    def transition(self, key: Any, start: str, finish: str, *args: Any, **kwargs: Any) -> None:
        if finish == "processing" and isinstance(key, str) and key.startswith(self.prefix):
            self.attempts[key] = self.attempts.get(key, 0) + 1


def _read_attempts(dask_scheduler: Any, name: str) -> dict[str, int]:
    plugin = dask_scheduler.plugins.get(name)
    return dict(plugin.attempts) if plugin is not None else {}


def _aicp_version() -> str:
    return aicp.__version__


def scenario_files(s: Scenario) -> dict[str, bytes]:
    """The content of every file ``s`` reads (trace arrivals, empirical samples), by resolved path."""
    files: dict[str, bytes] = {}

    def visit(obj: Any) -> None:
        if isinstance(obj, EmpiricalDist | TraceArrival):
            path = s.resolve(obj.file)
            files[str(path)] = path.read_bytes()
        elif isinstance(obj, msgspec.Struct):
            for name in obj.__struct_fields__:
                visit(getattr(obj, name))
        elif isinstance(obj, list | tuple):
            for item in obj:
                visit(item)

    visit(s)
    return files


def with_local_files(s: Scenario, files: dict[str, bytes]) -> Scenario:
    """``s`` reading its files from copies in this machine's temp folder
    (``aicp-files/<sha256 prefix>/<name>``, written once, atomically)."""
    moved: dict[str, str] = {}
    for path, data in files.items():
        local = Path(tempfile.gettempdir()) / "aicp-files" / hashlib.sha256(data).hexdigest()[:20] / Path(path).name
        if not local.is_file():
            local.parent.mkdir(parents=True, exist_ok=True)
            part = local.with_name(f"{local.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.part")
            part.write_bytes(data)
            os.replace(part, local)
        moved[path] = str(local)

    def swap(obj: Any) -> Any:
        if isinstance(obj, EmpiricalDist | TraceArrival):
            return msgspec.structs.replace(obj, file=moved[str(s.resolve(obj.file))])
        if isinstance(obj, msgspec.Struct):
            changes = {name: swap(getattr(obj, name)) for name in obj.__struct_fields__}
            changes = {name: v for name, v in changes.items() if v is not getattr(obj, name)}
            return msgspec.structs.replace(obj, **changes) if changes else obj
        if isinstance(obj, list):
            items = [swap(item) for item in obj]
            return items if any(a is not b for a, b in zip(items, obj)) else obj
        return obj

    out: Scenario = swap(s)
    return out


def remote_run(spec: RunSpec, files: dict[str, bytes] | None = None, keep_result: bool = False) -> tuple[RunOutcome, Kept | None]:
    """On a worker: run ``spec`` without touching any disk but its temp folder (for the
    scenario's ``files``); return its outcome and the files its folder keeps, already
    in .npz form (None when the spec has no folder).

    The worker builds the .npz bytes (the work a local process spends writing its
    files), so one buffer per file travels and the client only writes it out."""
    local = replace(spec, out_dir=None)
    if files:
        local = replace(local, scenario=with_local_files(spec.scenario, files))
    outcome = run_one(local, keep_result=True)
    kept = None
    if spec.out_dir is not None and outcome.result is not None:
        kept = {kind: _npz_bytes(arrays) for kind, arrays in kept_arrays(spec, outcome.result).items()}
    if not keep_result:
        outcome.result = None
    return outcome, kept


def _npz_bytes(arrays: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _write_kept(folder: Path, label: str, kept: Kept) -> None:
    for kind, data in kept.items():
        (folder / kind).mkdir(parents=True, exist_ok=True)
        (folder / kind / f"{label}.npz").write_bytes(data)


def _failed(spec: RunSpec, exc: BaseException, tb: Any) -> RunOutcome:
    """A run Dask could not bring back (e.g. ``KilledWorker``), reported like a run that raised."""
    err = f"{type(exc).__name__}: {exc}\n" + "".join(traceback.format_tb(tb) if tb is not None else [])
    summary = {"strategy": spec.strategy, "error": err, "replication": spec.replication, "point": spec.point}
    return RunOutcome(spec.point, spec.strategy, spec.replication, summary)


def run_on_dask(
    specs: Sequence[RunSpec], address: str, log: RunLog, progress: bool = True, keep_results: bool = False
) -> None:
    """Run every spec on the cluster at ``address``; outcomes go into ``log`` as they complete,
    arrays into each spec's ``out_dir`` (written here, by the client)."""
    with connect(address) as client:
        _check_versions(client)
        info = client.scheduler_info()
        workers, scheduler = len(client.nthreads()), info.get("address", "?")
        log.executor = {
            "kind": "dask",
            "address": address,
            "scheduler": scheduler,
            "dashboard": client.dashboard_link,
            "workers": workers,
        }
        print(f"dask: {workers} worker(s) at {scheduler}; dashboard {client.dashboard_link}", file=sys.stderr)
        prefix = f"aicp-run-{uuid.uuid4().hex[:12]}"
        counter = AttemptCounter(prefix)
        tracked = _register(client, counter)
        log.executor["retries_tracked"] = tracked
        keys = [f"{prefix}-{i}" for i in range(len(specs))]
        index = {key: i for i, key in enumerate(keys)}
        shipped = _ship_files(client, specs)
        futures: list[Future] = client.map(
            remote_run, list(specs), [shipped[id(s.scenario)] for s in specs], keep_result=keep_results, key=keys, pure=False
        )
        pending = set(keys)
        bar = tqdm(total=len(specs), desc="runs (dask)", unit="run", disable=not progress, leave=False, file=sys.stderr)
        try:
            # results are fetched by the client's event loop as runs finish, not one round trip at a time here
            for fut, got in as_completed(futures, with_results=True, raise_errors=False):
                i = index[fut.key]
                spec = specs[i]
                if fut.status == "finished":
                    outcome, kept = got
                else:  # erred (KilledWorker, or the task could not start) or cancelled
                    exc = got[1] if isinstance(got, tuple) else got
                    outcome, kept = _failed(spec, exc, getattr(exc, "__traceback__", None)), None
                if kept is not None and spec.out_dir is not None:
                    _write_kept(Path(spec.out_dir), spec.label, kept)
                log.outcomes[i] = outcome
                pending.discard(fut.key)
                fut.release()
                bar.update(1)
        except BaseException:
            client.cancel([f for f in futures if f.key in pending], force=True)
            raise
        finally:
            bar.close()
            if tracked:
                _note_retried(client, counter, specs, index, log)


def _ship_files(client: Client, specs: Sequence[RunSpec]) -> dict[int, Future | None]:
    """Per scenario (by identity): a future of the files it reads, scattered once, or None."""
    shipped: dict[int, Future | None] = {}
    for spec in specs:
        if id(spec.scenario) not in shipped:
            files = scenario_files(spec.scenario)
            shipped[id(spec.scenario)] = client.scatter([files], hash=True)[0] if files else None
    return shipped


def _check_versions(client: Client) -> None:
    """Every worker must run the client's aicp version, or the same spec could give another result."""
    try:
        versions = client.run(_aicp_version)
    except Exception as exc:
        raise RuntimeError(f"the Dask workers cannot import aicp ({type(exc).__name__}: {exc}); install aicp on each") from exc
    wrong = {w: v for w, v in versions.items() if v != aicp.__version__}
    if wrong:
        raise RuntimeError(f"the client runs aicp {aicp.__version__} but these workers do not: {wrong}")


def _register(client: Client, counter: AttemptCounter) -> bool:
    try:
        client.register_plugin(counter)
    except Exception as exc:  # e.g. a scheduler without aicp installed
        print(f"dask: retried runs will not be noted ({type(exc).__name__}: {exc})", file=sys.stderr)
        return False
    return True


def _note_retried(client: Client, counter: AttemptCounter, specs: Sequence[RunSpec], index: dict[str, int], log: RunLog) -> None:
    try:
        attempts = client.run_on_scheduler(_read_attempts, name=counter.name)
        client.unregister_scheduler_plugin(counter.name)
    except Exception as exc:
        print(f"dask: could not read the retried runs ({type(exc).__name__}: {exc})", file=sys.stderr)
        log.executor["retries_tracked"] = False
        return
    for key in sorted((k for k, n in attempts.items() if n > 1 and k in index), key=index.__getitem__):
        spec = specs[index[key]]
        log.retried.append(
            {"label": spec.label, "point": spec.point, "strategy": spec.strategy, "replication": spec.replication, "attempts": attempts[key]}
        )
