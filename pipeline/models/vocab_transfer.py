"""Vocabulary transfer between stages: stage 2 has its own (target-domain) vocabulary."""
from __future__ import annotations

import torch


def transfer_embeddings(state: dict[str, torch.Tensor], old_itos: list[str], new_itos: list[str],
                        vocab_keys: tuple[str, ...]) -> tuple[dict[str, torch.Tensor], int]:
    """Re-index every vocabulary-indexed tensor in `state` from old_itos to new_itos.

    Tokens known to the old vocabulary keep their rows; new tokens get the mean row
    (ULMFiT / fastai `match_embeds`). Returns the new state and how many tokens were known.
    """
    old_index = {tok: i for i, tok in enumerate(old_itos)}
    rows = torch.tensor([old_index.get(tok, -1) for tok in new_itos], dtype=torch.long)
    known = rows >= 0
    new_state = dict(state)
    for key in vocab_keys:
        old = state[key]
        if old.shape[0] != len(old_itos):
            raise ValueError(f"{key} has {old.shape[0]} rows but the vocabulary has {len(old_itos)} tokens")
        new = old.mean(dim=0, keepdim=True).expand(len(new_itos), *old.shape[1:]).clone()
        new[known] = old[rows[known]]
        new_state[key] = new
    return new_state, int(known.sum())
