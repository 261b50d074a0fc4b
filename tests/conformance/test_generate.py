"""Generation with real clients against the real binary: the `openai` SDK (base_url pointed at
Sluice) whole and streamed, tritonclient gRPC `start_stream` / `async_stream_infer` getting one
response per piece of text (decoupled), and raw SSE from generate_stream.

The model is SmolLM2-135M-Instruct (GGUF) of $SLUICE_MODELS (scripts/setup.sh fills it), served
from a model directory that holds only `1/model.gguf` and `tokenizer.json` (no config).
"""

from __future__ import annotations

import json
import queue

import numpy as np
import pytest
import requests
from v2util import model_path

FRANCE = "<|im_start|>user\nWhat is the capital of France?<|im_end|>\n<|im_start|>assistant\n"
ANSWER = "The capital of France is Paris."


@pytest.fixture(scope="module")
def llm(start_sluice, tmp_path_factory):
    model = model_path("smollm2-135m-instruct")
    repo = tmp_path_factory.mktemp("llm-repo")
    (repo / "smollm" / "1").mkdir(parents=True)
    (repo / "smollm" / "1" / "model.gguf").symlink_to(model / "model.gguf")
    (repo / "smollm" / "tokenizer.json").symlink_to(model / "tokenizer.json")
    return start_sluice("--model-repository", str(repo), name="sluice-llm")


def test_openai_chat_whole_and_streamed(llm):
    from openai import OpenAI

    client = OpenAI(base_url=f"{llm.base}/v1", api_key="unused")
    assert [m.id for m in client.models.list()] == ["smollm"]

    messages = [{"role": "user", "content": "What is the capital of Germany?"}]
    whole = client.chat.completions.create(model="smollm", messages=messages, temperature=0, max_tokens=30)
    text = whole.choices[0].message.content
    assert text == "The capital of Germany is Berlin."
    assert whole.choices[0].finish_reason == "stop"
    assert whole.usage.completion_tokens > 3 and whole.usage.total_tokens > whole.usage.prompt_tokens

    pieces, finish, usage = [], None, None
    stream = client.chat.completions.create(
        model="smollm", messages=messages, temperature=0, max_tokens=30, stream=True,
        stream_options={"include_usage": True},
    )
    for chunk in stream:
        if chunk.usage is not None:
            usage = chunk.usage
        for choice in chunk.choices:
            if choice.delta.content:
                pieces.append(choice.delta.content)
            finish = choice.finish_reason or finish
    assert len(pieces) > 3, "streamed in pieces"
    assert "".join(pieces) == text
    assert finish == "stop"
    assert usage is not None and usage.completion_tokens == whole.usage.completion_tokens


def test_openai_completion_and_errors(llm):
    import openai
    from openai import OpenAI

    client = OpenAI(base_url=f"{llm.base}/v1", api_key="unused", max_retries=0)
    c = client.completions.create(model="smollm", prompt=FRANCE, max_tokens=4, temperature=0)
    assert c.choices[0].text == "The capital of France"
    assert c.choices[0].finish_reason == "length"
    assert c.usage.completion_tokens == 4

    streamed = "".join(
        ch.choices[0].text
        for ch in client.completions.create(model="smollm", prompt=FRANCE, max_tokens=4, temperature=0, stream=True)
        if ch.choices
    )
    assert streamed == "The capital of France"

    with pytest.raises(openai.NotFoundError) as e:
        client.completions.create(model="no-such-model", prompt="x")
    assert "no-such-model" in str(e.value)
    with pytest.raises(openai.BadRequestError) as e:
        client.completions.create(model="smollm", prompt="x", top_p=5)
    assert "top_p" in str(e.value)


def test_openai_completion_scores_the_prompt(llm):
    """What lm-evaluation-harness does through the SDK's types: echo, logprobs, max_tokens 0."""
    from openai import OpenAI

    client = OpenAI(base_url=f"{llm.base}/v1", api_key="unused")
    c = client.completions.create(model="smollm", prompt=FRANCE, max_tokens=0, echo=True, logprobs=1)
    choice = c.choices[0]
    lp = choice.logprobs
    assert choice.text == FRANCE
    assert "".join(lp.tokens) == FRANCE
    assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == c.usage.prompt_tokens
    assert lp.token_logprobs[0] is None and lp.top_logprobs[0] is None
    assert all(x <= 0 for x in lp.token_logprobs[1:])
    assert lp.text_offset[1] == len(lp.tokens[0])
    assert all(lp.top_logprobs[i][lp.tokens[i]] == lp.token_logprobs[i] for i in range(1, len(lp.tokens)))
    assert c.usage.completion_tokens == 0


def test_same_seed_same_sample(llm):
    from openai import OpenAI

    client = OpenAI(base_url=f"{llm.base}/v1", api_key="unused")
    ask = lambda seed: client.completions.create(
        model="smollm", prompt="Once upon a time", max_tokens=12, temperature=0.9, seed=seed
    ).choices[0].text
    assert ask(7) == ask(7)


def test_tritonclient_grpc_stream_one_response_per_piece(llm):
    import tritonclient.grpc as grpcclient

    responses: "queue.Queue" = queue.Queue()
    client = grpcclient.InferenceServerClient(llm.grpc_url)
    client.start_stream(callback=lambda result, error: responses.put((result, error)))
    try:
        text = grpcclient.InferInput("text_input", [1], "BYTES")
        text.set_data_from_numpy(np.array([FRANCE.encode()], dtype=np.object_))
        client.async_stream_infer(
            "smollm",
            [text],
            request_id="r1",
            parameters={"max_tokens": 30, "temperature": 0},
            enable_empty_final_response=True,
        )
        pieces = []
        while True:
            result, error = responses.get(timeout=60)
            assert error is None, error
            resp = result.get_response()
            final = resp.parameters["triton_final_response"].bool_param
            out = result.as_numpy("text_output")
            if out is not None:
                pieces.append(out[0].decode())
            if final:
                break
        assert len(pieces) > 3, "several responses for one request"
        assert "".join(pieces) == ANSWER
        assert resp.id == "r1"
    finally:
        client.stop_stream()
        client.close()


def test_tritonclient_http_infer_and_raw_sse(llm):
    import tritonclient.http as httpclient

    client = httpclient.InferenceServerClient(llm.http_url, network_timeout=60.0)
    text = httpclient.InferInput("text_input", [1], "BYTES")
    text.set_data_from_numpy(np.array([FRANCE.encode()], dtype=np.object_))
    params = httpclient.InferInput("sampling_parameters", [1], "BYTES")
    params.set_data_from_numpy(np.array([json.dumps({"max_tokens": 30, "temperature": 0}).encode()], dtype=np.object_))
    r = client.infer("smollm", [text, params])
    assert r.as_numpy("text_output")[0].decode() == ANSWER
    client.close()

    body = {"text_input": FRANCE, "parameters": {"max_tokens": 30, "temperature": 0}}
    with requests.post(f"{llm.base}/v2/models/smollm/generate_stream", json=body, stream=True, timeout=60) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = [json.loads(line[5:]) for line in r.iter_lines(decode_unicode=True) if line.startswith("data:")]
    assert len(events) > 3
    assert "".join(e["text_output"] for e in events) == ANSWER
