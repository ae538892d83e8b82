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
    packed = []
    for members in first_fit_decreasing([len(ex) for ex in examples], max_length):
        ids: list[int] = []
        labels: list[int] = []
        pos: list[int] = []
        for i in members:
            ex = examples[i]
            ids += ex.input_ids
            labels += [IGNORE_INDEX, *ex.labels[1:]]
            pos += list(range(len(ex)))
        packed.append(PackedRow(ids, labels, pos))
    return packed


def first_fit_decreasing(lengths: Sequence[int], capacity: int) -> list[list[int]]:
    """Indices grouped into bins of at most ``capacity`` (an item longer than that gets
    a bin of its own): longest first, each into the first bin with room; ties by index.
    Bins in creation order, the indices of each ascending. Deterministic."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    free: list[int] = []
    for i in order:
        n = lengths[i]
        for b, space in enumerate(free):
            if n <= space:
                bins[b].append(i)
                free[b] -= n
                break
        else:
            bins.append([i])
            free.append(capacity - n)
    return [sorted(b) for b in bins]


def pack_width(lengths: Sequence[int], hidden_size: int | None = None) -> int:
    """The row width for packing examples of ``lengths`` into one batch.

    Without ``hidden_size``: the longest example. With it, the longest, twice or four
    times that, or one row of all, whichever costs least as ``positions * (1 + W / 6h)``:
    a position costs about ``12 h^2`` multiply-adds in a layer's projections and MLP,
    and ``2 h W`` in attention over a row of width ``W`` (every query against every
    key of its row, the block-diagonal mask does not skip work). Short examples of
    mixed lengths waste a fifth of a batch at the longest width (SFT on the built-in
    task: 602 positions for 480 tokens, 500 at twice the width).
    """
    return packing(lengths, hidden_size)[0]


def packing(lengths: Sequence[int], hidden_size: int | None = None) -> tuple[int, list[list[int]]]:
    """:func:`pack_width`'s width and the :func:`first_fit_decreasing` bins at it."""
    longest = max(lengths)
    if not hidden_size:
        return longest, first_fit_decreasing(lengths, longest)
    total = sum(lengths)
    widths = sorted({*(min(k * longest, total) for k in (1, 2, 4)), total})
    candidates = [(w, first_fit_decreasing(lengths, w)) for w in widths]

    def cost(candidate: tuple[int, list[list[int]]]) -> float:
        width, bins = candidate
        return width * len(bins) * (1 + width / (6 * hidden_size))

    return min(candidates, key=cost)


