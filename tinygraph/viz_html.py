"""The interactive HTML page of :mod:`tinygraph.viz`: plain CSS and JavaScript, all inline, no network.

Layout: one row per compute node, in schedule order, top to bottom (the "spine"); views of
intermediates get a thin row just before their first reader. Memory from outside the arena
(weights, KV-cache buffers, inputs, and views of them) is drawn to the left of the node that
first reads it; a later reader shows a small reference chip instead of a long edge. Data edges
between rows are arcs on the right; hazard-ordering edges are dashed red arcs. On the far right,
the arena: each intermediate's block (offset, size) drawn over its lifetime. Rows of one layer
(``layers.{i}``) form a band that collapses into one box.
"""
from __future__ import annotations

import html
import re

CSS = r"""
*{box-sizing:border-box}
[hidden]{display:none!important}
html,body{margin:0;height:100%}
body{font:13px/1.35 system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",Helvetica,Arial,sans-serif;color:#1d2430;
 background:#fff;display:flex;flex-direction:column;overflow:hidden}
header{flex:none;background:#f6f8fb;border-bottom:1px solid #d8dfe8;padding:6px 12px 7px;display:flex;flex-direction:column;gap:5px}
.row1,.row2{display:flex;align-items:center;gap:8px;flex-wrap:wrap}
h1{font-size:15px;margin:0 10px 0 0;font-weight:650;white-space:nowrap}
h1 small{font-weight:400;color:#5b6778}
.chip{display:inline-block;padding:1px 8px;border:1px solid #d8dfe8;border-radius:10px;background:#fff;white-space:nowrap;font-size:12px}
.chip b{font-weight:650}
.chip.key{border-color:#9fb4d3;background:#eef4fc}
.chip i{font-style:normal;color:#6b7687}
button,select,input{font:inherit;font-size:12px}
button,select{border:1px solid #c4cdd9;background:#fff;border-radius:5px;padding:2px 9px;cursor:pointer;color:#1d2430}
button:hover,select:hover{border-color:#1565c0}
button.on{background:#1565c0;color:#fff;border-color:#1565c0}
.seg{display:inline-flex}.seg button{border-radius:0}.seg button:first-child{border-radius:5px 0 0 5px}
.seg button:last-child{border-radius:0 5px 5px 0;margin-left:-1px}
.sp{flex:1}
#searchbox{position:relative}
#search{width:270px;border:1px solid #c4cdd9;border-radius:5px;padding:3px 8px}
#search:focus{outline:2px solid #9fc2ef;border-color:#1565c0}
#hits{color:#5b6778;font-size:12px;min-width:60px;display:inline-block}
#results{position:absolute;top:27px;left:0;width:420px;max-height:360px;overflow:auto;background:#fff;border:1px solid #c4cdd9;
 border-radius:6px;box-shadow:0 6px 18px rgba(20,30,50,.15);z-index:20;display:none}
#results div{padding:3px 9px;cursor:pointer;white-space:nowrap;overflow:hidden;text-overflow:ellipsis}
#results div:hover,#results div.cur{background:#eaf2fd}
#results span{color:#6b7687;font-size:11px;margin-left:6px}
main{flex:1;position:relative;overflow:hidden;background:#fff}
#svg{width:100%;height:100%;display:block;cursor:grab;user-select:none;-webkit-user-select:none}
#svg.drag{cursor:grabbing}
#details{position:absolute;top:0;right:0;bottom:0;width:390px;background:#fff;border-left:1px solid #d8dfe8;
 box-shadow:-6px 0 16px rgba(20,30,50,.08);overflow:auto;padding:10px 14px 16px;z-index:10}
#details[hidden]{display:none}
#details h2{font-size:14px;margin:2px 28px 2px 0;word-break:break-all}
#details .sub{color:#5b6778;margin-bottom:8px}
#details .x{position:absolute;top:8px;right:10px;border:none;font-size:18px;line-height:18px;padding:0 4px;color:#5b6778;background:none}
#details table{border-collapse:collapse;width:100%}
#details td{padding:2px 4px;vertical-align:top;border-bottom:1px solid #eef1f5;font-size:12px}
#details td:first-child{color:#5b6778;white-space:nowrap;width:92px}
#details td code,#details li code{font:11.5px ui-monospace,"DejaVu Sans Mono",Menlo,Consolas,monospace;word-break:break-all}
#details h3{font-size:12px;margin:12px 0 4px;color:#3b4656;text-transform:uppercase;letter-spacing:.04em}
#details ul{margin:0;padding-left:16px}
#details li{margin:1px 0;font-size:12px}
#details a{color:#1565c0;cursor:pointer;text-decoration:none}
#details a:hover{text-decoration:underline}
#details .swatch{display:inline-block;width:10px;height:10px;border-radius:2px;border:1px solid #56657a;margin-right:5px;vertical-align:-1px}
#details pre{margin:0;font:11px ui-monospace,"DejaVu Sans Mono",Menlo,monospace;white-space:pre-wrap;word-break:break-all}
#legend{position:absolute;left:10px;bottom:10px;background:rgba(255,255,255,.95);border:1px solid #d8dfe8;border-radius:7px;
 padding:5px 10px;font-size:11.5px;box-shadow:0 2px 8px rgba(20,30,50,.08);max-width:820px;z-index:5}
#legend details:not([open]){display:inline}
#legend .it{display:inline-flex;align-items:center;margin:1px 10px 1px 0;white-space:nowrap}
#legend .sw{display:inline-block;width:12px;height:12px;border:1px solid #56657a;border-radius:3px;margin-right:4px}
#legend .hint{color:#6b7687;margin-top:3px}
#legend summary{cursor:pointer;font-weight:600}
#svg text{font-size:11px;fill:#1d2430;pointer-events:none}
#svg .t1{font-weight:600;font-size:12px}
#svg .t2{font-size:10.5px;fill:#3b4656}
#svg .st{font-size:10px;fill:#7b8696}
#svg .badge{font-size:9px;font-weight:700;fill:#fff}
#svg .n{cursor:pointer}
#svg .n rect.b{stroke:#56657a;stroke-width:1}
#svg .n.view rect.b{stroke-dasharray:4 3;stroke:#7a8799}
#svg .n.input rect.b{stroke:#1d2430;stroke-width:1.7}
#svg .n.out rect.b{stroke:#111;stroke-width:2.6}
#svg .n.ref rect.b{stroke-dasharray:3 2;fill:#fbfbfd;stroke:#8d99ab;stroke-width:1}
#svg .n.ref text{font-style:italic;fill:#4b5668}
#svg .n:hover rect.b{stroke:#1565c0;stroke-width:2}
#svg .n.match rect.b{stroke:#f08c00;stroke-width:3}
#svg .n.sel rect.b{stroke:#1565c0;stroke-width:3.2}
#svg .e{fill:none;stroke:#8d99ab;stroke-width:1.2}
#svg .e.hazard{stroke:#d62828;stroke-dasharray:5 4;stroke-width:1.5}
#svg.has-sel .e{opacity:.28}
#svg.has-sel .e.hl{opacity:1;stroke:#1565c0;stroke-width:2.4}
#svg.has-sel .e.hazard.hl{stroke:#c00000}
#svg .band{fill:#f4f7fb;stroke:#e1e7ef}
#svg .band.odd{fill:#f9fbfd}
#svg .hdr{cursor:pointer}
#svg .hdr text{font-size:12px;font-weight:650;fill:#2c3a52}
#svg .hdr text.s{font-weight:400;fill:#5b6778;font-size:11px}
#svg .hdr:hover text{fill:#1565c0}
#svg .box rect{fill:#e6edf7;stroke:#8ea2bf;stroke-width:1.2}
#svg .box{cursor:pointer}
#svg .box:hover rect{stroke:#1565c0;stroke-width:2}
#svg .box.match rect{stroke:#f08c00;stroke-width:3}
#svg .box text.t1{font-size:13px}
#svg .colh{font-size:11px;fill:#6b7687;font-weight:600;letter-spacing:.03em}
#svg .blk{stroke:#fff;stroke-width:.5;opacity:.85;cursor:pointer}
#svg .blk:hover,#svg .blk.sel{stroke:#1565c0;stroke-width:2;opacity:1}
#svg .grid{stroke:#e3e8ef;stroke-width:1}
#svg.far .t2,#svg.far .st,#svg.far .badge{display:none}
#svg.vfar .n text{display:none}
#svg.vfar .hdr text.s,#svg.vfar .box text.t2{display:none}
#svg.vfar .hdr text,#svg.vfar .box text.t1{font-size:26px}
"""

