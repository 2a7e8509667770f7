"""Where a job's time goes, read from the Celery task events of real jobs.

The workers send ``task-sent``, ``task-received``, ``task-started`` and
``task-succeeded`` events (with each task's runtime and a repr of its result), and the
client's own publish sends ``task-sent`` too (stamped just after the message is out, so
a worker may receive it a hair "before" it was sent).  From those alone a job splits
into its serial head (submit until the first edit starts), its parallel body (the edits, until
the last one sends the merge) and its serial tail (until the client has the result); the
three add up to the end-to-end time.  How the job was laid out (tiles, halo, where the source is decoded)
is what the split's own result reports.  Nothing of the data path is re-run by hand here,
so the breakdown cannot drift from what the tasks really do.
"""

from __future__ import annotations

import ast
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tilechord import Client

from .pillow import same_output

#: The event kinds whose timestamps a timeline keeps (``task-`` taken off).
STAMPS = ("sent", "received", "started", "succeeded", "failed")


class EventLog:
    """Celery task events (sent/received/started/succeeded) from every process, on a thread."""

    def __init__(self, client: Client) -> None:
        self.app = client.app
        self.events: list[dict[str, Any]] = []
        self._receiver: Any = None
        self._thread = threading.Thread(target=self._run, name="bench-events", daemon=True)
        self._ready = threading.Event()

    def _run(self) -> None:
        with self.app.connection_for_read() as conn:
            self._receiver = self.app.events.Receiver(conn, handlers={"*": self.events.append})
            self._ready.set()
            self._receiver.capture(limit=None, timeout=None, wakeup=False)

    @contextmanager
    def capturing(self) -> Iterator[EventLog]:
        self._thread.start()
        self._ready.wait(10)
        time.sleep(0.5)  # the fanout subscription must exist before the job starts
        try:
            yield self
        finally:
            time.sleep(0.5)  # the last task-succeeded follows the client's result
            if self._receiver is not None:
                self._receiver.should_stop = True
            self._thread.join(5)


def _report(text: Any) -> Any:
    """A task's result as its ``task-succeeded`` event carries it (a repr), read back."""
    try:
        return ast.literal_eval(text) if isinstance(text, str) else text
    except (ValueError, SyntaxError):
        return text


def timeline(events: list[dict[str, Any]], job_id: str, t0: float, t_end: float) -> list[dict[str, Any]]:
    """Per task of the job: sent/received/started/succeeded in ms after submit, runtime, result.

    Every task of a job has an id of its own (``<job>``, ``<job>-edit-i``, ``<job>-merge``);
    an event is attributed to the task last named for its id.  ``chord out`` marks when the
    split had sent its chord (the first edit's ``sent``).
    """
    current: dict[str, str] = {}
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for ev in events:
        uuid, kind = ev.get("uuid"), str(ev.get("type", "")).removeprefix("task-")
        if not isinstance(uuid, str) or kind not in STAMPS:
            continue
        if ev.get("name") and (uuid.startswith(job_id) or ev.get("root_id") == job_id):
            current[uuid] = str(ev["name"]).removeprefix("tilechord.")
        name = current.get(uuid)
        if name is None:
            continue
        if name == "edit":
            name = f"edit tile {int(uuid.rsplit('-', 1)[-1]) + 1}"
        entry = rows.setdefault((uuid, name), {"task": name})
        entry.setdefault(kind, round((ev["timestamp"] - t0) * 1000, 1))
        if "runtime" in ev:
            entry["runtime_ms"] = round(ev["runtime"] * 1000, 1)
        if kind == "succeeded" and "result" in ev:
            entry["result"] = _report(ev["result"])
    out = sorted(rows.values(), key=lambda e: min(e[k] for k in STAMPS if k in e))
    edits_sent = [e["sent"] for e in out if e["task"].startswith("edit") and "sent" in e]
    for e in out:
        if e["task"] == "split" and edits_sent:
            e["chord out"] = min(edits_sent)  # the split has sent its chord
    out.append({"task": "client has the result", "done": round((t_end - t0) * 1000, 1)})
    return out


@dataclass
class Traced:
    """One job run while the events were recorded: its timeline, its result, when it was submitted."""

    events: list[dict[str, Any]]
    data: bytes
    t0: float = 0.0  # time.time() at submit: the timeline's zero


