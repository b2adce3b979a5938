"""The GRPO LightningModule: per batch of training prompts, seeded rollouts (no grad, eval mode), rewards from the
evaluator, then `num_iterations` clipped policy-gradient updates (manual optimisation, one optimizer step each).

Everything else is the SFT module's (`Text2SQLModule`): adapter-only checkpoints, the optimizer and schedule, the
teacher-forced `val/loss`; the EX callback, checkpoints, exact resume and progress lines are the same callbacks.
A prompt's samples are a function of (objective.seed, epoch, prompt) only, so a resumed run draws what an
uninterrupted one drew. Reference log-probs (`beta` > 0) come from the starting trainable weights, kept frozen on
the CPU and written in for one no-grad forward per batch (for a LoRA started from the base, the fresh adapter is
the base: B = 0); under DeepSpeed ZeRO-3 they are written into the shards (`_write_weights`), and rollouts
generate in lock-step over ranks (`synced_gpus`).
"""

from __future__ import annotations

import logging
import time

import torch
from omegaconf import DictConfig

from text2sql.objective.loss import group_advantages, grpo_loss, no_signal_share
from text2sql.objective.reward import ExecutionReward, Sample, execute_samples
from text2sql.objective.rollout import sample_groups
from text2sql.training.module import Text2SQLModule

log = logging.getLogger(__name__)


