from __future__ import annotations

from collections.abc import AsyncIterator

import pytest
from playwright.async_api import Browser

from tests.browser.demo_page import CHROMIUM, chromium
from tests.e2e.conftest import loopback_only, node, node_factory

__all__ = ["browser", "loopback_only", "node", "node_factory"]


@pytest.fixture
async def browser() -> AsyncIterator[Browser]:
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: apt-get install chromium (scripts/test.sh does)")
    async with chromium() as b:
        yield b
