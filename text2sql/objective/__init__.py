"""Training objectives beyond next-token imitation: GRPO with the execution verdict as the reward.

`loss` (the clipped group-relative policy loss, TRL-equal), `reward` (SQL run through the evaluator's guard),
`rollout` (seeded per-row samples), `module` (the LightningModule), `init_from` (start from a finished run).
"""
