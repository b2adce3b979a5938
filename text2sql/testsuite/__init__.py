"""Distilled test suites (Zhong, Yu and Klein, EMNLP 2020) for any database: `text2sql testsuite build`.

One file per concern: `schema` reads a database's schema and value pools (read-only, through the evaluator's
guard) and recreates the schema in a new file; `fill` samples a neighbour database's rows; `mutate` makes near-miss
mutants of a gold query (sqlglot); `distil` runs them through the evaluator and keeps, by greedy set cover, the
fewest neighbours that tell gold from the most mutants; `build` finds a dataset's databases and writes the suite in
the official layout; `score` is what a caller (the EX callback, `predict --evaluate`) uses to score on a suite;
`cli` is the `text2sql testsuite` verb.
"""
