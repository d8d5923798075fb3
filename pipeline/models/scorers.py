"""Each backbone's classifier as one plain-torch graph, token ids in, class probabilities out, for
`ulmfit export --format onnx` (pipeline/use/export.py). The backbone registry names each one (`scorer`).

A scorer gives the probabilities the classify stage and `ulmfit predict` give, for reviews padded at
the end with the pad id (what an ONNX user does), or as the stage's loader pads them
(classify.pad_to_chunks: whole chunks of padding in front, the rest at the end):

    ids  [t0 t1 t2 t3 t4 t5 t6 pad pad]  or  [pad pad pad | t0 t1 t2 | t3 t4 t5 | t6 pad pad]   (bptt = 3)

The trained models hold steps a graph cannot (fastai's SentenceEncoder runs the LSTM chunk by chunk
in a Python loop over a batch-dependent number of rows; the transformer classifier drops all-padding
chunks with a data-dependent index). The scorers compute the same thing with fixed-shape tensor ops:

    awd_lstm     each row shifted left to start at its first real token, then the whole sequence
                 through plain nn.LSTM layers from a zero state (= the chunked run: the state carries
                 over between chunks, and a row starts from a zero state); the pooling window is
                 fastai's `max_len` rule, which the loader makes a function of the review's length
    gpt, bert    every chunk encoded, all-padding ones with a full attention mask so that they stay
                 finite; the pooling ignores them, as it ignores padding

Dropouts are identity here (inference), and the AWD-LSTM's weight-dropped hidden weights are the raw ones.
"""
from __future__ import annotations

import torch
from torch import nn

from pipeline.models.hf_backbones import chunked, pool


class AwdLstmScorer(nn.Module):
    def __init__(self, classifier: nn.Module, bptt: int, max_len: int | None, pad_id: int):
        super().__init__()
        awd = classifier[0].module  # SequentialRNN(SentenceEncoder(AWD_LSTM), PoolingLinearClassifier)
        self.bptt, self.max_len, self.pad_id = bptt, max_len, pad_id
        self.embedding = nn.Embedding.from_pretrained(awd.encoder.weight.detach().clone())
        self.rnns = nn.ModuleList(_plain_lstm(weight_dropped) for weight_dropped in awd.rnns)
        self.head = classifier[1].layers

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        length = ids.shape[1]
        real = ids != self.pad_id
        n_real = real.sum(dim=1)
        first = real.to(torch.int64).argmax(dim=1)  # the padding in front comes in whole chunks
        positions = torch.arange(length, device=ids.device)
        aligned = ids.gather(1, (positions[None] + first[:, None]).clamp(max=length - 1))
        states = self.embedding(aligned)
        for rnn in self.rnns:
            states, _ = rnn(states)
        # fastai's window: the outputs of the chunks that start at most max_len before the batch's end,
        # which the loader (classify.pad_to_chunks) puts (-n_real) % bptt pad ids after the review's end
        span = (n_real + (-n_real) % self.bptt)[:, None]
        keep = positions[None] < n_real[:, None]
        if self.max_len is not None:
            keep = keep & (span - (positions[None] // self.bptt) * self.bptt <= self.max_len)
        # fastai's masked_concat_pool: [the last real token's state, max, mean over the kept tokens]
        return torch.softmax(self.head(pool(states, keep, "concat")), dim=-1)


def _plain_lstm(weight_dropped: nn.Module) -> nn.LSTM:
    """fastai's WeightDropout(nn.LSTM) as a plain nn.LSTM holding the raw (undropped) weights."""
    lstm = weight_dropped.module
    plain = nn.LSTM(lstm.input_size, lstm.hidden_size, num_layers=1, batch_first=True)
    raw = {name: getattr(weight_dropped, f"{name}_raw") for name in weight_dropped.layer_names}
    plain.load_state_dict({name: (raw[name] if name in raw else getattr(lstm, name)).detach().clone()
                           for name, _ in plain.named_parameters()})
    return plain


class TransformerScorer(nn.Module):
    def __init__(self, classifier: nn.Module):
        super().__init__()
        self.encoder, self.head = classifier.encoder, classifier.head
        self.pooling, self.chunk_len, self.pad_id = classifier.pooling, classifier.chunk_len, classifier.pad_id

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        batch = ids.shape[0]
        chunks, real = chunked(ids, self.chunk_len, self.pad_id)
        attend = real | ~real.any(dim=1, keepdim=True)  # an all-padding chunk attends to all: finite, pooled out
        states = self.encoder(input_ids=chunks, attention_mask=attend.to(torch.int64)).last_hidden_state
        hidden = states.reshape(batch, -1, states.shape[-1])
        return torch.softmax(self.head(pool(hidden, real.reshape(batch, -1), self.pooling)), dim=-1)


def awd_lstm_scorer(classifier: nn.Module, cc, specials) -> nn.Module:
    return AwdLstmScorer(classifier, cc.bptt, cc.max_len, specials.pad)


def transformer_scorer(classifier: nn.Module, cc, specials) -> nn.Module:
    return TransformerScorer(classifier)
