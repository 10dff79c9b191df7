"""The page reader (`reading.py`): pages read ahead by a thread, in order, never more than a batch's worth of
sales waiting, whichever side is slower."""

from __future__ import annotations

import threading
import time

import pytest

from lspos_sync.reading import ReadAhead


class Source:
    """Pages of 100 sales as a Lightspeed client yields them, noting how far ahead of the consumer each request is."""

    def __init__(self, pages: int, fail_after: bool = False) -> None:
        self.pages = pages
        self.fail_after = fail_after
        self.taken = 0  # pages the consumer has had
        self.ahead: list[int] = []  # at each request: pages asked for and not yet taken

    def __iter__(self):
        for number in range(self.pages):
            self.ahead.append(number - self.taken)
            yield [f"sale {number}-{i}" for i in range(100)]
        if self.fail_after:
            raise RuntimeError("Lightspeed went away")


def test_the_reader_keeps_at_most_a_batch_of_sales_waiting_while_a_batch_is_written():
    source = Source(30)
    pages = ReadAhead(iter(source), ahead=500)
    received = []
    for page in pages:
        received.append(page[0])
        time.sleep(0.01)  # a slow writer: an unbounded reader would be far ahead by now
        source.taken += 1
    assert received == [f"sale {n}-0" for n in range(30)]
    # five pages of 100 waiting, the one just handed over, and the one being asked for
    assert max(source.ahead) <= 6
    assert max(source.ahead) >= 5  # it did read ahead


def test_an_error_of_the_reader_surfaces_after_the_pages_before_it():
    source = Source(3, fail_after=True)
    received = []
    with pytest.raises(RuntimeError, match="went away"):
        for page in ReadAhead(iter(source), ahead=1000):
            received.append(page[0])
    assert received == ["sale 0-0", "sale 1-0", "sale 2-0"]


def _readers() -> set[threading.Thread]:
    return {t for t in threading.enumerate() if t.name == "lightspeed-reader"}


def test_closing_the_pages_stops_the_reader():
    source = Source(50)
    others = _readers()
    pages = ReadAhead(iter(source), ahead=200)
    next(iter(pages))
    assert _readers() - others  # its thread, waiting for room
    pages.close()
    assert not _readers() - others  # gone when close returns, though nothing made room for it
    assert len(source.ahead) <= 4  # what it had read ahead, and no more after the close


def test_the_reader_starts_asking_before_the_pages_are_wanted_and_closing_unread_stops_it():
    source = Source(50)
    others = _readers()
    pages = ReadAhead(iter(source), ahead=200)
    deadline = time.monotonic() + 5
    while len(source.ahead) < 2 and time.monotonic() < deadline:  # nothing has iterated yet
        time.sleep(0.01)
    time.sleep(0.05)
    assert len(source.ahead) == 2  # the 200 sales it may hold, asked for before anyone wanted them
    pages.close()
    assert not _readers() - others
    assert len(source.ahead) == 2
