"""The chat-completions backend (``openai-chat:URL#MODEL``).

Fast tier: a scripted in-process ``/v1/chat/completions`` server (messages sent, greedy settings,
concurrency, key handling, fingerprint, resume after a failure, the likelihood refusal, every learner
training on the generation reward). Real tier: ``transformers serve`` on the converted SmolLM2
folder, started and stopped by pid, killed mid-run and restarted (resume from the cache)."""

import json
import signal
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from agents import Budget, make_agent
from pillow_env import builtin_suite
from pillow_env.backends import (BackendError, LikelihoodUnsupported, load_backend, load_renderer, parse_spec,
                                 public_spec)
from pillow_env.backends.openai_chat import CHARS_PER_TOKEN, ChatBackend, ChatRenderer, split_chat_target
from pillow_env.data import Example
from pillow_env.engine import RewardEngine
from pillow_env.rewards import PillowReward
from pillow_env.vector import PillowMatchVectorEnv

from .conftest import in_process_agents

SUITE = builtin_suite(0)
SECRET = "sk-chat-secret-5678"


class ChatStub(BaseHTTPRequestHandler):
    """A scripted chat server: replies name the last user turn and how many turns came before it."""

    state: dict = {}

    def log_message(self, *args):
        pass

    def _send(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(data)))
        self.send_header("retry-after-ms", "5")
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        self._send(200, {"object": "list", "data": [{"id": "chat-model", "object": "model", "owned_by": "tests",
                                                      "root": self.state.get("root", "/weights/v1")}]})

    def do_POST(self):
        s = self.state
        body = json.loads(self.rfile.read(int(self.headers["content-length"])))
        with s["lock"]:
            s["requests"].append((self.path, body))
            s["auth"].add(self.headers.get("authorization"))
            s["open"] += 1
            s["max_open"] = max(s["max_open"], s["open"])
            status = s["script"].pop(0) if s["script"] else 200
        try:
            time.sleep(s.get("delay", 0.0))
            if status != 200:
                self._send(status, {"error": {"message": f"scripted {status}"}})
                return
            if not self.path.endswith("/chat/completions"):
                self._send(404, {"detail": "only chat completions here"})
                return
            messages = body["messages"]
            reply = f"{messages[-1]['content'][-10:]} after {len(messages) - 1} STOP tail"
            self._send(200, {"id": "c", "object": "chat.completion", "created": 0, "model": body["model"],
                             "choices": [{"index": 0, "finish_reason": "stop",
                                          "message": {"role": "assistant", "content": reply}}],
                             "usage": {"prompt_tokens": 7 * len(messages), "completion_tokens": 3,
                                       "total_tokens": 7 * len(messages) + 3}})
        finally:
            with s["lock"]:
                s["open"] -= 1


@pytest.fixture
def stub():
    state = {"lock": threading.Lock(), "requests": [], "auth": set(), "open": 0, "max_open": 0, "script": []}
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (ChatStub,), {"state": state}))
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
    return ChatBackend(state["url"], "chat-model", **kwargs)


def requests(n, shots=2):
    return [(SUITE.pool[i:i + shots], q) for i, q in enumerate(SUITE.test[:n])]


def test_chat_spec_parsing_masks_credentials():
    assert parse_spec("openai-chat:http://h:1/v1#m") == ("openai-chat", "http://h:1/v1#m")
    assert split_chat_target("https://h/v1/#gpt-x") == ("https://h/v1", "gpt-x")
    with pytest.raises(ValueError, match="expected openai-chat:URL#MODEL"):
        split_chat_target("http://h/v1#m#tokenizer")
    with pytest.raises(ValueError, match="must start with http") as err:
        load_backend("openai-chat:ftp://user:pw-secret@h/v1#m")
    assert "secret" not in str(err.value)
    assert public_spec("openai-chat:http://u:pw-secret@h:9/v1?key=k-secret#m") == "openai-chat:http://h:9/v1#m"
    with pytest.raises(ValueError, match="adapter"):
        load_backend("openai-chat:http://h:1/v1#m", adapter="some/adapter")
    assert isinstance(load_renderer("openai-chat:http://h:1/v1#m"), ChatRenderer)  # no tokenizer, no request


