"""How our history goes to pydantic-ai and how its stream events come back as ours."""

from __future__ import annotations

from typing import Any

from pydantic_ai import messages as pai
from pydantic_ai.usage import RequestUsage

from agentplex.agent.providers.events import StreamTranslator, parse_arguments, usage_of
from agentplex.agent.providers.history import NO_RESULT, to_messages, to_parameters
from agentplex.core.ports import (
    ChatMessage,
    ModelEvent,
    ModelRequest,
    ReasoningDelta,
    StepFinished,
    TextDelta,
    ToolCall,
    ToolCallDelta,
    ToolCallReady,
    ToolCallStarted,
    ToolSpec,
    Usage,
)

# --- history ----------------------------------------------------------------------------------


def test_a_conversation_with_a_tool_call_maps_part_for_part() -> None:
    call = ToolCall("call_1", "bash", {"command": "ls"})
    request = ModelRequest(
        "m",
        "Be brief.",
        (
            ChatMessage("user", "list files"),
            ChatMessage("assistant", "Sure.", reasoning="hidden", tool_calls=(call,)),
            ChatMessage("tool", "a.txt", call_id="call_1", tool_name="bash"),
            ChatMessage("assistant", "There is a.txt."),
            ChatMessage("user", "thanks"),
        ),
    )
    first, answer, result, final, thanks = to_messages(request)
    assert isinstance(first, pai.ModelRequest)
    assert [type(p) for p in first.parts] == [pai.SystemPromptPart, pai.UserPromptPart]
    assert isinstance(answer, pai.ModelResponse)
    text, tool_call = answer.parts
    assert isinstance(text, pai.TextPart) and text.content == "Sure."
    assert isinstance(tool_call, pai.ToolCallPart)
    assert (tool_call.tool_name, tool_call.args, tool_call.tool_call_id) == (
        "bash",
        {"command": "ls"},
        "call_1",
    )
    assert isinstance(result, pai.ModelRequest)
    returned = result.parts[0]
    assert isinstance(returned, pai.ToolReturnPart)
    assert (returned.tool_call_id, returned.content, returned.outcome) == (
        "call_1",
        "a.txt",
        "success",
    )
    assert isinstance(final, pai.ModelResponse)
    assert isinstance(thanks, pai.ModelRequest)
    # the reasoning is not sent back (no provider signature to go with it)
    assert not any(isinstance(p, pai.ThinkingPart) for m in to_messages(request) for p in m.parts)


def test_the_last_user_message_joins_the_tool_results_before_it() -> None:
    call = ToolCall("c", "read", {})
    messages = to_messages(
        ModelRequest(
            "m",
            "",
            (
                ChatMessage("user", "go"),
                ChatMessage("assistant", tool_calls=(call,)),
                ChatMessage("tool", "no such file", call_id="c", tool_name="read", is_error=True),
                ChatMessage("user", "try again"),
            ),
        )
    )
    last = messages[-1]
    assert isinstance(last, pai.ModelRequest)
    assert [type(p) for p in last.parts] == [pai.ToolReturnPart, pai.UserPromptPart]
    failed = last.parts[0]
    assert isinstance(failed, pai.ToolReturnPart) and failed.outcome == "failed"


def test_a_call_without_result_is_answered_and_a_stray_result_becomes_text() -> None:
    call = ToolCall("lost", "bash", {"command": "sleep 100"})
    messages = to_messages(
        ModelRequest(
            "m",
            "",
            (
                ChatMessage("user", "run it"),
                ChatMessage("assistant", tool_calls=(call,)),
                ChatMessage("user", "never mind"),
                ChatMessage("tool", "42", call_id="unknown", tool_name="bash"),
            ),
        )
    )
    repaired = messages[2]
    assert isinstance(repaired, pai.ModelRequest)
    interrupted = repaired.parts[0]
    assert isinstance(interrupted, pai.ToolReturnPart)
    assert (interrupted.tool_call_id, interrupted.content) == ("lost", NO_RESULT)
    stray = repaired.parts[-1]
    assert isinstance(stray, pai.UserPromptPart) and "42" in str(stray.content)


def test_empty_assistant_messages_are_left_out() -> None:
    messages = to_messages(
        ModelRequest("m", "", (ChatMessage("user", "a"), ChatMessage("assistant", "")))
    )
    assert len(messages) == 1


def test_tools_become_function_tools_with_an_object_schema() -> None:
    params = to_parameters(
        ModelRequest(
            "m",
            "",
            (),
            (
                ToolSpec(
                    "bash", "Run", {"type": "object", "properties": {"c": {"type": "string"}}}
                ),
                ToolSpec("noargs", "Nothing", {}),
            ),
        )
    )
    bash, noargs = params.function_tools
    assert (bash.name, bash.description) == ("bash", "Run")
    assert bash.parameters_json_schema["properties"] == {"c": {"type": "string"}}
    assert noargs.parameters_json_schema == {"type": "object", "properties": {}}


# --- stream events ----------------------------------------------------------------------------


def run(events: list[Any], final: pai.ModelResponse) -> list[ModelEvent]:
    translator = StreamTranslator()
    out = [e for event in events for e in translator.feed(event)]
    return out + list(translator.finish(final))


