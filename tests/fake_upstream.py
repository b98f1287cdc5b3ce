"""A fake vLLM server for routing and contract tests: vLLM's real wire format, replayed.

From vLLM's `entrypoints/openai/protocol.py` and `serving_completion.py` / `serving_chat.py`:
streamed chunks `data: {...}\\n\\n` with `choices[].text` (completions) or `choices[].delta`
(chat, the first delta carrying the role), `finish_reason` and `stop_reason` on the last choice
chunk, then (with `stream_options.include_usage`) a chunk with `"choices": []` and `usage`, then
`data: [DONE]`. Errors: `{"error": {"message", "type", "param", "code"}}` with the status; its
metrics `vllm:num_requests_running` / `vllm:num_requests_waiting` / `vllm:kv_cache_usage_perc`
labelled `model_name`; `/health` 200 with an empty body; `/tokenize` in vLLM's shape.

Runs on its own event loop in a thread of the test process; `mode` changes its behaviour live.
"""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

from aiohttp import web


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class FakeVLLM:
    """`flavor` switches the parts that differ: TGI's error body (`{"error": "...", "error_type"}`,
    422 for validation) and `tgi_` gauges; llama.cpp's error body and `llamacpp:` gauges; Triton's
    generate extension (`/v2/models/{model}/generate_stream`, `text_output` events,
    `/v2/health/ready`, `nv_inference_pending_request_count`)."""

    def __init__(self, name: str, model: str = "m", tokens: int = 5, flavor: str = "vllm"):
        self.flavor = flavor
        self.name = name
        self.model = model
        self.tokens = tokens
        self.mode = "ok"  # ok | error500 | overloaded | bad_request | hang | die_mid_stream | slow
        self.delay_s = 0.0  # before the first token ("slow")
        self.fail_every = 0  # in "ok" mode too: every n-th request is a 500 (0: never)
        self.served = 0  # requests answered 200
        self.requests: list[dict] = []
        self.running = 0
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    def start(self) -> FakeVLLM:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._serve(), self._loop).result(10)
        return self

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._stopping.set)  # hung handlers return
        asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(30)
        self._loop.call_soon_threadsafe(self._loop.stop)

    async def _serve(self) -> None:
        self._stopping = asyncio.Event()
        app = web.Application()
        app.router.add_get("/health", self._health)
        app.router.add_get("/metrics", self._metrics)
        app.router.add_get("/v1/models", self._models)
        app.router.add_post("/tokenize", self._tokenize)
        app.router.add_post("/v1/completions", self._complete)
        app.router.add_post("/v1/chat/completions", self._complete)
        app.router.add_get("/v2/health/ready", self._health)
        app.router.add_post("/v2/models/{model}/generate_stream", self._triton)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port).start()

    async def _health(self, request):
        if self.mode == "down":
            return web.Response(status=503)
        return web.Response(status=200)

    async def _metrics(self, request):
        if self.flavor != "vllm":
            names = {"tgi": ["tgi_queue_size 3", "tgi_batch_current_size 1"],
                     "llamacpp": ["llamacpp:requests_deferred 3", "llamacpp:requests_processing 1",
                                  "llamacpp:kv_cache_usage_ratio 0.25"],
                     "triton": ['nv_inference_pending_request_count{model="ensemble",version="1"} 3']}[self.flavor]
            text = "".join(f"# TYPE {line.split()[0].split('{')[0]} gauge\n{line}\n" for line in names)
            return web.Response(text=text, content_type="text/plain")
        labels = f'{{model_name="{self.model}"}}'
        text = (f"# HELP vllm:num_requests_running Number of requests in model execution batches.\n"
                f"# TYPE vllm:num_requests_running gauge\nvllm:num_requests_running{labels} {self.running}.0\n"
                f"# HELP vllm:num_requests_waiting Number of requests waiting to be processed.\n"
                f"# TYPE vllm:num_requests_waiting gauge\nvllm:num_requests_waiting{labels} 3.0\n"
                f"# HELP vllm:kv_cache_usage_perc KV-cache usage. 1 means 100 percent usage.\n"
                f"# TYPE vllm:kv_cache_usage_perc gauge\nvllm:kv_cache_usage_perc{labels} 0.25\n")
        return web.Response(text=text, content_type="text/plain")

    async def _models(self, request):
        return web.json_response({"object": "list", "data": [
            {"id": self.model, "object": "model", "created": 0, "owned_by": "vllm", "max_model_len": 2048}]})

    async def _tokenize(self, request):
        body = await request.json()
        text = body.get("prompt") or " ".join(m["content"] for m in body.get("messages", []))
        tokens = [ord(c) % 1000 for c in text]
        return web.json_response({"count": len(tokens), "max_model_len": 2048, "tokens": tokens,
                                  "token_strs": None})

    def _error(self, status: int, message: str, kind: str) -> web.Response:
        if self.flavor == "tgi":
            return web.json_response({"error": message, "error_type": "validation" if status == 400 else kind},
                                     status=422 if status == 400 else status)
        if self.flavor in ("llamacpp", "triton"):
            body = {"error": {"code": status, "message": message, "type": "invalid_request_error"}}
            return web.json_response(body if self.flavor == "llamacpp" else {"error": message}, status=status)
        return web.json_response({"error": {"message": message, "type": kind, "param": None, "code": status}},
                                 status=status)

    async def _send_tool_call(self, body, send) -> None:
        """vLLM's streamed tool call (serving_chat.py, `DeltaToolCall` dumped without unset
        fields): id, type and name first, then the arguments in pieces."""
        choice = body.get("tool_choice")
        name = choice["function"]["name"] if isinstance(choice, dict) else body["tools"][0]["function"]["name"]
        first = {"id": f"chatcmpl-tool-{self.name}{len(self.requests)}", "type": "function", "index": 0,
                 "function": {"name": name, "arguments": ""}}
        await send([{"index": 0, "delta": {"tool_calls": [first]}, "logprobs": None, "finish_reason": None}])
        for piece in ('{"city": ', '"Paris"}'):
            delta = {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            await send([{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}])

    async def _triton(self, request):
        body = await request.json()
        self.requests.append(body)
        if self.mode == "bad_request":
            return self._error(400, "unexpected inference input 'foo'", "bad_request")
        if self.mode == "error500":
            return self._error(500, "TRT-LLM executor failed", "internal")
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        for i in range(int(body.get("max_tokens", self.tokens))):
            event = {"model_name": request.match_info["model"], "model_version": "1", "text_output": f"{self.name}-{i} "}
            await response.write(f"data: {json.dumps(event)}\n\n".encode())
        self.served += 1
        return response

    async def _complete(self, request):
        body = await request.json()
        self.requests.append(body)
        chat = request.path.endswith("chat/completions")
        if self.mode == "error500" or self.fail_every and len(self.requests) % self.fail_every == 0:
            return self._error(500, "EngineCore encountered an issue.", "InternalServerError")
        if self.mode == "overloaded":
            response = self._error(503, "The server is overloaded.", "ServiceUnavailableError")
            response.headers["Retry-After"] = "0"
            return response
        if self.mode == "bad_request":
            return self._error(400, "This model's maximum context length is 2048 tokens.", "BadRequestError")
        if self.mode == "hang":
            await self._stopping.wait()
        if self.mode == "slow":
            await asyncio.sleep(self.delay_s)
        count = int(body.get("max_tokens") or self.tokens)
        response = web.StreamResponse(headers={"content-type": "text/event-stream"})
        await response.prepare(request)
        self.running += 1
        try:
            created, ident = int(time.time()), f"cmpl-{self.name}-{len(self.requests)}"
            base = {"id": ident, "created": created, "model": self.model,
                    "object": "chat.completion.chunk" if chat else "text_completion"}

            async def send(choices, usage=None):
                await response.write(f"data: {json.dumps({**base, 'choices': choices, 'usage': usage})}\n\n".encode())

            if chat:
                await send([{"index": 0, "delta": {"role": "assistant", "content": ""}, "logprobs": None,
                             "finish_reason": None}])
            if chat and body.get("tools") and body.get("tool_choice", "auto") != "none":
                await self._send_tool_call(body, send)
                count = 0
            elif chat and body.get("response_format", {}).get("type") in ("json_object", "json_schema", "json"):
                for piece in ('{"answer": ', f'"{self.name}"', "}"):
                    await send([{"index": 0, "delta": {"content": piece}, "logprobs": None, "finish_reason": None}])
                count = 0
            for i in range(count):
                text = f"{self.name}-{i} "
                await send([{"index": 0, "delta": {"content": text}, "logprobs": None, "finish_reason": None}] if chat
                           else [{"index": 0, "text": text, "logprobs": None, "finish_reason": None,
                                  "stop_reason": None}])
                if self.mode == "die_mid_stream" and i == 1:
                    await asyncio.sleep(0.3)  # the tokens so far reach the client, then the process dies
                    request.transport.close()  # and the connection just ends
                    return response
                await asyncio.sleep(self.delay_s if self.mode == "slow_stream" else 0)
            reason = "length" if count else ("tool_calls" if chat and body.get("tools") else "stop")
            finish = {"index": 0, "logprobs": None, "finish_reason": reason, "stop_reason": None}
            await send([{**finish, "delta": {}} if chat else {**finish, "text": ""}])
            if (body.get("stream_options") or {}).get("include_usage"):
                await send([], {"prompt_tokens": 7, "total_tokens": 7 + count, "completion_tokens": count})
            self.served += 1  # before the last byte: a client that has read it sees the count
            await response.write(b"data: [DONE]\n\n")
        finally:
            self.running -= 1
        return response