def test_the_episode_goes_as_messages_greedily_concurrently_in_order(stub):
    stub["delay"] = 0.2
    b = backend(stub, concurrency=8, renderer=ChatRenderer(system="Answer briefly."))
    batch = requests(8)
    prompts = [b.renderer.render(ex, q) for ex, q in batch]
    out = b.generate(prompts, 5, stop=["STOP"])
    sent = sorted((body for _, body in stub["requests"]), key=lambda body: prompts.index(
        json.dumps(body["messages"], ensure_ascii=False, sort_keys=True, separators=(",", ":"))))
    for (exemplars, query), body, text in zip(batch, sent, out):
        roles = [m["role"] for m in body["messages"]]
        assert roles == ["system", "user", "assistant", "user", "assistant", "user"]
        assert body["messages"][2]["content"] == exemplars[0].output and body["messages"][0]["content"] == "Answer briefly."
        assert body["messages"][-1]["content"].startswith(query.instruction)
        assert body["temperature"] == 0.0 and body["max_tokens"] == 5 and body["stop"] == ["STOP"]
        assert text == f"{body['messages'][-1]['content'][-10:]} after 5"  # cut at the stop string, stripped
    assert {path for path, _ in stub["requests"]} == {"/v1/chat/completions"}
    assert stub["max_open"] > 1 and b.max_in_flight > 1 and stub["auth"] == {f"Bearer {SECRET}"}
    assert b.count_tokens(prompts[:1] + out[:1]) == [42, 3]  # the server's usage, not a local tokenizer


def test_the_rendered_text_is_canonical_and_only_that_is_accepted(stub):
    renderer = ChatRenderer()
    exemplars, query = requests(1)[0]
    text = renderer.render(exemplars, query)
    assert text == renderer.render(list(exemplars), Example(query.instruction, query.input, "another answer"))
    assert json.loads(text) == renderer.messages(exemplars, query)
    assert ChatRenderer(system="S").fingerprint != renderer.fingerprint
    with pytest.raises(ValueError, match="JSON message list ChatRenderer.render writes, got 'plain text'"):
        backend(stub).generate(["plain text"], 4)
    assert stub["requests"] == []


def test_without_a_tokenizer_long_text_is_cut_to_a_stated_character_budget():
    renderer = ChatRenderer()
    assert renderer.max_exemplar_chars == 256 * CHARS_PER_TOKEN and renderer.max_query_chars == 1024 * CHARS_PER_TOKEN
    long = Example("Summarise.", "word " * 400, "short")
    with pytest.warns(UserWarning, match=r"exemplar 0 \('Summarise.'\) input has 2000 characters; truncated to "
                                         r"max_exemplar_chars=1024"):
        with pytest.warns(UserWarning, match=r"query \('Go.'\) input has 5000 characters; truncated to max_query_chars=4096"):
            messages = renderer.messages([long], Example("Go.", "x" * 5000))
    assert len(messages[0]["content"]) == len("Summarise.\n\n") + 1024
    assert len(messages[-1]["content"]) == len("Go.\n\n") + 4096


def test_retries_then_one_clear_error_without_the_key(stub):
    stub["script"] = [503, 429]
    prompt = ChatRenderer().render(*requests(1)[0])
    assert backend(stub).generate([prompt], 4) and len(stub["requests"]) == 3
    stub["script"] = [401]
    with pytest.raises(BackendError) as err:
        backend(stub).generate([prompt], 4)
    assert "HTTP 401" in str(err.value) and "scripted 401" in str(err.value) and SECRET not in str(err.value)
    down = ChatBackend("http://127.0.0.1:9/v1", "chat-model", api_key=SECRET, max_retries=1, timeout=2)
    with pytest.raises(BackendError, match=r"127.0.0.1:9/v1 \(chat-model\): chat completion failed after 1 retries"):
        down.generate([prompt], 4)


def test_fingerprint_names_the_served_model_and_message_format_never_the_key(stub):
    first = backend(stub).fingerprint
    assert backend(stub, api_key="another").fingerprint == first and SECRET not in first
    assert backend(stub, renderer=ChatRenderer(system="Be brief.")).fingerprint != first
    stub["root"] = "/weights/v2"
    assert backend(stub).fingerprint != first
    with pytest.raises(BackendError, match="does not serve 'other' \\(it serves: chat-model\\)"):
        ChatBackend(stub["url"], "other", max_retries=0).fingerprint


def test_the_likelihood_signal_is_refused_at_once(stub, hash_encoder):
    b = backend(stub)
    with pytest.raises(LikelihoodUnsupported, match="ChatBackend cannot score likelihoods"):
        RewardEngine(b, PillowReward(encoder=hash_encoder), signal="loglik")
    assert stub["requests"] == []


def test_a_failed_batch_loses_nothing_scored_and_a_rerun_resumes(stub, tmp_path, hash_encoder):
    cache = tmp_path / "cache.sqlite"
    batch = requests(4)
    stub["script"] = [200, 200, 500, 500]  # the second batch of two fails
    engine = RewardEngine(backend(stub, max_retries=0, concurrency=1), PillowReward(encoder=hash_encoder),
                          batch_size=2, cache_path=cache)
    with pytest.raises(BackendError, match="HTTP 500"):
        engine.score(batch)
    engine.close()
    rerun = RewardEngine(backend(stub), PillowReward(encoder=hash_encoder), batch_size=2, cache_path=cache)
    scored = rerun.score(batch)
    assert rerun.stats.disk_hits == 2 and rerun.stats.generations == 2
    assert [s.cached for s in scored] == [True, True, False, False]


