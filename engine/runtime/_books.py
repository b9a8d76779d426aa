"""The runtime's bookkeeping: ids, work in flight, idle waiters and message counters.

One :class:`Books` per runtime, shared by the local side (``Runtime``, its mailboxes and
its handler-call path) and the transport side (``Remote``). Each changes the books through
these attributes and methods only; nobody reaches into another object's private state.

The hot paths read and write ``seq`` and ``active`` directly (an attribute each, no
method call): a sequential round trip costs about a microsecond, and a method call here
would add a tenth of it.
"""

from __future__ import annotations

import asyncio
from typing import Final

__all__ = ["COUNTED", "Books"]

#: The counters kept off the hot path; ``send`` is derived from ``seq`` (see message_counts).
COUNTED: Final = ("publish", "delivered", "post", "remote_send", "served", "error")


class Books:
    """Ids, the number of messages queued or being handled, and who waits for zero.

    ``seq`` is the last id drawn: ``send`` and ``publish`` draw one each (inline), every
    other id comes from :meth:`next_id`. ``active`` counts messages queued or being
    handled, here or awaiting a remote reply; whoever brings it to zero calls
    :meth:`wake` (or :meth:`settle`, which does both). ``closed`` is set once by stop().
    """

    __slots__ = ("active", "closed", "counts", "other_ids", "seq", "waiters")

    def __init__(self) -> None:
        self.seq = 0
        self.other_ids = 0  # ids drawn by next_id (not by send/publish)
        self.active = 0
        self.waiters: list[asyncio.Future[None]] = []
        self.closed = False
        self.counts: dict[str, int] = dict.fromkeys(COUNTED, 0)

    def next_id(self) -> int:
        """A fresh id for anything but a local send/publish (queries, envelopes, posts)."""
        self.seq += 1
        self.other_ids += 1
        return self.seq

    def settle(self) -> None:
        """One message finished: count it out, and wake the idle waiters at zero."""
        self.active -= 1
        if not self.active and self.waiters:
            self.wake()

    def wake(self) -> None:
        """Resolve every :meth:`idle` waiter (call when ``active`` reached zero)."""
        waiters, self.waiters = self.waiters, []
        for fut in waiters:
            if not fut.done():
                fut.set_result(None)

    async def idle(self) -> None:
        """Wait until no message is queued, being handled or awaiting a reply."""
        loop = asyncio.get_running_loop()
        while self.active:
            fut: asyncio.Future[None] = loop.create_future()
            self.waiters.append(fut)
            await fut

    def message_counts(self) -> dict[str, int]:
        """Totals by kind; ``send`` is every id drawn minus the others and the publishes."""
        counts = dict(self.counts)
        sends = self.seq - self.other_ids - counts["publish"]
        return {"send": sends, **counts}
