"""Turns logits into tokens: grammar mask, logit bias, penalties, min_tokens, temperature,
top-k/p, min-p, seeds, logprobs.

Every step is vectorised over the batch and skipped when no request in the batch needs it.
Seeded requests draw their noise from their own generator, so a seed gives the same tokens
whatever else shares the batch. Logprobs are the model's own (the logits before any bias,
penalty or temperature), as vLLM's default `raw_logprobs` and OpenAI's since logit bias stopped
showing in them.

Structured outputs: the grammar mask is applied FIRST, in place, to the rows of requests with a
matcher (structured/mask.py), so the logprobs of a constrained row come from the constrained
distribution (forbidden tokens have probability 0 and never show among the top alternatives).
min_tokens does not ban stop tokens on a constrained row: there the grammar decides when the
output may end (banning them could leave a row with every token forbidden).
"""
from __future__ import annotations

import torch

from bastion.engine.outputs import TokenLogprob
from bastion.engine.request import Request
from bastion.structured.mask import GrammarMask, PendingMask


class Sampler:
    def __init__(self, seed: int = 0) -> None:
        self.generator = torch.Generator().manual_seed(seed)
        self.grammar_mask: GrammarMask | None = None  # made on the first constrained batch
        self._pending: PendingMask | None = None

    def prepare(self, reqs: list[Request], vocab_size: int) -> None:
        """Start filling the grammar mask of the requests that will sample this step, so it is
        made while the model runs (a no-op when none has a grammar)."""
        if any(r.matcher is not None for r in reqs):
            if self.grammar_mask is None:
                self.grammar_mask = GrammarMask()
            self._pending = self.grammar_mask.start([r.matcher for r in reqs], vocab_size)

    def __call__(self, logits: torch.Tensor, reqs: list[Request]
                 ) -> tuple[list[int], list[TokenLogprob | None]]:
        """Pick one token per row of float32 `logits` [N, V] for the matching requests."""
        if len(reqs) == 1 and _plain_greedy(reqs[0]):
            # NOTE: one stream, greedy, nothing to bias or report: only the argmax (the same token
            # the general path picks), without its per-step checks.
            self._pending = None
            return [int(logits[0].argmax())], [None]
        params = [r.params for r in reqs]
        if any(r.matcher is not None for r in reqs):
            if self.grammar_mask is None:
                self.grammar_mask = GrammarMask()
            self.grammar_mask.apply(logits, [r.matcher for r in reqs], self._pending)
        self._pending = None
        raw = logits
        if any(p.logit_bias for p in params):
            logits = apply_logit_bias(logits.clone(), reqs)
        if any(p.has_penalties for p in params):
            logits = apply_penalties(logits if logits is not raw else logits.clone(), reqs)
        if any(r.num_output_tokens < r.params.min_tokens and r.matcher is None for r in reqs):
            logits = _block_stops(logits if logits is not raw else logits.clone(), reqs)
        if all(p.greedy for p in params):
            tokens = logits.argmax(dim=-1)
        else:
            tokens = self._sample(logits, reqs)
        token_list = tokens.tolist()
        return token_list, _logprobs(raw, reqs, tokens)

    def _sample(self, logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
        params = [r.params for r in reqs]
        greedy = torch.tensor([p.greedy for p in params], device=logits.device)
        temps = torch.tensor([1.0 if p.greedy else p.temperature for p in params],
                             device=logits.device, dtype=logits.dtype)
        scaled = logits / temps[:, None]
        if any(p.top_k > 0 or p.top_p < 1.0 for p in params):
            scaled = _top_k_top_p(scaled, params)
        probs = torch.softmax(scaled, dim=-1)
        if any(p.min_p > 0 for p in params):
            min_p = torch.tensor([p.min_p for p in params], device=probs.device, dtype=probs.dtype)
            keep = probs >= probs.max(dim=-1, keepdim=True).values * min_p[:, None]
            probs = probs * keep
        noise = self._exponential_noise(probs, reqs)
        sampled = (probs / noise).argmax(dim=-1)
        return torch.where(greedy, logits.argmax(dim=-1), sampled)

    def _exponential_noise(self, probs: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
        """Exp(1) noise: argmax(p / noise) is a draw from p (the exponential race)."""
        noise = torch.empty_like(probs, device="cpu").exponential_(generator=self.generator)
        for row, req in enumerate(reqs):
            if req.generator is not None:
                noise[row].exponential_(generator=req.generator)
        return noise.to(probs.device)


def _plain_greedy(req: Request) -> bool:
    """Greedy, with no grammar, bias, penalty, stop ban or logprobs: the token is the argmax."""
    p = req.params
    return (p.greedy and req.matcher is None and not p.logit_bias and not p.has_penalties
            and p.logprobs is None and req.num_output_tokens >= p.min_tokens)


def apply_logit_bias(logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
    """Add each request's `logit_bias` to its own row, in place: one scatter-add for the batch."""
    rows, ids, biases = [], [], []
    for row, req in enumerate(reqs):
        if req.params.logit_bias:
            token_ids, values = req.logit_bias(logits.device)
            rows.append(torch.full_like(token_ids, row))
            ids.append(token_ids)
            biases.append(values)
    logits.index_put_((torch.cat(rows), torch.cat(ids)), torch.cat(biases).to(logits.dtype),
                      accumulate=True)
    return logits


def apply_penalties(logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
    """Repetition (prompt + output, HF style), then presence and frequency (output, OpenAI style)."""
    vocab = logits.shape[-1]
    for row, req in enumerate(reqs):
        p = req.params
        if not p.has_penalties:
            continue
        if p.repetition_penalty != 1.0:
            seen = torch.tensor(sorted(set(req.all_token_ids)), dtype=torch.long, device=logits.device)
            vals = logits[row, seen]
            logits[row, seen] = torch.where(vals > 0, vals / p.repetition_penalty,
                                            vals * p.repetition_penalty)
        if (p.presence_penalty or p.frequency_penalty) and req.num_output_tokens:
            out = torch.tensor(req.output_token_ids, dtype=torch.long, device=logits.device)
            counts = torch.bincount(out, minlength=vocab)[:vocab].to(logits.dtype)
            logits[row] -= counts * p.frequency_penalty + (counts > 0).to(logits.dtype) * p.presence_penalty
    return logits


def _block_stops(logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
    """Until min_tokens are out, stop tokens (and EOS unless ignored) cannot be chosen."""
    for row, req in enumerate(reqs):
        if req.num_output_tokens < req.params.min_tokens and req.stop_ids and req.matcher is None:
            ids = [t for t in req.stop_ids if t < logits.shape[-1]]
            logits[row, ids] = float("-inf")
    return logits


def _top_k_top_p(logits: torch.Tensor, params) -> torch.Tensor:
    vocab = logits.shape[-1]
    top_k = torch.tensor([p.top_k if p.top_k > 0 else vocab for p in params], device=logits.device)
    top_p = torch.tensor([p.top_p for p in params], device=logits.device, dtype=logits.dtype)
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    ranks = torch.arange(vocab, device=logits.device)[None, :]
    drop = ranks >= top_k.clamp(max=vocab)[:, None]
    probs = torch.softmax(sorted_logits.masked_fill(drop, float("-inf")), dim=-1)
    # NOTE: a token is dropped when the tokens ranked above it already reach top_p.
    drop |= (probs.cumsum(dim=-1) - probs) >= top_p[:, None]
    drop[:, 0] = False
    return logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))


def _logprobs(logits: torch.Tensor, reqs: list[Request], tokens: torch.Tensor
              ) -> list[TokenLogprob | None]:
    rows = [i for i, r in enumerate(reqs) if r.params.logprobs is not None]
    result: list[TokenLogprob | None] = [None] * len(reqs)
    if not rows:
        return result
    index = torch.tensor(rows, device=logits.device)
    logp = torch.log_softmax(logits[index], dim=-1)
    chosen = tokens[index]
    chosen_lp = logp.gather(-1, chosen[:, None]).squeeze(-1)
    ranks = (logp > chosen_lp[:, None]).sum(dim=-1) + 1
    k = max(reqs[i].params.logprobs for i in rows)
    top_vals, top_ids = logp.topk(k, dim=-1) if k else (logp[:, :0], chosen[:, None][:, :0])
    for j, i in enumerate(rows):
        n = reqs[i].params.logprobs
        top = [(t, v) for t, v in zip(top_ids[j, :n].tolist(), top_vals[j, :n].tolist())
               if v != float("-inf")]  # a grammar may allow fewer than n tokens
        result[i] = TokenLogprob(int(chosen[j]), float(chosen_lp[j]), int(ranks[j]), top)
    return result
