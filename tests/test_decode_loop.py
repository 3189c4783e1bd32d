"""A GPT-2-style decode loop written directly with the graph API, in the Ruby GPT2KV style:
per-head K and V buffers (V stored transposed), cpy into the KV slot, concat of heads, layer norm.
Checked against a float64 NumPy full-sequence forward at every position."""
from __future__ import annotations

import math

import numpy as np

import tinygraph as tg
from conftest import rel_err

E, H, L, V, CTX = 32, 4, 2, 50, 24
D = E // H


def make_weights(rng):
    w = {"wte": rng.standard_normal((V, E)) * 0.5, "wpe": rng.standard_normal((CTX, E)) * 0.1,
         "lnf_w": 1 + 0.1 * rng.standard_normal(E), "lnf_b": 0.1 * rng.standard_normal(E)}
    for i in range(L):
        for n, s in {"ln1_w": (E,), "ln1_b": (E,), "attn_w": (E, 3 * E), "attn_b": (3 * E,), "proj_w": (E, E),
                     "proj_b": (E,), "ln2_w": (E,), "ln2_b": (E,), "fc_w": (E, 4 * E), "fc_b": (4 * E,),
                     "fc2_w": (4 * E, E), "fc2_b": (E,)}.items():
            base = 1.0 if n.endswith("_w") and n.startswith("ln") else 0.0
            w[f"{i}.{n}"] = base + rng.standard_normal(s) * (0.1 if len(s) == 1 else 1 / math.sqrt(s[0]))
    return w


def ln64(x, w, b, eps=1e-5):
    m = x.mean(-1, keepdims=True)
    return (x - m) / np.sqrt(((x - m) ** 2).mean(-1, keepdims=True) + eps) * w + b


def gelu64(x):
    return 0.5 * x * (1 + np.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x ** 3)))


def reference_logits(w, toks):
    T = len(toks)
    x = w["wte"][toks] + w["wpe"][:T]
    mask = np.tril(np.ones((T, T), bool))
    for i in range(L):
        h = ln64(x, w[f"{i}.ln1_w"], w[f"{i}.ln1_b"]) @ w[f"{i}.attn_w"] + w[f"{i}.attn_b"]
        q, k, v = (h[:, j * E:(j + 1) * E].reshape(T, H, D).transpose(1, 0, 2) for j in range(3))
        s = np.where(mask, q @ k.transpose(0, 2, 1) / math.sqrt(D), -np.inf)
        p = np.exp(s - s.max(-1, keepdims=True))
        p /= p.sum(-1, keepdims=True)
        a = (p @ v).transpose(1, 0, 2).reshape(T, E)
        x = x + a @ w[f"{i}.proj_w"] + w[f"{i}.proj_b"]
        m = gelu64(ln64(x, w[f"{i}.ln2_w"], w[f"{i}.ln2_b"]) @ w[f"{i}.fc_w"] + w[f"{i}.fc_b"])
        x = x + m @ w[f"{i}.fc2_w"] + w[f"{i}.fc2_b"]
    return ln64(x, w["lnf_w"], w["lnf_b"]) @ w["wte"].T


def test_gpt2_style_decode_loop(backend):
    rng = np.random.default_rng(7)
    w = make_weights(rng)
    sess = tg.Session(backend=backend)
    P = {k: sess.persistent(v.shape, tg.float32, name=k) for k, v in w.items()}
    Kc = [[sess.persistent((CTX, D), tg.float32, name=f"K{i}.{h}") for h in range(H)] for i in range(L)]
    Vt = [[sess.persistent((D, CTX), tg.float32, name=f"Vt{i}.{h}") for h in range(H)] for i in range(L)]
    sess.finalize()
    for k, v in w.items():
        sess.upload(P[k], v)

    toks = rng.integers(0, V, size=20)
    ref = reference_logits(w, toks)
    for pos, tok in enumerate(toks):
        g = sess.graph()
        tid = g.input((1,), tg.int32, name="token")
        pid = g.input((1,), tg.int32, name="pos")
        x = tg.add(tg.get_rows(P["wte"], tid), tg.get_rows(P["wpe"], pid))
        for i in range(L):
            h = tg.layer_norm(x, P[f"{i}.ln1_w"], P[f"{i}.ln1_b"], 1e-5)
            qkv = tg.add(tg.matmul(h, P[f"{i}.attn_w"]), P[f"{i}.attn_b"])
            heads = []
            for hh in range(H):
                q = tg.view(qkv, (1, D), (3 * E, 1), offset=hh * D)
                k = tg.view(qkv, (1, D), (3 * E, 1), offset=E + hh * D)
                v = tg.view(qkv, (1, D), (3 * E, 1), offset=2 * E + hh * D)
                tg.cpy(k, tg.view(Kc[i][hh], (1, D), (D, 1), offset=pos * D))
                tg.cpy(tg.transpose(v), tg.view(Vt[i][hh], (D, 1), (CTX, 1), offset=pos))
                keys = tg.view(Kc[i][hh], (pos + 1, D), (D, 1), offset=0)
                vals_t = tg.view(Vt[i][hh], (D, pos + 1), (CTX, 1), offset=0)
                att = tg.softmax(tg.matmul(q, tg.transpose(keys)), scale=1 / math.sqrt(D))
                heads.append(tg.matmul(att, tg.transpose(vals_t)))
            a = heads[0]
            for hh in heads[1:]:
                a = tg.concat(a, hh, axis=1)
            x = tg.add(x, tg.add(tg.matmul(a, P[f"{i}.proj_w"]), P[f"{i}.proj_b"]))
            m = tg.gelu(tg.add(tg.matmul(tg.layer_norm(x, P[f"{i}.ln2_w"], P[f"{i}.ln2_b"]), P[f"{i}.fc_w"]),
                               P[f"{i}.fc_b"]))
            x = tg.add(x, tg.add(tg.matmul(m, P[f"{i}.fc2_w"]), P[f"{i}.fc2_b"]))
        logits = tg.matmul(tg.layer_norm(x, P["lnf_w"], P["lnf_b"]), tg.transpose(P["wte"]))
        g.output(logits, tg.argmax(logits))
        out, am = sess.compute(g, {tid: [tok], pid: [pos]})
        assert rel_err(out[0], ref[pos]) < 1e-5, f"position {pos}"
        assert am[0] == np.argmax(ref[pos])
    sess.close()
