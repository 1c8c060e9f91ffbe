"""A character-level language model trained through the Runner API: the worked example.

The supervised runner (:mod:`expflow.runner.supervised`) trains on ``(input, target)``
batches. A language model does not fit that mould: its batches are dicts of padded
variable-length sequences, its loss is masked, its validation metrics are per *token* (not
per sample), and what you want to look at after an epoch is a generated sample. This module
writes that as a runner, and is meant to be read as the template for your own::

    python -m expflow.train +freq=charlm                  # conf/freq/charlm.yaml
    python -m expflow.train +freq=charlm runner.model.hidden=128 trainer.max_epochs=10

What it trains on: the dataset descriptions that ship inside scikit-learn
(``sklearn/datasets/descr/*.rst``, read with :mod:`importlib.resources`: nothing is
downloaded, and the text is that of the installed scikit-learn), cut into windows of whole
lines (a window never crosses a paragraph), so the sequences differ in length.

**The config.** ``conf/runner/charlm.yaml`` selects :class:`CharLMRunner`; its keys are
the runner's parameters, including the ``model`` and ``text`` nodes, which the runner
instantiates itself in ``build`` (``_recursive_: false``): the model needs the vocabulary
size, which comes from the data (and an option in ``conf/model/`` would be one the
supervised runner can be asked to train as well). The preset ``conf/freq/charlm.yaml`` selects the runner,
drops the supervised runner's top-level ``model`` and ``dataset`` (this runner builds its
own, so nothing else mistakes them for its data), and sets the learning rate, weight decay,
epochs and ``lifecycle.hold_best: val/loss`` (min). The schemas are ``CharLMRunnerConfig``,
``CharGRUConfig`` and ``CharTextConfig`` in :mod:`expflow.config.schema`: a mistyped key
fails at compose time.

**The runner**, method by method (the loop in :mod:`expflow.loop` calls them):

``build(ctx)``
    once per rank, before a checkpoint is loaded. Builds the text, the model on the run's
    device (``ctx.wrap``: DDP-wrapped when distributed), AdamW over two parameter groups
    (embeddings, biases and norms without weight decay; the other weights with
    ``optim.weight_decay``), the optional ``optim.scheduler``, and two loaders:
    ``ctx.loader(..., shuffle=True)`` for training (this rank's shard, reshuffled each
    epoch from the run's seed: a continued run sees the same order) and ``shuffle=False``
    for validation (each sample on exactly one rank), both with :func:`pad_collate`.
``train_data(epoch)``
    the epoch's batches (and a reset of the epoch's loss sums).
``train_step(batch, state)``
    ``ctx.to_device(batch)`` (a dict: every tensor moves), forward, the masked per-token
    loss, backward, ``trainer.grad_clip`` if set, optimizer step; returns ``train/loss``
    as a 0-d tensor and ``train/lr`` (the loop reads a tensor only every
    ``trainer.log_every_n_steps`` steps, so a step never waits for the device).
``end_epoch(state)``
    ``train/epoch_loss``: token-weighted over the epoch, summed over the ranks with
    ``ctx.all_reduce(..., op="sum")``.
``validate(state)``
    ``val/loss`` (nats per token), ``val/ppl`` and ``val/acc`` (next-character accuracy):
    loss, correct predictions and tokens are summed in float64 on each rank and then over
    the ranks, so the metrics are exact under DDP whatever the shard sizes. It runs the
    unwrapped module: ranks may see different numbers of validation batches, and a DDP
    forward is a collective operation.
``visualize(state)``
    called on every rank after each validation; rank 0 writes a greedy (deterministic: no random numbers drawn) continuation of
    ``prompt`` to ``outputs/samples/epochNNN.txt`` in the package (``ctx.output_dir``).
``state_dict`` / ``load_state_dict``
    the defaults: every module, optimizer and scheduler attribute by name, so the model is
    saved under ``"model"`` (what ``expflow.loop.model_state`` reads) and AdamW under
    ``"optimizer"``. The loop adds the step, the epoch, the lifecycle and every RNG state.

What the runner does *not* do: choose when to validate, save or stop (the lifecycle),
write checkpoints or records, seed anything, or move RNG states; ``expflow continue`` and
``expflow rerun`` are bit-identical because the loop owns all of that.

The shipped analyses: ``learning_curves`` reads the records and applies; ``accuracy`` and
``compare_checkpoints`` need a top-level ``model`` and ``dataset`` of ``(input, target)``
pairs, so they report that they do not apply (write an analysis script of your own for
this runner: ``analysis/<name>.py`` with ``analyze(ctx)``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from types import ModuleType
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F
from torch.utils.data import Dataset

from expflow.lifecycle import TrainState
from expflow.runner import RunContext, Runner

IGNORE = -100  # the label of a padded position (F.cross_entropy's ignore_index)


# -- the vocabulary and the text -------------------------------------------------------
class CharVocab:
    """A fixed character vocabulary: padding, unknown, newline and printable ASCII (98 ids).

    Fixed rather than collected from the text, so a model's shape depends on nothing but
    its config (an analysis can build it without reading the data)."""

    PAD = 0
    UNK = 1

    def __init__(self) -> None:
        self.chars = ["<pad>", "<unk>", "\n", *(chr(c) for c in range(32, 127))]
        self.index = {c: i for i, c in enumerate(self.chars) if i > self.UNK}

    @property
    def size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> list[int]:
        return [self.index.get(c, self.UNK) for c in text]

    def decode(self, ids: Sequence[int]) -> str:
        return "".join("?" if i == self.UNK else "" if i == self.PAD else self.chars[i] for i in ids)


VOCAB_SIZE = CharVocab().size


def _sklearn() -> ModuleType:
    """scikit-learn's package as an anchor for :mod:`importlib.resources`: the imported module,
    else one made from its spec and not executed (importing scikit-learn takes over a second,
    and only its files are read here)."""
    import importlib.util
    import sys

    if "sklearn" in sys.modules:
        return sys.modules["sklearn"]
    spec = importlib.util.find_spec("sklearn")
    if spec is None:
        raise ModuleNotFoundError("the charlm example reads scikit-learn's dataset descriptions: install scikit-learn")
    return importlib.util.module_from_spec(spec)


def descriptions(files: Sequence[str] | None = None) -> str:
    """The text of scikit-learn's bundled dataset descriptions (``sklearn/datasets/descr``):
    the named ``.rst`` files (default: all of them, by name), joined by blank lines."""
    from importlib.resources import files as package_files

    folder = package_files(_sklearn()) / "datasets" / "descr"
    available = sorted(p.name for p in folder.iterdir() if p.name.endswith(".rst"))
    names = available if files is None else [f if f.endswith(".rst") else f"{f}.rst" for f in files]
    unknown = [n for n in names if n not in available]
    if unknown:
        raise ValueError(f"text.files: no description {', '.join(unknown)} in scikit-learn; "
                         f"valid: {', '.join(n.removesuffix('.rst') for n in available)}")
    return "\n\n".join((folder / n).read_text(encoding="utf-8").strip("\n") for n in names)


def line_windows(text: str, max_len: int, min_len: int = 1) -> list[str]:
    """``text`` cut into windows of whole lines (each keeps its newline), at most
    ``max_len`` characters, never across a paragraph (a blank line ends the window); a
    longer line is cut into ``max_len`` pieces. Windows under ``min_len`` are dropped."""
    windows: list[str] = []
    current = ""

    def flush() -> None:
        nonlocal current
        if len(current) >= max(min_len, 2):  # at least one (input, next character) pair
            windows.append(current)
        current = ""

    for line in text.split("\n"):
        if not line.strip():
            flush()
            continue
        piece = line + "\n"
        if len(current) + len(piece) > max_len:
            flush()
        while len(piece) > max_len:
            current = piece[:max_len]
            flush()
            piece = piece[max_len:]
        current += piece
    flush()
    return windows


class Windows(Dataset):
    """Encoded windows: item ``i`` is a 1-d LongTensor of character ids (lengths differ)."""

    def __init__(self, windows: Sequence[str], vocab: CharVocab):
        self.windows = list(windows)
        self.ids = [torch.tensor(vocab.encode(w), dtype=torch.long) for w in self.windows]

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.ids[i]


class CharText:
    """The text, its vocabulary, and train/val windows (split at random, by window).

    ``max_chars``: the text is cut to at most this many characters, at a paragraph
    boundary. Not a :class:`expflow.data.DataModule`: its samples are sequences for this
    runner's collate, not ``(input, target)`` pairs."""

    def __init__(self, files: Sequence[str] | None = None, max_chars: int = 30_000, max_len: int = 96,
                 min_len: int = 16, val_fraction: float = 0.1, split_seed: int = 0):
        if not 0.0 < val_fraction < 1.0:
            raise ValueError(f"text.val_fraction must be in (0, 1), got {val_fraction}")
        if max_len < 2:
            raise ValueError(f"text.max_len must be at least 2, got {max_len}")
        text = descriptions(list(files) if files is not None else None)
        if max_chars and len(text) > max_chars:
            cut = text.rfind("\n\n", 0, max_chars)
            text = text[:cut if cut > 0 else max_chars]
        self.text = text
        self.vocab = CharVocab()
        windows = line_windows(text, max_len, min_len)
        order = torch.randperm(len(windows), generator=torch.Generator().manual_seed(split_seed)).tolist()
        n_val = max(1, int(round(len(windows) * val_fraction)))
        if n_val >= len(windows):
            raise ValueError(f"text: {len(windows)} windows are too few to split (raise max_chars)")
        self.train = Windows([windows[i] for i in sorted(order[n_val:])], self.vocab)
        self.val = Windows([windows[i] for i in sorted(order[:n_val])], self.vocab)

    @property
    def vocab_size(self) -> int:
        return self.vocab.size


