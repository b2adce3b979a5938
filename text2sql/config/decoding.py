"""The `eval.decoding` block: which decoding strategy, with its settings, checked (text2sql/eval/decoding.py runs it).

Kept in config/ beside the schemas: config/schema.py builds the typed `eval.decoding` node from these fields, so the
keys, types and defaults have one owner, and `import text2sql` (which registers the schemas) does not import eval/.
A new strategy: its name in STRATEGIES (and any setting as a field here), its branch in eval/decoding.py's `decode`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields

from text2sql.errors import ConfigError

STRATEGIES = ("greedy", "beam", "sample", "execution_guided", "self_consistency")
FALLBACKS = ("beam", "sample")  # execution_guided's candidates after greedy


@dataclass(frozen=True)
class Decoding:
    """The `eval.decoding` block, checked."""

    strategy: str = "greedy"
    num_beams: int = 4
    num_samples: int = 8
    temperature: float = 0.7
    top_p: float = 0.95
    seed: int = 0
    fallback: str = "beam"
    require_rows: bool = False

    def __post_init__(self):
        if self.strategy not in STRATEGIES:
            raise ConfigError(f"eval.decoding.strategy={self.strategy} is not one of {', '.join(STRATEGIES)}")
        if self.fallback not in FALLBACKS:
            raise ConfigError(f"eval.decoding.fallback={self.fallback} is not one of {', '.join(FALLBACKS)}")
        for name, ok in (("num_beams", self.num_beams >= 1), ("num_samples", self.num_samples >= 1),
                         ("temperature", self.temperature > 0), ("top_p", 0 < self.top_p <= 1)):
            if not ok:
                raise ConfigError(f"eval.decoding.{name}={getattr(self, name)} is out of range")

    @classmethod
    def from_config(cls, cfg: Mapping | str | None) -> "Decoding":
        """From a config block (DictConfig or dict), a strategy name, or None (greedy)."""
        if cfg is None:
            return cls()
        if isinstance(cfg, str):
            return cls(strategy=cfg)
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(cfg) - known)
        if unknown:
            raise ConfigError(f"eval.decoding.{unknown[0]} is not a decoding key ({', '.join(sorted(known))})")
        return cls(**{k: cfg[k] for k in cfg})

    @property
    def first_mode(self) -> str:
        """The generation mode every example goes through ("greedy", "beam" or "sample"): the one to show progress of."""
        return {"execution_guided": "greedy", "self_consistency": "sample"}.get(self.strategy, self.strategy)

    @property
    def executes(self) -> bool:
        """Whether candidates are executed (the caller must provide an executor)."""
        return self.strategy in ("execution_guided", "self_consistency")
