"""Calls that need each other: `needs`, `when` and the `calls` variable, checked before any
event flows, each problem pointing at its line in the file."""

from __future__ import annotations

from pathlib import Path

import pytest

from llmflow.topologies import TopologyError, load_topology

HEAD = """\
name: steps
version: "1"
input_topic: in
output_topic: out
dead_letter_topic: dlq
accepts: [text]
calls:
"""

CLASSIFY = """\
  - name: classify
    model: m
    prompt:
      version: c1
      user: "{{ event.text }}"
    output_schema:
      type: object
      properties: {priority: {type: string}}
"""


def _call(name: str, user: str, needs: str = "", when: str = "") -> str:
    lines = [f"  - name: {name}", "    model: m"]
    if needs:
        lines.append(f"    needs: {needs}")
    if when:
        lines.append(f"    when: {when}")
    lines += ["    prompt:", f"      version: {name}-1", f"      user: {user}"]
    return "\n".join(lines) + "\n"


def _load(tmp_path: Path, *calls: str) -> list[str] | None:
    path = tmp_path / "t.yaml"
    path.write_text(HEAD + "".join(calls))
    try:
        load_topology(path)
    except TopologyError as exc:
        return [problem.removeprefix(f"{path}:") for problem in exc.problems]
    return None


def test_a_graph_of_calls_loads_in_an_order_that_respects_needs(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        HEAD
        + _call("reply", '"{{ calls.summarize.answer }} {{ calls.classify.answer }}"',
                "[summarize, classify]")
        + _call("summarize", '"{{ event.text }} {{ calls.classify.answer.priority }}"',
                "[classify]", "\"calls.classify.answer.priority != 'low'\"")
        + CLASSIFY
    )  # fmt: skip
    topology = load_topology(path)
    assert [call.name for call in topology.order] == ["classify", "summarize", "reply"]
    assert [call.name for call in topology.calls] == ["reply", "summarize", "classify"]
    assert topology.calls[1].when == "calls.classify.answer.priority != 'low'"


def test_a_need_must_be_another_call_of_the_topology(tmp_path: Path) -> None:
    problems = _load(tmp_path, CLASSIFY, _call("reply", "x", "[classify, clasify, reply]"))
    assert problems == [
        "18:12: calls.1.needs: needs 'clasify', 'reply': no other call",
    ]


def test_needs_may_not_make_a_cycle(tmp_path: Path) -> None:
    problems = _load(
        tmp_path,
        _call("a", '"{{ calls.c.answer }}"', "[c]"),
        _call("b", '"{{ calls.a.answer }}"', "[a]"),
        _call("c", '"{{ calls.b.answer }}"', "[b]"),
    )
    assert problems is not None and len(problems) == 1
    assert "needs: the calls' needs make a cycle: " in problems[0]
    cycle = problems[0].rsplit(": ", 1)[1].split(" -> ")
    assert set(cycle) == {"a", "b", "c"} and cycle[0] == cycle[-1]


def test_a_template_may_use_only_the_results_of_calls_it_needs(tmp_path: Path) -> None:
    # classify may not have answered when reply's prompt is rendered: an error, not a race.
    problems = _load(tmp_path, CLASSIFY, _call("reply", '"{{ calls.classify.answer }}"'))
    assert problems == [
        "19:7: calls.1.prompt: uses the result of 'classify', which it does not list in needs"
    ]


def test_a_condition_may_use_only_the_results_of_calls_it_needs(tmp_path: Path) -> None:
    problems = _load(
        tmp_path, CLASSIFY, _call("reply", "x", when='"calls.classify.answer.priority"')
    )
    assert problems == [
        "18:11: calls.1.when: uses the result of 'classify', which it does not list in needs"
    ]


@pytest.mark.parametrize(
    ("when", "expected"),
    [
        ('"calls.classify.answer.priority in"', "calls.1.when: Value error, condition error: "),
        ('"evnt.text"', "calls.1.when: unknown variable 'evnt'"),
        ('"calls.classify.anser"', "calls.1.when: unknown variable 'calls.classify.anser'"),
        ('"{{ event.text }}"', "calls.1.when: Value error, condition error: "),
    ],
)
def test_a_condition_is_one_expression_over_known_names(
    tmp_path: Path, when: str, expected: str
) -> None:
    problems = _load(tmp_path, CLASSIFY, _call("reply", "x", "[classify]", when))
    assert problems is not None and len(problems) == 1
    assert problems[0].split(": ", 1)[1].startswith(expected), problems


def test_a_result_field_is_checked_and_an_answer_is_free(tmp_path: Path) -> None:
    problems = _load(
        tmp_path, CLASSIFY, _call("reply", '"{{ calls.classify.tokens }}"', "[classify]")
    )
    assert problems is not None and "unknown variable 'calls.classify.tokens'" in problems[0]
    assert "tokens_in" in problems[0]
    assert _load(
        tmp_path,
        CLASSIFY,
        _call("reply", '"{{ calls.classify.answer.any.thing }} {{ calls.classify.model }}"',
              "[classify]"),
    ) is None  # fmt: skip


def test_retrieval_runs_before_the_calls_and_cannot_use_them(tmp_path: Path) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(
        HEAD.replace(
            "calls:\n",
            'retrieval:\n  collection: policies\n  query: "{{ calls.classify.answer }}"\ncalls:\n',
        )
        + CLASSIFY
    )
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    assert info.value.problems == [
        f"{path}:8:3: retrieval: retrieval runs before the calls: its query and filters "
        "cannot use `calls`"
    ]


ROUTES = """\
routes:
  - name: urgent
    topic: {topic}
    when: "calls.{call}.answer.priority == 'urgent'"
"""


@pytest.mark.parametrize(
    ("topic", "call", "expected"),
    [
        ("escalations", "classify", None),
        ("out", "classify", "(top level): Value error, input, output, dead-letter, parked and "
         "route topics must differ"),
        ("escalations", "clasify", "routes.0.when: uses the result of 'clasify': no call"),
    ],
)  # fmt: skip
def test_a_route_names_its_own_topic_and_calls_of_the_topology(
    tmp_path: Path, topic: str, call: str, expected: str | None
) -> None:
    path = tmp_path / "t.yaml"
    path.write_text(HEAD.replace("calls:\n", "") + ROUTES.format(topic=topic, call=call)
                    + "calls:\n" + CLASSIFY)  # fmt: skip
    if expected is None:
        topology = load_topology(path)
        assert topology.routes[0].topic == "escalations"
        assert "escalations" in topology.topics
        return
    with pytest.raises(TopologyError) as info:
        load_topology(path)
    assert [p.split(": ", 1)[1] for p in info.value.problems] == [expected]
