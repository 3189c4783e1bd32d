// The page's code, part 2 of 2: pan/zoom, layer groups, selection and the details panel, search,
// the summary bar and the legend; it runs last and starts the page.

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
  if (n.written && n.written.length) {  // the memory written besides the result, e.g. both KV caches
    h += row('written', n.written.map(w => (L.byId.has(w.storage) ? link(w.storage) : '<b>' + esc(w.buffer) + '</b>') + ' · ' +
             esc(MEMLABEL[w.memory] || w.memory) + '<br>' + code(shp(w.shape)) + ' at offset ' + code(String(w.offset)) +
             ', strides ' + code(tup(w.strides))).join('<br>'));
  }
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
                        'nbytes', 'storage', 'buffer', 'step', 'arena', 'params', 'srcs', 'group', 'output', 'side_effect', 'writes',
                        'written']);
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
    // the count tinygraph.viz.node_count_text gives (and `run --dump-graph` prints): every node, leaves included
    chip('nodes', '<b>' + s.nodes + '</b> nodes in all' + d('nodes'), s.nodes + ' nodes in all (' + s.compute_nodes + ' compute, ' +
         s.views + ' views, ' + s.persistent_buffers + ' weights/KV-cache buffers, ' + s.inputs + ' inputs)') +
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
  // a bar below the drawing (not over it): it never hides part of the graph
  let h = '<details open><summary>Legend</summary>';
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
       '<span class="hint">drag / scroll: pan · ctrl+scroll or + −: zoom · click: details · / : search · Esc: close</span></details>';
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