@pytest.mark.parametrize("name", [n for n in in_process_agents() if make_agent(n).learns])
def test_every_learner_trains_on_the_generation_reward_through_chat(name, stub, hash_encoder):
    engine = RewardEngine(backend(stub), PillowReward(encoder=hash_encoder), max_new_tokens=4)
    venv = PillowMatchVectorEnv(4, pool=SUITE.pool[:10], queries=SUITE.train[:16], engine=engine,
                                encoder=hash_encoder)
    agent = make_agent(name)
    log = agent.fit(venv, Budget(episodes=16), progress=False)  # the env's reward: generations, through chat
    assert log.episodes >= 1 and engine.stats.generations >= 1
    assert all(path == "/v1/chat/completions" for path, _ in stub["requests"][1:])


# -- real tier: transformers serve ---------------------------------------------------------------


@pytest.fixture(scope="module")
def folder():
    from pillow_env.backends.hf import resolve_model

    return resolve_model("smollm2-135m-instruct")


def _server(folder, port, log):
    from pillow_env.backends.local_server import LocalServer

    return LocalServer(folder, port, log, threads=1, startup_timeout=600)  # one core; a loaded box starts slowly


def _knn_requests(n):
    from pillow_env.encoder import load_encoder
    from pillow_env.env import PillowMatchEnv

    env = PillowMatchEnv(SUITE.pool, SUITE.test[:n], encoder=load_encoder("minilm"))
    return [([SUITE.pool[i] for i in sel], SUITE.test[q]) for q, sel in
            enumerate(make_agent("knn").select_many(env, list(range(n))))]


@pytest.mark.real
def test_chat_through_transformers_serve_matches_the_completions_backend_then_resumes_after_a_kill(
        folder, tmp_path):
    """The same server answers the episode as chat messages exactly as the locally rendered prompt on
    /v1/completions (same weights, same template, greedy); killed mid-run, a restarted one resumes."""
    from pillow_env.backends.local_server import free_port
    from pillow_env.encoder import load_encoder

    encoder, batch, port, cache = load_encoder("minilm"), _knn_requests(4), free_port(), tmp_path / "cache.sqlite"
    first = _server(folder, port, tmp_path / "first.log")
    try:
        chat = load_backend(first.chat_spec, max_retries=1, timeout=60)
        engine = RewardEngine(chat, PillowReward(encoder=encoder), batch_size=2, cache_path=cache)
        scored = engine.score(batch[:2])  # computed and cached before the failure
        completions = RewardEngine(load_backend(first.spec), PillowReward(encoder=encoder)).score(batch[:2])
        assert [s.generation for s in scored] == [s.generation for s in completions]
        assert all(s.generation for s in scored) and chat.count_tokens([scored[0].prompt])[0] > 0
    finally:
        first.stop(signal.SIGKILL)
    with pytest.raises(BackendError, match=rf"127.0.0.1:{port}/v1 .* failed after 1 retries"):
        engine.score(batch)
    engine.close()
    second = _server(folder, port, tmp_path / "second.log")
    try:
        rerun = RewardEngine(load_backend(second.chat_spec), PillowReward(encoder=encoder), batch_size=2,
                             cache_path=cache)
        resumed = rerun.score(batch)
        assert rerun.stats.disk_hits == 2 and rerun.stats.generations == 2
        assert [s.cached for s in resumed] == [True, True, False, False]
    finally:
        second.stop()


@pytest.mark.real
def test_chat_bench_refuses_loglik_before_any_agent_and_trains_on_the_generation_reward(folder, tmp_path):
    from pillow_env.backends.local_server import free_port
    from pillow_env.bench import BenchConfig, run_bench

    with _server(folder, free_port(), tmp_path / "serve.log") as server:
        with pytest.raises(LikelihoodUnsupported, match="cannot score likelihoods"):
            run_bench(BenchConfig(agents=["knn", "reinforce"], model=server.chat_spec, train_reward="loglik",
                                  out=str(tmp_path / "refused"), test_limit=2, episodes=4, num_envs=4),
                      progress=False)
        assert not (tmp_path / "refused" / "agents").exists()
        results = run_bench(BenchConfig(agents=["knn", "reinforce"], model=server.chat_spec, out=str(tmp_path / "b"),
                                        test_limit=2, episodes=8, train_limit=8, num_envs=4), progress=False)
    assert set(results["agents"]) == {"knn", "reinforce"} and results["agents"]["reinforce"]["train_llm_calls"] > 0
