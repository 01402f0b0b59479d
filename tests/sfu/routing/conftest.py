"""Fixtures for routing tests: CONNECTED transports with their raw clients (see harness.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.sfu.routing.harness import Link, open_link


@pytest.fixture
async def link() -> AsyncIterator[Link]:
    """A subscriber's transport, CONNECTED, with the raw client that receives its media."""
    made = await open_link()
    yield made
    made.close()


@pytest.fixture
async def second_link(link: Link) -> AsyncIterator[Link]:
    """Another CONNECTED transport on the same media port as ``link``."""
    made = await open_link(port=link.port)
    yield made
    made.client.close()
