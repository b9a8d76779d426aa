"""Wire names of message classes: the msgspec tag travels, ambiguity is refused, not guessed."""

from __future__ import annotations

import asyncio
import gc

import pytest

from engine import Agent, Context, MessageTypeConflict, Runtime, handler
from engine.errors import UndeliverableError
from engine.mesh import Broker, Node
from engine.messages import AgentId, Envelope, Kind, Message, MessageIds, message_class, wire_name
from engine.runtime._wire import MessageTypes
from tests._wait import until

pytestmark = pytest.mark.timeout(60)
HB = 0.1


class Billing:
    class Order(Message):  # wire name "Billing.Order" (msgspec's default tag: __qualname__)
        cents: int


class Shipping:
    class Order(Message, tag="shipping.Order"):  # same class name, its own wire name
        parcel: str


class Invoice(Message, tag="wire.Invoice"):
    cents: int


class InvoiceDesk(Agent):
    @handler
    async def on_invoice(self, msg: Invoice, ctx: Context) -> None:
        return None


class BillingDesk(Agent):
    @handler
    async def on_order(self, msg: Billing.Order, ctx: Context) -> Billing.Order:
        return Billing.Order(msg.cents * 2)


class ShippingDesk(Agent):
    @handler
    async def on_order(self, msg: Shipping.Order, ctx: Context) -> Shipping.Order:
        return Shipping.Order(msg.parcel.upper())


def test_wire_name_is_the_msgspec_tag() -> None:
    assert wire_name(Billing.Order) == "Billing.Order"
    assert wire_name(Shipping.Order) == "shipping.Order"
    assert wire_name(int) == "int"  # plain results keep their class name
    assert message_class("shipping.Order") is Shipping.Order
    assert message_class("Billing.Order") is Billing.Order
    assert message_class("NoSuchMessageAnywhere") is None


def test_an_ambiguous_wire_name_is_refused_naming_both_classes() -> None:
    class First(Message, tag="wire.Twin"):
        a: int

    class Second(Message, tag="wire.Twin"):
        b: str

    name = "wire.Twin"
    try:
        with pytest.raises(MessageTypeConflict, match=r"First.*Second|Second.*First") as err:
            message_class(name)
        assert set(err.value.classes) == {First, Second}
        assert "tag=" in str(err.value)  # tells the user how to fix it
        types = MessageTypes()
        types.add(First)
        assert types.get(name) is First  # the runtime's own class wins
        with pytest.raises(MessageTypeConflict):
            types.add(Second)
        # an unregistered ambiguous name is undeliverable, with the reason
        with pytest.raises(UndeliverableError, match="ambiguous"):
            MessageTypes().get(name)
    finally:
        del First, Second
        gc.collect()


def test_a_class_defined_again_replaces_the_old_one() -> None:
    def define() -> type:
        class Redefined(Message):  # same module and qualified name each time
            n: int

        return Redefined

    old = define()
    assert message_class(wire_name(old)) is old
    new = define()
    assert wire_name(new) == wire_name(old)
    assert message_class(wire_name(new)) is new  # newest wins, the cache is not stale
    types = MessageTypes()
    types.add(old)
    types.add(new)
    assert types.get(wire_name(new)) is new


def test_a_runtime_refuses_two_handlers_for_different_classes_of_one_wire_name() -> None:
    def make() -> type[Agent]:
        class Twin(Message, tag="wire.Invoice"):  # collides with Invoice on the wire
            x: int

        async def on_twin(self: Agent, msg: Twin, ctx: Context) -> None:
            return None

        on_twin.__annotations__ = {"msg": Twin, "ctx": Context, "return": None}  # resolvable
        return type("TwinDesk", (Agent,), {"on_twin": handler(on_twin)})

    rt = Runtime()
    rt.register("invoices", InvoiceDesk)
    desk = make()
    with pytest.raises(MessageTypeConflict, match=r"'wire\.Invoice'"):
        rt.register("twin", desk)
    del desk
    gc.collect()


def test_same_named_classes_with_distinct_tags_cross_the_mesh(broker: Broker) -> None:
    ep = broker.endpoints[0]

    async def main() -> None:
        agents = {"billing": BillingDesk, "shipping": ShippingDesk}
        async with Node(ep, agents, name="desks", heartbeat=HB), Runtime(mesh=ep) as rt:
            await until(lambda: set(broker.peers().get("desks", {}).get("types", ())) == {*agents})
            bill = await rt.send(Billing.Order(21), to=AgentId("billing", "a"), timeout=5)
            ship = await rt.send(Shipping.Order("box"), to=AgentId("shipping", "a"), timeout=5)
            assert bill == Billing.Order(42) and type(bill) is Billing.Order
            assert ship == Shipping.Order("BOX") and type(ship) is Shipping.Order

    asyncio.run(asyncio.wait_for(main(), 30))


def test_envelopes_carry_the_wire_name() -> None:
    ids = MessageIds()
    env = Envelope(ids.next(), Kind.SEND, payload_type=wire_name(Shipping.Order))
    assert env.payload_type == "shipping.Order"
