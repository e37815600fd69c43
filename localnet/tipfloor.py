"""Jito's tip floor: percentiles of the tips that landed, as a REST answer and a websocket stream.

Source: jito-labs/jito-docs `docs/source/lowlatencytxnsend.md`, "Get Tip Information":
`curl https://bundles.jito.wtf/api/v1/bundles/tip_floor` answers a JSON list holding one object,

    [{"time": "2024-09-01T12:58:00Z",
      "landed_tips_25th_percentile": 6.001000000000001e-06, "landed_tips_50th_percentile": 1e-05,
      "landed_tips_75th_percentile": 3.6196500000000005e-05, "landed_tips_95th_percentile": 0.0014479055000000002,
      "landed_tips_99th_percentile": 0.010007999, "ema_landed_tips_50th_percentile": 9.836078125000002e-06}]

with every value in SOL (floats; 1e-05 SOL = 10,000 lamports), and `wss://bundles.jito.wtf/api/v1/bundles/tip_stream`
pushes the same fields. Clients of the stream read each text message as a list of such objects and take the
first (the public Rust tip-stream readers deserialize `Vec<TipPercentileData>`), so the stream pushes the same
one-object list the REST path answers.

What Jito does not document, chosen here (and in localnet/README.md):
- the window: the bundles that landed in the last `window_slots` slots (150 by default: one minute at
  mainnet's 400 ms slots, the granularity of the `time` in Jito's example). Counted in slots, not seconds,
  so a run is the same under the same seed whatever the machine's speed;
- the percentiles: linear interpolation between the closest ranks (numpy's default), over one tip per
  landed bundle (all it paid to the tip accounts, over all its transactions);
- the EMA: of the 50th percentile, `alpha` = 0.1 per slot in which bundles landed, seeded with the first
  such slot's 50th percentile;
- with no landed bundle in the window every percentile reads Jito's minimum tip, 1000 lamports
  (0.000001 SOL): the least a bundle must pay to be accepted, so a client that tips the floor is never
  refused (zeros would be refused); the EMA keeps its last value (it is the minimum before any landing);
- `time`: when the floor last changed (UTC, RFC 3339, seconds).
- the stream sends the current floor on connect, then a message each time the floor changes: at most
  once per slot, after a block in which bundles landed or from which the window's oldest tips aged out.
"""
from __future__ import annotations

import asyncio
import json
from collections import deque
from datetime import datetime, timezone

from aiohttp import WSMsgType, web

TIP_FLOOR_PATH = "/api/v1/bundles/tip_floor"
TIP_STREAM_PATH = "/api/v1/bundles/tip_stream"
LAMPORTS_PER_SOL = 1_000_000_000
DEFAULT_WINDOW_SLOTS = 150
EMA_ALPHA = 0.1
MIN_TIP_LAMPORTS = 1000  # the block engine's minimum tip; the cluster passes blockengine.MIN_TIP_LAMPORTS (no import: view imports this module)
PERCENTILES = (25, 50, 75, 95, 99)
STREAM_BACKLOG = 8  # a slow stream reader keeps only the newest floors


def percentile(ordered: list[int], q: float) -> float:
    """The q-th percentile of sorted values, interpolated linearly between the closest ranks (numpy's default)."""
    position = (len(ordered) - 1) * q / 100
    low = int(position)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (position - low)


