"""Templates name only what the worker renders them with: checked when the topology loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmflow.topologies import TopologyError, load_topology
from llmflow.topologies.prompts import variable_paths
from llmflow.topologies.spec import Prompt

TOPOLOGY = """\
name: demo
version: "1"
input_topic: in
output_topic: out
dead_letter_topic: dlq
accepts: [{accepts}]
calls:
  - name: summarize
    model: m
    prompt:
      version: p1
      system: "{system}"
      user: "{user}"
"""


def _load(tmp_path: Path, user: str, system: str = "Be brief.", accepts: str = "text") -> None:
    path = tmp_path / "t.yaml"
    path.write_text(TOPOLOGY.format(accepts=accepts, system=system, user=user))
    load_topology(path)


def _problems(
    tmp_path: Path, user: str, system: str = "Be brief.", accepts: str = "text"
) -> list[str]:
    with pytest.raises(TopologyError) as info:
        _load(tmp_path, user, system, accepts)
    return info.value.problems


def test_a_typo_in_the_user_template_is_reported_where_it_is(tmp_path: Path) -> None:
    [problem] = _problems(tmp_path, "{{ event.txet }}")
    assert problem == (
        f"{tmp_path / 't.yaml'}:13:13: calls.0.prompt.user: unknown variable 'event.txet' "
        "(event fields: attributes, id, key, kind, schema_version, source, tenant, text, "
        "timestamp)"
    )


def test_a_typo_in_the_system_template_is_reported(tmp_path: Path) -> None:
    [problem] = _problems(tmp_path, "{{ event.text }}", system="Tier {{ record.tier }}")
    assert ":12:15: calls.0.prompt.system: unknown variable 'record.tier'" in problem
    assert "(record fields: key, offset, table, version)" in problem


def test_an_unknown_top_level_name_is_an_error(tmp_path: Path) -> None:
    [problem] = _problems(tmp_path, "{{ evnt.text }} {{ customer }}")
    assert problem.endswith(
        "unknown variable 'evnt' (variables: event, org, record, docs, calls); "
        "unknown variable 'customer' (variables: event, org, record, docs, calls)"
    )


def test_a_field_of_a_kind_not_accepted_is_an_error(tmp_path: Path) -> None:
    [problem] = _problems(tmp_path, "{{ event.text }}", accepts="image")
    assert problem.endswith(
        "unknown variable 'event.text' (only text, text_image events have it; accepted: image)"
    )
    _load(tmp_path, "{{ event.text }}", accepts="image, text_image")  # one kind has it: fine


def test_fields_below_the_event_are_checked(tmp_path: Path) -> None:
    [problem] = _problems(tmp_path, "{{ event.image.uri }}", accepts="image")
    assert problem.endswith(
        "unknown variable 'event.image.uri' (event.image fields: data_base64, media_type, url)"
    )
    [problem] = _problems(tmp_path, "{{ event.images[0].link }}", accepts="text_image")
    assert "unknown variable 'event.images[0].link' (event.images[0] fields:" in problem
    _load(
        tmp_path,
        "{{ event.image.url }} {{ event.image.media_type | default('') }}",
        accepts="image",
    )
    _load(tmp_path, "{{ event.images[0].url }} {{ event.images | length }}", accepts="text_image")


def test_attributes_org_and_record_fields_are_free(tmp_path: Path) -> None:
    _load(
        tmp_path,
        "{{ event.attributes.anything }} {{ event.attributes['x'].y }} {{ org.tier.name }} "
        "{{ record.table }} {{ record.key }} {{ record.version }} {{ record.offset }} "
        "{{ event.text.upper() }} "
        "{{ event.get('text') }} {{ range(2) | list }}",
    )


def test_docs_fields_are_free(tmp_path: Path) -> None:
    _load(
        tmp_path,
        "{% for doc in docs %}{{ doc.id }} {{ doc.text }} {{ doc.record.title }}{% endfor %} "
        "{{ docs | length }} {{ docs[0].score | default(0) }}",
    )


def test_names_bound_in_the_template_are_local(tmp_path: Path) -> None:
    _load(
        tmp_path,
        "{% set who = org.name %}{{ who.first }} "
        "{% for image in event.images %}{{ image.anything }}{{ loop.index }}{% endfor %}",
        accepts="text_image",
    )


def test_every_problem_of_every_template_is_reported(tmp_path: Path) -> None:
    problems = _problems(tmp_path, "{{ event.a }} {{ event.b }}", system="{{ evnt }}")
    assert [p.split(": ", 2)[1] for p in problems] == [
        "calls.0.prompt.system",
        "calls.0.prompt.user",
    ]
    assert "'event.a'" in problems[1] and "'event.b'" in problems[1]


def test_a_prompt_alone_allows_the_fields_of_every_kind() -> None:
    Prompt(version="p1", user="{{ event.text }} {{ event.image.url }} {{ event.images }}")
    with pytest.raises(ValueError, match=r"unknown variable 'event\.txet'"):
        Prompt(version="p1", user="{{ event.txet }}")


def test_variable_paths_follow_constant_attributes_and_items() -> None:
    assert variable_paths(
        "{{ event.images[0].url }} {{ event[org.k].z }} {% for x in y %}{{ x.q }}{% endfor %}"
    ) == [("event", "images", 0, "url"), ("org", "k"), ("event",), ("y",)]
