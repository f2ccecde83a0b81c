"""The official openai Python SDK against the real gateway (contract §3, §4): chat, streams
with and without the usage chunk, embeddings, models, typed errors, API keys and limits."""

import json
import time

import openai
import pytest

from conftest import EMBEDDING, LIMITED_KEY, PROMPT_TOKENS, TOKENS

MESSAGES = [{"role": "user", "content": "Say hello."}]


def test_chat_non_stream(client, mock_upstream):
    raw = client.chat.completions.with_raw_response.create(model="gpt-3.5-turbo", messages=MESSAGES, temperature=0.5)
    assert raw.headers["x-switchyard-model"] == "chat"
    assert raw.headers["x-switchyard-provider"] == "mock"
    assert raw.headers.get("x-request-id")
    resp = raw.parse()
    assert resp.model == "gpt-3.5-turbo"
    assert resp.choices[0].message.content == "".join(TOKENS)
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.prompt_tokens == PROMPT_TOKENS
    assert resp.usage.completion_tokens == len(TOKENS)
    sent = json.loads(mock_upstream.last()["body"])
    assert sent["model"] == "mock-chat"
    assert sent["temperature"] == 0.5
    assert sent["messages"] == MESSAGES


def test_chat_stream_without_usage(client, mock_upstream):
    stream = client.chat.completions.create(model="chat", messages=MESSAGES, stream=True)
    chunks = list(stream)
    assert len(chunks) == len(TOKENS)
    assert all(c.usage is None for c in chunks)
    assert all(len(c.choices) == 1 for c in chunks), "the usage-only chunk is stripped"
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "".join(TOKENS)
    assert all(c.model == "chat" for c in chunks)
    assert chunks[-1].choices[0].finish_reason == "stop"
    sent = json.loads(mock_upstream.last()["body"])
    assert sent["stream"] is True
    assert sent["stream_options"]["include_usage"] is True, "the gateway always asks upstream for usage"


def test_chat_stream_with_usage(client):
    stream = client.chat.completions.create(
        model="gpt-3.5-turbo", messages=MESSAGES, stream=True, stream_options={"include_usage": True}
    )
    chunks = list(stream)
    with_usage = [c for c in chunks if c.usage is not None]
    assert len(with_usage) == 1
    last = chunks[-1]
    assert last is with_usage[0], "the usage chunk is the last one"
    assert last.choices == []
    assert last.usage.prompt_tokens == PROMPT_TOKENS
    assert last.usage.completion_tokens == len(TOKENS)
    assert last.usage.total_tokens == PROMPT_TOKENS + len(TOKENS)
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "".join(TOKENS)


def test_cut_stream_raises(client):
    stream = client.chat.completions.create(model="cut", messages=MESSAGES, stream=True)
    got = []
    with pytest.raises(openai.APIError):
        for c in stream:
            got.append(c)
    assert "".join(c.choices[0].delta.content or "" for c in got if c.choices) == "".join(TOKENS[:2])


def test_embeddings(client, mock_upstream):
    resp = client.embeddings.create(model="embed", input=["a", "b"], encoding_format="float")
    assert resp.model == "embed"
    assert resp.data[0].embedding == EMBEDDING
    assert resp.usage.prompt_tokens == PROMPT_TOKENS
    sent = mock_upstream.last()
    assert sent["path"] == "/v1/embeddings"
    assert json.loads(sent["body"])["model"] == "mock-embed"


def test_models_list_and_retrieve(client):
    models = client.models.list()
    ids = sorted(m.id for m in models.data)
    assert ids == ["bad", "chat", "cut", "embed"]
    assert all(m.object == "model" for m in models.data)
    m = client.models.retrieve("gpt-3.5-turbo")
    assert m.id == "chat"
    assert client.models.retrieve("embed").id == "embed"
    with pytest.raises(openai.NotFoundError) as e:
        client.models.retrieve("nope")
    assert e.value.code == "model_not_found"


def test_unknown_model_is_not_found(client, mock_upstream):
    before = mock_upstream.count()
    with pytest.raises(openai.NotFoundError) as e:
        client.chat.completions.create(model="no-such-model", messages=MESSAGES)
    assert e.value.status_code == 404
    assert e.value.code == "model_not_found"
    assert e.value.param == "model"
    assert e.value.type == "invalid_request_error"
    with pytest.raises(openai.NotFoundError):
        client.chat.completions.create(model="no-such-model", messages=MESSAGES, stream=True)
    assert mock_upstream.count() == before


def test_bad_request_errors(client, mock_upstream):
    before = mock_upstream.count()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="chat", messages="hi")
    assert e.value.code == "invalid_type"
    assert e.value.param == "messages"
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="bad\nname", messages=MESSAGES)
    assert e.value.code == "invalid_model_name"
    assert mock_upstream.count() == before, "rejected before the upstream"


def test_upstream_400_is_bad_request_and_not_leaked(client):
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model="bad", messages=MESSAGES)
    assert e.value.status_code == 400
    assert "upstream says no" not in str(e.value.body)


def test_gateway_logs_one_access_line_per_request(client, gateway):
    raw = client.chat.completions.with_raw_response.create(
        model="chat", messages=MESSAGES, extra_headers={"x-request-id": "py-access-1"}
    )
    assert raw.headers["x-request-id"] == "py-access-1"
    deadline = time.monotonic() + 10
    rows = []
    while time.monotonic() < deadline:
        rows = []
        for line in gateway["log"].read_text(errors="replace").splitlines():
            try:
                v = json.loads(line)
            except ValueError:
                continue
            if v.get("target") == "switchyard::access" and v.get("request_id") == "py-access-1":
                rows.append(v)
        if rows:
            break
        time.sleep(0.05)
    assert len(rows) == 1
    assert rows[0]["status"] == "ok"
    assert rows[0]["usage_source"] == "upstream"
    assert rows[0]["completion_tokens"] == len(TOKENS)


def test_wrong_or_missing_key_is_authentication_error(gateway):
    for key in ["sk-wrong", ""]:
        c = openai.OpenAI(base_url=gateway["url"], api_key=key or "x", max_retries=0, timeout=20.0)
        if not key:
            c = c.with_options(default_headers={"Authorization": ""})
        with pytest.raises(openai.AuthenticationError) as e:
            c.chat.completions.create(model="chat", messages=MESSAGES)
        assert e.value.status_code == 401
        assert e.value.code == "invalid_api_key"


def test_key_allowlist_and_rate_limit_as_sdk_errors(gateway):
    c = openai.OpenAI(base_url=gateway["url"], api_key=LIMITED_KEY, max_retries=0, timeout=20.0)
    with pytest.raises(openai.NotFoundError) as e:
        c.embeddings.create(model="embed", input="hello")
    assert e.value.code == "model_not_found"
    raw = c.chat.completions.with_raw_response.create(model="chat", messages=MESSAGES)
    assert raw.headers["x-ratelimit-limit-requests"] == "1"
    assert raw.headers["x-ratelimit-remaining-requests"] == "0"
    with pytest.raises(openai.RateLimitError) as e:
        c.chat.completions.create(model="chat", messages=MESSAGES)
    assert e.value.status_code == 429
    assert e.value.code == "rate_limit_exceeded"
    assert int(e.value.response.headers["retry-after"]) >= 1