class GRPOModule(Text2SQLModule):
    def __init__(self, model: torch.nn.Module, optim: DictConfig, *, num_generations: int = 8,
                 num_iterations: int = 1, temperature: float = 1.0, top_p: float = 1.0, max_new_tokens: int = 128,
                 loss_type: str = "dapo", epsilon: float = 0.2, epsilon_high: float | None = None,
                 beta: float = 0.0, scale_rewards: str = "group", max_grad_norm: float | None = 1.0,
                 rollout_batch_size: int = 64, micro_batch_rows: int | None = None, seed: int = 0,
                 reward=None, timeout: float = 30.0, workers: int | None = None, disable_dropout: bool = True):
        super().__init__(model, optim)
        self.automatic_optimization = False  # num_iterations optimizer steps per batch of rollouts
        self.updates_per_batch = num_iterations
        self.n, self.num_iterations = num_generations, num_iterations
        self.temperature, self.top_p, self.max_new_tokens = temperature, top_p, max_new_tokens
        self.loss_type, self.epsilon, self.epsilon_high, self.beta = loss_type, epsilon, epsilon_high, beta
        self.scale_rewards, self.max_grad_norm, self.seed = scale_rewards, max_grad_norm, seed
        self.rollout_batch_size, self.micro_batch_rows = rollout_batch_size, micro_batch_rows
        self.reward = reward if reward is not None else ExecutionReward()
        self.timeout, self.workers = timeout, workers
        self._evaluator = None
        if disable_dropout:  # old, reference and current log-probs of one policy agree (TRL's disable_dropout)
            for m in model.modules():
                if isinstance(m, torch.nn.Dropout):
                    m.p = 0.0
        self._ref = ({n: p.detach().to("cpu", copy=True) for n, p in model.named_parameters() if p.requires_grad}
                     if beta else None)

    # -- the evaluator that scores rollouts: the training split's databases, the dataset's rule ----------------
    def on_fit_start(self) -> None:
        from text2sql.eval.execute import ExecutionEvaluator

        dataset = self.trainer.datamodule.dataset
        self._evaluator = ExecutionEvaluator(dataset.db_dir("train"), timeout=self.timeout, workers=self.workers,
                                             style=dataset.eval_style)

    def setup(self, stage: str) -> None:
        """DeepSpeed settings, before the engine starts. Lightning's `clip_gradients` does nothing under DeepSpeed:
        the engine clips by its config's `gradient_clipping` (Lightning fills it from trainer.gradient_clip_val,
        null for GRPO), so `max_grad_norm` goes there. Under ZeRO-3 a whole training step (every rollout token's
        forward, then the updates) is one parameter trace, and after each module DeepSpeed scans the trace ahead
        for `stage3_max_reuse_distance` parameters (default 1e9: hundreds of forwards of a small model, so the
        step grows quadratic in the rollout length); unless the config sets it, it is one forward's parameters."""
        config = getattr(self.trainer.strategy, "config", None) if not self._owns_gradients() else None
        if not isinstance(config, dict):
            return
        config["gradient_clipping"] = float(self.max_grad_norm or 0.0)
        zero = config.setdefault("zero_optimization", {})
        if int(zero.get("stage", 0)) == 3 and "stage3_max_reuse_distance" not in zero:
            zero["stage3_max_reuse_distance"] = min(10**9, sum(p.numel() for p in self.model.parameters()))

    def teardown(self, stage: str) -> None:
        if self._evaluator is not None:
            self._evaluator.close()
            self._evaluator = None

    def _clips_under_mixed_precision(self) -> bool:
        from lightning.pytorch.plugins.precision import MixedPrecision

        return bool(self.max_grad_norm) and isinstance(self.trainer.precision_plugin, MixedPrecision)

    # -- log-probs of completions ---------------------------------------------------------------------------
    def completion_logps(self, prompts: list[list[int]], completions: list[list[int]]):
        """(per-token log-probs [rows, C] at temperature, mask [rows, C]); row r continues prompts[r // n].
        Prompts are left-padded, completions right-padded; the LM head runs on completion positions only."""
        from text2sql.eval.generate import left_pad

        tok = self.trainer.datamodule.tokenizer
        device = self.device
        p_ids, p_mask = left_pad([prompts[r // self.n] for r in range(len(completions))], tok.pad_token_id)
        width = max(len(c) for c in completions)
        c_ids = torch.full((len(completions), width), tok.pad_token_id, dtype=torch.long)
        c_mask = torch.zeros((len(completions), width), dtype=torch.long)
        for r, c in enumerate(completions):
            c_ids[r, : len(c)] = torch.tensor(c, dtype=torch.long)
            c_mask[r, : len(c)] = 1
        input_ids = torch.cat([p_ids, c_ids], 1).to(device)
        attention = torch.cat([p_mask, c_mask], 1).to(device)
        positions = (attention.cumsum(-1) - 1).clamp(min=0)
        start = p_ids.shape[1] - 1
        parts = self._decoder_and_head()
        if parts:
            decoder, head = parts
            hidden = decoder(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                             use_cache=False).last_hidden_state
            logits = head(hidden[:, start: start + width])
        else:
            logits = self.model(input_ids=input_ids, attention_mask=attention, position_ids=positions,
                                use_cache=False).logits[:, start: start + width]
        logps = torch.log_softmax(logits.float() / self.temperature, dim=-1)
        c_ids = c_ids.to(device)
        return logps.gather(-1, c_ids.unsqueeze(-1)).squeeze(-1), c_mask.to(device)

    @torch.no_grad()
    def _reference_logps(self, prompts, completions) -> torch.Tensor:
        current = self._write_weights(self._ref)
        try:
            return self.completion_logps(prompts, completions)[0]
        finally:
            self._write_weights(current)

    @torch.no_grad()
    def _write_weights(self, values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Write `values` into the named parameters; what they held before (on the CPU). Under DeepSpeed ZeRO-3 a
        parameter's `.data` is empty (each rank holds a shard), so the parameters are gathered a group at a time,
        written, and re-partitioned (`deepspeed.zero.GatheredParameters`, rank 0's values broadcast): every rank
        calls this in lock-step, and the next forward gathers the written weights."""
        params = dict(self.model.named_parameters())
        names = list(values)
        if not any(hasattr(params[n], "ds_id") for n in names):
            return self._copy_into(params, values, names)
        from deepspeed import zero

        before: dict[str, torch.Tensor] = {}
        group, size = [], 0
        for k, n in enumerate(names):  # groups of about 2**26 elements: one gathered group at a time in memory
            group.append(n)
            size += params[n].ds_numel
            if size >= 2**26 or k == len(names) - 1:
                with zero.GatheredParameters([params[m] for m in group], modifier_rank=0):
                    before.update(self._copy_into(params, values, group))
                group, size = [], 0
        return before

    @staticmethod
    def _copy_into(params: dict, values: dict[str, torch.Tensor], names: list[str]) -> dict[str, torch.Tensor]:
        before = {n: params[n].detach().to("cpu", copy=True) for n in names}
        for n in names:
            params[n].data.copy_(values[n].to(params[n].device))
        return before

    # -- one batch of prompts -------------------------------------------------------------------------------
    def _rollouts(self, batch: list[dict]):
        from text2sql.eval.callback import needs_synced_generation

        tok = self.trainer.datamodule.tokenizer
        t0 = time.perf_counter()
        rollouts = sample_groups(self.model, tok, [b["input_ids"] for b in batch], self.n,
                                 temperature=self.temperature, top_p=self.top_p,
                                 seed=self.seed * 100_003 + self.current_epoch, max_new_tokens=self.max_new_tokens,
                                 batch_size=self.rollout_batch_size,
                                 synced_gpus=needs_synced_generation(self.trainer))
        t1 = time.perf_counter()
        samples = [Sample(batch[r // self.n]["db_id"], batch[r // self.n]["gold"], sql, text)
                   for r, (sql, text) in enumerate(zip(rollouts.sqls, rollouts.texts))]
        verdicts = execute_samples(self._evaluator, samples)
        rewards = torch.tensor(self.reward(samples, verdicts), dtype=torch.float32)
        t2 = time.perf_counter()
        stats = {"grpo/reward_mean": float(rewards.mean()),
                 "grpo/correct_share": sum(v.correct for v in verdicts) / len(verdicts),
                 "grpo/no_signal_share": no_signal_share(rewards, self.n),
                 "grpo/completion_length": sum(map(len, rollouts.completions)) / len(rollouts.completions),
                 "perf/rollout_s": t1 - t0, "perf/reward_s": t2 - t1}
        return rollouts, rewards, stats

    def _chunks(self, rows: int) -> list[slice]:
        size = self.micro_batch_rows or rows
        return [slice(i, min(i + size, rows)) for i in range(0, rows, size)]

    def training_step(self, batch: list[dict], batch_idx: int):
        prompts = [b["input_ids"] for b in batch]
        rollouts, rewards, stats = self._rollouts(batch)
        t0 = time.perf_counter()
        completions = rollouts.completions
        advantages = group_advantages(rewards, self.n, self.scale_rewards).to(self.device)
        chunks = self._chunks(len(completions))
        old = ref = None
        with torch.no_grad():
            if self.num_iterations > 1:  # the sampling policy's log-probs, fixed for every update of this batch
                old = [self.completion_logps(prompts, completions[c])[0] for c in chunks]
            if self.beta:
                ref = [self._reference_logps(prompts, completions[c]) for c in chunks]
        num_items = self._global_tokens(completions)
        opt, sched = self.optimizers(), self.lr_schedulers()
        for _ in range(self.num_iterations):
            loss_total, kls, clips = 0.0, [], []
            opt.zero_grad()
            for k, c in enumerate(chunks):
                logps, mask = self.completion_logps(prompts, completions[c])
                out = grpo_loss(logps, old[k] if old else None, advantages[c], mask, loss_type=self.loss_type,
                                epsilon=self.epsilon, epsilon_high=self.epsilon_high, beta=self.beta,
                                ref_logps=ref[k] if ref else None, max_completion_length=self.max_new_tokens,
                                num_items=num_items)
                weight = 1.0 if self.loss_type == "dapo" else (c.stop - c.start) / len(completions)
                self.manual_backward(out.loss * weight)
                loss_total += float(out.loss.detach()) * weight
                clips.append(out.clip_fraction)
                if out.kl is not None:
                    kls.append(out.kl)
            if self.max_grad_norm and self._owns_gradients():  # DeepSpeed clips in its step (setup())
                self.clip_gradients(opt, gradient_clip_val=self.max_grad_norm, gradient_clip_algorithm="norm")
            opt.step()
            if sched is not None:
                sched.step()
        if not torch.isfinite(torch.tensor(loss_total)):
            raise FloatingPointError(f"non-finite GRPO loss at step {self.global_step}")
        stats.update({"grpo/clip_fraction": sum(clips) / len(clips), "perf/update_s": time.perf_counter() - t0})
        if kls:
            stats["grpo/kl"] = sum(kls) / len(kls)
        n = len(batch)
        loss = torch.tensor(loss_total)
        self.log("train/loss", loss, on_step=True, on_epoch=False, batch_size=n)
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, prog_bar=True, batch_size=n, sync_dist=True)
        self.log("grpo/reward_epoch", stats["grpo/reward_mean"], on_step=False, on_epoch=True, batch_size=n,
                 sync_dist=True)
        self.log_dict(stats, on_step=True, on_epoch=False, batch_size=n)
        return loss

    def _global_tokens(self, completions: list[list[int]]) -> float:
        """dapo's normaliser: completion tokens of the whole generation batch over all ranks / the rank count."""
        tokens = torch.tensor(float(sum(map(len, completions))), device=self.device)
        world = self.trainer.world_size
        if world > 1:
            tokens = self.trainer.strategy.reduce(tokens, reduce_op="sum") / world
        return float(tokens)
