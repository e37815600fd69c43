"""An acknowledged halt is final (issue 20): the kill switch acknowledges only once every send past the
gate is answered. It used to acknowledge after a 5 s drain timeout with sends still out. Server-less:
the kill switch's acknowledgment step, with its drain held open by hand."""
from __future__ import annotations

import asyncio

import worker.killswitch as killswitch_module
from worker.killswitch import KillSwitch


async def test_a_halt_is_not_acknowledged_while_a_send_is_still_out(monkeypatch):
    monkeypatch.setattr(killswitch_module, "ACK_DRAIN_S", 0.05)
    out = asyncio.Event()  # set when the last send is answered

    switch = KillSwitch(None, None, None, "test", sends_drained=out.wait)
    switch.reason, switch.halt_seq = "test halt", 7
    acknowledging = asyncio.create_task(switch._after_halt(7, announce=False))
    await asyncio.sleep(0.3)  # six drain timeouts
    assert switch.acked_seq is None and not acknowledging.done(), "acknowledged with a send still out"
    out.set()
    await asyncio.wait_for(acknowledging, 2)
    assert switch.acked_seq == 7


async def test_a_resume_while_draining_acknowledges_nothing(monkeypatch):
    monkeypatch.setattr(killswitch_module, "ACK_DRAIN_S", 0.05)
    out = asyncio.Event()
    switch = KillSwitch(None, None, None, "test", sends_drained=out.wait)
    switch.reason, switch.halt_seq = "test halt", 8
    acknowledging = asyncio.create_task(switch._after_halt(8, announce=False))
    await asyncio.sleep(0.1)
    switch.reason = None  # resumed
    out.set()
    await asyncio.wait_for(acknowledging, 2)
    assert switch.acked_seq is None
