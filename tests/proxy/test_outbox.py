"""meshctl_proxy.transport.outbox: every write of a pass held to its end, HTTP/1's bytes and HTTP/2's
flushers in one list, in order, flushed before a close."""

import asyncio

import uvloop

from meshctl_proxy.transport.outbox import outbox


class Recorder:
    def __init__(self, log: list, name: str, fail: bool = False) -> None:
        self.log, self.name, self.fail = log, name, fail

    def write(self, data: bytes) -> None:
        if self.fail:
            raise RuntimeError("transport gone")
        self.log.append((self.name, data))


def test_every_write_of_a_pass_goes_at_its_end_in_order():
    async def main():
        log: list = []
        box = outbox(asyncio.get_running_loop())
        a, b = Recorder(log, "a"), Recorder(log, "b")
        box.write(a, b"1")
        box.write(b, b"2")
        box.write(a, b"3")
        assert log == []  # the first write of the pass is held too (one policy, issue 12)
        await asyncio.sleep(0)  # the pass ends
        assert log == [("a", b"1"), ("b", b"2"), ("a", b"3")]
        box.write(a, b"4")  # a new pass
        box.write(a, b"5")
        box.flush()  # what a close does first
        assert log[-2:] == [("a", b"4"), ("a", b"5")]
        await asyncio.sleep(0)
        assert len(log) == 5  # flushed once, not again

    uvloop.run(main())


def test_http2_flushers_run_at_the_end_of_the_pass_in_order_with_http1_writes():
    async def main():
        log: list = []
        box = outbox(asyncio.get_running_loop())
        a = Recorder(log, "h1")
        box.flush_later(lambda: log.append(("h2", b"frames 1")))
        box.write(a, b"head")
        box.flush_later(lambda: log.append(("h2", b"frames 2")))
        assert log == []
        await asyncio.sleep(0)
        assert log == [("h2", b"frames 1"), ("h1", b"head"), ("h2", b"frames 2")]
        box.flush_later(lambda: log.append(("h2", b"next pass")))
        await asyncio.sleep(0)
        assert log[-1] == ("h2", b"next pass")

    uvloop.run(main())


def test_a_failing_transport_does_not_cost_the_others_their_bytes():
    async def main():
        log: list = []
        box = outbox(asyncio.get_running_loop())
        box.write(Recorder(log, "first"), b"w")
        box.write(Recorder(log, "gone", fail=True), b"x")
        box.flush_later(lambda: (_ for _ in ()).throw(ConnectionResetError("gone")))
        box.write(Recorder(log, "ok"), b"y")
        await asyncio.sleep(0)
        assert log == [("first", b"w"), ("ok", b"y")]

    uvloop.run(main())


def test_each_loop_has_its_own_outbox():
    boxes = []

    async def main():
        boxes.append(outbox(asyncio.get_running_loop()))
        assert outbox(asyncio.get_running_loop()) is boxes[-1]

    uvloop.run(main())
    uvloop.run(main())
    assert boxes[0] is not boxes[1]