def pack_batch(
    rows: Sequence[TokenizedExample],
    pad_token_id: int,
    hidden_size: int | None = None,
    width: int | None = None,
) -> dict:
    """A batch without padding waste: the examples of ``rows`` packed into as few rows
    as :func:`first_fit_decreasing` needs at the width :func:`pack_width` picks (the
    longest example's without ``hidden_size``), or at ``width`` when given.

    ``position_ids`` restart at 0 for each example and no ``attention_mask`` is
    returned, so transformers attends within each example only (a block-diagonal
    causal mask; the pad tail is a segment of its own). ``segments[r, t]`` is the
    index in ``rows`` of the example token ``t`` of row ``r`` belongs to (-1 on the
    pad tail), so per-example sums come back with ``index_add``. The first label of
    every example is masked: packed, it would be predicted from the example before
    (padded, the shift drops it anyway), so the labelled next tokens are exactly
    those of the padded batch.
    """
    import torch

    lengths = [len(r) for r in rows]
    if width:
        bins = first_fit_decreasing(lengths, width)
    else:
        width, bins = packing(lengths, hidden_size)
    ids, labels, pos, seg = [], [], [], []
    for members in bins:
        row_ids: list[int] = []
        row_labels: list[int] = []
        row_pos: list[int] = []
        row_seg: list[int] = []
        for i in members:
            ex = rows[i]
            row_ids += ex.input_ids
            row_labels += [IGNORE_INDEX, *ex.labels[1:]]
            row_pos += range(len(ex))
            row_seg += [i] * len(ex)
        pad = width - len(row_ids)
        ids.append(row_ids + [pad_token_id] * pad)
        labels.append(row_labels + [IGNORE_INDEX] * pad)
        pos.append(row_pos + list(range(pad)))
        seg.append(row_seg + [-1] * pad)
    return {
        "input_ids": torch.tensor(ids, dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "position_ids": torch.tensor(pos, dtype=torch.long),
        "segments": torch.tensor(seg, dtype=torch.long),
        "n_segments": len(rows),
    }


class PadCollator:
    """Right-pads ``input_ids`` / ``labels`` (and ``position_ids`` for packed rows).

    Unpacked batches get an ``attention_mask``. Packed batches do not: their pad
    tail gets its own restarting positions, so it is a separate segment that
    no real token attends to.

    With ``padding_free``, unpacked batches are collated by :func:`pack_batch`
    instead: the same examples, the same labelled tokens, fewer positions; the
    model's ``hidden_size``, when given, lets it pack into rows wider than the
    longest example where that costs less (:func:`pack_width`).
    """

    def __init__(
        self,
        pad_token_id: int,
        pad_to_multiple_of: int | None = None,
        padding_free: bool = False,
        hidden_size: int | None = None,
    ) -> None:
        self.pad_token_id = pad_token_id
        self.multiple = pad_to_multiple_of
        self.padding_free = padding_free
        self.hidden_size = hidden_size

    def __call__(self, batch: Sequence[TokenizedExample | PackedRow]) -> dict:
        import torch

        if self.padding_free and not isinstance(batch[0], PackedRow):
            return pack_batch(batch, self.pad_token_id, self.hidden_size)  # type: ignore[arg-type]
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
    ``better``, ``worse`` (response indices), ``margin`` and ``group`` (group index per
    pair), and ``n_groups``. All responses of all groups go through one forward.
    With ``padding_free`` the responses are packed (:func:`pack_batch`: ``position_ids``
    and ``segments`` instead of the mask; segment ``i`` is response ``i``).
    """

    def __init__(
        self, pad_token_id: int, padding_free: bool = False, hidden_size: int | None = None
    ) -> None:
        self.pad = PadCollator(pad_token_id, padding_free=padding_free, hidden_size=hidden_size)

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
    Adds ``ref_logps`` (2B,) when every pair has precomputed reference log-probs.
    With ``padding_free`` the 2B sequences are packed (:func:`pack_batch`); their
    ``segments`` keep that order."""

    def __init__(
        self, pad_token_id: int, padding_free: bool = False, hidden_size: int | None = None
    ) -> None:
        self.pad = PadCollator(pad_token_id, padding_free=padding_free, hidden_size=hidden_size)

    def __call__(self, pairs: Sequence[PairExample]) -> dict:
        import torch

        out = self.pad([p.chosen for p in pairs] + [p.rejected for p in pairs])
        out["n_pairs"] = len(pairs)
        if all(p.ref is not None for p in pairs):
            refs = [p.ref[0] for p in pairs] + [p.ref[1] for p in pairs]  # type: ignore[index]
            out["ref_logps"] = torch.tensor(refs, dtype=torch.float32)
        return out


def hidden_size_of(model) -> int | None:
    """The model's hidden size (GPT-2's ``n_embd`` too, through its config's alias), for
    :func:`pack_width`; None when the config does not say."""
    return getattr(getattr(model, "config", None), "hidden_size", None)


def model_inputs(batch: dict) -> dict:
    """What the model gets of a padded or a packed batch (packed: no attention mask,
    so restarting ``position_ids`` keep the examples apart)."""
    keys = ("input_ids", "position_ids") if "segments" in batch else ("input_ids", "attention_mask")
    return {k: batch[k] for k in keys}


def batch_logps(model, batch: dict):
    """Summed log-probs of the labelled tokens and their counts, per example of a padded
    batch (one per row) or of a :func:`pack_batch` batch (one per segment). The output
    head runs on the labelled positions only (:func:`rlhfkit.models.heads.labelled_logits`)."""
    import torch

    from rlhfkit.algorithms.dpo import grouped_logps
    from rlhfkit.models.heads import labelled_logits

    logits, targets, mask = labelled_logits(model, model_inputs(batch), batch["labels"])
    if "segments" in batch:  # a labelled token labels[r, t + 1] counts for segments[r, t + 1]
        owner, n = batch["segments"][:, 1:][mask], batch["n_segments"]
    else:
        rows = torch.arange(mask.size(0), device=mask.device).unsqueeze(1).expand_as(mask)
        owner, n = rows[mask], mask.size(0)
    return grouped_logps(logits, targets, owner, n)


def keeps_packed_apart(
    model, examples: Sequence[TokenizedExample], pad_token_id: int, score=None
) -> bool:
    """Whether ``model`` scores packed examples (:func:`pack_batch`) as it scores them
    padded, on the two shortest and the longest of ``examples`` packed into one row;
    False when there are fewer than three. ``score(model, batch)`` gives one value per
    example (default: the summed log-probs of :func:`batch_logps`; reward models pass
    their rewards).

    transformers turns restarting ``position_ids`` into a block-diagonal mask for
    most architectures, not for all (nor for remote code), so a stage checks before
    it uses padding-free batches. Run in eval mode without gradients.
    """
    import torch

    by_length = sorted(examples, key=len)
    if len(by_length) < 3:
        return False
    sample = [*by_length[:2], by_length[-1]]
    device = next(model.parameters()).device

    def on_device(batch: dict) -> dict:
        return {k: v.to(device) if hasattr(v, "to") else v for k, v in batch.items()}

    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            score = score or (lambda m, b: batch_logps(m, b)[0])
            want = score(model, on_device(PadCollator(pad_token_id)(sample)))
            one_row = pack_batch(sample, pad_token_id, width=sum(len(x) for x in sample))
            got = score(model, on_device(one_row))
    finally:
        model.train(was_training)
    fp32 = next(model.parameters()).dtype == torch.float32
    return torch.allclose(got, want, rtol=1e-4 if fp32 else 2e-2, atol=1e-3 if fp32 else 0.1)
