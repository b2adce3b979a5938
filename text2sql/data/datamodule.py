"""LightningDataModule: Spider-layout records -> prompt template -> token ids with masked labels -> batches.

Training batches are padded dynamically (to the longest sequence in the batch) and, optionally, drawn from
buckets of similar length so little compute is spent on padding. The dev split serves two purposes: a
teacher-forced `val/loss`, and the examples the execution-accuracy callback generates SQL for.
"""

from __future__ import annotations

import logging
import random
from dataclasses import dataclass

import lightning.pytorch as pl
import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, DistributedSampler

from text2sql.data.packing import add_target_positions, pack_batch
from text2sql.data.resumable import resumable
from text2sql.data.prompt import IGNORE_INDEX, encode_record, encode_source, length_stats, truncation_counts
from text2sql.data.spider import SpiderDataset

log = logging.getLogger(__name__)


def eval_subset(n: int, limit: int | None, seed: int, interactions: list[int] | None = None) -> list[int]:
    """The indices of the dev examples scored: all of `n`, or a fixed-seed subset of `limit` in dev order (whole
    interactions for multi-turn data). One rule for the training callback (`eval.limit`) and `text2sql predict
    --limit`, so their numbers compare."""
    indices = list(range(n))
    if limit and limit < n:
        indices = (whole_interactions(interactions, limit, seed) if interactions
                   else sorted(random.Random(seed).sample(indices, limit)))
    return indices


@dataclass
class EvalItem:
    """One dev example as the evaluation callback needs it."""

    index: int  # position in the dev split (for DB-GPT-Hub-compatible pred.sql order)
    db_id: str
    question: str
    gold: str
    source_ids: list[int]
    level: str | None = None  # the difficulty the dataset states (BIRD); None: the evaluator derives it
    interaction: int | None = None  # multi-turn datasets: the interaction the turn belongs to


class _Encoded(Dataset):
    def __init__(self, items: list[dict]):
        self.items = items

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


