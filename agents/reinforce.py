"""REINFORCE on the matching network, batched through the vector env. Read it top to bottom."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from pillow_env.env import PillowMatchEnv
from pillow_env.resources import embed_examples
from pillow_env.vector import PillowMatchVectorEnv

from .base import Agent, Budget, FitRecord, check_pool, first_env, greedy_rollout, summary_writer, unwrap_vector
from .matching import MatchingNetwork, load_network, save_network

__all__ = ["ReinforceAgent"]


def _tensors(obs: dict[str, np.ndarray]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return (torch.as_tensor(obs["query"]), torch.as_tensor(obs["chosen"]),
            torch.as_tensor(np.asarray(obs["step"]).reshape(-1)))


class ReinforceAgent(Agent):
    """The paper's matching network trained with REINFORCE.

    Args:
        hidden, temperature, knn_init: see :class:`~agents.matching.MatchingNetwork`.
        lr: Adam learning rate.
        entropy_coef: weight of the entropy bonus (keeps exploring).
        group_size: episodes per query in a batch. With ``group_size > 1`` each query is rolled out
            that many times and the baseline of an episode is the mean return of the *other* episodes
            of its query (leave-one-out), which removes the large query-to-query spread in difficulty
            from the gradient. With 1, the baseline is a moving average of batch returns.
        baseline_decay: decay of that moving average (``group_size == 1`` only).
        max_grad_norm: gradient clipping.
        seed: seeds the network init and the action sampling.
    """

    name = "reinforce"
    learns = True

    def __init__(self, hidden: int = 256, temperature: float = 0.1, knn_init: bool = True, lr: float = 3e-4,
                 entropy_coef: float = 0.01, group_size: int = 4, baseline_decay: float = 0.9,
                 max_grad_norm: float = 1.0, seed: int = 0,
                 pool_fingerprint: str | None = None) -> None:
        if group_size < 1:
            raise ValueError(f"group_size must be >= 1, got {group_size}")
        self.hidden, self.temperature, self.knn_init = hidden, temperature, knn_init
        self.lr, self.entropy_coef, self.baseline_decay = lr, entropy_coef, baseline_decay
        self.group_size = group_size
        self.max_grad_norm, self.seed = max_grad_norm, seed
        self.pool_fingerprint = pool_fingerprint
        self.net: MatchingNetwork | None = None
        self.history: list[dict[str, float]] = []

    def config(self) -> dict[str, Any]:
        return {"hidden": self.hidden, "temperature": self.temperature, "knn_init": self.knn_init, "lr": self.lr,
                "entropy_coef": self.entropy_coef, "group_size": self.group_size,
                "baseline_decay": self.baseline_decay,
                "max_grad_norm": self.max_grad_norm, "seed": self.seed,
                "pool_fingerprint": self.pool_fingerprint}

    def check_settings(self, *, num_envs: int, budget: Budget | None = None) -> None:
        if num_envs % self.group_size:
            raise ValueError(f"reinforce: num_envs ({num_envs}) must be a multiple of group_size ({self.group_size})")
        if budget is not None:  # a batch is one episode per env, each scored once
            budget.check_batch("reinforce", num_envs, num_envs, f"num_envs={num_envs} episodes")

    def prepare(self, env: PillowMatchEnv | PillowMatchVectorEnv) -> None:
        if self.net is not None:
            check_pool(env, self.pool_fingerprint)
            return
        single = first_env(env)
        fingerprint = check_pool(env, None)
        torch.manual_seed(self.seed)
        keys = torch.as_tensor(embed_examples(single.encoder, single.pool, with_output=False))
        self.net = MatchingNetwork(keys, single.m, self.hidden, self.temperature, self.knn_init)
        self.pool_fingerprint = fingerprint

    def fit(self, env, budget: Budget | None = None, *, tensorboard: str | Path | None = None,
            progress: bool = True, **kwargs: Any) -> FitRecord:
        venv = unwrap_vector(env, "ReinforceAgent.fit")
        if venv.envs[0].dense:
            raise ValueError("ReinforceAgent uses the episode return; use the default sparse reward (dense=False)")
        budget = budget or Budget(episodes=1000)
        self.check_settings(num_envs=venv.num_envs, budget=budget)
        self.prepare(venv)
        assert self.net is not None
        net, engine, m = self.net.train(), venv.engine, venv.envs[0].m
        optimizer = torch.optim.Adam(net.parameters(), lr=self.lr)
        sampler = torch.Generator().manual_seed(self.seed)
        writer = summary_writer(tensorboard)
        start_calls, start_hits = engine.stats.llm_calls, engine.stats.cache_hits
        baseline: float | None = None
        episodes = llm_calls = 0
        bar = tqdm(total=budget.episodes or budget.llm_calls, disable=not progress,
                   desc="reinforce", unit="episode" if budget.episodes else "LLM call")
        queries = np.random.default_rng(self.seed)
        n_queries = len(venv.envs[0].queries)
        # A batch costs at most one LLM call per episode: run it only if that worst case fits the budget.
        while budget.affords(episodes + venv.num_envs, llm_calls + venv.num_envs):
            # 1. Roll out one batch of episodes (group_size per query): m sampled actions per env.
            picked = queries.integers(n_queries, size=venv.num_envs // self.group_size)
            obs, _ = venv.reset(options={"query_index": np.repeat(picked, self.group_size)})
            log_probs, entropies = [], []
            returns = np.zeros(venv.num_envs)
            for _ in range(m):
                logits = net(*_tensors(obs), torch.as_tensor(venv.action_masks()))
                probs = torch.softmax(logits, dim=-1)
                actions = torch.multinomial(probs, 1, generator=sampler).squeeze(1)
                log_probs.append(torch.log(probs.gather(1, actions[:, None]).squeeze(1)))
                entropies.append(-(probs * torch.log(probs.clamp_min(1e-12))).sum(-1))
                obs, rewards, terminated, _, _ = venv.step(actions.numpy())
                returns += rewards
            assert terminated.all()

            # 2. Policy gradient with a baseline (leave-one-out per query, or moving average) and
            #    an entropy bonus.
            mean_return = float(returns.mean())
            if self.group_size > 1:
                groups = returns.reshape(-1, self.group_size)
                others = (groups.sum(1, keepdims=True) - groups) / (self.group_size - 1)
                advantages = torch.as_tensor((groups - others).reshape(-1), dtype=torch.float32)
            else:
                baseline = mean_return if baseline is None else baseline
                advantages = torch.as_tensor(returns - baseline, dtype=torch.float32)
            entropy = torch.stack(entropies).mean()
            loss = -(advantages * torch.stack(log_probs).sum(0)).mean() - self.entropy_coef * entropy
            optimizer.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), self.max_grad_norm)
            optimizer.step()
            if self.group_size == 1:
                baseline = self.baseline_decay * baseline + (1 - self.baseline_decay) * mean_return

            # 3. Bookkeeping: budget, progress, TensorBoard scalars.
            episodes += venv.num_envs
            new_calls = engine.stats.llm_calls - start_calls
            bar.update(venv.num_envs if budget.episodes else new_calls - llm_calls)
            llm_calls = new_calls
            record = {"episodes": episodes, "llm_calls": llm_calls, "reward": mean_return,
                      "entropy": entropy.item(), "cache_hits": engine.stats.cache_hits - start_hits,
                      "loss": loss.item()}
            self.history.append(record)
            bar.set_postfix(reward=f"{mean_return:.3f}", entropy=f"{entropy.item():.2f}")
            if writer is not None:
                for key in ("reward", "entropy", "llm_calls", "cache_hits", "loss"):
                    writer.add_scalar(f"reinforce/{key}", record[key], episodes)
        bar.close()
        if writer is not None:
            writer.close()
        net.eval()
        return FitRecord(episodes, llm_calls, self.history)

    @torch.no_grad()
    def scores(self, obs: dict[str, Any]) -> np.ndarray:
        assert self.net is not None
        query, chosen, step = _tensors({k: np.asarray(v)[None] for k, v in obs.items()})
        return self.net.eval()(query, chosen, step)[0].numpy()

    def select(self, env: PillowMatchEnv, query_index: int) -> list[int]:
        self.prepare(env)
        return greedy_rollout(env, query_index, lambda state: self.scores(state.obs))

    def _save_weights(self, path: Path) -> None:
        if self.net is None:
            raise ValueError("reinforce: nothing to save: fit the agent first")
        save_network(self.net, path, self.history)

    def _load_weights(self, path: Path, trusted: bool = False) -> None:
        self.net, self.history = load_network(path, self.hidden, self.temperature, self.knn_init)

