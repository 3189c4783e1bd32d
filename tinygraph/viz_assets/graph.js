// The page's code, part 1 of 2: data preparation, layout and drawing. tinygraph/viz_html.py inlines
// graph.js then ui.js into one function scope of the written page (see page.html).

const DATA = JSON.parse(document.getElementById('graph-data').textContent);
const $ = (s) => document.querySelector(s);
const svg = $('#svg'), vp = $('#vp'), details = $('#details');
const C0 = Object.values(DATA.graphs)[0].colors;
const FAM = C0.family, MEMC = C0.memory, OTHER = C0.other || '#e8e8e8';
// layout constants (px)
const M = 18, FW = 232, FG = 30, FGAP = 26, SW = 320, ARCW = 170, AW = 300, TOP = 62;
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
  // the arena: each block over its lifetime, on the x scale of arenaScale (a broken axis when outliers dwarf the rest)
  if (peak) {
    const A = arenaScale(G, AW), ax = (b) => AX + A.x(b);
    const ticks = A.cut == null ? [0, 1, 2, 3, 4].map(q => peak * q / 4) : [0, 1, 2, 3, 4].map(q => A.cut * q / 4).concat([peak]);
    for (const b of ticks) out.unshift('<line class="grid" x1="' + ax(b).toFixed(1) + '" y1="' + (TOP - 6) + '" x2="' + ax(b).toFixed(1) + '" y2="' + (height - M) + '"/>');
    out.unshift('<text class="tick" x="' + AX + '" y="' + (TOP - 9) + '">0</text>');
    out.unshift('<text class="tick" x="' + (AX + AW) + '" y="' + (TOP - 9) + '" text-anchor="end">' + esc(bytes(peak)) + '</text>');
    if (A.cut != null) {  // the break: a gap with two slanted strokes, the cut's offset above it
      out.unshift('<text class="tick" x="' + (AX + A.w1) + '" y="' + (TOP - 9) + '" text-anchor="end">' + esc(bytes(A.cut)) + '</text>');
      const xm = AX + A.w1 + A.gap / 2;
      blocks.push('<g class="brk"><line x1="' + xm + '" y1="' + (TOP - 6) + '" x2="' + xm + '" y2="' + (height - M) + '"/><path d="M' + (AX + A.w1 - 2) + ',' + (TOP + 4) + ' l6,-10 M' + (AX + A.w1 + A.gap - 4) + ',' + (TOP + 4) + ' l6,-10"/>' +
                  '<title>axis break: offsets past ' + esc(bytes(A.cut)) + ' are drawn compressed</title></g>');
    }
    for (const n of G.nodes) {
      if (!n.arena || n.arena.lifetime[0] == null) continue;
      const a = pos.get(L.stepNode.get(n.arena.lifetime[0])) || pos.get(n.id);
      const b = pos.get(L.stepNode.get(n.arena.lifetime[1])) || a;
      if (!a || !b) continue;
      const y0 = Math.min(a.y, b.y), y1 = Math.max(a.y + a.h, b.y + b.h);
      const x0 = ax(n.arena.offset), bw = Math.max(2, ax(n.arena.offset + n.arena.size) - x0), bh = Math.max(3, y1 - y0);
      const tip = n.name + ': arena @' + n.arena.offset + ' +' + n.arena.size + ' B (' + bytes(n.arena.size) + '), steps ' + n.arena.lifetime.join('–');
      blocks.push('<rect class="blk" data-id="' + n.id + '" x="' + x0.toFixed(1) + '" y="' + y0 + '" width="' + bw.toFixed(1) + '" height="' + bh +
                  '" fill="' + fill(n) + '"><title>' + esc(tip) + '</title></rect>');
      // a block reaching past the break is not drawn to scale: print its size on it
      if (A.cut != null && n.arena.offset + n.arena.size > A.cut && bw >= 44 && bh >= 14)
        blocks.push('<text class="bsz" data-id="' + n.id + '" x="' + (x0 + 4).toFixed(1) + '" y="' + (y0 + 11) + '">' + esc(bytes(n.arena.size)) + '</text>');
    }
    out.unshift(colHead(AX, AX + AW, 'ARENA · bytes ' + (A.cut != null ? '(axis broken at ' + bytes(A.cut) + ')' : ''), 'each block over its lifetime'));
  }
  out.unshift(colHead(SX, SX + SW, 'SCHEDULE', 'compute nodes in run order'));
  if (L.maxDepth) out.unshift(colHead(M, SX - FGAP, 'WEIGHTS · KV CACHE · INPUTS', 'and views of them'));
  const bandSvg = bands.map(b => '<rect class="band' + ((bandNo++) % 2 ? ' odd' : '') + '" x="' + (M - 8) + '" y="' + b.y0 + '" width="' +
                  (width - 2 * M + 16) + '" height="' + (b.y1 - b.y0) + '" rx="8"/>').join('');
  vp.innerHTML = bandSvg + edges.join('') + blocks.join('') + out.join('');
  fitHeads();
  L.pos = pos; L.hidden = hidden; L.size = {w: width, h: height}; L.bandY = bandY;
  svg.dataset.renderedNodes = String(vp.querySelectorAll('g.n:not([data-ref])').length);
  refreshMarks();
}
// A column's two-line heading, kept inside [x0, x1]: the columns' headings never overlap.
function colHead(x0, x1, title, sub) {
  return '<g class="colh" data-x0="' + x0 + '" data-x1="' + x1 + '"><text class="h1" x="' + x0 + '" y="' + (TOP - 34) + '">' + esc(title) +
         '</text><text class="h2" x="' + x0 + '" y="' + (TOP - 21) + '">' + esc(sub) + '</text></g>';
}
function fitHeads() {  // a heading wider than its column (a narrow font fallback, a long size) is squeezed to fit
  vp.querySelectorAll('g.colh text').forEach(t => {
    const g = t.parentNode, w = +g.dataset.x1 - +g.dataset.x0;
    if (t.getComputedTextLength() > w) { t.setAttribute('textLength', w); t.setAttribute('lengthAdjust', 'spacingAndGlyphs'); }
  });
}
// The arena column's x scale: byte offset -> px in [0, width]. A decode graph's LM-head logits (vocab
// floats, 192 KiB for SmolLM2) dwarf a layer's blocks (~2-6 KiB): scaled to the peak, every layer's block
// is a sliver. So when the offset where 90% of the blocks end (`cut`) is under a third of the peak, the
// axis breaks: [0, cut] takes the first 78% of the column, linearly (sizes there compare truly), and
// [cut, peak] the rest past a gap. The map is monotonic, so blocks disjoint in memory stay disjoint.
function arenaScale(G, width) {
  const ends = G.nodes.filter(n => n.arena).map(n => n.arena.offset + n.arena.size).sort((a, b) => a - b);
  const peak = Math.max(G.summary.arena_peak_bytes, ends.length ? ends[ends.length - 1] : 0);
  const cut = ends.length ? ends[Math.floor(0.9 * (ends.length - 1))] : peak;
  if (!(cut > 0) || cut * 3 >= peak) return {cut: null, x: (b) => b * width / peak};
  const w1 = Math.round(width * 0.78), gap = 10;
  return {cut, w1, gap, x: (b) => b <= cut ? b * w1 / cut : w1 + gap + (b - cut) * (width - w1 - gap) / (peak - cut)};
}
function feedEdge(q, prev, sid, did, bend) {
  const x1 = q.x + q.w, y1 = q.y + q.h / 2;
  const x2 = prev.x, y2 = bend ? prev.y + prev.h * 0.72 : prev.y + prev.h / 2;
  const a = ' data-s="' + sid + '" data-d="' + did + '"';
  if (!bend) return '<path class="e"' + a + ' d="M' + x1 + ',' + y1 + ' L' + (x2 - 3) + ',' + y2 + '" marker-end="url(#ma)"/>';
  const mx = x1 + (x2 - x1) * 0.6;
  return '<path class="e"' + a + ' d="M' + x1 + ',' + y1 + ' C' + mx + ',' + y1 + ' ' + mx + ',' + y2 + ' ' + (x2 - 3) + ',' + y2 + '" marker-end="url(#ma)"/>';
}

