"""The OpenAI-compatible backend against a scripted local HTTP server (fast tier): retries, clear
errors without secrets, list detection, concurrency, likelihoods, fingerprint, resume after failure.
The real ``transformers serve`` server is in ``test_server.py``."""

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest

from pillow_env import builtin_suite
from pillow_env.backends import BackendError, load_backend, parse_spec
from pillow_env.backends.openai_server import OpenAIBackend, public_url, split_target
from pillow_env.engine import RewardEngine
from pillow_env.prompts import PromptRenderer

from .conftest import make_tokenizer

SUITE = builtin_suite(0)
SECRET = "sk-test-secret-1234"


class Stub(BaseHTTPRequestHandler):
    """A scripted /v1 server: ``state`` says which statuses to return first, whether lists are taken."""

    state: dict = {}

    def log_message(self, *args):
        pass

    def _send(self, status, body, headers=None):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        s = self.state
        self._send(200, {"object": "list", "data": [{"id": "stub-model", "object": "model", "owned_by": "tests",
                                                      "root": s.get("root", "/weights/v1")}]})

    def do_POST(self):
        s = self.state
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with s["lock"]:
            s["requests"].append(body)
            s["auth"].add(self.headers.get("authorization"))
            s["open"] += 1
            s["max_open"] = max(s["max_open"], s["open"])
            status = s["script"].pop(0) if s["script"] else 200
        try:
            time.sleep(s.get("delay", 0.0))
            if status != 200:
                self._send(status, {"error": {"message": f"scripted {status}"}}, {"retry-after-ms": "5"})
                return
            prompt = body["prompt"]
            if isinstance(prompt, list) and prompt and isinstance(prompt[0], int):
                if s.get("logprobs") and "prompt_logprobs" in body:
                    entries = [None] + [{str(t): {"logprob": -0.5}} for t in prompt[1:]]
                    self._send(200, {"choices": [{"index": 0, "text": "", "prompt_logprobs": entries}]})
                else:
                    self._send(400, {"detail": "prompt must be a string."})
                return
            if isinstance(prompt, list) and not s.get("lists"):
                self._send(422, {"detail": "prompt must be a string."})
                return
            prompts = prompt if isinstance(prompt, list) else [prompt]
            choices = [{"index": i, "text": f" answer to {p[-12:]!r} STOP tail"} for i, p in enumerate(prompts)]
            self._send(200, {"choices": choices[::-1]})  # out of order on purpose: index decides
        finally:
            with s["lock"]:
                s["open"] -= 1


@pytest.fixture
def stub():
    state = {"lock": threading.Lock(), "requests": [], "auth": set(), "open": 0, "max_open": 0, "script": []}
    handler = type("Handler", (Stub,), {"state": state})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    state["url"] = f"http://127.0.0.1:{server.server_port}/v1"
    yield state
    server.shutdown()
    server.server_close()


def backend(state, **kwargs):
    kwargs.setdefault("api_key", SECRET)
    kwargs.setdefault("max_retries", 3)
    kwargs.setdefault("timeout", 10)
    return OpenAIBackend(state["url"], "stub-model", PromptRenderer(make_tokenizer()), **kwargs)


def prompts(n):
    return [f"prompt number {i:03d}" for i in range(n)]


def test_spec_parsing_and_public_url():
    assert parse_spec("openai:http://h:1/v1#m") == ("openai", "http://h:1/v1#m")
    assert parse_spec("vllm:org/model") == ("vllm", "org/model") and parse_spec("org/model") == ("hf", "org/model")
    assert split_target("http://h:1/v1/#served#tok") == ("http://h:1/v1", "served", "tok")
    with pytest.raises(ValueError, match="openai:URL#MODEL"):
        split_target("http://h:1/v1")
    with pytest.raises(ValueError, match="must start with http"):
        split_target("h:1/v1#m")
    assert public_url("https://user:pw@host:8443/v1?key=abc") == "https://host:8443/v1"
    with pytest.raises(ValueError, match="adapter"):
        load_backend("openai:http://h:1/v1#m", adapter="some/adapter")


def test_generate_one_prompt_per_request_concurrently_in_order(stub):
    stub["delay"] = 0.2
    b = backend(stub, concurrency=8)
    out = b.generate(prompts(8), 5, stop=["STOP"])
    assert out == [f"answer to {p[-12:]!r}" for p in prompts(8)]  # in order, cut at the stop string, stripped
    assert b._takes_lists is False and stub["max_open"] > 1 and b.max_in_flight > 1
    assert all(r["temperature"] == 0.0 and r["max_tokens"] == 5 and r["stop"] == ["STOP"]
               for r in stub["requests"] if isinstance(r["prompt"], str))
    assert stub["auth"] == {f"Bearer {SECRET}"}


def test_lists_are_sent_in_one_request_where_the_server_takes_them(stub):
    stub["lists"] = True
    b = backend(stub)
    out = b.generate(prompts(20), 5, batch_size=8, stop=["STOP"])
    assert out == [f"answer to {p[-12:]!r}" for p in prompts(20)]
    assert b._takes_lists is True and sorted(len(r["prompt"]) for r in stub["requests"]) == [4, 8, 8]