JS = r"""
(function () {
'use strict';
const DATA = JSON.parse(document.getElementById('graph-data').textContent);
const $ = (s) => document.querySelector(s);
const svg = $('#svg'), vp = $('#vp'), details = $('#details');
const C0 = Object.values(DATA.graphs)[0].colors;
const FAM = C0.family, MEMC = C0.memory, OTHER = C0.other || '#e8e8e8';
// layout constants (px)
const M = 18, FW = 232, FG = 30, FGAP = 26, SW = 320, ARCW = 170, AW = 300, TOP = 40;
const CH = 36, CROW = 48, VH = 30, VROW = 38, SUBROW = 38, HROW = 30, BOXH = 40, BOXROW = 52, FH = 30, REFH = 22;

const S = {g: DATA.graphs.after ? 'after' : Object.keys(DATA.graphs)[0], L: {}, collapsed: {}, sel: null,
           matches: [], mi: -1, T: {x: 0, y: 0, k: 1}};

function esc(s) { return String(s).replace(/[&<>"']/g, c => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c])); }
function bytes(n) {
  if (n == null) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB']; let i = 0; n = +n;
  while (Math.abs(n) >= 1024 && i < 3) { n /= 1024; i++; }
  return i ? n.toFixed(1) + ' ' + u[i] : n + ' B';
}
function shp(a) { return '[' + a.join(',') + ']'; }
function tup(a) { return '(' + a.join(', ') + (a.length === 1 ? ',' : '') + ')'; }
function fit(s, px, fs, mid) {  // truncate to about px pixels of fs-px text
  const n = Math.max(4, Math.floor(px / (fs * 0.6)));
  s = String(s);
  if (s.length <= n) return s;
  if (mid) { const h = Math.floor((n - 1) / 2); return s.slice(0, h) + '…' + s.slice(s.length - (n - 1 - h)); }
  return s.slice(0, n - 1) + '…';
}
function extent(n) {
  if (n.shape.some(d => d === 0)) return 0;
  return 1 + n.shape.reduce((a, d, i) => a + (d - 1) * n.strides[i], 0);
}
function push(m, k, v) { let a = m.get(k); if (!a) m.set(k, a = []); a.push(v); }
function fill(n) {
  if (n.kind === 'compute') return FAM[n.family] || OTHER;
  if (n.kind === 'persistent') return MEMC[n.memory] || '#d4d4d4';
  return '#ffffff';
}
const MEMLABEL = {weight: 'weight', kv_cache: 'KV cache', input: 'input', arena: 'arena'};

// ---------------------------------------------------------------------------------------------
// structure: spine order, feeder chains, groups (once per graph)
// ---------------------------------------------------------------------------------------------
function prepare(G) {
  const byId = new Map(G.nodes.map(n => [n.id, n]));
  const cons = new Map(), hzOut = new Map(), hzIn = new Map();
  for (const e of G.edges) {
    if (e.kind === 'hazard') { push(hzOut, e.src, e); push(hzIn, e.dst, e); } else push(cons, e.src, e.dst);
  }
  const feeder = (n) => n.kind !== 'compute' && n.memory !== 'arena';
  const fsMemo = new Map();
  function firstStep(n) {
    if (n.kind === 'compute') return n.step;
    if (fsMemo.has(n.id)) return fsMemo.get(n.id);
    fsMemo.set(n.id, Infinity);
    let best = Infinity;
    for (const c of cons.get(n.id) || []) { const cn = byId.get(c); if (cn && !feeder(cn)) best = Math.min(best, firstStep(cn)); }
    fsMemo.set(n.id, best);
    return best;
  }
  function srcStep(n) {
    let cur = n, guard = 0;
    while (cur && cur.kind !== 'compute' && guard++ < 10000) cur = byId.get(cur.srcs[0]);
    return cur && cur.kind === 'compute' ? cur.step : -1;
  }
  const key = (n) => {
    if (n.kind === 'compute') return [n.step, 1, n.id];
    const f = firstStep(n);
    return f === Infinity ? [srcStep(n), 2, n.id] : [f, 0, n.id];
  };
  const cmp = (a, b) => { for (let i = 0; i < 3; i++) if (a[i] !== b[i]) return a[i] - b[i]; return 0; };
  const spine = G.nodes.filter(n => !feeder(n)).map(n => [key(n), n]).sort((a, b) => cmp(a[0], b[0])).map(x => x[1]);
  const placed = new Set(), rows = [], rowOf = new Map();
  let maxDepth = 0;
  function chainsFor(n, own) {
    const chains = [];
    const seen = new Set();
    for (const sid of (own ? [] : n.srcs)) {
      if (seen.has(sid)) continue; seen.add(sid);
      const s = byId.get(sid);
      if (!s || !feeder(s)) continue;
      chains.push(walk(s));
    }
    return chains;
  }
  function walk(s) {
    const chain = []; let cur = s;
    while (cur) {
      if (placed.has(cur.id)) { chain.push({ref: cur.id}); break; }
      placed.add(cur.id); chain.push({id: cur.id});
      if (cur.kind !== 'view') break;
      const nx = byId.get(cur.srcs[0]);
      if (!nx || !feeder(nx)) break;
      cur = nx;
    }
    maxDepth = Math.max(maxDepth, chain.length);
    return chain;
  }
  for (const n of spine) {
    placed.add(n.id);
    rows.push({spine: n.id, chains: chainsFor(n), group: n.group});
  }
  // feeders nobody in the spine reads (e.g. an output that is a view of a weight): rows of their own
  for (const n of G.nodes) {
    if (placed.has(n.id)) continue;
    placed.add(n.id);
    const chains = [];
    if (n.kind === 'view') { const s = byId.get(n.srcs[0]); if (s && feeder(s)) chains.push(walk(s)); }
    rows.push({spine: n.id, chains, group: n.group});
  }
  rows.forEach((r, i) => { rowOf.set(r.spine, i); for (const c of r.chains) for (const el of c) if (el.id != null) rowOf.set(el.id, i); });
  // groups in row order, with their stats
  const groups = new Map();
  for (const r of rows) if (r.group != null && !groups.has(r.group)) groups.set(r.group, {name: r.group, nodes: 0, compute: 0, weights: 0, time: 0, ids: []});
  for (const n of G.nodes) {
    const r = rows[rowOf.get(n.id)], g = r && groups.get(r.group);
    if (!g) continue;
    g.nodes++; g.ids.push(n.id);
    if (n.kind === 'compute') g.compute++;
    if (n.kind === 'persistent' && n.memory === 'weight') g.weights += n.nbytes;
    if (n.time_us != null) g.time += +n.time_us;
  }
  const stepNode = new Map();
  for (const n of G.nodes) if (n.step != null) stepNode.set(n.step, n.id);
  const order = new Map(); let k = 0;
  for (const r of rows) { order.set(r.spine, k++); for (const c of r.chains) for (const el of c) if (el.id != null) order.set(el.id, k++); }
  return {G, byId, cons, hzOut, hzIn, rows, rowOf, groups, maxDepth, stepNode, order, feeder};
}

// ---------------------------------------------------------------------------------------------
// drawing
// ---------------------------------------------------------------------------------------------
function nodeSvg(n, x, y, w, h, cls, ref) {
  const c = ['n', n.kind];
  if (n.output) c.push('out');
  if (ref) c.push('ref');
  if (cls) c.push(cls);
  let s = '<g class="' + c.join(' ') + '" data-id="' + n.id + '"' + (ref ? ' data-ref="1"' : '') +
          ' transform="translate(' + x + ',' + y + ')">';
  s += '<rect class="b" width="' + w + '" height="' + h + '" rx="' + (n.kind === 'view' ? 9 : 5) + '" fill="' + (ref ? '#fbfbfd' : fill(n)) + '"/>';
  if (ref) {
    s += '<text x="8" y="15">↗ ' + esc(fit(n.name, w - 24, 11, true)) + '</text>';
  } else {
    let right = '';
    if (n.step != null) right = '#' + n.step;
    let badgeW = 0;
    const badges = [];
    if (n.output) badges.push(['OUT', '#111']);
    if (n.side_effect) badges.push(['WRITE', '#8e44ad']);
    if (n.arena && n.arena.inplace_of != null) badges.push(['IN PLACE', '#2e7d32']);
    for (const [t, col] of badges) {
      const bw = t.length * 6 + 8; badgeW += bw + 3;
      s += '<rect x="' + (w - badgeW - 2) + '" y="-7" width="' + bw + '" height="13" rx="3" fill="' + col + '"/>' +
           '<text class="badge" x="' + (w - badgeW + bw / 2 - 2) + '" y="3" text-anchor="middle">' + t + '</text>';
    }
    const fs1 = n.kind === 'compute' ? 12 : 11.5;
    const stW = right ? right.length * 6 + 8 : 0;
    s += '<text class="t1" x="8" y="' + (h / 2 - 2) + '">' + esc(fit(n.name, w - 16 - stW, fs1, true)) + '</text>';
    if (right) s += '<text class="st" x="' + (w - 6) + '" y="' + (h / 2 - 2) + '" text-anchor="end">' + right + '</text>';
    s += '<text class="t2" x="8" y="' + (h / 2 + 11) + '">' + esc(fit(line2(n), w - 14, 10.5, false)) + '</text>';
  }
  s += '<title>' + esc(n.name + ' (#' + n.id + ', ' + n.op + ')') + '</title></g>';
  return s;
}
function wbuf(n) {
  return n.written && n.written.length ? n.written.map(w => w.buffer).join(', ') : n.buffer;
}
function line2(n) {
  const dt = n.dtype.replace('float', 'f').replace('int', 'i').replace('bf16', 'bf16');
  if (n.writes) return n.op + ' → ' + wbuf(n) + ' off ' + n.offset + ' ' + shp(n.shape) + ' str ' + tup(n.strides);
  if (n.kind === 'view') {
    const k = (n.params && n.params.kind) || 'view';
    const ax = k === 'permute' && n.params.axes ? tup(n.params.axes) : '';
    return k + ax + ' ' + shp(n.shape) + ' off ' + n.offset + ' str ' + tup(n.strides) + (n.memory !== 'arena' ? ' of ' + n.buffer : '');
  }
  if (n.kind === 'persistent') return MEMLABEL[n.memory] + ' ' + shp(n.shape) + ' ' + dt + ' · ' + bytes(n.nbytes);
  if (n.kind === 'input') return 'input ' + shp(n.shape) + ' ' + dt;
  let s = n.op + ' ' + shp(n.shape) + ' ' + dt;
  if (n.arena) s += ' · @' + n.arena.offset + ' +' + bytes(n.arena.size);
  if (n.time_us != null) s += ' · ' + (+n.time_us).toFixed(1) + ' µs';
  return s;
}

function render() {
  const L = S.L[S.g], G = L.G, col = S.collapsed[S.g];
  const leftW = L.maxDepth ? L.maxDepth * (FW + FG) - FG + FGAP : 0;
  const SX = M + leftW;
  const AX = SX + SW + ARCW;
  const peak = G.summary.arena_peak_bytes;
  const width = AX + (peak ? AW : 0) + M;
  const out = [], bands = [], edges = [], blocks = [], bandY = new Map();
  const pos = new Map();      // node id -> {x, y, w, h, seq}
  const hidden = new Set();
  let y = TOP, seq = 0, bandNo = 0;
  const rows = L.rows;
  let i = 0;
  while (i < rows.length) {
    const g = rows[i].group;
    let j = i;
    if (g != null) while (j + 1 < rows.length && rows[j + 1].group === g) j++;
    const gi = g != null ? L.groups.get(g) : null;
    if (g != null && col.has(g)) {
      const box = {x: SX - (L.maxDepth ? FW + FGAP : 0), y: y + 6, w: SW + (L.maxDepth ? FW + FGAP : 0), h: BOXH, seq: seq++, box: g, hdr: false};
      for (let k = i; k <= j; k++) {
        const r = rows[k];
        pos.set(r.spine, box); hidden.add(r.spine);
        for (const c of r.chains) for (const el of c) if (el.id != null) { pos.set(el.id, box); hidden.add(el.id); }
      }
      const stats = gi.compute + ' compute · ' + gi.nodes + ' nodes' + (gi.weights ? ' · weights ' + bytes(gi.weights) : '') +
                    (gi.time ? ' · ' + gi.time.toFixed(1) + ' µs' : '');
      out.push('<g class="box" data-group="' + esc(g) + '" transform="translate(' + box.x + ',' + box.y + ')">' +
               '<rect width="' + box.w + '" height="' + BOXH + '" rx="7"/>' +
               '<text class="t1" x="12" y="17">▸ ' + esc(g) + '</text>' +
               '<text class="t2" x="12" y="32">' + esc(stats) + ' — click to expand</text>' +
               '<title>' + esc(g) + ': click to expand</title></g>');
      if (!bandY.has(g)) bandY.set(g, y);
      y += BOXROW;
    } else {
      let y0 = y;
      if (g != null && !bandY.has(g)) bandY.set(g, y);
      if (g != null) {
        const stats = gi.compute + ' compute · ' + gi.nodes + ' nodes' + (gi.weights ? ' · weights ' + bytes(gi.weights) : '') +
                      (gi.time ? ' · ' + gi.time.toFixed(1) + ' µs' : '');
        out.push('<g class="hdr" data-group="' + esc(g) + '"><text x="' + (M + 4) + '" y="' + (y + 19) + '">▾ ' + esc(g) +
                 '</text><text class="s" x="' + (M + 14 + g.length * 7.6) + '" y="' + (y + 19) + '">' + esc(stats) +
                 ' — click to collapse</text><rect x="' + M + '" y="' + (y + 3) + '" width="' + (SX + SW - M) +
                 '" height="22" fill="transparent"/></g>');
        y += HROW;
      }
      for (let k = i; k <= j; k++) {
        const r = rows[k], n = L.byId.get(r.spine);
        const isC = n.kind === 'compute';
        const h = isC ? CH : VH, rowH = (isC ? CROW : VROW) + Math.max(0, r.chains.length - 1) * SUBROW;
        const p = {x: SX, y: y + (isC ? 5 : 4), w: SW, h, seq: seq++, hdr: k === i && g != null};
        pos.set(n.id, p);
        out.push(nodeSvg(n, p.x, p.y, p.w, p.h));
        r.chains.forEach((c, ci) => {
          const fy = p.y + ci * SUBROW + (ci ? 0 : (h - FH) / 2);
          let prev = {x: p.x, y: p.y, h, id: n.id};
          c.forEach((el, ei) => {
            const x = SX - FGAP - FW - ei * (FW + FG);
            const bend = ci > 0 && ei === 0;
            if (el.ref != null) {
              const rn = L.byId.get(el.ref), q = {x, y: fy + (FH - REFH) / 2, w: FW, h: REFH};
              out.push(nodeSvg(rn, q.x, q.y, q.w, q.h, '', true));
              edges.push(feedEdge(q, prev, rn.id, prev.id, bend));
            } else {
              const fn = L.byId.get(el.id), q = {x, y: fy, w: FW, h: FH, seq: p.seq};
              pos.set(fn.id, q);
              out.push(nodeSvg(fn, q.x, q.y, q.w, q.h));
              edges.push(feedEdge(q, prev, fn.id, prev.id, bend));
              prev = {x: q.x, y: q.y, h: q.h, id: fn.id};
            }
          });
        });
        y += rowH;
      }
      if (g != null) bands.push({y0, y1: y, g});
    }
    i = j + 1;
  }
  const height = y + M;
  // edges between rows: arcs on the right of the spine; straight down when adjacent
  const drawn = new Set();
  const arcR = (a, b, bulge) => {
    const x1 = a.x + a.w, y1 = a.y + a.h / 2, x2 = b.x + b.w, y2 = b.y + b.h / 2;
    return 'M' + x1 + ',' + y1 + ' C' + (x1 + bulge) + ',' + y1 + ' ' + (x2 + bulge) + ',' + y2 + ' ' + (x2 + 3) + ',' + y2;
  };
  for (const e of G.edges) {
    const a = pos.get(e.src), b = pos.get(e.dst);
    if (!a || !b) continue;
    const sn = L.byId.get(e.src), dn = L.byId.get(e.dst);
    if (e.kind === 'data' && L.feeder(sn)) continue;  // drawn with the chains
    if (a === b) continue;                              // inside one collapsed box
    const k = (a.box || e.src) + '>' + (b.box || e.dst) + ':' + e.kind;
    if ((a.box || b.box) && drawn.has(k)) continue;
    drawn.add(k);
    const attrs = ' data-s="' + e.src + '" data-d="' + e.dst + '"';
    if (e.kind === 'hazard') {
      const span = Math.abs(b.seq - a.seq);
      edges.push('<path class="e hazard"' + attrs + ' d="' + arcR(a, b, 34 + 16 * Math.log2(1 + span)) + '" marker-end="url(#mh)"><title>hazard: ' +
                 esc(sn.name + ' before ' + dn.name + ' (' + (e.buffer || '') + ')') + '</title></path>');
    } else if (L.feeder(dn)) {  // a view of a written buffer read through a cpy result
      const x1 = a.x, y1 = a.y + a.h / 2, x2 = b.x + b.w / 2, y2 = b.y;
      edges.push('<path class="e"' + attrs + ' d="M' + x1 + ',' + y1 + ' C' + (x1 - 40) + ',' + y1 + ' ' + x2 + ',' + (y2 - 40) + ' ' + x2 + ',' + (y2 - 3) + '" marker-end="url(#ma)"/>');
    } else if (b.seq === a.seq + 1 && !b.hdr && a.x === b.x && a.w === b.w) {
      const x = a.x + a.w / 2;
      edges.push('<path class="e"' + attrs + ' d="M' + x + ',' + (a.y + a.h) + ' L' + x + ',' + (b.y - 3) + '" marker-end="url(#ma)"/>');
    } else {
      const span = Math.abs(b.seq - a.seq);
      edges.push('<path class="e"' + attrs + ' d="' + arcR(a, b, Math.min(ARCW - 20, 16 + 14 * Math.log2(1 + span))) + '" marker-end="url(#ma)"/>');
    }
  }
  // the arena: each block over its lifetime
  if (peak) {
    const sc = AW / peak;
    out.unshift('<text class="colh" x="' + AX + '" y="' + (TOP - 22) + '">ARENA · 0 … ' + esc(bytes(peak)) + ' · blocks over their lifetime</text>');
    for (let q = 0; q <= 4; q++) out.unshift('<line class="grid" x1="' + (AX + q * AW / 4) + '" y1="' + (TOP - 12) + '" x2="' + (AX + q * AW / 4) + '" y2="' + (height - M) + '"/>');
    for (const n of G.nodes) {
      if (!n.arena || n.arena.lifetime[0] == null) continue;
      const a = pos.get(L.stepNode.get(n.arena.lifetime[0])) || pos.get(n.id);
      const b = pos.get(L.stepNode.get(n.arena.lifetime[1])) || a;
      if (!a || !b) continue;
      const y0 = Math.min(a.y, b.y), y1 = Math.max(a.y + a.h, b.y + b.h);
      blocks.push('<rect class="blk" data-id="' + n.id + '" x="' + (AX + n.arena.offset * sc).toFixed(1) + '" y="' + y0 + '" width="' +
                  Math.max(2, n.arena.size * sc).toFixed(1) + '" height="' + Math.max(3, y1 - y0) + '" fill="' + fill(n) + '"><title>' +
                  esc(n.name + ': arena @' + n.arena.offset + ' +' + n.arena.size + ' B, steps ' + n.arena.lifetime.join('–')) + '</title></rect>');
    }
  }
  out.unshift('<text class="colh" x="' + SX + '" y="' + (TOP - 22) + '">SCHEDULE · compute nodes in run order</text>');
  if (L.maxDepth) out.unshift('<text class="colh" x="' + M + '" y="' + (TOP - 22) + '">WEIGHTS · KV CACHE · INPUTS (and views of them)</text>');
  const bandSvg = bands.map(b => '<rect class="band' + ((bandNo++) % 2 ? ' odd' : '') + '" x="' + (M - 8) + '" y="' + b.y0 + '" width="' +
                  (width - 2 * M + 16) + '" height="' + (b.y1 - b.y0) + '" rx="8"/>').join('');
  vp.innerHTML = bandSvg + edges.join('') + blocks.join('') + out.join('');
  L.pos = pos; L.hidden = hidden; L.size = {w: width, h: height}; L.bandY = bandY;
  svg.dataset.renderedNodes = String(vp.querySelectorAll('g.n:not([data-ref])').length);
  refreshMarks();
}
function feedEdge(q, prev, sid, did, bend) {
  const x1 = q.x + q.w, y1 = q.y + q.h / 2;
  const x2 = prev.x, y2 = bend ? prev.y + prev.h * 0.72 : prev.y + prev.h / 2;
  const a = ' data-s="' + sid + '" data-d="' + did + '"';
  if (!bend) return '<path class="e"' + a + ' d="M' + x1 + ',' + y1 + ' L' + (x2 - 3) + ',' + y2 + '" marker-end="url(#ma)"/>';
  const mx = x1 + (x2 - x1) * 0.6;
  return '<path class="e"' + a + ' d="M' + x1 + ',' + y1 + ' C' + mx + ',' + y1 + ' ' + mx + ',' + y2 + ' ' + (x2 - 3) + ',' + y2 + '" marker-end="url(#ma)"/>';
}

// ---------------------------------------------------------------------------------------------
// view transform: drag to pan, wheel to scroll, ctrl/cmd+wheel (or pinch, + / -) to zoom
// ---------------------------------------------------------------------------------------------
function apply() {
  const T = S.T;
  vp.setAttribute('transform', 'translate(' + T.x.toFixed(1) + ',' + T.y.toFixed(1) + ') scale(' + T.k.toFixed(4) + ')');
  svg.classList.toggle('far', T.k < 0.55);
  svg.classList.toggle('vfar', T.k < 0.22);
}
function zoomAt(f, mx, my) {
  const T = S.T, k = Math.min(4, Math.max(0.02, T.k * f));
  T.x = mx - (mx - T.x) * (k / T.k); T.y = my - (my - T.y) * (k / T.k); T.k = k; apply();
}
function viewSize() { const r = svg.getBoundingClientRect(); return {w: r.width, h: r.height}; }
function fitAll() {
  const L = S.L[S.g], v = viewSize();
  const k = Math.min(v.w / L.size.w, v.h / L.size.h, 1);
  S.T = {k, x: (v.w - L.size.w * k) / 2, y: 4}; apply();
}
function home() {
  const L = S.L[S.g], v = viewSize();
  const k = Math.min(1, Math.max(0.45, (v.w - (details.hidden ? 0 : 390)) / L.size.w));
  S.T = {k, x: 8, y: 4}; apply();
}
function centreOn(p) {  // vertically centred; moved sideways only when not fully in view
  const v = viewSize(), T = S.T;
  if (T.k < 0.7) T.k = 1;
  const free = v.w - (details.hidden ? 0 : 390);
  const x0 = p.x * T.k + T.x, x1 = (p.x + p.w) * T.k + T.x;
  if (x0 < 8 || x1 > free - 8) T.x = Math.min(8, free * 0.55 - (p.x + p.w) * T.k);
  T.y = v.h * 0.45 - (p.y + p.h / 2) * T.k;
  apply();
}
let drag = null;
svg.addEventListener('mousedown', (e) => { if (e.button !== 0) return; drag = {x: e.clientX, y: e.clientY, tx: S.T.x, ty: S.T.y, moved: false}; });
window.addEventListener('mousemove', (e) => {
  if (!drag) return;
  const dx = e.clientX - drag.x, dy = e.clientY - drag.y;
  if (!drag.moved && Math.abs(dx) + Math.abs(dy) > 4) { drag.moved = true; svg.classList.add('drag'); }
  if (drag.moved) { S.T.x = drag.tx + dx; S.T.y = drag.ty + dy; apply(); }
});
window.addEventListener('mouseup', (e) => {
  if (!drag) return;
  const d = drag; drag = null; svg.classList.remove('drag');
  if (!d.moved) click(e.target);
});
svg.addEventListener('wheel', (e) => {
  e.preventDefault();
  const r = svg.getBoundingClientRect();
  if (e.ctrlKey || e.metaKey) zoomAt(Math.exp(-e.deltaY * 0.0025), e.clientX - r.left, e.clientY - r.top);
  else { S.T.x -= e.shiftKey ? e.deltaY : e.deltaX; S.T.y -= e.shiftKey ? 0 : e.deltaY; apply(); }
}, {passive: false});
function click(t) {
  const el = t.closest ? t.closest('[data-id],[data-group]') : null;
  if (!el) { select(null); return; }
  if (el.dataset.group != null && el.dataset.id == null) { toggleGroup(el.dataset.group); return; }
  select(+el.dataset.id, !!el.dataset.ref || el.classList.contains('blk'));
}

// ---------------------------------------------------------------------------------------------
// groups, selection, details, search
// ---------------------------------------------------------------------------------------------
function toggleGroup(g, keepView) {
  const L = S.L[S.g], col = S.collapsed[S.g];
  const y0 = L.bandY && L.bandY.has(g) ? L.bandY.get(g) * S.T.k + S.T.y : null;
  if (col.has(g)) col.delete(g); else col.add(g);
  render();
  if (!keepView && y0 != null && L.bandY.has(g)) { S.T.y = y0 - L.bandY.get(g) * S.T.k; apply(); }  // the band stays put
}
function refreshMarks() {
  const L = S.L[S.g];
  vp.querySelectorAll('.sel,.match,.hl').forEach(el => el.classList.remove('sel', 'match', 'hl'));
  const ms = new Set(S.matches);
  if (ms.size) {
    vp.querySelectorAll('g.n').forEach(el => { if (ms.has(+el.dataset.id)) el.classList.add('match'); });
    const boxes = new Set();
    for (const id of ms) if (L.hidden && L.hidden.has(id)) { const p = L.pos.get(id); if (p && p.box) boxes.add(p.box); }
    vp.querySelectorAll('g.box').forEach(el => { if (boxes.has(el.dataset.group)) el.classList.add('match'); });
  }
  svg.classList.toggle('has-sel', S.sel != null);
  if (S.sel != null) {
    vp.querySelectorAll('[data-id="' + S.sel + '"]').forEach(el => el.classList.add('sel'));
    vp.querySelectorAll('[data-s="' + S.sel + '"],[data-d="' + S.sel + '"]').forEach(el => el.classList.add('hl'));
  }
}
function reveal(id) {  // expand the collapsed group that hides a node
  const L = S.L[S.g];
  if (L.hidden && L.hidden.has(id)) { const p = L.pos.get(id); if (p && p.box) { S.collapsed[S.g].delete(p.box); render(); } }
}
function select(id, centre) {
  const L = S.L[S.g];
  if (id == null || !L.byId.has(id)) { S.sel = null; details.hidden = true; refreshMarks(); return; }
  reveal(id);
  S.sel = id;
  showDetails(L.byId.get(id));
  refreshMarks();
  if (centre) { const p = L.pos.get(id); if (p) centreOn(p); }
}
function link(id) {
  const n = S.L[S.g].byId.get(id);
  return n ? '<a data-goto="' + id + '">' + esc(n.name) + '</a>' : '#' + id;
}
function showDetails(n) {
  const L = S.L[S.g];
  const row = (k, v) => '<tr><td>' + k + '</td><td>' + v + '</td></tr>';
  const code = (s) => '<code>' + esc(s) + '</code>';
  let h = '<button class="x" title="close (Esc)" data-close="1">×</button>';
  h += '<h2>' + esc(n.name) + '</h2><div class="sub"><span class="swatch" style="background:' + fill(n) + '"></span>' +
       esc(n.op) + ' · ' + esc(n.family) + ' · node #' + n.id + (n.step != null ? ' · step ' + n.step : '') + '</div><table>';
  h += row('op', code(n.op) + (n.params && n.params.kind && n.op === 'view' ? ' (' + esc(n.params.kind) + ')' : ''));
  h += row('kind', esc(n.kind) + (n.output ? ' · <b>output</b>' : '') + (n.side_effect ? ' · <b>side effect</b>' : '') +
           (n.writes ? ' · <b>writes into ' + esc(wbuf(n)) + '</b>' : ''));
  h += row('shape', code(shp(n.shape)));
  h += row('dtype', code(n.dtype) + ' (' + n.itemsize + ' B)');
  h += row('strides', code(tup(n.strides)) + ' elements' + (n.contiguous ? ' · contiguous' : ' · <b>strided</b>'));
  h += row('view offset', code(String(n.offset)) + ' elements = ' + (n.offset * n.itemsize) + ' B');
  const ext = extent(n);
  h += row('elements', code('[' + n.offset + ', ' + (n.offset + ext) + ')') + ' of the buffer · ' + bytes(n.nbytes));
  const sto = L.byId.get(n.storage);
  h += row('buffer', (n.storage === n.id ? '<b>' + esc(n.buffer) + '</b> (own memory)' : link(n.storage)) + ' · ' + esc(MEMLABEL[n.memory] || n.memory) +
           (sto && sto.kind === 'persistent' ? ' · ' + bytes(sto.nbytes) : ''));
  const ar = n.arena || (sto && sto.arena);
  if (ar) {
    h += row('arena', code('@' + ar.offset + ' +' + ar.size) + ' B' + (n.arena ? '' : ' (block of ' + link(n.storage) + ')'));
    if (ar.inplace_of != null) h += row('in place', 'yes: reuses the block of ' + link(ar.inplace_of));
    else h += row('in place', 'no');
    if (ar.lifetime) h += row('lifetime', 'steps ' + ar.lifetime[0] + ' – ' + ar.lifetime[1]);
  }
  if (n.step != null) h += row('step', String(n.step) + ' of ' + L.G.summary.compute_nodes);
  if (n.group) h += row('group', esc(n.group));
  const ps = n.params ? Object.keys(n.params) : [];
  if (ps.length) h += row('params', '<pre>' + esc(ps.map(k => k + ' = ' + JSON.stringify(n.params[k])).join('\n')) + '</pre>');
  h += '</table>';
  const core = new Set(['id', 'name', 'op', 'kind', 'family', 'memory', 'shape', 'dtype', 'itemsize', 'strides', 'offset', 'contiguous',
                        'nbytes', 'storage', 'buffer', 'step', 'arena', 'params', 'srcs', 'group', 'output', 'side_effect', 'writes']);
  const ex = Object.keys(n).filter(k => !core.has(k));
  h += '<h3>Execution</h3><table>';
  h += row('kernel', n.kernel != null ? code(typeof n.kernel === 'string' ? n.kernel : JSON.stringify(n.kernel)) : '<i>—</i>');
  h += row('launch', n.launch != null ? code(typeof n.launch === 'string' ? n.launch : JSON.stringify(n.launch)) : '<i>—</i>');
  h += row('time', n.time_us != null ? (+n.time_us).toFixed(2) + ' µs' : '<i>— (not profiled)</i>');
  for (const k of ex) if (!['kernel', 'launch', 'time_us'].includes(k)) h += row(esc(k), code(typeof n[k] === 'string' ? n[k] : JSON.stringify(n[k])));
  h += '</table>';
  const li = (id, extra) => { const s = L.byId.get(id); return '<li>' + link(id) + (s ? ' <span style="color:#6b7687">' + esc(s.op + ' ' + shp(s.shape)) + '</span>' : '') + (extra || '') + '</li>'; };
  h += '<h3>Sources (' + n.srcs.length + ')</h3><ul>' + (n.srcs.map(s => li(s)).join('') || '<li><i>none</i></li>') + '</ul>';
  const cs = L.cons.get(n.id) || [];
  h += '<h3>Consumers (' + cs.length + ')</h3><ul>' + (cs.map(s => li(s)).join('') || '<li><i>none</i></li>') + '</ul>';
  const hi = L.hzIn.get(n.id) || [], ho = L.hzOut.get(n.id) || [];
  if (hi.length || ho.length) {
    h += '<h3>Hazard ordering</h3><ul>';
    for (const e of hi) h += li(e.src, ' <span style="color:#c00">runs before this (' + esc(e.buffer || '') + ')</span>');
    for (const e of ho) h += li(e.dst, ' <span style="color:#c00">runs after this (' + esc(e.buffer || '') + ')</span>');
    h += '</ul>';
  }
  details.innerHTML = h;
  details.hidden = false;
  details.scrollTop = 0;
}
details.addEventListener('click', (e) => {
  const a = e.target.closest('[data-goto]');
  if (a) { select(+a.dataset.goto, true); return; }
  if (e.target.closest('[data-close]')) select(null);
});

const search = $('#search'), hits = $('#hits'), results = $('#results');
function runSearch() {
  const L = S.L[S.g], q = search.value.trim().toLowerCase();
  S.matches = []; S.mi = -1; S.q = search.value;
  if (q) {
    const idq = q[0] === '#' ? +q.slice(1) : NaN;
    for (const n of L.G.nodes) if (n.id === idq || n.op === q || n.name.toLowerCase().includes(q)) S.matches.push(n.id);
    S.matches.sort((a, b) => L.order.get(a) - L.order.get(b));
  }
  hits.textContent = q ? (S.matches.length ? S.matches.length + ' match' + (S.matches.length > 1 ? 'es' : '') : 'no match') : '';
  results.innerHTML = S.matches.slice(0, 60).map((id, i) => { const n = L.byId.get(id);
    return '<div data-goto="' + id + '" data-i="' + i + '">' + esc(n.name) + '<span>' + esc(n.op + ' ' + shp(n.shape) + (n.group ? ' · ' + n.group : '')) + '</span></div>'; }).join('') +
    (S.matches.length > 60 ? '<div><span>… ' + (S.matches.length - 60) + ' more: refine the search</span></div>' : '');
  results.style.display = q && S.matches.length ? 'block' : 'none';
  refreshMarks();
}
function gotoMatch(d) {
  if (!S.matches.length) return;
  S.mi = (S.mi + d + S.matches.length) % S.matches.length;
  hits.textContent = (S.mi + 1) + ' / ' + S.matches.length;
  results.querySelectorAll('.cur').forEach(x => x.classList.remove('cur'));
  const c = results.querySelector('[data-i="' + S.mi + '"]'); if (c) { c.classList.add('cur'); c.scrollIntoView({block: 'nearest'}); }
  select(S.matches[S.mi], true);
}
let st = null;
search.addEventListener('input', () => { clearTimeout(st); st = setTimeout(runSearch, 120); });
search.addEventListener('keydown', (e) => {
  if (e.key === 'Enter') {
    clearTimeout(st);
    if (S.q !== search.value) runSearch();
    gotoMatch(e.shiftKey ? -1 : 1); results.style.display = 'none'; e.preventDefault();
  }
  else if (e.key === 'Escape') { results.style.display = 'none'; search.blur(); }
  else if (e.key === 'ArrowDown') { gotoMatch(1); e.preventDefault(); }
  else if (e.key === 'ArrowUp') { gotoMatch(-1); e.preventDefault(); }
});
search.addEventListener('focus', () => { if (S.matches.length) results.style.display = 'block'; });
results.addEventListener('mousedown', (e) => {
  const d = e.target.closest('[data-goto]'); if (!d) return;
  e.preventDefault(); S.mi = +d.dataset.i - 1; gotoMatch(1);
});
document.addEventListener('mousedown', (e) => { if (!e.target.closest('#searchbox')) results.style.display = 'none'; });
$('#next').onclick = () => gotoMatch(1);
$('#prev').onclick = () => gotoMatch(-1);
$('#collapse').onclick = () => { const L = S.L[S.g]; S.collapsed[S.g] = new Set(L.groups.keys()); render(); home(); };
$('#expand').onclick = () => { S.collapsed[S.g] = new Set(); render(); home(); };
$('#fit').onclick = fitAll;
$('#zin').onclick = () => { const v = viewSize(); zoomAt(1.25, v.w / 2, v.h / 2); };
$('#zout').onclick = () => { const v = viewSize(); zoomAt(0.8, v.w / 2, v.h / 2); };
$('#jump').onchange = (e) => {
  const g = e.target.value; e.target.value = ''; if (!g) return;
  const L = S.L[S.g];
  if (L.bandY.has(g)) { if (S.T.k < 0.5) S.T.k = 1; S.T.y = 12 - L.bandY.get(g) * S.T.k; apply(); }
};
document.addEventListener('keydown', (e) => {
  if (e.target === search) return;
  if (e.key === '/') { search.focus(); search.select(); e.preventDefault(); }
  else if (e.key === 'Escape') select(null);
  else if (e.key === 'f') fitAll();
  else if (e.key === 'h') home();
  else if (e.key === '+' || e.key === '=') { const v = viewSize(); zoomAt(1.25, v.w / 2, v.h / 2); }
  else if (e.key === '-') { const v = viewSize(); zoomAt(0.8, v.w / 2, v.h / 2); }
});

function statsBar() {
  const G = S.L[S.g].G, s = G.summary, o = S.g === 'after' && DATA.graphs.before ? DATA.graphs.before.summary : null;
  const d = (k) => o && o[k] !== s[k] ? ' <i>(before ' + o[k] + ')</i>' : '';
  const db = (k) => o && o[k] !== s[k] ? ' <i>(before ' + bytes(o[k]) + ')</i>' : '';
  const chip = (id, html, title, cls) => '<span class="chip' + (cls ? ' ' + cls : '') + '" id="stat-' + id + '" title="' + esc(title) + '">' + html + '</span>';
  $('#stats').innerHTML =
    chip('nodes', '<b>' + s.nodes + '</b> nodes' + d('nodes'), 'needed nodes: leaves, views and compute nodes') +
    chip('compute', '<b>' + s.compute_nodes + '</b> compute nodes' + d('compute_nodes') + ' <i>= kernels/token</i>', 'nodes a backend runs, in schedule order', 'key') +
    chip('views', '<b>' + s.views + '</b> views' + d('views'), 'layouts over other memory: no compute') +
    chip('hazards', '<b>' + s.hazard_edges + '</b> hazard edges', 'ordering edges between overlapping accesses of a written buffer') +
    chip('arena', 'arena peak <b>' + bytes(s.arena_peak_bytes) + '</b>' + db('arena_peak_bytes'), s.arena_peak_bytes + ' B (without reuse ' + s.arena_total_bytes + ' B)', 'key') +
    chip('weights', 'weights <b>' + bytes(s.weight_bytes) + '</b>', s.weight_bytes + ' B in ' + s.persistent_buffers + ' persistent buffers (cache.* excluded)') +
    chip('kv', 'KV cache <b>' + bytes(s.kv_cache_bytes) + '</b>', s.kv_cache_bytes + ' B in buffers named cache.*') +
    chip('time', s.total_time_us != null ? 'time <b>' + (s.total_time_us / 1000).toFixed(3) + ' ms</b>' : 'time <i>not profiled</i>', 'sum of time_us over nodes');
}
function switchGraph(name) {
  S.g = name; S.sel = null; details.hidden = true;
  document.querySelectorAll('#ba button').forEach(b => b.classList.toggle('on', b.dataset.g === name));
  const L = S.L[S.g];
  $('#jump').innerHTML = '<option value="">jump to layer…</option>' + [...L.groups.keys()].map(g => '<option>' + esc(g) + '</option>').join('');
  statsBar(); render(); runSearch(); home();
}

// legend
(function legend() {
  let h = '<details open><summary>Legend</summary><div style="margin-top:2px">';
  for (const [f, c] of Object.entries(FAM)) h += '<span class="it"><span class="sw" style="background:' + c + '"></span>' + esc(f) + '</span>';
  h += '<span class="it" style="color:#9aa5b5">|</span>' +
       '<span class="it"><span class="sw" style="background:#fff;border-style:dashed;border-radius:6px"></span>view</span>' +
       '<span class="it"><span class="sw" style="background:' + MEMC.weight + '"></span>weight</span>' +
       '<span class="it"><span class="sw" style="background:' + MEMC.kv_cache + '"></span>KV cache (cache.*)</span>' +
       '<span class="it"><span class="sw" style="background:#fff;border:2px solid #1d2430"></span>input</span>' +
       '<span class="it"><span class="sw" style="background:#fff;border:3px solid #111"></span>output</span>' +
       '<span class="it"><svg width="26" height="10"><line x1="1" y1="5" x2="25" y2="5" stroke="#8d99ab" stroke-width="1.5"/></svg>&nbsp;data</span>' +
       '<span class="it"><svg width="26" height="10"><line x1="1" y1="5" x2="25" y2="5" stroke="#d62828" stroke-width="1.5" stroke-dasharray="5 4"/></svg>&nbsp;hazard order</span>' +
       '<span class="it">↗ another reader of a shared node</span>' +
       '</div><div class="hint">drag / scroll: pan · ctrl+scroll or + −: zoom · click: details · / : search · Esc: close</div></details>';
  $('#legend').innerHTML = h;
})();

for (const [name, G] of Object.entries(DATA.graphs)) {
  S.L[name] = prepare(G);
  const gs = [...S.L[name].groups.keys()];
  // big graphs open with the first layer expanded and the rest collapsed
  S.collapsed[name] = new Set(G.nodes.length > 400 && gs.length > 3 ? gs.slice(1) : []);
}
if (DATA.graphs.before) $('#ba').hidden = false;
document.querySelectorAll('#ba button').forEach(b => b.onclick = () => switchGraph(b.dataset.g));
switchGraph(S.g);
window.addEventListener('resize', apply);
window.tinygraphViz = {select, toggleGroup, state: S, render};
document.body.dataset.ready = '1';
})();
"""

