"""/v1/embeddings and what real applications drive with it: `shipyard serve --model PATH
--embedding-model builtin` serving the shipped MiniLM as `shipyard-embed` behind the same keys,
roles, limits, usage and metrics as chat; the official client (base64 by default, floats),
LangChain's OpenAIEmbeddings, `bind_tools` and `with_structured_output` on the same server."""

from __future__ import annotations

import time

import httpx
import numpy as np
import openai
import pytest

from conftest import MODEL_NAME, ServerProcess
from gateway_support import ADMIN_KEY, AdminClient, call

EMBED = "shipyard-embed"
TEXTS = ["Python lists are mutable.", "A tuple cannot change.", "Dictionaries map keys to values."]


@pytest.fixture(scope="module")
def server(long_context_model, tmp_path_factory):
    config = {"gateway": {"usage_flush_interval_s": 0.1}}
    args = ["--model", str(long_context_model), "--embedding-model", "builtin"]
    with ServerProcess(config, tmp_path_factory.mktemp("embed"), extra_args=args,
                       env={"SHIPYARD_ADMIN_KEY": ADMIN_KEY}) as proc:
        yield proc


@pytest.fixture(scope="module")
def admin(server):
    return AdminClient(server.base_url)


@pytest.fixture(scope="module")
def key(admin):
    return admin.key(admin.tenant("embedders"))