def rfc3339_now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class TipFloor:
    """The landed tips of the recent slots, their percentiles and EMA, and the stream's subscribers."""

    def __init__(self, window_slots: int = DEFAULT_WINDOW_SLOTS, alpha: float = EMA_ALPHA, min_tip: int = MIN_TIP_LAMPORTS) -> None:
        if window_slots < 1:
            raise ValueError(f"window_slots={window_slots}: expected 1 or more")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha={alpha}: expected a share in (0, 1]")
        self.window_slots = window_slots
        self.alpha = alpha
        self.min_tip = min_tip
        self.landed: deque[tuple[int, list[int]]] = deque()  # (slot, tips in lamports) of slots with landed bundles
        self.ema: float | None = None  # lamports
        self.lamports: dict[str, float] = self._compute()
        self.time = rfc3339_now()
        self.updates = 0
        self.subscribers: set[asyncio.Queue] = set()

    # --- the floor ----------------------------------------------------------------

    def _compute(self) -> dict[str, float]:
        tips = sorted(tip for _, slot_tips in self.landed for tip in slot_tips)
        values = {f"landed_tips_{q}th_percentile": float(percentile(tips, q) if tips else self.min_tip) for q in PERCENTILES}
        values["ema_landed_tips_50th_percentile"] = float(self.ema if self.ema is not None else self.min_tip)
        return values

    def record_block(self, slot: int, tips: list[int]) -> bool:
        """After each block: add the tips of the bundles that landed in it, age out the window; True if the floor changed."""
        if tips:
            self.landed.append((slot, list(tips)))
        aged = False
        while self.landed and self.landed[0][0] <= slot - self.window_slots:
            self.landed.popleft()
            aged = True
        if not tips and not aged:
            return False  # nothing came in or went out: the floor stands (most slots, at no cost)
        if tips:
            median = self._compute()["landed_tips_50th_percentile"]
            self.ema = median if self.ema is None else self.alpha * median + (1 - self.alpha) * self.ema
        values = self._compute()
        if values == self.lamports:
            return False
        self.lamports = values
        self.time = rfc3339_now()
        self.updates += 1
        self.publish()
        return True

    def configure(self, data: dict) -> None:
        """Admin: {"windowSlots": N, "alpha": a}; keys left out keep their value. A new window applies from the next block."""
        unknown = set(data) - {"windowSlots", "alpha"}
        if unknown:
            raise ValueError(f"unknown keys {sorted(unknown)}; expected windowSlots, alpha")
        window = data.get("windowSlots", self.window_slots)
        alpha = float(data.get("alpha", self.alpha))
        if not isinstance(window, int) or window < 1:
            raise ValueError(f"windowSlots={window!r}: expected a whole number of slots, 1 or more")
        if not 0.0 < alpha <= 1.0:
            raise ValueError(f"alpha={alpha}: expected a share in (0, 1]")
        self.window_slots, self.alpha = window, alpha

    def answer(self) -> list[dict]:
        """Jito's answer: a list of one object, values in SOL."""
        return [{"time": self.time, **{name: value / LAMPORTS_PER_SOL for name, value in self.lamports.items()}}]

    def to_json(self) -> dict:
        """The admin view: the answer, the same values in lamports, and what they are computed from."""
        return {
            "floor": self.answer(),
            "lamports": dict(self.lamports),
            "windowSlots": self.window_slots,
            "alpha": self.alpha,
            "bundles": sum(len(tips) for _, tips in self.landed),
            "slots": [slot for slot, _ in self.landed],
            "updates": self.updates,
            "subscribers": len(self.subscribers),
        }

    # --- HTTP and websocket -------------------------------------------------------------

    def add_routes(self, app: web.Application) -> None:
        app.router.add_get(TIP_FLOOR_PATH, self.handle_floor)
        app.router.add_get(TIP_STREAM_PATH, self.handle_stream)

    async def handle_floor(self, request: web.Request) -> web.Response:
        return web.json_response(self.answer())

    def publish(self) -> None:
        """Queue the current floor for every stream subscriber (never blocks the slot clock)."""
        text = json.dumps(self.answer())
        for queue in self.subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(text)

    async def handle_stream(self, request: web.Request) -> web.WebSocketResponse:
        socket = web.WebSocketResponse(heartbeat=30, timeout=1.0)  # timeout: how long close() waits for the reply
        await socket.prepare(request)
        queue: asyncio.Queue = asyncio.Queue(maxsize=STREAM_BACKLOG)
        queue.put_nowait(json.dumps(self.answer()))
        self.subscribers.add(queue)
        reader = asyncio.create_task(self._read_until_closed(socket))
        try:
            while True:
                getter = asyncio.create_task(queue.get())
                done, _ = await asyncio.wait({getter, reader}, return_when=asyncio.FIRST_COMPLETED)
                if getter not in done:
                    getter.cancel()
                    break
                text = getter.result()
                if text is None or socket.closed:  # the cluster is stopping
                    break
                await socket.send_str(text)
        except (ConnectionResetError, RuntimeError):
            pass  # the client went away mid-send
        finally:
            self.subscribers.discard(queue)
            reader.cancel()
            await asyncio.gather(reader, return_exceptions=True)
            if not socket.closed:
                await socket.close()
        return socket

    @staticmethod
    async def _read_until_closed(socket: web.WebSocketResponse) -> None:
        """The stream takes nothing from the client; reading only notices when it leaves."""
        async for message in socket:
            if message.type in (WSMsgType.CLOSE, WSMsgType.ERROR):
                break

    def close(self) -> None:
        """End every stream (the cluster is stopping)."""
        for queue in self.subscribers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(None)
