"""Find repeated blocks (v.blk.0 .. v.blk.23 with identical structure) so drawings stay readable.

A node belongs to an *instance* `prefix.i` when the first all-digit part of its dotted name is
`i` (`v.blk.3.attn_q` -> prefix `v.blk`, index 3, local name `attn_q`). Two instances have the
same structure when their nodes match one to one in order: local name, op, shape, dtype, attrs
and wiring (an input inside the instance is named by its local name, one outside by its shape).
Consecutive indices with the same structure form a `Repeat`, drawn once as
"v.blk.[0-23] ×24".
"""
from __future__ import annotations

from dataclasses import dataclass


@dataclass
class Repeat:
    prefix: str  # "v.blk"
    indices: list[int]  # consecutive: [0, 1, ..., 23]
    members: dict[int, list]  # index -> nodes of that instance, topological order

    @property
    def first(self) -> int:
        return self.indices[0]

    @property
    def label(self) -> str:
        return f"{self.prefix}.[{self.indices[0]}-{self.indices[-1]}] ×{len(self.indices)}"

    @property
    def name(self) -> str:
        """'v.blk.[0-23]': the prefix that replaces `v.blk.i` in collapsed names."""
        return f"{self.prefix}.[{self.indices[0]}-{self.indices[-1]}]"


def split_name(name: str) -> tuple[str, int, str] | None:
    """'v.blk.3.attn_q' -> ('v.blk', 3, 'attn_q'); None when no dotted part (after the first) is a number."""
    parts = name.split(".")
    for k in range(1, len(parts)):
        if parts[k].isdigit():
            return ".".join(parts[:k]), int(parts[k]), ".".join(parts[k + 1:])
    return None


def find_repeats(nodes, min_count: int = 2) -> list[Repeat]:
    """Runs of at least `min_count` consecutive, structurally identical instances among `nodes`."""
    instances: dict[str, dict[int, list]] = {}
    for n in nodes:
        s = split_name(n.name)
        if s is not None:
            instances.setdefault(s[0], {}).setdefault(s[1], []).append(n)
    out = []
    for prefix, by_index in instances.items():
        sigs = {i: _signature(prefix, i, members) for i, members in by_index.items()}
        run: list[int] = []
        for i in sorted(by_index):
            if run and i == run[-1] + 1 and sigs[i] == sigs[run[-1]]:
                run.append(i)
                continue
            if len(run) >= min_count:
                out.append(Repeat(prefix, run, {j: by_index[j] for j in run}))
            run = [i]
        if len(run) >= min_count:
            out.append(Repeat(prefix, run, {j: by_index[j] for j in run}))
    return out


def collapse_map(repeats: list[Repeat]) -> tuple[dict[int, object], dict[int, Repeat]]:
    """(id(node) -> the node that stands for it, id(drawn node) -> its Repeat).

    Nodes of the first instance of a run stand for themselves; those of later instances map to
    the first instance's node with the same local name.
    """
    rep_of: dict[int, object] = {}
    owner: dict[int, Repeat] = {}
    for r in repeats:
        first = r.members[r.first]
        for n in first:
            owner[id(n)] = r
        for i in r.indices[1:]:
            for n, m in zip(r.members[i], first):
                rep_of[id(n)] = m
    return rep_of, owner


def local_name(name: str) -> str:
    s = split_name(name)
    return s[2] if s else name


def _signature(prefix: str, index: int, members) -> tuple:
    inside = {id(n) for n in members}
    sig = []
    for n in members:
        ins = tuple(("in", local_name(i.name)) if id(i) in inside else ("ext", i.shape) for i in n.inputs)
        sig.append((local_name(n.name), n.op, n.shape, n.dtype.name, repr(sorted(n.attrs.items())), ins))
    return tuple(sig)