def traced_jobs(
    client: Client,
    data: bytes | Path,
    spec: str,
    grid: str | tuple[int, int],
    count: int,
    fmt: str = "JPEG",
    timeout: float = 120.0,
) -> list[Traced]:
    """Run *count* jobs one after another while recording the task events; their timelines.

    *data* is the source as the client takes it: bytes, or a file's path (the client reads it).
    """
    log = EventLog(client)
    done: list[tuple[str, float, float, bytes]] = []
    with log.capturing():
        for n in range(count):
            if n:
                time.sleep(0.3)  # the previous job's last events and result writes settle first
            t0 = time.time()
            job = client.submit(data, [spec], grid=grid, format=fmt)
            out = job.get(timeout=timeout)
            done.append((job.id, t0, time.time(), out))
    return [Traced(timeline(log.events, job_id, t0, t_end), out, t0) for job_id, t0, t_end, out in done]


def job_phases(events: list[dict[str, Any]], workers: int) -> dict[str, Any] | None:
    """Serial head, parallel body and serial tail of one ``split -> edits -> merge`` job (ms).

    ``None`` for a job without that shape (one tile: the split did it all) or with an
    event missing.  Head and tail are told apart into the client, the tasks' own work and
    the hand-overs between tasks on the critical path (the message queued, received by a
    worker, passed to a pool process); the three hand-overs together are what Celery and
    Redis add between the tasks, whatever the tasks do.
    """
    by_task = {e["task"]: e for e in events}
    split, merge = by_task.get("split"), by_task.get("merge")
    edits = [e for e in events if e["task"].startswith("edit tile")]
    needed = ("sent", "started", "succeeded", "runtime_ms")
    if split is None or merge is None or not edits:
        return None
    if any(k not in e for e in (split, merge, *edits) for k in needed):
        return None
    done = events[-1]["done"]
    chord_out = min(e["sent"] for e in edits)
    first = min(e["started"] for e in edits)
    last = merge["sent"]  # the last edit sent the merge as it stored its result: the body's end
    runtimes = [e["runtime_ms"] for e in edits]
    body = last - first
    head = {
        "client: check, store the source, publish": split["sent"],
        "split queued": split["started"] - split["sent"],
        "split until its chord is out": chord_out - split["started"],
        "first edit queued": first - chord_out,
    }
    tail = {"merge queued": merge["started"] - last, "merge, client reads": done - merge["started"]}
    handovers = head["split queued"] + head["first edit queued"] + tail["merge queued"]
    return {
        "end_to_end_ms": done,
        "head_ms": first,
        "body_ms": body,
        "tail_ms": done - last,
        "head": head,
        "tail": tail,
        "edit_runtimes_ms": runtimes,
        "edits_busy_pct": 100 * sum(runtimes) / (body * min(workers, len(edits))) if body > 0 else 0.0,
        "runtimes_ms": {
            "split": split["runtime_ms"],
            "slowest edit": max(runtimes),
            "merge": merge["runtime_ms"],
        },
        "client_ms": head["client: check, store the source, publish"],
        "handovers_ms": handovers,
        "rest_ms": done - head["client: check, store the source, publish"] - handovers,
    }


def median_of(values: list[Any]) -> Any:
    """The median of each number of several same-shaped phase records (dicts, lists, numbers)."""
    first = values[0]
    if isinstance(first, dict):
        return {key: median_of([v[key] for v in values]) for key in first}
    if isinstance(first, list) and all(len(v) == len(first) for v in values):
        return [median_of([v[i] for v in values]) for i in range(len(first))]
    if isinstance(first, int | float) and not isinstance(first, bool):
        return round(statistics.median(values), 1)
    return first


def reported(events: list[dict[str, Any]], task: str) -> dict[str, Any]:
    """What a task of the job returned (its ``task-succeeded`` result), or ``{}``."""
    for e in events:
        if e["task"] == task and isinstance(e.get("result"), dict):
            return dict(e["result"])
    return {}


def breakdown(traced: list[Traced], workers: int, expected: bytes) -> dict[str, Any]:
    """The phases of every traced job, their medians, the job's own reports and a check."""
    shaped = [(t, p) for t, p in ((t, job_phases(t.events, workers)) for t in traced) if p is not None]
    every = [p for _, p in shaped]
    ends = [p["end_to_end_ms"] for p in every]
    typical = shaped[ends.index(statistics.median_low(ends))][0] if shaped else traced[0]
    checks = sorted({same_output(t.data, expected) for t in traced})
    return {
        "jobs": len(traced),
        "split_report": reported(typical.events, "split"),
        "merge_report": reported(typical.events, "merge"),
        "edit_reports": [
            e["result"] for e in typical.events if e["task"].startswith("edit") and "result" in e
        ],
        "median": median_of(every) if every else None,
        "per_job": [median_of([p]) for p in every],  # each job's own, rounded alike
        "timeline": typical.events,
        "same_as_pillow": next((c for c in checks if c.startswith("DIFFERENT")), ", ".join(checks)),
    }