@pytest.fixture(scope="module")
def client(server, key):
    with openai.OpenAI(base_url=f"{server.base_url}/v1", api_key=key["key"], max_retries=0, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def direct():
    from sentence_transformers import SentenceTransformer

    from shipyard.engines.embedding_engine import builtin_model_path

    return SentenceTransformer(builtin_model_path(), device="cpu", local_files_only=True)


def test_the_builtin_model_is_listed_and_matches_sentence_transformers(client, direct):
    assert {m.id for m in client.models.list().data} >= {MODEL_NAME, EMBED}
    out = client.embeddings.create(model=EMBED, input=TEXTS)  # the client asks for base64 and decodes it
    vectors = np.array([d.embedding for d in out.data])
    assert vectors.shape == (3, 384) and [d.index for d in out.data] == [0, 1, 2]
    np.testing.assert_allclose(vectors, direct.encode(TEXTS, normalize_embeddings=True), atol=1e-5)
    floats = client.embeddings.create(model=EMBED, input=TEXTS[0], encoding_format="float")
    np.testing.assert_allclose(floats.data[0].embedding, vectors[0], atol=1e-6)
    ids = direct.tokenizer(TEXTS[0])["input_ids"]
    by_ids = client.embeddings.create(model=EMBED, input=[ids])
    np.testing.assert_allclose(by_ids.data[0].embedding, vectors[0], atol=1e-5)
    assert by_ids.usage.prompt_tokens == len(ids) == by_ids.usage.total_tokens


@pytest.mark.parametrize("body, param", [
    ({"input": ""}, "input"),
    ({"input": []}, "input"),
    ({"input": ["x"] * 2049}, "input"),
    ({"input": [[10**7]]}, "input"),
    ({"input": "word " * 400}, "input"),  # past the model's 256 tokens
    ({"input": "x", "dimensions": 100}, "dimensions"),
    ({"input": "x", "encoding_format": "int8"}, "encoding_format"),
    ({"input": "x", "model": MODEL_NAME}, "model"),
])
def test_bad_embedding_requests_are_400s(server, key, body, param):
    response = call(server.base_url, key["key"], "POST", "/v1/embeddings", json={"model": EMBED, **body})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["param"] == param


def test_chat_with_an_embedding_model_is_a_400(client):
    with pytest.raises(openai.BadRequestError) as caught:
        client.chat.completions.create(model=EMBED, messages=[{"role": "user", "content": "hi"}], max_tokens=2)
    assert caught.value.body["code"] == "wrong_endpoint"


def test_keys_roles_limits_usage_and_metrics(server, admin):
    tenant = admin.tenant("embed-metered")
    metered = admin.key(tenant)
    body = {"model": EMBED, "input": TEXTS}
    assert call(server.base_url, None, "POST", "/v1/embeddings", json=body).status_code == 401
    viewer = admin.key(tenant, "viewer")["key"]
    assert call(server.base_url, viewer, "POST", "/v1/embeddings", json=body).status_code == 403
    chat_only = admin.key(tenant, allowed_models=[MODEL_NAME])["key"]
    assert call(server.base_url, chat_only, "POST", "/v1/embeddings", json=body).status_code == 403
    tight = admin.key(tenant, tpm=10)["key"]
    refused = call(server.base_url, tight, "POST", "/v1/embeddings", json=body)
    assert refused.status_code == 429 and refused.headers.get("retry-after")
    tokens = [call(server.base_url, metered["key"], "POST", "/v1/embeddings", json=body).json()["usage"]["prompt_tokens"]
              for _ in range(2)]
    deadline = time.monotonic() + 10
    while True:
        rows = admin.get("/admin/usage", params={"tenant_id": tenant, "group_by": "model"}).json()["data"]
        row = next((r for r in rows if r["model"] == EMBED and r["prompt_tokens"] >= sum(tokens)), None)
        if row is not None or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert row is not None and row["prompt_tokens"] >= sum(tokens) and row["completion_tokens"] == 0
    metrics = httpx.get(f"{server.base_url}/metrics", headers={"authorization": f"Bearer {ADMIN_KEY}"}).text
    assert f'shipyard:e2e_request_latency_seconds_count{{model_name="{EMBED}"}}' in metrics
    assert f'shipyard:num_requests_waiting{{model_name="{EMBED}"}}' in metrics


def test_langchain_embeddings(server, key):
    from langchain_openai import OpenAIEmbeddings

    # LangChain's default tokenizes with tiktoken (OpenAI's vocabulary, downloaded at first use) and sends
    # token ids; a server with its own models takes the text, as for any non-OpenAI model.
    embeddings = OpenAIEmbeddings(model=EMBED, base_url=f"{server.base_url}/v1", api_key=key["key"],
                                  check_embedding_ctx_length=False)
    documents = embeddings.embed_documents(TEXTS)
    query = embeddings.embed_query("Which container can change?")
    assert len(documents) == 3 and len(query) == 384
    scores = np.array(documents) @ np.array(query)
    assert np.isfinite(scores).all()


def test_langchain_bind_tools_and_structured_output(server, key):
    from langchain_openai import ChatOpenAI
    from pydantic import BaseModel, Field

    class GetWeather(BaseModel):
        """Current weather in a city."""

        city: str = Field(max_length=12)
        unit: str = Field(pattern="^(celsius|fahrenheit)$")

    class Answer(BaseModel):
        text: str = Field(max_length=20)
        confident: bool

    llm = ChatOpenAI(model=MODEL_NAME, base_url=f"{server.base_url}/v1", api_key=key["key"], max_tokens=200,
                     temperature=0.8, max_retries=0)
    message = llm.bind_tools([GetWeather], tool_choice="GetWeather").invoke("Weather in Oslo?")
    (tool_call,) = message.tool_calls
    assert tool_call["name"] == "GetWeather"
    GetWeather.model_validate(tool_call["args"])
    required = llm.bind_tools([GetWeather], tool_choice="any").invoke("Weather in Oslo?")
    assert required.tool_calls and all(c["name"] == "GetWeather" for c in required.tool_calls)
    for method in ("json_schema", "function_calling"):
        answer = llm.with_structured_output(Answer, method=method).invoke("Answer briefly.")
        assert isinstance(answer, Answer)
    streamed = list(llm.bind_tools([GetWeather], tool_choice="GetWeather").stream("Weather in Oslo?"))
    merged = streamed[0]
    for piece in streamed[1:]:
        merged += piece
    assert merged.tool_calls[0]["name"] == "GetWeather"
    GetWeather.model_validate(merged.tool_calls[0]["args"])
