"""A dual-stack node registers its IPv4 and IPv6 candidate addresses (``media.hosts``, issue 13):
parsed and checked, kept by both stores, listed back; a node that sends only ``media.host``
lists that one."""

from __future__ import annotations

from typing import Any

import pytest

from control.model import Capacity, NodeRegistration, unpack_media_host
from control.store.base import Store
from tests.control.test_store import LEASE, T0, store  # noqa: F401 (fixture)

BASE: dict[str, Any] = {"id": "n-1", "url": "http://127.0.0.1:1", "capacity": {"max_participants": 10, "max_rooms": 2}}


def parse(media: dict[str, Any]) -> NodeRegistration:
    return NodeRegistration.parse({**BASE, "media": media})


@pytest.mark.parametrize(
    ("media", "hosts"),
    [
        ({"host": "203.0.113.5", "port": 7882}, ()),
        ({"host": "203.0.113.5", "port": 7882, "hosts": ["203.0.113.5"]}, ("203.0.113.5",)),
        ({"host": "203.0.113.5", "port": 7882, "hosts": ["203.0.113.5", "2001:db8::5"]}, ("203.0.113.5", "2001:db8::5")),
        ({"host": "2001:db8::5", "port": 7882, "hosts": ["203.0.113.5", "2001:db8::5"]}, ("203.0.113.5", "2001:db8::5")),
    ],
)
def test_media_hosts_are_parsed(media: dict[str, Any], hosts: tuple[str, ...]) -> None:
    assert parse(media).media_hosts == hosts


@pytest.mark.parametrize(
    ("hosts", "fragment"),
    [
        ("203.0.113.5", "must be a list of one or two"),
        ([], "must be a list of one or two"),
        (["203.0.113.5", "2001:db8::5", "198.51.100.1"], "must be a list of one or two"),
        (["203.0.113.5", "198.51.100.1"], "at most one IPv4 and one IPv6 address, got two IPv4"),
        (["203.0.113.5", "sfu.example"], "must hold IP addresses, got 'sfu.example'"),
        (["203.0.113.5", "fe80::1%eth0"], "must hold IP addresses"),
        (["203.0.113.5", 7], "must hold IP addresses"),
        (["2001:db8::5"], "must include 'media.host'"),
    ],
)
def test_bad_media_hosts_are_refused(hosts: Any, fragment: str) -> None:
    with pytest.raises(ValueError, match="media.hosts") as info:
        parse({"host": "203.0.113.5", "port": 7882, "hosts": hosts})
    assert fragment in str(info.value)


@pytest.mark.parametrize(
    ("stored", "unpacked"),
    [("203.0.113.5", ("203.0.113.5", ())), ("sfu.example", ("sfu.example", ())),
     ("203.0.113.5 2001:db8::5", ("203.0.113.5", ("203.0.113.5", "2001:db8::5")))],
)
def test_the_stored_form_unpacks(stored: str, unpacked: tuple[str, tuple[str, ...]]) -> None:
    assert unpack_media_host(stored) == unpacked


async def test_both_stores_keep_and_list_the_addresses(store: Store) -> None:  # noqa: F811
    dual = NodeRegistration("dual", "http://127.0.0.1:1/dual", "203.0.113.5", 7882, None, Capacity(10, 2), "t",
                            media_hosts=("203.0.113.5", "2001:db8::5"))
    single = NodeRegistration("single", "http://127.0.0.1:1/single", "198.51.100.1", 7882, None, Capacity(10, 2), "t")
    for reg in (dual, single):
        await store.register_node(reg, T0, LEASE)
    got = await store.get_node("dual")
    assert got is not None and (got.media_host, got.media_hosts) == ("203.0.113.5", ("203.0.113.5", "2001:db8::5"))
    assert got.to_json(T0)["media"] == {"host": "203.0.113.5", "port": 7882, "hosts": ["203.0.113.5", "2001:db8::5"],
                                        "tcp_port": None}
    one = await store.get_node("single")
    assert one is not None and one.to_json(T0)["media"] == {"host": "198.51.100.1", "port": 7882, "hosts": ["198.51.100.1"],
                                                            "tcp_port": None}


@pytest.mark.parametrize(("tcp_port", "expected"), [(None, None), (7881, 7881), (1, 1), (65535, 65535)])
def test_the_ice_tcp_port_is_parsed(tcp_port: int | None, expected: int | None) -> None:
    media: dict[str, Any] = {"host": "203.0.113.5", "port": 7882}
    if tcp_port is not None:
        media["tcp_port"] = tcp_port
    assert parse(media).media_tcp_port == expected


@pytest.mark.parametrize("tcp_port", [0, 65536, -1, "7881", 7881.5, True])
def test_a_bad_ice_tcp_port_is_refused(tcp_port: Any) -> None:
    with pytest.raises(ValueError, match="tcp_port"):
        parse({"host": "203.0.113.5", "port": 7882, "tcp_port": tcp_port})


async def test_both_stores_keep_and_list_the_ice_tcp_port(store: Store) -> None:  # noqa: F811
    tcp = NodeRegistration("tcp", "http://127.0.0.1:1/tcp", "203.0.113.5", 7882, None, Capacity(10, 2), "t",
                           media_tcp_port=7881)
    await store.register_node(tcp, T0, LEASE)
    got = await store.get_node("tcp")
    assert got is not None and got.media_tcp_port == 7881
    assert got.to_json(T0)["media"]["tcp_port"] == 7881
    # registering again without it (ICE-TCP turned off) forgets it
    await store.register_node(NodeRegistration("tcp", "http://127.0.0.1:1/tcp", "203.0.113.5", 7882, None,
                                               Capacity(10, 2), "t"), T0 + LEASE + 1, LEASE)
    again = await store.get_node("tcp")
    assert again is not None and again.media_tcp_port is None
    assert [n.media_tcp_port for n in await store.list_nodes()] == [None]
