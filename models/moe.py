"""The mixture-of-experts block of :class:`models.transformer.Transformer` (Mixtral, Qwen2-MoE,
Qwen3-MoE): its weights (packed at load) and its graph. A mixin, like ``models.layers.Layers``:
it reads the model's ``config.moe`` (:class:`tinygraph.io.moe.MoEConfig`), ``W``, ``WT``, ``dtype``.

**Dense first step.** The block computes *every* expert on *every* token and weights each
expert's output by its routing weight, which is 0 for the experts a token was not routed to. The
result is exact (an unchosen expert adds ``0 * h``), at E / top_k times the expert compute and
with every expert's weights read per step. It is built only from ops that already run on every
backend (``matmul``/``linear``, ``argmax``, ``get_rows``, ``softmax``, ``add``, ``mul``,
``scale``, views), so the CUDA backend runs it without a new kernel; a grouped kernel that reads
only the chosen experts' rows is the next step. One caveat of computing unchosen experts: an
expert whose activation overflows (float16 only, in practice) gives ``0 * inf = NaN`` where HF,
which skips it, gives a number.

Packed weights (per MoE layer ``i``, ``P = layers.{i}.moe``):

- ``P.gate_up.weight`` [2 E I, hidden]: every expert's gate rows (expert-major), then every up
  row, so one matmul gives ``[T, 2 E I]`` and ``silu(gate half) * up half`` is the SwiGLU the
  fusion pass folds into one ``linear`` (as a dense gated MLP's).
- ``P.down.{g}.weight`` [hidden, n I]: the down matrices of experts ``g .. g+n-1`` side by side,
  so the weighted activations (expert ``e``'s block of ``[T, E I]`` scaled by its routing
  weight) go through one matmul per group, summed: ``sum_e down_e(w_e * h_e) = sum_e w_e *
  down_e(h_e)``, HF's sum. Groups keep ``n I <= MAX_DOWN_K`` (at least one expert each): the
  CUDA decode ``linear`` stages a whole row of its input in shared memory (4 bytes per element
  of K, at most ~227 KB), so one matrix over all experts (Mixtral 8x7B: K = 114688) would not
  launch; 16384 is about a dense model's largest down projection.
- ``P.router.weight`` [E, hidden] stays in the model dtype under ``quantize=`` (routing decisions
  are sensitive to it; llama.cpp also leaves ``ffn_gate_inp`` unquantized).
- Qwen2-MoE: ``P.shared.gate_up.weight`` [2 Is, hidden], ``P.shared.down.weight`` and
  ``P.shared_gate_pair.weight`` [2, hidden]: ``shared_expert_gate`` with a zero row below it,
  so ``softmax(x @ pair.T)[:, 0] = sigmoid(x @ gate.T)`` (there is no sigmoid op).
- ``moe.eye`` [E, E] (and ``moe.not_eye``, 1 - eye, with ``norm_topk``): one-hot rows for the
  top-k selection, shared by all layers.
"""
from __future__ import annotations

from typing import Callable

import numpy as np

import tinygraph as tg
from tinygraph.io import Checkpoint

#: how far below the others a masked router logit is pushed: far enough that softmax gives it
#: exactly 0 and argmax never picks it again, yet finite in the model dtype (no -inf, so no
#: ``-inf * 0 = NaN`` anywhere)
MASK_OFFSET = {"float16": 3.0e4, "bfloat16": 1.0e30, "float32": 1.0e30}
#: most columns (K) of one packed down matrix (see the module docstring)
MAX_DOWN_K = 16384


