"""The code's error catalogue against the public reference, and every ApiError the source raises.

The reference is ``shared/error-reference.txt`` beside the repository (``/work/shared`` here; CI
clones it next to the checkout).
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass
from pathlib import Path

import pytest

from levelchat.errors import CATALOGUE, DEFAULT_RETRY_AFTER_S, SDK_ONLY_STATUSES, TYPE_BASE

REPO = Path(__file__).resolve().parents[1]
REFERENCE = REPO.parent / "shared" / "error-reference.txt"
SCANNED = ("sfu", "control", "levelchat")
#: statuses the contract lets a server pick for an "SDK only" code
CONTRACT_SDK_STATUSES = frozenset({400, 406, 415})
EXPECTED_CODES = 70

_ENTRY = re.compile(
    r"^\s*•\s*(?P<code>[a-z][a-z0-9_/-]*?)(?:HTTP (?P<status>\d{3})|(?P<sdk>SDK only))(?P<retry>Retryable)?# permalink\s*$"
)


@dataclass(frozen=True)
class RefEntry:
    code: str
    status: int | None
    title: str
    retryable: bool


def parse_reference(text: str) -> dict[str, RefEntry]:
    lines = text.splitlines()
    out: dict[str, RefEntry] = {}
    for i, line in enumerate(lines):
        m = _ENTRY.match(line)
        if m is None:
            continue
        title = next((ln.strip() for ln in lines[i + 1 :] if ln.strip()), "")
        code = m["code"]
        if code in out:
            raise ValueError(f"{code} is listed twice in the reference")
        out[code] = RefEntry(code, int(m["status"]) if m["status"] else None, title, m["retry"] is not None)
    return out


@pytest.fixture(scope="module")
def reference() -> dict[str, RefEntry]:
    assert REFERENCE.is_file(), f"{REFERENCE} is missing: clone the shared repository beside {REPO}"
    return parse_reference(REFERENCE.read_text(encoding="utf-8"))


def test_reference_parses_completely(reference: dict[str, RefEntry]) -> None:
    text = REFERENCE.read_text(encoding="utf-8")
    assert text.count("# permalink") == EXPECTED_CODES
    assert len(reference) == EXPECTED_CODES
    assert all(e.title for e in reference.values())
    assert reference["token/expired"] == RefEntry("token/expired", 401, "Token has expired", True)
    assert reference["codec/unsupported"] == RefEntry("codec/unsupported", None, "Codec not supported", False)
    assert "levelchat.io/errors/<code>" in text and TYPE_BASE == "https://levelchat.io/errors/"


def test_catalogue_is_the_reference(reference: dict[str, RefEntry]) -> None:
    assert set(CATALOGUE) == set(reference), {
        "missing from the code": sorted(set(reference) - set(CATALOGUE)),
        "not in the reference": sorted(set(CATALOGUE) - set(reference)),
    }
    mismatched = [
        (code, (spec.status, spec.title, spec.retryable), (ref.status, ref.title, ref.retryable))
        for code, spec in CATALOGUE.items()
        if (ref := reference[code]) and (spec.status, spec.title, spec.retryable) != (ref.status, ref.title, ref.retryable)
    ]
    assert mismatched == []
    assert set(DEFAULT_RETRY_AFTER_S) <= set(CATALOGUE)
    assert CONTRACT_SDK_STATUSES <= SDK_ONLY_STATUSES


@dataclass(frozen=True)
class Raise:
    where: str
    code: str
    status: int | None


def _is_api_error(func: ast.expr) -> bool:
    return (isinstance(func, ast.Name) and func.id == "ApiError") or (
        isinstance(func, ast.Attribute) and func.attr == "ApiError"
    )


def scan_source() -> tuple[list[Raise], list[str]]:
    """Every ``ApiError(...)`` call: those with a literal code, and where the code is computed."""
    literal: list[Raise] = []
    computed: list[str] = []
    for top in SCANNED:
        for path in sorted((REPO / top).rglob("*.py")):
            tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
            for node in ast.walk(tree):
                if not isinstance(node, ast.Call) or not _is_api_error(node.func):
                    continue
                where = f"{path.relative_to(REPO)}:{node.lineno}"
                code_arg = node.args[0] if node.args else next((k.value for k in node.keywords if k.arg == "code"), None)
                status_arg = next((k.value for k in node.keywords if k.arg == "status"), None)
                if not (isinstance(code_arg, ast.Constant) and isinstance(code_arg.value, str)):
                    computed.append(where)
                    continue
                status: int | None = None
                if isinstance(status_arg, ast.Constant) and isinstance(status_arg.value, int):
                    status = status_arg.value
                elif status_arg is not None:
                    computed.append(where + " (status)")
                literal.append(Raise(where, code_arg.value, status))
    return literal, computed


def test_every_raised_code_is_in_the_reference(reference: dict[str, RefEntry]) -> None:
    raises, _ = scan_source()
    assert len(raises) >= 40, "the scan found too few ApiError calls: is it still looking at the right tree?"
    unknown = [f"{r.where}: {r.code}" for r in raises if r.code not in reference]
    assert unknown == []
    wrong_status = []
    for r in raises:
        ref = reference[r.code]
        if r.status is None:
            continue
        if ref.status is None and r.status not in CONTRACT_SDK_STATUSES:
            wrong_status.append(f"{r.where}: SDK-only {r.code} sent as {r.status}")
        elif ref.status is not None and r.status != ref.status:
            wrong_status.append(f"{r.where}: {r.code} is {ref.status}, not {r.status}")
    assert wrong_status == []


def test_scan_sees_the_calls_that_matter() -> None:
    raises, computed = scan_source()
    by_code = {r.code for r in raises}
    for code in ("unauthorized", "token/invalid", "token/expired", "token/unauthorized", "invalid_room",
                 "room_not_found", "room/cap-denied", "codec/unsupported", "not_found", "bad_request"):
        assert code in by_code, code
    codec = [r for r in raises if r.code == "codec/unsupported"]
    assert codec and all(r.status == 406 for r in codec)
    # computed codes must come from the catalogue object itself (checked where they are built)
    for where in computed:
        path, line = where.split(" ")[0].rsplit(":", 1)
        text = (REPO / path).read_text(encoding="utf-8").splitlines()[int(line) - 1]
        assert "spec.code" in text or "status=" in text, f"{where}: ApiError with a code the scan cannot check"
