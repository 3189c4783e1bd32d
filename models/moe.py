"""The mixture-of-experts block of :class:`models.transformer.Transformer` (Mixtral, Qwen2-MoE,
Qwen3-MoE): its weights (packed at load) and its graph. A mixin, like ``models.layers.Layers``:
it reads the model's ``config.moe`` (:class:`tinygraph.io.moe.MoEConfig`), ``W``, ``WT``, ``dtype``.

**Two forms.** The router is one ``moe_route`` op (softmax, top-k, renormalised with
``norm_topk``): routing weights ``[T, E]``, 0 for the experts a token was not sent to.

- *Grouped* (float experts, ``T * top_k <= E`` or ``T <= 8``: decode and small batches):
  ``moe_gate_up`` and ``moe_down`` compute only each token's chosen experts, found from the
  routing weights at run time (on CUDA: in device memory, so a captured decode graph reads only
  the chosen experts' rows on every replay).
- *Dense* (longer prefill chunks, where most experts see some token; GGUF's block-quantized
  experts): *every* expert on *every* token, each weighted by its routing weight (exactly 0 for
  the unchosen, so the result is exact) with the tensor-core GEMM over all experts at once. One
  caveat of computing unchosen experts: an expert whose activation overflows (float16 only, in
  practice) gives ``0 * inf = NaN`` where HF, which skips it, gives a number.

``TINYGRAPH_MOE=dense`` turns the grouped form off (for A/B measurements).

Packed weights (per MoE layer ``i``, ``P = layers.{i}.moe``):

- ``P.gate_up.weight`` [2 E I, hidden]: every expert's gate rows (expert-major), then every up
  row, so one matmul gives ``[T, 2 E I]`` and ``silu(gate half) * up half`` is the SwiGLU the
  fusion pass folds into one ``linear`` (as a dense gated MLP's).
- ``P.down.{g}.weight`` [hidden, n I]: the down matrices of experts ``g .. g+n-1`` side by side,
  so the weighted activations (expert ``e``'s block of ``[T, E I]`` scaled by its routing
  weight) go through one matmul per group, summed: ``sum_e down_e(w_e * h_e) = sum_e w_e *
  down_e(h_e)``, HF's sum. Float experts (grouped form on): one group, ``P.down.0.weight`` [hidden, E I], which
  ``moe_down`` reads per expert (the dense form only runs it for more than 8 rows, on the
  GEMM). Otherwise groups keep ``n I <= MAX_DOWN_K`` (at least
  one expert each): the CUDA decode ``linear`` stages a whole row of its input in shared memory
  (4 bytes per element of K, at most ~227 KB), so one matrix over all experts (Mixtral 8x7B: K =
  114688) would not launch; 16384 is about a dense model's largest down projection.
- ``P.router.weight`` [E, hidden] stays in the model dtype under ``quantize=`` (routing decisions
  are sensitive to it; llama.cpp also leaves ``ffn_gate_inp`` unquantized).
- Qwen2-MoE: ``P.shared.gate_up.weight`` [2 Is, hidden], ``P.shared.down.weight`` and
  ``P.shared_gate_pair.weight`` [2, hidden]: ``shared_expert_gate`` with a zero row below it,
  so ``softmax(x @ pair.T)[:, 0] = sigmoid(x @ gate.T)`` (there is no sigmoid op).
"""
from __future__ import annotations

import os
from typing import Callable

import numpy as np

import tinygraph as tg
from tinygraph.backends.cuda.limits import DECODE_ROWS  # a constants module: imports no CUDA
from tinygraph.io import Checkpoint

#: most columns (K) of one packed down matrix of block-quantized experts (see the module docstring)
MAX_DOWN_K = 16384
#: whether float experts may take the grouped form (``TINYGRAPH_MOE=dense``: never); read at load
GROUPED = os.environ.get("TINYGRAPH_MOE", "grouped").lower() != "dense"
#: the activations the grouped form applies (spec activation -> moe_gate_up's act)
_GROUPED_ACTS = {"silu": "silu", "gelu_tanh": "gelu"}


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
        first = f"layers.{moe.sparse.index(True)}.moe.experts.0.down.weight"
        quantized = self._quantize is not None or (not self._dequantize and ckpt.quant_type(first) is not None)
        # experts per down matrix: all of them for the grouped form (moe_down reads them per expert)
        self._moe_grouped = GROUPED and not quantized  # fixed at load: it decides the packing below
        self._moe_group = E if self._moe_grouped else max(1, MAX_DOWN_K // moe.expert_size)
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
        return used

    # -- graph ---------------------------------------------------------------------------------
    def _moe(self, x: tg.Tensor, i: int) -> tg.Tensor:
        """Layer ``i``'s MoE block on the normed hidden states ``x`` [T, hidden] -> [T, hidden]:
        the router, then the grouped or the dense form (see the module docstring)."""
        moe = self.config.moe
        P = f"layers.{i}.moe"
        T = x.shape[0]
        E, I = moe.num_experts, moe.expert_size
        logits = tg.matmul(x, self.WT[f"{P}.router.weight"], name=f"{P}.router")        # [T, E]
        w = tg.moe_route(logits, moe.top_k, moe.norm_topk, name=f"{P}.weights")       # [T, E]
        act = _GROUPED_ACTS.get(self.spec.activation)
        gu, down = self.W[f"{P}.gate_up.weight"], self.W[f"{P}.down.0.weight"]
        # grouped where it reads fewer expert rows than the dense form, and always for decode-like
        # rows: the dense form's one [hidden, E I] down matrix (grouped packing) would go to the
        # CUDA decode GEMV, which stages a whole input row of E I values in shared memory
        few = T * moe.top_k <= E or T <= DECODE_ROWS
        if self._moe_grouped and act is not None and few and gu.dtype.is_float and down.dtype.is_float:
            h = tg.moe_gate_up(x, gu, w, moe.top_k, act, name=f"{P}.experts")           # [T, top_k, I]
            y = tg.moe_down(h, down, w, name=f"{P}.down")                               # [T, hidden]
        else:
            y = self._moe_dense(x, w, P)
        if moe.shared_size is not None:
            y = tg.add(y, self._shared_expert(x, P), name=f"{P}.with_shared")
        return y

    def _moe_dense(self, x: tg.Tensor, w: tg.Tensor, P: str) -> tg.Tensor:
        """Every expert on every token of ``x`` [T, hidden], weighted by the routing weights
        ``w`` [T, E] -> [T, hidden]."""
        moe = self.config.moe
        T, E, I = x.shape[0], moe.num_experts, moe.expert_size
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
        return y

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