class MoE:
    """Weights and graph of the MoE block (a mixin of Transformer; see the module docstring)."""

    # -- weights -----------------------------------------------------------------------------
    def _declare_moe(self, ckpt: Checkpoint, decl: Callable[..., None]) -> set[str]:
        """Declare the packed MoE weights and constants (``decl(name, shape, dtype)``); remember
        how to make each at upload (``self._moe_arrays``). Returns the checkpoint names consumed."""
        self._moe_arrays: dict[str, Callable[[], np.ndarray]] = {}
        moe = self.config.moe
        if moe is None or not any(moe.sparse):
            return set()
        used: set[str] = set()

        def pack(name: str, parts: list[str], axis: int) -> None:
            shapes = [tuple(ckpt.shape(p)) for p in parts]
            shape = list(shapes[0])
            shape[axis] = sum(s[axis] for s in shapes)
            dt = self._weight_dtype(ckpt, parts[0], tuple(shape))
            # a GGUF's block-quantized experts keep their blocks (rows are whole blocks, so rows or
            # row bytes concatenate as the values do); otherwise floats, quantized at upload if asked
            raw = dt.is_quant and all(ckpt.quant_type(p) == dt for p in parts)
            get = ckpt.tensor_raw if raw else ckpt.tensor
            decl(name, tuple(shape), dt)
            self._moe_arrays[name] = lambda: np.concatenate([get(p) for p in parts], axis=axis)
            used.update(parts)

        def const(name: str, make: Callable[[], np.ndarray], shape: tuple[int, ...], parts: tuple[str, ...] = ()
                  ) -> None:
            decl(name, shape, self.dtype)  # model dtype, never quantized
            self._moe_arrays[name] = make
            used.update(parts)

        E, h = moe.num_experts, self.config.hidden_size
        self._moe_group = max(1, MAX_DOWN_K // moe.expert_size)  # experts per down matrix
        for i in (i for i, s in enumerate(moe.sparse) if s):
            P = f"layers.{i}.moe"
            ex = [f"{P}.experts.{e}" for e in range(E)]
            pack(f"{P}.gate_up.weight", [f"{x}.gate.weight" for x in ex] + [f"{x}.up.weight" for x in ex], 0)
            for g in range(0, E, self._moe_group):
                pack(f"{P}.down.{g}.weight", [f"{x}.down.weight" for x in ex[g:g + self._moe_group]], 1)
            r = f"{P}.router.weight"
            const(r, lambda r=r: ckpt.tensor(r), (E, h), (r,))
            if moe.shared_size is not None:
                pack(f"{P}.shared.gate_up.weight", [f"{P}.shared.gate.weight", f"{P}.shared.up.weight"], 0)
                sg = f"{P}.shared_gate.weight"
                const(f"{P}.shared_gate_pair.weight",
                      lambda sg=sg: np.concatenate([np.asarray(ckpt.tensor(sg), np.float32), np.zeros((1, h), np.float32)]),
                      (2, h), (sg,))
                # the shared expert's down matrix keeps its canonical name (declared as any weight)
        const("moe.eye", lambda: np.eye(E, dtype=np.float32), (E, E))
        if moe.norm_topk:
            const("moe.not_eye", lambda: 1.0 - np.eye(E, dtype=np.float32), (E, E))
        return used

    # -- graph ---------------------------------------------------------------------------------
    def _moe(self, x: tg.Tensor, i: int) -> tg.Tensor:
        """Layer ``i``'s MoE block on the normed hidden states ``x`` [T, hidden] -> [T, hidden]:
        every expert on every token, weighted by the routing weights (see the module docstring)."""
        moe = self.config.moe
        P = f"layers.{i}.moe"
        T = x.shape[0]
        E, I = moe.num_experts, moe.expert_size
        logits = tg.matmul(x, self.WT[f"{P}.router.weight"], name=f"{P}.router")        # [T, E]
        w = self._routing(logits, P)                                                    # [T, E]
        gu = tg.matmul(x, self.WT[f"{P}.gate_up.weight"], name=f"{P}.gate_up")         # [T, 2 E I]
        gate = tg.view(gu, (T, E * I), (2 * E * I, 1), 0, name=f"{P}.gate")
        up = tg.view(gu, (T, E * I), (2 * E * I, 1), E * I, name=f"{P}.up")
        h = tg.mul(self._act(gate, P), up, name=f"{P}.gated")                          # [T, E I]
        # expert e's activations times its routing weight: [T, E, I] * [T, E, 1]
        h = tg.mul(tg.reshape(h, (T, E, I)), tg.reshape(w, (T, E, 1)), name=f"{P}.weighted")
        h = tg.reshape(h, (T, E * I))
        y, n = None, self._moe_group
        for g in range(0, E, n):  # one matmul per group of experts (MAX_DOWN_K), summed
            part = h if n >= E else tg.view(h, (T, min(n, E - g) * I), (E * I, 1), g * I, name=f"{P}.weighted{g}")
            d = tg.matmul(part, self.WT[f"{P}.down.{g}.weight"], name=f"{P}.down{g}")        # [T, hidden]
            y = d if y is None else tg.add(y, d, name=f"{P}.down_to{g}")
        if moe.shared_size is not None:
            y = tg.add(y, self._shared_expert(x, P), name=f"{P}.with_shared")
        return y

    def _routing(self, logits: tg.Tensor, P: str) -> tg.Tensor:
        """Routing weights [T, E] from router logits [T, E]: the top-k experts of each token by
        k rounds of ``argmax`` (ties: the lowest index), each round's pick masked for the next by
        adding ``-MASK_OFFSET`` through its one-hot row (``get_rows`` of ``moe.eye``). With
        ``norm_topk``: a softmax over the chosen logits only (the others pushed down, exactly 0
        after exp) = HF's top-k softmax probabilities divided by their sum; without: the softmax
        over all E logits times the 0/1 mask of the chosen."""
        moe = self.config.moe
        off = MASK_OFFSET[self.dtype.name] if self.dtype.name in MASK_OFFSET else 1.0e30
        eye = self.W["moe.eye"]
        r, idxs, onehots = logits, [], []
        for j in range(moe.top_k):
            idx = tg.argmax(r, name=f"{P}.top{j}")                                     # [T] int32
            idxs.append(idx)
            if j + 1 < moe.top_k or not moe.norm_topk:  # (the last pick's row: only for the mask)
                onehots.append(tg.get_rows(eye, idx, name=f"{P}.onehot{j}"))            # [T, E]
            if j + 1 < moe.top_k:
                r = tg.add(r, tg.scale(onehots[-1], -off, name=f"{P}.offset{j}"), name=f"{P}.masked{j}")
        if moe.norm_topk:
            rest = None  # 1 at the experts not chosen, 0 at the chosen
            for j, idx in enumerate(idxs):
                row = tg.get_rows(self.W["moe.not_eye"], idx, name=f"{P}.rest{j}")
                rest = row if rest is None else tg.mul(rest, row, name=f"{P}.rest_to{j}")
            return tg.softmax(tg.add(logits, tg.scale(rest, -off, name=f"{P}.rest_offset"), name=f"{P}.chosen"),
                              name=f"{P}.weights")
        mask = onehots[0]
        for j in range(1, moe.top_k):
            mask = tg.add(mask, onehots[j], name=f"{P}.mask{j}")
        return tg.mul(tg.softmax(logits, name=f"{P}.probs"), mask, name=f"{P}.weights")

    def _shared_expert(self, x: tg.Tensor, P: str) -> tg.Tensor:
        """Qwen2-MoE's shared expert on ``x`` [T, hidden], scaled by ``sigmoid(shared_expert_gate(x))``
        (a softmax over ``[x @ gate.T, 0]``; the scale applied before the down projection, which
        is linear) -> [T, hidden]."""
        T, Is = x.shape[0], self.config.moe.shared_size
        gu = tg.matmul(x, self.WT[f"{P}.shared.gate_up.weight"], name=f"{P}.shared.gate_up")   # [T, 2 Is]
        gate = tg.view(gu, (T, Is), (2 * Is, 1), 0, name=f"{P}.shared.gate")
        up = tg.view(gu, (T, Is), (2 * Is, 1), Is, name=f"{P}.shared.up")
        h = tg.mul(self._act(gate, f"{P}.shared"), up, name=f"{P}.shared.gated")          # [T, Is]
        g = tg.softmax(tg.matmul(x, self.WT[f"{P}.shared_gate_pair.weight"], name=f"{P}.shared_gate"),
                       name=f"{P}.shared_gate_probs")                                     # [T, 2]
        s = tg.view(g, (T, 1), (2, 1), 0, name=f"{P}.shared_gate_sigmoid")                # [T, 1]
        h = tg.mul(h, s, name=f"{P}.shared.scaled")
        return tg.matmul(h, self.WT[f"{P}.shared.down.weight"], name=f"{P}.shared.down")
