"""Real tier: a real OpenAI-compatible server (``transformers serve`` on the CPU, the converted SmolLM2
folder) started on 127.0.0.1, stopped by its pid. CI runs these."""

import json
import signal

import pytest

from agents import make_agent
from pillow_env.backends import BackendError
from pillow_env.backends.hf import resolve_model
from pillow_env.backends.local_server import LocalServer, free_port
from pillow_env.bench import BenchConfig, run_bench
from pillow_env.encoder import load_encoder
from pillow_env.engine import RewardEngine
from pillow_env.env import PillowMatchEnv
from pillow_env.resources import shared_backend
from pillow_env.rewards import PillowReward
from pillow_env.suite import builtin_suite
from pillow_env.vector import PillowMatchVectorEnv

pytestmark = pytest.mark.real
SUITE = builtin_suite(0)


def Server(folder, port, log):
    """The real server, one core for it so the test process keeps the other on a 2-core machine."""
    return LocalServer(folder, port, log, threads=1)


@pytest.fixture(scope="module")
def folder():
    return resolve_model("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def server(folder, tmp_path_factory):
    s = Server(folder, free_port(), tmp_path_factory.mktemp("server") / "serve.log")
    yield s
    s.stop()


def knn_requests(n):
    env = PillowMatchEnv(SUITE.pool, SUITE.test[:n], encoder=load_encoder("minilm"))
    return [([SUITE.pool[i] for i in sel], SUITE.test[q]) for q, sel in
            enumerate(make_agent("knn").select_many(env, list(range(n))))]


def test_server_gives_the_in_process_generations_and_rewards(server):
    encoder = load_encoder("minilm")
    requests = knn_requests(6)
    remote = RewardEngine(shared_backend(server.spec), PillowReward(encoder=encoder)).score(requests)
    local = RewardEngine(shared_backend("smollm2-135m-instruct"), PillowReward(encoder=encoder)).score(requests)
    # Same weights (fp32), same locally rendered prompt, greedy on both sides: identical answers.
    assert [r.prompt for r in remote] == [r.prompt for r in local]
    assert [r.generation for r in remote] == [r.generation for r in local]
    assert [r.reward for r in remote] == pytest.approx([r.reward for r in local], abs=1e-6)


def test_a_vector_step_sends_its_prompts_concurrently(server):
    venv = PillowMatchVectorEnv(4, pool=SUITE.pool, queries=SUITE.train, model=server.spec, encoder="minilm")
    backend = venv.engine.generator
    backend.max_in_flight = 0
    venv.reset(seed=11)
    venv.step([0, 1, 2, 3])
    _, rewards, terminated, _, info = venv.step([4, 5, 6, 7])
    assert terminated.all() and backend._takes_lists is False  # transformers serve takes one prompt per request
    assert backend.max_in_flight == 4 and all(-1 <= r <= 1 for r in rewards)


def test_bench_runs_end_to_end_through_the_server(server, tmp_path):
    results = run_bench(BenchConfig(agents=["zero_shot", "knn"], model=server.spec, out=str(tmp_path / "b"),
                                    test_limit=4, episodes=1), progress=False)
    assert set(results["agents"]) == {"zero_shot", "knn"} and results["engine"]["generations"] == 8
    assert json.loads((tmp_path / "b" / "results.json").read_text())["settings"]["model"] == server.spec


def test_a_killed_server_is_a_clear_error_and_a_restarted_one_resumes(folder, tmp_path):
    port, cache = free_port(), tmp_path / "cache.sqlite"
    requests = knn_requests(4)
    encoder = load_encoder("minilm")
    first = Server(folder, port, tmp_path / "first.log")
    try:
        from pillow_env.backends import load_backend

        backend = load_backend(first.spec, max_retries=1, timeout=30)
        engine = RewardEngine(backend, PillowReward(encoder=encoder), batch_size=2, cache_path=cache)
        engine.score(requests[:2])  # computed and cached before the failure
    finally:
        first.stop(signal.SIGKILL)
    with pytest.raises(BackendError, match=rf"127.0.0.1:{port}/v1 .* failed after 1 retries"):
        engine.score(requests)
    engine.close()
    second = Server(folder, port, tmp_path / "second.log")
    try:
        rerun = RewardEngine(load_backend(second.spec), PillowReward(encoder=encoder), batch_size=2,
                             cache_path=cache)
        scored = rerun.score(requests)
        assert rerun.stats.disk_hits == 2 and rerun.stats.generations == 2  # the restarted server resumed the run
        assert [s.cached for s in scored] == [True, True, False, False]
    finally:
        second.stop()
