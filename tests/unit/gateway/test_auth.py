"""Tokens map to tenants; they are secrets; no token configured means no start."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmflow.errors import ConfigError
from llmflow.services.cli import main
from llmflow.services.gateway.auth import Authenticator
from llmflow.services.gateway.settings import GatewaySettings
from tests.unit.gateway.helpers import ACME, GLOBEX, TOKENS


def test_tokens_from_json_are_secret() -> None:
    settings = GatewaySettings(tokens=TOKENS)
    assert ACME not in repr(settings) and ACME not in str(settings.model_dump())
    grants = Authenticator(settings.credentials())
    acme = grants.grant(f"Bearer {ACME}")
    assert acme is not None and acme.tenant == "acme" and acme.replay
    globex = grants.grant(f"bearer {GLOBEX}")
    assert globex is not None and globex.tenant == "globex" and not globex.replay


@pytest.mark.parametrize(
    "header", [None, "", "Bearer", "Bearer ", f"Basic {ACME}", f"Bearer {ACME}x", "Bearer \udc80"]
)
def test_no_or_unknown_token_is_no_grant(header: str | None) -> None:
    assert Authenticator(GatewaySettings(tokens=TOKENS).credentials()).grant(header) is None


def test_tokens_from_the_environment_and_a_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LLMFLOW_GATEWAY_TOKENS", '{"env-token-0123456789": {"tenant": "a"}}')
    file = tmp_path / "tokens.json"
    file.write_text('{"file-token-0123456789": {"tenant": "b"}}')
    monkeypatch.setenv("LLMFLOW_GATEWAY_TOKENS_FILE", str(file))
    tenants = sorted(c.tenant for c in GatewaySettings().credentials())
    assert tenants == ["a", "b"]
    file.write_text('{"env-token-0123456789": {"tenant": "b"}}')
    with pytest.raises(ConfigError, match="twice"):
        GatewaySettings().credentials()


def test_a_gateway_without_tokens_refuses_to_start(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.delenv("LLMFLOW_GATEWAY_TOKENS", raising=False)
    monkeypatch.delenv("LLMFLOW_GATEWAY_TOKENS_FILE", raising=False)
    assert main(["gateway", "--topology", "topologies/support_triage.yaml"]) == 2
    assert "no token configured" in capsys.readouterr().err


def test_a_short_token_is_refused_without_printing_it(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLMFLOW_GATEWAY_TOKENS", '{"tiny-secret": {"tenant": "a"}}')
    assert main(["gateway", "--topology", "topologies/support_triage.yaml"]) == 2
    err = capsys.readouterr().err
    assert "LLMFLOW_GATEWAY_TOKENS" in err and "tiny-secret" not in err


def test_tokens_that_are_no_json_are_one_line_without_the_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLMFLOW_GATEWAY_TOKENS", "not json secret-xyz")
    assert main(["gateway", "--topology", "topologies/support_triage.yaml"]) == 2
    err = capsys.readouterr().err
    assert err == "llmflow: error: LLMFLOW_GATEWAY_TOKENS: not valid JSON\n"


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ('{"shortSECRET2": {"tenant": "b"}}', "token 1: token Value should have at least 16"),
        ('["long-enough-SECRET-LIST-1"]', "token 1: Input should be a valid dictionary"),
        ('{"tok-SECRET-0123456789": "acme"}', "each token maps to"),
        ('"plain-SECRET-string-0001"', "not {"),
        ("not json SECRET", "not valid JSON"),
    ],
)
def test_a_bad_tokens_file_is_one_line_without_its_values(
    content: str,
    reason: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    file = tmp_path / "tokens.json"
    file.write_text(content)
    monkeypatch.delenv("LLMFLOW_GATEWAY_TOKENS", raising=False)
    monkeypatch.setenv("LLMFLOW_GATEWAY_TOKENS_FILE", str(file))
    assert main(["gateway", "--topology", "topologies/support_triage.yaml"]) == 2
    err = capsys.readouterr().err
    assert "LLMFLOW_GATEWAY_TOKENS_FILE" in err and reason in err, err
    assert "SECRET" not in err and "Traceback" not in err and len(err.splitlines()) == 1


def test_a_tokens_setting_of_the_wrong_shape_is_refused_without_its_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("LLMFLOW_GATEWAY_TOKENS", '{"tok-SECRET-0123456789": "acme"}')
    assert main(["gateway", "--topology", "topologies/support_triage.yaml"]) == 2
    err = capsys.readouterr().err
    assert "LLMFLOW_GATEWAY_TOKENS" in err and "SECRET" not in err and len(err.splitlines()) == 1
