"""What a run sets up on this machine before it loads anything heavy; setup.py says what, in which order, and why.

- setup.py    `set_up_machine` (train.py calls it first, right after the config check): OpenMP waiting,
              `hardware=auto`, the GPU check, DeepSpeed's accelerator; then torch threads before the heavy imports
- threads.py  CPU runs that share their cores: OpenMP waiting (before torch loads), torch threads, usable CPUs
- auto.py     `hardware=auto`: the preset this machine and its launcher call for

config/ describes and checks values (and never imports torch); machine/ acts on this process: environment variables,
torch's thread count, the GPUs torch sees. Importing this package is cheap (no torch).
"""
