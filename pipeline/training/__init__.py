"""Training plumbing the stages share: the Learner, the LM loop, precision, ranks and DDP, checkpoints, guards, memory, baselines."""