def test_retries_429_and_5xx_then_succeeds(stub):
    stub["script"] = [503, 429, 500]
    assert backend(stub).generate(prompts(1), 5) == [f"answer to {prompts(1)[0][-12:]!r} STOP tail"]
    assert len(stub["requests"]) == 4


def test_other_4xx_fail_at_once_with_the_server_message_and_no_secret(stub):
    stub["script"] = [401]
    with pytest.raises(BackendError) as err:
        backend(stub).generate(prompts(1), 5)
    message = str(err.value)
    assert "HTTP 401" in message and "scripted 401" in message and stub["url"] in message
    assert SECRET not in message and len(stub["requests"]) == 1


def test_unreachable_server_is_one_clear_error_after_the_retries(stub):
    b = OpenAIBackend("http://127.0.0.1:9/v1", "stub-model", PromptRenderer(make_tokenizer()), api_key=SECRET,
                      max_retries=1, timeout=2)
    with pytest.raises(BackendError, match=r"http://127.0.0.1:9/v1 \(stub-model\): completion failed after 1 "
                                           r"retries: APIConnectionError") as err:
        b.generate(prompts(2), 5)
    assert SECRET not in str(err.value)


def test_loglik_through_prompt_logprobs_and_a_clear_error_where_unsupported(stub):
    tok = make_tokenizer()
    stub["logprobs"] = True
    b = backend(stub)
    total = b.loglik(["What is 3 + 4?", "The movie was"], [" 7", " wonderful"])
    mean = b.loglik(["What is 3 + 4?", "The movie was"], [" 7", " wonderful"], mean=True)
    n = [len(tok(t, add_special_tokens=False)["input_ids"]) for t in [" 7", " wonderful"]]
    np.testing.assert_allclose(total, [-0.5 * k for k in n]) and np.testing.assert_allclose(mean, [-0.5, -0.5])
    assert b._loglik_mode == "prompt_logprobs"
    stub["logprobs"] = False
    with pytest.raises(BackendError, match="cannot score likelihoods.*prompt_logprobs nor echo"):
        backend(stub).loglik(["What is 3 + 4?"], [" 7"])


def test_fingerprint_names_the_served_weights_never_the_key(stub, monkeypatch):
    first = backend(stub).fingerprint
    assert backend(stub, api_key="another-key").fingerprint == first
    monkeypatch.setenv("OPENAI_API_KEY", "from-the-environment")
    assert backend(stub, api_key=None).fingerprint == first and SECRET not in first
    stub["root"] = "/weights/v2"
    assert backend(stub).fingerprint != first
    b = OpenAIBackend(stub["url"], "not-served", PromptRenderer(make_tokenizer()), max_retries=0)
    with pytest.raises(BackendError, match="does not serve 'not-served' \\(it serves: stub-model\\)"):
        b.fingerprint


def test_results_before_a_failure_stay_cached_and_a_rerun_resumes(stub, tmp_path, hash_encoder):
    from pillow_env.rewards import PillowReward

    cache = tmp_path / "cache.sqlite"
    requests = [(SUITE.pool[:2], q) for q in SUITE.test[:4]]
    b = backend(stub, max_retries=0)
    b.generate(prompts(2), 1)  # the server is up when the run starts (and takes one prompt per request)
    stub["script"] = [200, 200, 500, 500]  # the second batch of two fails
    engine = RewardEngine(b, PillowReward(encoder=hash_encoder), batch_size=2, cache_path=cache)
    with pytest.raises(BackendError, match="HTTP 500"):
        engine.score(requests)
    engine.close()
    rerun = RewardEngine(backend(stub), PillowReward(encoder=hash_encoder), batch_size=2, cache_path=cache)
    scored = rerun.score(requests)
    assert rerun.stats.disk_hits == 2 and rerun.stats.generations == 2
    assert [s.cached for s in scored] == [True, True, False, False]


def test_vllm_backend_without_vllm_says_how_to_get_it(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def no_vllm(name, *args, **kwargs):
        if name == "vllm" or name.startswith("vllm."):
            raise ImportError("No module named 'vllm'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_vllm)
    with pytest.raises(ImportError, match=r"the vllm backend needs vLLM: pip install 'pillow-env\[vllm\]'"):
        load_backend("vllm:smollm2-135m-instruct")


@pytest.mark.parametrize("n", [1, 4, 5])
def test_list_accepting_server_at_every_batch_size(stub, n):
    """vLLM takes lists: a first batch of at most ``batch_size`` prompts is answered whole by the
    detection request, and later batches of any size still work."""
    stub["lists"] = True
    b = backend(stub)
    for size in (n, 4, 5, 1):
        out = b.generate(prompts(size), 8, batch_size=4)
        assert out == [f"answer to {p[-12:]!r} STOP tail" for p in prompts(size)]


def test_credentials_in_a_model_url_are_never_printed_or_stored(tmp_path, capsys):
    from pillow_env.backends import public_spec
    from pillow_env.bench import _settings, BenchConfig

    spec = "openai:http://user:pw-secret@127.0.0.1:9/v1?key=k-secret#stub-model"
    assert public_spec(spec) == "openai:http://127.0.0.1:9/v1#stub-model"
    assert "secret" not in json.dumps(_settings(BenchConfig(model=spec), [], [], []))
    with pytest.raises(ValueError) as err:
        split_target("ftp://user:pw-secret@h/v1#m")
    assert "secret" not in str(err.value)
