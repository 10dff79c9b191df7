"""Lightspeed, read for a run: the window's pages (read ahead by a thread), the completed sales in them, in
batches; the customers the sales came without; shops and categories; and, when the mapping file adds fields,
the payloads as Lightspeed sent them. Reads only: a sale that does not read is handed to `park`."""

from __future__ import annotations

import logging
import threading
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Container, Iterable, Iterator, TypeVar

from lspos_sync.fieldmap import FieldMap
from lspos_sync.lightspeed.client import LightspeedClient
from lspos_sync.lightspeed.wire import InvalidPayload, RawSale
from lspos_sync.summary import RunSummary, Window

if TYPE_CHECKING:
    from datetime import datetime

    from lspos_sync.lightspeed.models import Category, Sale, Shop

log = logging.getLogger(__name__)
T = TypeVar("T")


class Reader:
    def __init__(self, lightspeed: LightspeedClient, field_map: FieldMap,
                 park: Callable[[int, str, RunSummary], None], written: Callable[[int], bool]) -> None:
        self.lightspeed = lightspeed
        self.field_map = field_map
        self._park = park  # (sale id, reason, summary): a sale Lightspeed sent malformed
        self._written = written  # (sale id): whether the state store holds a write of the sale
        self.shops: dict[int, Shop] | None = None  # read once, when the first sale needs them
        self.categories: dict[int, Category] = {}
        # Lightspeed payloads as sent, kept for the batch at hand only when the mapping adds fields.
        self._payloads: dict[int, dict[str, Any]] = {}
        self._raw_customers: dict[int, dict[str, Any]] = {}
        self.raw_shops: dict[int, dict[str, Any]] = {}

    def window_pages(self, window: Window, ahead: int) -> ReadAhead:
        """The window's pages, oldest change first (see `oldest_first`), read ahead by a thread (from now on) up to
        `ahead` sales."""
        return ReadAhead(self.lightspeed.sales(window.since, window.until, raw=self.field_map.needs_raw), ahead)

    @property
    def oldest_first(self) -> bool:
        """Whether the window's pages come oldest change first: settled before the first of them comes."""
        return self.lightspeed.oldest_first

    def place(self, sale: Sale) -> datetime | None:
        """Where a sale lies in the window as it is read: its last update; on the reading that filters on
        `timeStamp`, its `timeStamp`. A sale edited after the window keeps a `timeStamp` inside it there, and no
        later window on `timeStamp` would hold it."""
        return sale.time_stamp if self.lightspeed.on_time_stamp else sale.last_update

    def voided(self, window: Window) -> list[int]:
        return self.lightspeed.voided_sale_ids(window.since, window.until)

    def pages_by_id(self, sale_ids: list[int]) -> Iterator[list[Sale | dict[str, Any]]]:
        """Given sales, read afresh whatever their time."""
        return self.lightspeed.sales_by_id(sale_ids, raw=self.field_map.needs_raw)

    def sales(self, pages: Iterable[list[Sale | dict[str, Any]]], summary: RunSummary,
              window: Window | None, skip: Container[int] = frozenset()) -> Iterator[Sale]:
        """Validated, completed sales in the window, but those in `skip` (read earlier in the run); a sale
        Lightspeed sent malformed is parked, not fatal. A voided sale the run wrote before counts as completed
        whatever its `completed` flag says: whether a void leaves it true is not documented (fact sheet §9), and
        its transaction must become Voided."""
        for page in pages:
            for payload in page:
                if skip and _sale_id(payload) in skip:
                    continue
                summary.sales_read += 1
                if payload.__class__ is not dict:  # a Sale, read with its page
                    sale = payload
                else:  # a page with a sale that does not read, or a mapping that reads the payloads
                    from lspos_sync.lightspeed.models import Sale, says_open

                    try:
                        sale = Sale.of(payload)
                    except InvalidPayload as error:
                        if says_open(payload):  # never written, so nothing to park: read again once it completes
                            summary.skipped_open += 1
                        else:
                            self._unreadable(payload, error, summary)
                        continue
                if not sale.completed and not (sale.voided and self._written(sale.sale_id)):
                    summary.skipped_open += 1  # written once it completes: completion moves its update time
                    continue
                if window is not None:
                    moment = self.place(sale)
                    if moment is not None and not window.since <= moment <= window.until:
                        continue  # outside the window, whatever the server's filter did
                if self.field_map.needs_raw:
                    self._payloads[sale.sale_id] = payload
                yield sale

    def _unreadable(self, payload: dict[str, Any], error: InvalidPayload, summary: RunSummary) -> None:
        reason = f"INVALID_LIGHTSPEED_DATA: {error.where or 'sale'}: {error.problem}"
        try:
            sale_id = int(str(payload.get("saleID") if isinstance(payload, dict) else None))
        except ValueError:
            log.warning("skipped a Lightspeed sale without a usable saleID: %s", reason)
            return
        self._park(sale_id, reason, summary)

    def load_reference(self) -> None:
        """Shops and categories, once a run; a run that reads no sale never asks."""
        if self.shops is None:
            raw_shops = self.raw_shops if self.field_map.needs_raw else None
            self.shops, self.categories = self.lightspeed.shops(raw_shops), self.lightspeed.categories()

    def with_customers(self, sales: list[Sale]) -> list[Sale]:
        """Sales whose customer did not come loaded with them, or came without its Contact (the docs' own sale
        example has such a Customer: read so, it has no email or phone to be matched by), get it from the Customer
        endpoint, with its Contact."""
        missing = sorted({s.customer_id for s in sales if s.customer_id is not None and _unloaded(s)})
        if not missing:
            return sales
        found = self.lightspeed.customers_by_id(missing, self._raw_customers if self.field_map.needs_raw else None)
        return [s.with_customer(found[s.customer_id]) if _unloaded(s) and s.customer_id in found
                else s for s in sales]

    def with_items(self, sales: list[Sale]) -> list[Sale]:
        """Sales with a line whose Item did not come loaded with it (the docs' own sale example has such lines) get
        it from the Item endpoint; an Item not found there either leaves the line's product fields empty, named as
        a gap (`mapping.gaps`)."""
        missing = sorted({line.item_id for sale in sales for line in sale.lines
                          if line.item is None and line.item_id is not None})
        if not missing:
            return sales
        found = self.lightspeed.items_by_id(missing)
        if not found:
            return sales
        return [sale.but(lines=[line.but(item=found[line.item_id]) if line.item is None and line.item_id in found
                                else line for line in sale.lines])
                if any(line.item is None and line.item_id in found for line in sale.lines) else sale
                for sale in sales]

    def sale_payload(self, sale: Sale) -> RawSale:
        return RawSale.of(self._payloads.get(sale.sale_id, {}))

    def customer_payload(self, sale: Sale) -> dict[str, Any] | None:
        """The customer as Lightspeed sent it: from the Customer endpoint when `with_customers` read it there (the
        sale's own came without it or without its Contact), else loaded with the sale."""
        fetched = self._raw_customers.get(sale.customer_id) if sale.customer_id is not None else None
        return fetched if fetched is not None else RawSale.customer_of(self._payloads.get(sale.sale_id, {}))

    def forget(self, sales: list[Sale]) -> None:
        """Drops the payloads of a batch that is planned."""
        for sale in sales:
            self._payloads.pop(sale.sale_id, None)
        self._raw_customers.clear()