class LengthGroupedSampler(BatchSampler):
    """Shuffled batches of similar-length examples, sharded over ranks: a real `BatchSampler` any strategy accepts.

    Every epoch's batches are built once for all ranks (shuffle, sort within random mega-batches, shuffle the
    batches), a pure function of (seed, epoch); rank r then takes batches r, r + world, ... of that list, padded
    by wrapping around so every rank runs the same number of batches (`drop_last=True` drops the tail instead).
    One rank sees exactly the batches of the unsharded order.

    `sampler` is a `DistributedSampler` that says which shard (its `num_replicas`, `rank`) and which epoch (its
    `epoch`: Lightning calls `set_epoch` on `batch_sampler.sampler` before every epoch, so a resumed run sees the
    batches an uninterrupted one would). Its own order is ignored. Under a distributed strategy Lightning swaps
    in its own `DistributedSampler` through this argument; with `use_distributed_sampler=False` the one given
    here (see `TextToSQLDataModule.train_dataloader`) stays. None: one rank.
    """

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0, mega: int = 50,
                 sampler: DistributedSampler | None = None, drop_last: bool = False):
        if sampler is None:
            sampler = DistributedSampler(range(len(lengths)), num_replicas=1, rank=0, shuffle=False)
        super().__init__(sampler, batch_size, drop_last)
        self.lengths, self.seed, self.mega = lengths, seed, mega

    @property
    def epoch(self) -> int:
        return getattr(self.sampler, "epoch", 0)

    @property
    def num_replicas(self) -> int:
        return getattr(self.sampler, "num_replicas", 1)

    @property
    def rank(self) -> int:
        return getattr(self.sampler, "rank", 0)

    def set_epoch(self, epoch: int) -> None:
        self.sampler.set_epoch(epoch)

    def global_batches(self) -> list[list[int]]:
        """This epoch's batches over all ranks, before sharding."""
        rng = random.Random(self.seed * 100_003 + self.epoch)
        order = list(range(len(self.lengths)))
        rng.shuffle(order)
        size = self.batch_size * self.mega
        batches = []
        for start in range(0, len(order), size):
            chunk = sorted(order[start : start + size], key=lambda i: self.lengths[i], reverse=True)
            batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        rng.shuffle(batches)
        return batches

    def __iter__(self):
        batches = self.global_batches()
        world = self.num_replicas
        if self.drop_last:
            batches = batches[: len(batches) // world * world]
        else:
            total = len(self) * world
            while len(batches) < total:  # wrap around (as DistributedSampler pads): equal batch counts per rank
                batches += batches[: total - len(batches)]
        yield from batches[self.rank :: world]

    def __len__(self) -> int:
        n = (len(self.lengths) + self.batch_size - 1) // self.batch_size
        world = self.num_replicas
        return n // world if self.drop_last else (n + world - 1) // world


def pad_batch(items: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest item (training/teacher forcing; generation pads left itself)."""
    width = max(len(it["input_ids"]) for it in items)
    input_ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(items), width), IGNORE_INDEX, dtype=torch.long)
    attention = torch.zeros((len(items), width), dtype=torch.long)
    for row, it in enumerate(items):
        n = len(it["input_ids"])
        input_ids[row, :n] = torch.tensor(it["input_ids"])
        labels[row, :n] = torch.tensor(it["labels"])
        attention[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}


class TextToSQLDataModule(pl.LightningDataModule):
    def __init__(
        self,
        dataset: SpiderDataset,
        tokenizer,
        template: str = "vanilla",
        system_prompt: str | None = None,
        max_source_length: int = 2048,
        max_target_length: int = 512,
        batch_size: int = 8,
        eval_batch_size: int = 16,
        num_workers: int = 0,
        group_by_length: bool = True,
        train_limit: int | None = None,
        val_loss_limit: int | None = 256,
        seed: int = 0,
        packing: bool = False,
        prompts: bool = False,
    ):
        super().__init__()
        self.dataset, self.tokenizer = dataset, tokenizer
        self.template, self.system_prompt = template, system_prompt
        self.max_source_length, self.max_target_length = max_source_length, max_target_length
        self.batch_size, self.eval_batch_size, self.num_workers = batch_size, eval_batch_size, num_workers
        self.group_by_length, self.train_limit, self.val_loss_limit, self.seed = (
            group_by_length, train_limit, val_loss_limit, seed)
        self.packing = packing  # several examples per row with position_ids (text2sql.data.packing)
        self.prompts = prompts  # training batches of prompts without answers (objective=grpo samples the answers)
        self.train_items: list[dict] | None = None
        self.val_items: list[dict] | None = None
        self.dev_records: list[dict] | None = None
        self.stats: dict[str, dict[str, int]] = {}  # token-length and truncation statistics per split

    def _encode(self, records: list[dict], split: str, prompts: bool = False) -> list[dict]:
        encoded = [encode_record(r, self.tokenizer, self.template, self.max_source_length, self.max_target_length,
                                 system_prompt=self.system_prompt) for r in records]
        cut = truncation_counts(encoded)
        self.stats[split] = {**length_stats(encoded), **{f"truncated_{k}": v for k, v in cut.items()
                                                         if k not in ("examples",)}}
        st = self.stats[split]
        log.info("%s: %d examples; tokens before truncation: source p50 %d / p95 %d / max %d, "
                 "target p50 %d / p95 %d / max %d", split, st["count"], st["source_p50"], st["source_p95"],
                 st["source_max"], st["target_p50"], st["target_p95"], st["target_max"])
        if cut["truncated"]:
            kinds = {k: v for k, v in cut.items() if k not in ("examples", "truncated") and v}
            log.warning("%s: %d of %d examples cut to fit max_source_length=%d / max_target_length=%d (%s)", split,
                        cut["truncated"], len(records), self.max_source_length, self.max_target_length, kinds)
        if prompts:  # the prompt cut as in training, and what the reward compares with
            return [{"input_ids": e.input_ids[: e.source_len], "db_id": r["db_id"], "gold": r["output"]}
                    for r, e in zip(records, encoded)]
        return [{"input_ids": e.input_ids, "labels": e.labels} for e in encoded]

    def setup(self, stage: str | None = None) -> None:
        if self.train_items is not None:
            return
        train = self.dataset.records("train")
        if self.train_limit:
            train = train[: self.train_limit]
        self.dev_records = self.dataset.records("dev")
        self.train_items = self._encode(train, "train", prompts=self.prompts)
        val = self.dev_records[: self.val_loss_limit] if self.val_loss_limit else self.dev_records
        self.val_items = self._encode(val, "dev")

    def _collate(self, items):
        if self.prompts and "labels" not in items[0]:  # a batch of prompts: a list, padded where it is generated
            return [dict(it) for it in items]
        pack = pack_batch if self.packing else pad_batch
        return add_target_positions(pack(items, self.tokenizer.pad_token_id))

    def train_dataloader(self) -> DataLoader:
        if self.group_by_length:
            lengths = [len(it["input_ids"]) for it in self.train_items]
            trainer = getattr(self, "trainer", None)
            world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
            # Our shard of the length-grouped batches; a distributed strategy may swap in its own
            # DistributedSampler for the same shard (LengthGroupedSampler reads only its rank and epoch).
            shard = DistributedSampler(range(len(lengths)), num_replicas=world, rank=rank, shuffle=False)
            sampler = LengthGroupedSampler(lengths, self.batch_size, self.seed, sampler=shard)
            loader = DataLoader(_Encoded(self.train_items), batch_sampler=sampler, collate_fn=self._collate,
                                num_workers=self.num_workers)
        else:  # under several ranks Lightning shards this plain shuffled loader with its DistributedSampler
            loader = DataLoader(_Encoded(self.train_items), batch_size=self.batch_size, shuffle=True,
                                collate_fn=self._collate, num_workers=self.num_workers)
        return resumable(loader, getattr(self, "trainer", None))  # a mid-epoch resume continues at its batch

    def val_dataloader(self) -> DataLoader:
        return DataLoader(_Encoded(self.val_items), batch_size=self.eval_batch_size, collate_fn=self._collate,
                          num_workers=self.num_workers)

    def eval_items(self, limit: int | None = None, seed: int = 0) -> list[EvalItem]:
        """The dev examples to generate SQL for: all, or a fixed-seed subset of `limit` (kept in dev order)."""
        if self.dev_records is None:
            self.setup()
        levels = self.dataset.levels("dev")
        ids_of = getattr(self.dataset, "interaction_ids", None)
        interactions = ids_of("dev") if ids_of else None
        indices = eval_subset(len(self.dev_records), limit, seed, interactions)
        items = []
        for i in indices:
            r = self.dev_records[i]
            source_ids, _ = encode_source(r, self.tokenizer, self.template, self.max_source_length,
                                          system_prompt=self.system_prompt)
            question = r["input"].split("\n", 1)[1].rsplit("\n\n###Response:", 1)[0] if "\n" in r["input"] else r["input"]
            items.append(EvalItem(i, r["db_id"], question, r["output"], source_ids, levels[i],
                                  interactions[i] if interactions else None))
        return items


def whole_interactions(interactions: list[int], limit: int, seed: int) -> list[int]:
    """Indices of fixed-seed random interactions, whole, until they hold at least `limit` turns (dev order):
    interaction match needs every turn of an interaction."""
    groups: dict[int, list[int]] = {}
    for i, n in enumerate(interactions):
        groups.setdefault(n, []).append(i)
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    chosen: list[int] = []
    for n in order:
        if len(chosen) >= limit:
            break
        chosen += groups[n]
    return sorted(chosen)