def test_content_in_start_events_is_sent_once() -> None:
    text = pai.TextPart("Hello")
    events = [
        pai.PartStartEvent(index=0, part=pai.ThinkingPart("Think")),
        pai.PartDeltaEvent(index=0, delta=pai.ThinkingPartDelta(content_delta="ing")),
        pai.PartEndEvent(index=0, part=pai.ThinkingPart("Thinking")),
        pai.PartStartEvent(index=1, part=text),
        pai.PartDeltaEvent(index=1, delta=pai.TextPartDelta(" world")),
        pai.PartEndEvent(index=1, part=pai.TextPart("Hello world")),
    ]
    out = run(events, pai.ModelResponse([pai.TextPart("Hello world")], finish_reason="stop"))
    assert out[:-1] == [
        ReasoningDelta("Think"),
        ReasoningDelta("ing"),
        TextDelta("Hello"),
        TextDelta(" world"),
    ]
    assert out[-1] == StepFinished("stop", Usage())


def test_a_replaced_part_sends_only_what_it_adds() -> None:
    events = [
        pai.PartStartEvent(index=0, part=pai.TextPart("Hel")),
        pai.PartStartEvent(index=0, part=pai.TextPart("Hello")),
    ]
    out = run(events, pai.ModelResponse([pai.TextPart("Hello")]))
    assert [e for e in out if isinstance(e, TextDelta)] == [TextDelta("Hel"), TextDelta("lo")]


def test_tool_calls_stream_their_arguments_and_are_ready_at_the_end() -> None:
    first = pai.ToolCallPart("bash", '{"command"', "dup")
    second = pai.ToolCallPart("read", "", "dup")  # a server that reuses ids
    events = [
        pai.PartStartEvent(index=0, part=first),
        pai.PartStartEvent(index=1, part=second),
        pai.PartDeltaEvent(index=0, delta=pai.ToolCallPartDelta(args_delta=': "ls"}')),
        pai.PartDeltaEvent(index=1, delta=pai.ToolCallPartDelta(args_delta='{"filePath": "a"}')),
    ]
    final = pai.ModelResponse(
        [
            pai.ToolCallPart("bash", '{"command": "ls"}', "dup"),
            pai.ToolCallPart("read", '{"filePath": "a"}', "dup"),
        ],
        finish_reason="stop",
    )
    out = run(events, final)
    started = [e for e in out if isinstance(e, ToolCallStarted)]
    assert [s.name for s in started] == ["bash", "read"]
    assert started[0].call_id != started[1].call_id
    args = {
        s.call_id: "".join(
            e.arguments for e in out if isinstance(e, ToolCallDelta) and e.call_id == s.call_id
        )
        for s in started
    }
    assert args[started[0].call_id] == '{"command": "ls"}'
    ready = [e.call for e in out if isinstance(e, ToolCallReady)]
    assert [(c.call_id, c.name, dict(c.arguments)) for c in ready] == [
        (started[0].call_id, "bash", {"command": "ls"}),
        (started[1].call_id, "read", {"filePath": "a"}),
    ]
    assert out[-1] == StepFinished("tool-calls", Usage())  # "stop" with calls means calls


def test_arguments_given_as_a_dict_are_sent_as_json() -> None:
    part = pai.ToolCallPart("bash", {"command": "pwd"}, "c1")
    out = run([pai.PartStartEvent(index=0, part=part)], pai.ModelResponse([part]))
    assert ToolCallDelta("c1", '{"command": "pwd"}') in out
    assert ToolCallReady(ToolCall("c1", "bash", {"command": "pwd"})) in out


def test_a_call_only_in_the_final_response_is_still_made() -> None:
    part = pai.ToolCallPart("bash", '{"command": "ls"}', "late")
    out = run([], pai.ModelResponse([part], finish_reason="tool_call"))
    assert out == [
        ToolCallStarted("late", "bash"),
        ToolCallDelta("late", '{"command": "ls"}'),
        ToolCallReady(ToolCall("late", "bash", {"command": "ls"})),
        StepFinished("tool-calls", Usage()),
    ]


def test_broken_arguments_never_raise() -> None:
    assert parse_arguments("") == {}
    assert parse_arguments('{"a": 1}') == {"a": 1}
    assert parse_arguments('{"a": ') == {"_raw": '{"a": '}
    assert parse_arguments("[1, 2]") == {"_raw": "[1, 2]"}


def test_length_and_other_finish_reasons() -> None:
    assert run([], pai.ModelResponse([], finish_reason="length"))[-1].reason == "length"  # type: ignore[union-attr]
    assert run([], pai.ModelResponse([], finish_reason="content_filter"))[-1].reason == "other"  # type: ignore[union-attr]


def test_usage_counts_cached_tokens_apart_from_input() -> None:
    usage = RequestUsage(
        input_tokens=100, output_tokens=20, cache_read_tokens=30, cache_write_tokens=10
    )
    usage.output_reasoning_tokens = 5
    assert usage_of(usage) == Usage(input=60, output=20, reasoning=5, cache_read=30, cache_write=10)