def _unloaded(sale: Sale) -> bool:
    """Whether the sale's customer came without itself or without its Contact."""
    return sale.customer is None or sale.customer.contact is None


def _sale_id(payload: Sale | dict[str, Any]) -> int | None:
    """The sale's id, read or not; None when a payload has none that reads."""
    if not isinstance(payload, dict):
        return payload.sale_id
    value = str(payload.get("saleID"))
    return int(value) if value.isdigit() else None


class ReadAhead:
    """The same pages, in the same order, read ahead by a thread that starts at once: while the run does what
    comes before the pages (voids, parked sales) the first ones come in, and while Salesforce writes one batch,
    the next one's. The thread asks for a page only while fewer than `ahead` sales wait, so a run holds at most
    that and one page more, whichever API is slower. An error in the reader surfaces in iteration, in order.
    Close it when done, read to the end or not."""

    _DONE = object()

    def __init__(self, pages: Iterator[list[Any]], ahead: int) -> None:
        self._pages = pages
        self._ahead = ahead
        self._waiting: deque[Any] = deque()  # pages, then _DONE or the reader's error
        self._room = threading.Condition()
        self._held = 0  # sales waiting
        self._stop = False
        self._thread = threading.Thread(target=self._read, name="lightspeed-reader", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        item: Any = self._DONE
        try:
            iterator = iter(self._pages)
            while True:
                with self._room:
                    while self._held >= self._ahead and not self._stop:
                        self._room.wait()
                    if self._stop:
                        return
                page = next(iterator, self._DONE)  # the request, outside the lock
                if page is self._DONE:
                    break
                with self._room:
                    self._waiting.append(page)
                    self._held += len(page)
                    self._room.notify_all()
        except BaseException as error:  # handed to the consumer, raised there
            item = error
        with self._room:
            self._waiting.append(item)
            self._room.notify_all()

    def __iter__(self) -> Iterator[list[Any]]:
        while True:
            with self._room:
                while not self._waiting:
                    self._room.wait()
                item = self._waiting.popleft()
                if item is self._DONE:
                    return
                if isinstance(item, BaseException):
                    raise item
                self._held -= len(item)
                self._room.notify_all()
            yield item

    def close(self) -> None:
        with self._room:
            self._stop = True
            self._room.notify_all()
        self._thread.join()  # it finishes the request it is in


def batches(items: Iterable[T], size: int) -> Iterator[list[T]]:
    """The items in lists of `size`, the last one shorter."""
    batch: list[T] = []
    for item in items:
        batch.append(item)
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch
