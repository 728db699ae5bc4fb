"""meshctl_proxy.outbox: writes held to the end of the loop's pass, in order, flushed before a close."""

import asyncio

import uvloop

from meshctl_proxy.outbox import outbox


class Recorder:
    def __init__(self, log: list, name: str, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("transport gone")
        self.log.append((self.name, data))


def test_writes_wait_for_the_end_of_the_pass_and_keep_their_order():
    async def main():
        log: list = []
        box = outbox(asyncio.get_running_loop())
        a, b = Recorder(log, "a"), Recorder(log, "b")
        box.write(a, b"1")
        box.write(b, b"2")
        box.write(a, b"3")
        assert log == []  # nothing sent inside the pass
        await asyncio.sleep(0)  # the pass ends
        assert log == [("a", b"1"), ("b", b"2"), ("a", b"3")]
        box.write(a, b"4")
        box.flush()  # what a close does first
        assert log[-1] == ("a", b"4")
        await asyncio.sleep(0)
        assert len(log) == 4  # flushed once, not again

    uvloop.run(main())


def test_a_failing_transport_does_not_cost_the_others_their_bytes():
    async def main():
        log: list = []
        box = outbox(asyncio.get_running_loop())
        box.write(Recorder(log, "gone", fail=True), b"x")
        box.write(Recorder(log, "ok"), b"y")
        await asyncio.sleep(0)
        assert log == [("ok", b"y")]

    uvloop.run(main())


def test_each_loop_has_its_own_outbox():
    boxes = []

    async def main():
        boxes.append(outbox(asyncio.get_running_loop()))
        assert outbox(asyncio.get_running_loop()) is boxes[-1]

    uvloop.run(main())
    uvloop.run(main())
    assert boxes[0] is not boxes[1]