PAGE = r"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>@TITLE@</title>
<style>@CSS@</style>
</head>
<body>
<header>
  <div class="row1"><h1>@TITLE@ <small>· tinygraph</small></h1><span id="stats"></span></div>
  <div class="row2">
    <span class="seg" id="ba" hidden><button data-g="before" title="the graph before the passes">before</button><button data-g="after" title="the graph after the passes">after</button></span>
    <span id="searchbox"><input id="search" type="search" placeholder="search name, op or #id   ( / )" autocomplete="off" spellcheck="false"><div id="results"></div></span>
    <button id="prev" title="previous match (shift+Enter)">↑</button><button id="next" title="next match (Enter)">↓</button>
    <span id="hits"></span>
    <span class="sp"></span>
    <select id="jump" title="scroll to a layer"></select>
    <button id="collapse" title="collapse every layer into one box">collapse layers</button>
    <button id="expand" title="expand every layer">expand all</button>
    <button id="zout" title="zoom out (-)">−</button><button id="zin" title="zoom in (+)">+</button>
    <button id="fit" title="fit the whole graph (f)">fit</button>
  </div>
</header>
<main>
  <svg id="svg" xmlns="http://www.w3.org/2000/svg">
    <defs>
      <marker id="ma" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="9" markerHeight="9" markerUnits="userSpaceOnUse" orient="auto-start-reverse"><path d="M0,1 L9,5 L0,9 z" fill="#8d99ab"/></marker>
      <marker id="mh" viewBox="0 0 10 10" refX="8" refY="5" markerWidth="10" markerHeight="10" markerUnits="userSpaceOnUse" orient="auto-start-reverse"><path d="M0,1 L9,5 L0,9 z" fill="#d62828"/></marker>
    </defs>
    <g id="vp"></g>
  </svg>
  <div id="legend"></div>
  <aside id="details" hidden></aside>
</main>
<script type="application/json" id="graph-data">@DATA@</script>
<script>@JS@</script>
</body>
</html>
"""


def render_page(title: str, data_json: str) -> str:
    """The page with ``data_json`` (already escaped for a script element) embedded."""
    parts = {"CSS": CSS, "JS": JS, "TITLE": html.escape(title), "DATA": data_json}
    return re.sub(r"@(CSS|JS|TITLE|DATA)@", lambda m: parts[m.group(1)], PAGE)
