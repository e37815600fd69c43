"""Reading the evidence from outside the workers: Temporal, JetStream, the cluster's admin view.

Each reader returns plain JSON-able data in the shape `chaos.checker` documents.
"""
from __future__ import annotations

import asyncio
import json
import time

import aiohttp
from nats.js.errors import NotFoundError
from temporalio.api.enums.v1 import EventType
from temporalio.client import Client, WorkflowHistory
from temporalio.service import RPCError, RPCStatusCode

from executor.records import BUCKET as RECORDS_BUCKET
from executor.wallets import KEY_PREFIX as WALLET_KEY_PREFIX
from worker.bridge import DURABLE, workflow_id
from workflows.events import ExecutionResultEvent
from workflows.execute_plan import PLAN_STATUS

WALLET_BUCKET = "wallet_leases"
RUNNING_PLANS = 'WorkflowType = "ExecutePlan" AND ExecutionStatus = "Running"'
EVENT_PREFIX = "EVENT_TYPE_"


def event_name(event_type: int) -> str:
    """EVENT_TYPE_WORKFLOW_TASK_STARTED -> WorkflowTaskStarted (as the UI and the checker name them)."""
    return "".join(part.capitalize() for part in EventType.Name(event_type).removeprefix(EVENT_PREFIX).split("_"))


def summarize(history: WorkflowHistory) -> list[dict]:
    events = []
    for event in history.events:
        kind = event.WhichOneof("attributes")
        identity = getattr(getattr(event, kind), "identity", None) if kind else None
        events.append({"type": event_name(event.event_type), "at_ns": event.event_time.ToNanoseconds(), "identity": identity or None})
    return events


async def workflow(client: Client, plan_id: str) -> tuple[dict, WorkflowHistory | None]:
    """One plan's workflow: its state, its own result, its PlanStatus, its history."""
    handle = client.get_workflow_handle(workflow_id(plan_id), result_type=ExecutionResultEvent)
    try:
        description = await handle.describe()
    except RPCError as error:
        if error.status == RPCStatusCode.NOT_FOUND:
            return {"status": "NOT_FOUND", "result_status": None, "plan_status": None, "events": []}, None
        raise
    status = description.status.name if description.status is not None else None
    found = {"status": status, "result_status": None, "plan_status": description.typed_search_attributes.get(PLAN_STATUS)}
    if status == "COMPLETED":
        try:
            found["result_status"] = (await handle.result()).status.value
        except Exception as error:  # noqa: BLE001 - what Temporal says instead is the evidence
            found["result_error"] = f"{type(error).__name__}: {error}"[:500]
    history = await handle.fetch_history()
    found["events"] = summarize(history)
    return found, history


async def workflows(client: Client, plan_ids: list[str], concurrency: int = 12) -> tuple[dict[str, dict], dict[str, WorkflowHistory]]:
    gate = asyncio.Semaphore(concurrency)
    found: dict[str, dict] = {}
    histories: dict[str, WorkflowHistory] = {}

    async def one(plan_id: str) -> None:
        async with gate:
            for attempt in range(5):
                try:
                    found[plan_id], history = await workflow(client, plan_id)
                    break
                except RPCError as error:
                    if attempt == 4:
                        found[plan_id] = {"status": None, "result_status": None, "plan_status": None, "events": [], "read_error": str(error)}
                        return
                    await asyncio.sleep(0.5)
            if history is not None:
                histories[plan_id] = history

    await asyncio.gather(*(one(plan_id) for plan_id in plan_ids))
    return found, histories


async def running(client: Client) -> list[str]:
    return [execution.id async for execution in client.list_workflows(RUNNING_PLANS)]


async def wire(http: aiohttp.ClientSession, admin: str, since_ns: int) -> list[dict]:
    async with http.get(f"{admin}/transactions", params={"since_ns": str(since_ns)}) as response:
        rows = (await response.json())["transactions"]
    return [{key: row.get(key) for key in ("signature", "firstSeenNs", "timesReceived", "landedSlot", "err", "memos", "channels", "droppedByFault")} for row in rows]


async def block_height(http: aiohttp.ClientSession, admin: str) -> int:
    async with http.get(f"{admin}/stats") as response:
        return int((await response.json())["blockHeight"])


async def records(js) -> dict[str, dict]:
    """Every plan's recorded transaction (plan_records), by plan id, read from the value itself."""
    try:
        kv = await js.key_value(RECORDS_BUCKET)
        keys = await kv.keys()
    except Exception:  # noqa: BLE001 - no bucket or no keys: nothing was recorded
        return {}
    found = {}
    for key in keys:
        if not key.startswith("signed."):
            continue
        try:
            value = json.loads((await kv.get(key)).value)
        except Exception:  # noqa: BLE001 - deleted meanwhile
            continue
        if isinstance(value, dict) and value.get("plan_id"):
            found[value["plan_id"]] = {k: value.get(k) for k in ("signature", "wallet", "last_valid_block_height")}
    return found


async def leases(js) -> tuple[list[dict], int]:
    """Every lease written in wallet_leases (live or not; the checker judges), and when it was read."""
    kv = await js.key_value(WALLET_BUCKET)
    try:
        keys = await kv.keys()
    except Exception:  # noqa: BLE001 - no keys at all
        keys = []
    found = []
    for key in keys:
        if not key.startswith(WALLET_KEY_PREFIX):
            continue
        entry = await kv.get(key)
        state = json.loads(entry.value) if entry.value else {}
        for lease, expires in (state.get("leases") or {}).items():
            found.append({"wallet": key.removeprefix(WALLET_KEY_PREFIX), "lease": lease, "expires_ms": int(expires)})
    return found, time.time_ns() // 1_000_000


async def planned_consumer(js) -> dict | None:
    try:
        info = await js.consumer_info("PLANNED", DURABLE)
    except NotFoundError:
        return None
    return {"num_pending": info.num_pending or 0, "num_ack_pending": info.num_ack_pending or 0, "num_redelivered": info.num_redelivered or 0}
