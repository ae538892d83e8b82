"""From tokenized examples to tensors: padding collator and SFT packing."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rlhfkit.data.prepare import PairExample, ResponseGroup
from rlhfkit.data.templates import IGNORE_INDEX, TokenizedExample


@dataclass
class PackedRow:
    """Several examples in one row; ``position_ids`` restart at 0 for each, which
    transformers turns into a block-diagonal causal mask (no cross-attention)."""

    input_ids: list[int]
    labels: list[int]
    position_ids: list[int]

    def __len__(self) -> int:
        return len(self.input_ids)


def pack(examples: Sequence[TokenizedExample], max_length: int) -> list[PackedRow]:
    """First-fit-decreasing packing into rows of at most ``max_length`` tokens.

    Deterministic for a given input order. The first label of every packed
    example is masked: in a packed row it would be predicted from the previous
    example's last token (unpacked, the shift drops it anyway).
    """
    order = sorted(range(len(examples)), key=lambda i: (-len(examples[i]), i))
    rows: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = len(examples[i])
        for r, space in enumerate(free):
            if n <= space:
                rows[r].append(i)
                free[r] -= n
                break
        else:
            rows.append([i])
            free.append(max_length - n)
    packed = []
    for members in rows:
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for i in sorted(members):
            ex = examples[i]
            ids += ex.input_ids
            labels += [IGNORE_INDEX, *ex.labels[1:]]
            pos += list(range(len(ex)))
        packed.append(PackedRow(ids, labels, pos))
    return packed


class PadCollator:
    """Right-pads ``input_ids`` / ``labels`` (and ``position_ids`` for packed rows).

    Unpacked batches get an ``attention_mask``. Packed batches do not: their pad
    tail gets its own restarting positions, so it is a separate segment that
    no real token attends to.
    """

    def __init__(self, pad_token_id: int, pad_to_multiple_of: int | None = None) -> None:
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of

    def __call__(self, batch: Sequence[TokenizedExample | PackedRow]) -> dict:
        import torch

        width = max(len(ex) for ex in batch)
        if self.multiple:
            width = -(-width // self.multiple) * self.multiple
        packed = isinstance(batch[0], PackedRow)
        ids, labels, second = [], [], []
        for ex in batch:
            pad = width - len(ex)
            ids.append(ex.input_ids + [self.pad_token_id] * pad)
            labels.append(ex.labels + [IGNORE_INDEX] * pad)
            if packed:
                second.append(ex.position_ids + list(range(pad)))
            else:
                second.append([1] * len(ex) + [0] * pad)
        out = {
            "input_ids": torch.tensor(ids, dtype=torch.long),
            "labels": torch.tensor(labels, dtype=torch.long),
        }
        out["position_ids" if packed else "attention_mask"] = torch.tensor(second, dtype=torch.long)
        return out


class GroupCollator:
    """Response groups -> one right-padded batch of every response, plus pair indices.

    Output: ``input_ids`` / ``attention_mask`` of shape ``(responses, length)``;
    ``better``, ``worse`` (row indices), ``margin`` and ``group`` (group index per
    pair), and ``n_groups``. All responses of all groups go through one forward.
    """

    def __init__(self, pad_token_id: int) -> None:
        self.pad = PadCollator(pad_token_id)

    def __call__(self, groups: Sequence[ResponseGroup]) -> dict:
        import torch

        rows: list[TokenizedExample] = []
        better, worse, margin, group = [], [], [], []
        for g, grp in enumerate(groups):
            base = len(rows)
            rows += [TokenizedExample(ids, [IGNORE_INDEX] * len(ids)) for ids in grp.responses]
            for b, w, m in grp.pairs:
                better.append(base + b)
                worse.append(base + w)
                margin.append(m)
                group.append(g)
        out = self.pad(rows)
        del out["labels"]
        out["better"] = torch.tensor(better, dtype=torch.long)
        out["worse"] = torch.tensor(worse, dtype=torch.long)
        out["margin"] = torch.tensor(margin, dtype=torch.float32)
        out["group"] = torch.tensor(group, dtype=torch.long)
        out["n_groups"] = len(groups)
        return out


class PairCollator:
    """Preference pairs -> one padded batch: the B chosen rows, then the B rejected rows,
    so the policy (and the reference) score both sides in a single forward.
    Adds ``ref_logps`` (2B,) when every pair has precomputed reference log-probs."""

    def __init__(self, pad_token_id: int) -> None:
        self.pad = PadCollator(pad_token_id)

    def __call__(self, pairs: Sequence[PairExample]) -> dict:
        import torch

        out = self.pad([p.chosen for p in pairs] + [p.rejected for p in pairs])
        out["n_pairs"] = len(pairs)
        if all(p.ref is not None for p in pairs):
            refs = [p.ref[0] for p in pairs] + [p.ref[1] for p in pairs]  # type: ignore[index]
            out["ref_logps"] = torch.tensor(refs, dtype=torch.float32)
        return out