def pad_collate(batch: Sequence[torch.Tensor]) -> dict[str, torch.Tensor]:
    """Windows of ids -> a dict batch of next-character pairs, right-padded to the longest:
    ``input_ids`` (``ids[:-1]``, padded with ``CharVocab.PAD``), ``labels`` (``ids[1:]``,
    padded with -100) and ``attention_mask`` (1 on real positions, 0 on padding); [B, T]."""
    lengths = [len(ids) - 1 for ids in batch]
    width = max(lengths)
    input_ids = torch.full((len(batch), width), CharVocab.PAD, dtype=torch.long)
    labels = torch.full((len(batch), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(batch), width), dtype=torch.long)
    for row, (ids, n) in enumerate(zip(batch, lengths, strict=True)):
        input_ids[row, :n] = ids[:-1]
        labels[row, :n] = ids[1:]
        mask[row, :n] = 1
    return {"input_ids": input_ids, "attention_mask": mask, "labels": labels}


# -- the model ---------------------------------------------------------------------------
class CharGRU(nn.Module):
    """Embedding -> GRU -> LayerNorm -> linear head: logits over the vocabulary per position.

    Causal, and the batches are right-padded, so padding never changes a real position's
    output: the attention mask matters only in the loss and the metrics."""

    def __init__(self, vocab_size: int = VOCAB_SIZE, embed_dim: int = 32, hidden: int = 64, layers: int = 1,
                 dropout: float = 0.0):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=CharVocab.PAD)
        self.rnn = nn.GRU(embed_dim, hidden, num_layers=layers, batch_first=True,
                          dropout=dropout if layers > 1 else 0.0)
        self.norm = nn.LayerNorm(hidden)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden, vocab_size)

    def forward(self, input_ids: torch.Tensor, hidden: torch.Tensor | None = None) -> torch.Tensor:
        return self.step(input_ids, hidden)[0]

    def step(self, input_ids: torch.Tensor, hidden: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits [B, T, vocab] and the GRU's last hidden state (to continue from)."""
        out, hidden = self.rnn(self.embed(input_ids), hidden)
        return self.head(self.drop(self.norm(out))), hidden

    @torch.no_grad()
    def generate(self, prompt: Sequence[int], n: int) -> list[int]:
        """``n`` ids continuing ``prompt``, each the most likely next one (greedy)."""
        device = self.head.weight.device
        logits, hidden = self.step(torch.tensor([list(prompt)], dtype=torch.long, device=device))
        out: list[int] = []
        for _ in range(n):
            nxt = logits[:, -1].argmax(dim=-1, keepdim=True)
            out.append(int(nxt))
            logits, hidden = self.step(nxt, hidden)
        return out


NO_DECAY = (nn.Embedding, nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d)


def parameter_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Two AdamW groups: ``decay`` (weights of linear and recurrent layers, with
    ``weight_decay``) and ``no_decay`` (embeddings, biases and norms, with none)."""
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for module in model.modules():
        for name, p in module.named_parameters(recurse=False):
            if p.requires_grad:
                (no_decay if isinstance(module, NO_DECAY) or name.startswith("bias") else decay).append(p)
    return [{"name": "decay", "params": decay, "weight_decay": float(weight_decay)},
            {"name": "no_decay", "params": no_decay, "weight_decay": 0.0}]


def unwrap(model: nn.Module) -> nn.Module:
    """The module inside a DistributedDataParallel wrapper (itself otherwise)."""
    return getattr(model, "module", model)


def token_sums(logits: torch.Tensor, labels: torch.Tensor, mask: torch.Tensor
               ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(summed loss, correct next-character predictions, tokens) over the real positions."""
    losses = F.cross_entropy(logits.flatten(0, 1), labels.flatten(), ignore_index=IGNORE, reduction="none")
    keep = mask.flatten().to(losses.dtype)
    correct = ((logits.argmax(dim=-1) == labels) & mask.bool()).sum()
    return (losses * keep).sum(), correct, keep.sum()


# -- the runner ----------------------------------------------------------------------------
class CharLMRunner(Runner):
    """Next-character prediction on dict batches (see the module's doc)."""

    def __init__(self, model: Any, text: Any, batch_size: int = 16, prompt: str = "The ", sample_chars: int = 200):
        super().__init__()
        # Config nodes (the runner's config has _recursive_: false): built in build().
        self._model_cfg, self._text_cfg = model, text
        self.batch_size, self.prompt, self.sample_chars = int(batch_size), str(prompt), int(sample_chars)

    def build(self, ctx: RunContext) -> None:
        from hydra.utils import instantiate

        self.ctx = ctx
        cfg = ctx.cfg
        self.text: CharText = instantiate(self._text_cfg)
        self.model = ctx.wrap(instantiate(self._model_cfg, vocab_size=self.text.vocab_size))
        groups = parameter_groups(unwrap(self.model), float(cfg.optim.weight_decay))
        self.optimizer = torch.optim.AdamW(groups, lr=float(cfg.optim.lr))
        sched = cfg.optim.get("scheduler")
        self.scheduler = instantiate(sched)(self.optimizer) if sched else None
        self.scheduler_per_step = self.scheduler is not None and cfg.optim.scheduler_interval == "step"
        self.grad_clip = float(cfg.trainer.get("grad_clip") or 0)
        self.train_dl = ctx.loader(self.text.train, self.batch_size, shuffle=True, collate_fn=pad_collate)
        self.val_dl = ctx.loader(self.text.val, self.batch_size, shuffle=False, collate_fn=pad_collate)
        # Token-weighted epoch loss: summed on the device, read once per epoch.
        self._sums = torch.zeros(2, dtype=torch.float64, device=ctx.device)  # loss, tokens

    def train_data(self, epoch: int) -> Any:
        self._sums.zero_()
        return self.train_dl

    def train_step(self, batch: dict[str, torch.Tensor], state: TrainState) -> dict[str, Any]:
        batch = self.ctx.to_device(batch)
        self.optimizer.zero_grad(set_to_none=True)
        logits = self.model(batch["input_ids"])
        loss_sum, _, tokens = token_sums(logits, batch["labels"], batch["attention_mask"])
        loss = loss_sum / tokens.clamp(min=1)
        self.ctx.step(self.optimizer, loss, clip=self.grad_clip, parameters=self.model.parameters(),
                      scheduler=self.scheduler if self.scheduler_per_step else None)
        self._sums += torch.stack([loss_sum.detach(), tokens]).to(torch.float64)
        return {"train/loss": loss.detach(), "train/lr": self.optimizer.param_groups[0]["lr"]}

    def epoch_state(self) -> dict[str, Any]:
        return {"sums": self._sums.clone()}

    def load_epoch_state(self, state: dict[str, Any]) -> None:
        self._sums.copy_(state["sums"].to(self._sums.device))

    def end_epoch(self, state: TrainState) -> dict[str, Any]:
        if self.scheduler is not None and not self.scheduler_per_step:
            self.scheduler.step()
        loss, tokens = self.ctx.all_reduce(self._sums, op="sum").tolist()
        return {"train/epoch_loss": loss / max(tokens, 1.0)}

    def validate(self, state: TrainState) -> dict[str, Any]:
        ctx, net = self.ctx, unwrap(self.model)
        sums = torch.zeros(3, dtype=torch.float64, device=ctx.device)  # loss, correct, tokens
        with torch.no_grad():
            for batch in self.val_dl:
                batch = ctx.to_device(batch)
                parts = token_sums(net(batch["input_ids"]), batch["labels"], batch["attention_mask"])
                sums += torch.stack([p.to(torch.float64) for p in parts])
        loss, correct, tokens = ctx.all_reduce(sums, op="sum").tolist()
        tokens = max(tokens, 1.0)
        return {"val/loss": loss / tokens, "val/ppl": math.exp(min(loss / tokens, 700.0)), "val/acc": correct / tokens}

    def visualize(self, state: TrainState) -> None:
        if not self.ctx.is_main:
            return
        from expflow.atomic import atomic_write_text

        vocab = self.text.vocab
        continuation = vocab.decode(unwrap(self.model).generate(vocab.encode(self.prompt), self.sample_chars))
        path = self.ctx.output_dir("samples") / f"epoch{state.epoch:03d}.txt"
        atomic_write_text(path, self.prompt + continuation + "\n")
