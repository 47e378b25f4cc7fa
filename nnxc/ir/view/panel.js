(function () {
  'use strict';
  // The side panel (details of a node, module or variable; the module table) and the search box.
  const D = window.nnxcView.D;
  const $ = (s) => document.querySelector(s);
  const V = () => window.nnxcView;
  const K = D.K, L = D.L, T = D.T, DT = D.DT, TY = D.TY, FAM = D.fam, COL = D.colors;
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  const go = (i, text) => `<a class="go" data-go="${i}">${esc(text)}</a>`;
  const gov = (c, text) => `<a class="go" data-var="${c}">${esc(text)}</a>`;
  const kv = (rows) => '<div class="kv">' + rows.filter((r) => r[1] !== '' && r[1] !== undefined && r[1] !== null)
    .map(([k, v]) => `<div>${esc(k)}</div><div>${v}</div>`).join('') + '</div>';
  const KIND = { i: 'input', o: 'output', u: 'variable update', a: 'region argument', y: 'region results', r: 'region', R: 'graph' };

  function tab(name) {
    for (const b of document.querySelectorAll('.tabs button')) b.classList.toggle('on', b.dataset.tab === name);
    for (const p of document.querySelectorAll('.pane')) p.classList.toggle('on', p.id === name);
  }
  for (const b of document.querySelectorAll('.tabs button')) b.onclick = () => tab(b.dataset.tab);

  function valueRow([name, ty, src, chip]) {
    let label = esc(name);
    if (chip !== null && chip !== undefined) label = gov(chip, name);
    else if (src >= 0) label = go(src, name) + ` <span class="sub">${esc(K[src] === 'n' || K[src] === 'x' ? L[src] : KIND[K[src]] || '')}</span>`;
    return `<tr><td>${label}</td><td>${esc(TY[ty])}</td></tr>`;
  }
  function mixBars(i) {
    const mix = (D.MX[i] || []).slice().sort((a, b) => b[1] - a[1]);
    const total = mix.reduce((s, m) => s + m[1], 0) || 1;
    return mix.map(([f, c]) => `<div style="display:flex;align-items:center;gap:8px;font-size:12px;margin:2px 0">` +
      `<span style="width:64px;color:#6a7585">${FAM[f]}</span><span style="flex:1;background:#f0f2f5;border-radius:3px;height:8px">` +
      `<span style="display:block;height:8px;border-radius:3px;width:${(100 * c / total).toFixed(1)}%;background:${COL[FAM[f]][1]}"></span></span>` +
      `<span style="width:34px;text-align:right">${c}</span></div>`).join('');
  }
  function show(i) {
    const v = V(), el = $('#details');
    tab('details');
    if (i < 0) i = 0;
    const k = K[i];
    let h = '';
    if (k === 'n' || k === 'x') {
      const [op, path, loc, attrs, ins, outs] = DT[i], fam = FAM[D.F[i]] || 'other';
      h += `<h2 style="color:${COL[fam][1]}">${esc(op)}</h2><div class="sub"><span class="badge">${fam}</span>${path ? 'in ' + esc(path) : 'top level'}</div>`;
      h += '<h3>Where</h3>' + kv([['module', path ? esc(path) : '(top level)'], ['source', loc ? esc(loc) : '(unknown)'],
        ['FLOPs', D.FL[i] ? v.comma(D.FL[i]) : '']]);
      h += '<h3>Inputs</h3>' + (ins.length ? '<table class="vals">' + ins.map(valueRow).join('') + '</table>' : '<div class="sub">none</div>');
      h += '<h3>Outputs</h3><table class="vals">' + outs.map(([nm, ty]) => `<tr><td>${esc(nm)}</td><td>${esc(TY[ty])}</td></tr>`).join('') + '</table>';
      h += '<h3>Attributes</h3>' + (attrs.length ? attrs.map(([a, x]) => `<div class="attr"><div class="n">${esc(a)}</div><pre>${esc(x)}</pre></div>`).join('') : '<div class="sub">none</div>');
      if (k === 'x') h += '<h3>Regions</h3>' + D.C[i].map((r) => `<div>${go(r, L[r])} <span class="sub">${v.boxStats(r)}</span></div>`).join('') +
        `<div style="margin-top:8px"><button data-toggle="${i}">${v.exp[i] ? 'Collapse' : 'Expand'} regions</button></div>`;
    } else if (k === 'r') {
      const owner = D.P[i];
      h += `<h2>${esc(L[i])}</h2><div class="sub">region of ${go(owner, v.headLabel(owner))}</div>`;
      h += '<h3>Totals</h3>' + kv([['ops', v.comma(D.N[i])], ['FLOPs', v.comma(D.FL[i]) + ' <span class="sub">(all iterations)</span>']]);
      h += '<h3>Op families</h3>' + mixBars(i);
    } else if (k === 'm' || k === 'R') {
      const path = k === 'R' ? '' : DT[i];
      const mc = v.modClass(i);
      h += `<h2>${esc(k === 'R' ? L[i] : path)}</h2><div class="sub">${mc ? `<span class="badge cls">${esc(mc)}</span>` : ''}${k === 'R' ? 'the whole graph' : 'module'}</div>`;
      h += '<h3>Totals</h3>' + kv([['ops', v.comma(D.N[i])], ['parameters', v.comma(D.PA[i])], ['FLOPs', v.comma(D.FL[i]) + ` <span class="sub">(${esc(D.dims)})</span>`]]);
      h += '<h3>Op families</h3>' + mixBars(i);
      const vars = D.V.map((x, c) => [x, c]).filter(([x]) => k === 'R' || x[0].startsWith(path + '.'));
      if (vars.length) h += `<h3>Variables (${vars.length})</h3><table class="vals">` + vars.slice(0, 200).map(([x, c]) =>
        `<tr><td>${gov(c, k === 'R' ? x[0] : x[0].slice(path.length + 1))}</td><td>${esc(TY[x[2]])}</td><td class="sub">${esc(sharding(x[5]))}</td></tr>`).join('') + '</table>' +
        (vars.length > 200 ? `<div class="sub">and ${vars.length - 200} more</div>` : '');
      if (D.MESH) {
        const co = D.CO.filter((r) => k === 'R' || r[0] === path || r[0].startsWith(path + '.'));
        h += `<h3>Collectives (${co.length})</h3>` + (co.length ? collectiveTable(co, k === 'R' ? '' : path)
          : '<div class="sub">none: XLA inserted no communication for this module</div>');
      }
      if (k === 'm') h += `<div style="margin-top:12px"><button data-toggle="${i}">${v.exp[i] ? 'Collapse' : 'Expand'}</button></div>`;
    } else {
      const [name, ty] = DT[i];
      h += `<h2>${esc(name)}</h2><div class="sub">${KIND[k] || ''}</div>` + '<h3>Type</h3>' + kv([['type', esc(TY[ty] || '')]]);
      const from = [];
      for (let j = 0; j < D.E.length; j += 3) if (D.E[j + 1] === i) from.push(D.E[j]);
      if (from.length) h += '<h3>From</h3>' + from.map((s) => `<div>${go(s, L[s])}</div>`).join('');
    }
    el.innerHTML = h;
  }
  function hist(counts, lo, hi) {
    const m = Math.max(...counts, 1), w = 320 / counts.length;
    return `<svg class="hist" width="100%" viewBox="0 0 320 64" preserveAspectRatio="none" style="height:64px;background:#fafbfc;border-radius:6px">` +
      counts.map((c, j) => `<rect x="${j * w + 0.5}" y="${62 - 58 * c / m}" width="${w - 1}" height="${58 * c / m}"/>`).join('') +
      `</svg><div class="sub" style="display:flex;justify-content:space-between"><span>${lo.toPrecision(3)}</span><span>${hi.toPrecision(3)}</span></div>`;
  }
  function variable(c) {
    const v = V(), el = $('#details');
    tab('details');
    let h = '';
    if (c < 0) {
      const [name, ty, text, users] = D.CN[-1 - c];
      h += `<h2>%${esc(name)}</h2><div class="sub">constant</div><h3>Value</h3>` + kv([['type', esc(TY[ty])]]) +
        `<div class="attr"><pre>${esc(text)}</pre></div>`;
      h += '<h3>Used by</h3>' + users.map((u) => `<div>${go(u, L[u])} <span class="sub">${esc(DT[u][1])}</span></div>`).join('');
    } else {
      const [path, kind, ty, size, bytes, meta, stats, users] = D.V[c];
      const t = TY[ty], dtype = t.slice(0, t.indexOf('[')), shape = t.slice(t.indexOf('['));
      h += `<h2>${esc(path)}</h2><div class="sub"><span class="badge">${esc(kind)}</span>variable</div>`;
      h += '<h3>Value</h3>' + kv([['dtype', esc(dtype)], ['shape', esc(shape)], ['size', size === null ? 'symbolic' : v.comma(size)],
        ['bytes', bytes === null ? '' : v.fmtBytes(bytes)], ...meta.map(([a, x]) => [a, esc(x)])]);
      if (!meta.some(([a]) => /shard|partition/i.test(a))) h += '<div class="sub" style="margin-top:4px">no sharding annotation</div>';
      if (stats) {
        h += '<h3>Statistics</h3>' + kv([['min', stats.min.toPrecision(5)], ['max', stats.max.toPrecision(5)],
          ['mean', stats.mean.toPrecision(5)], ['std', stats.std.toPrecision(5)], ['zeros', (100 * stats.zeros).toFixed(1) + '%']]);
        if (stats.hist) h += '<div style="margin-top:8px">' + hist(stats.hist, stats.min, stats.max) + '</div>';
      } else h += '<h3>Statistics</h3><div class="sub">no value recorded (graph parsed from text, or not numeric)</div>';
      h += `<h3>Used by (${users.length})</h3>` + users.slice(0, 100).map((u) => `<div>${go(u, L[u])} <span class="sub">${esc(DT[u][1])}</span></div>`).join('');
    }
    el.innerHTML = h;
  }
  document.addEventListener('click', (e) => {
    const g = e.target.closest('[data-go],[data-var],[data-toggle],[data-mod],[data-tw]');
    if (!g) return;
    if (g.dataset.go !== undefined) V().reveal(+g.dataset.go);
    else if (g.dataset.var !== undefined) variable(+g.dataset.var);
    else if (g.dataset.toggle !== undefined) { V().toggle(+g.dataset.toggle); show(+g.dataset.toggle); }
    else if (g.dataset.tw !== undefined) {
      for (const r of document.querySelectorAll(`tr.d2[data-of="${g.dataset.tw}"]`)) r.classList.toggle('open');
      g.textContent = g.textContent === '▸' ? '▾' : '▸';
    } else if (g.dataset.mod !== undefined) {
      const path = g.dataset.mod, i = path === '<top>' ? 0 : D.K.split('').findIndex((k, j) => k === 'm' && DT[j] === path);
      const j = i >= 0 ? i : D.K.split('').findIndex((k, j2) => k === 'm' && DT[j2].startsWith(path + '.'));
      if (j > 0) V().reveal(j); else show(0);
    }
  });

  function sharding(meta) {  // a variable's partitioning, as the IR prints it
    const m = meta.find(([a]) => a === 'out_sharding' || a === 'sharding_names' || a === 'sharding');
    return m ? m[1] : '';
  }
  function collectiveTable(rows, base) {
    const v = V();
    return '<table class="vals" style="white-space:nowrap"><tr><th>module</th><th>op</th><th>result</th><th>bytes</th><th>over</th></tr>' +
      rows.map(([mod, op, shape, bytes, axes]) => `<tr><td class="m" data-mod="${esc(mod || '<top>')}">${esc(mod === base ? (mod || '(graph)') : mod.slice(base ? base.length + 1 : 0))}</td>` +
        `<td>${esc(op)}</td><td>${esc(shape)}</td><td>${v.fmtBytes(bytes)}</td><td>${esc(axes)}</td></tr>`).join('') + '</table>';
  }

  // -- module table ------------------------------------------------------------------------------
  function modules() {
    const v = V(), sum = (o) => Object.values(o).reduce((a, b) => a + b, 0);
    let h = '<table class="mods"><thead><tr><th>module</th><th>params</th><th>bytes</th><th>FLOPs</th><th>ops</th></tr></thead><tbody>';
    const tot = [0, 0, 0, 0];
    D.MT.forEach(([mod, params, bytes, flops, nodes, top, depth, , cls], j) => {
      const has = depth === 1 && D.MT.some((r) => r[6] === 2 && r[7] === mod);
      const tw = depth === 1 ? `<span class="tw" ${has ? `data-tw="${j}"` : ''}>${has ? '▸' : ''}</span>` : '';
      const of = depth === 2 ? ` data-of="${D.MT.findIndex((r) => r[6] === 1 && r[0] === D.MT[j][7])}"` : '';
      if (depth === 1) { tot[0] += sum(params); tot[1] += sum(bytes); tot[2] += flops; tot[3] += nodes; }
      const name = depth === 2 ? mod.slice(D.MT[j][7].length + 1) || mod : mod;
      h += `<tr class="d${depth}"${of} title="${esc((cls ? cls + ' · ' : '') + top.join(', '))}"><td class="m" data-mod="${esc(mod)}">${tw}${esc(name)}` +
        `${cls ? ` <span class="mc">${esc(cls)}</span>` : ''}</td>` +
        `<td>${v.fmt(sum(params))}</td><td>${v.fmtBytes(sum(bytes))}</td><td>${v.fmt(flops)}</td><td>${v.comma(nodes)}</td></tr>`;
    });
    h += `<tr class="total"><td>total</td><td>${v.fmt(tot[0])}</td><td>${v.fmtBytes(tot[1])}</td><td>${v.fmt(tot[2])}</td><td>${v.comma(tot[3])}</td></tr></tbody></table>`;
    h += `<div class="sub" style="margin-top:10px">FLOPs at ${esc(D.dims)}; a scan body counts once per iteration. Click a module to show it.</div>`;
    if (D.MESH) h += `<h3>Collectives XLA inserted (${D.CO.length})</h3>` + (D.CO.length ? collectiveTable(D.CO, '')
      : '<div class="sub">none on this mesh</div>');
    $('#modules').innerHTML = D.MT.length ? h : '<div class="empty">no module table for this graph</div>';
  }

  // -- search --------------------------------------------------------------------------------------
  let index = null, results = [], cur = 0;
  function build() {
    index = [];
    for (let i = 0; i < K.length; i++) {
      if (K[i] === 'n' || K[i] === 'x') index.push([(L[i] + ' ' + DT[i][1]).toLowerCase(), 'op', i, L[i], DT[i][1]]);
      else if (K[i] === 'm') index.push([(DT[i] + ' ' + V().modClass(i)).toLowerCase(), 'module', i, DT[i], V().modClass(i)]);
      else if (K[i] === 'i' || K[i] === 'o') index.push([L[i].toLowerCase(), KIND[K[i]], i, L[i], T[i]]);
    }
    D.V.forEach((x, c) => index.push([x[0].toLowerCase(), 'variable', c, x[0], TY[x[2]]]));
  }
  const RANK = { module: 0, variable: 1, op: 2, input: 3, output: 3 };
  function search(q) {
    if (!index) build();
    q = q.trim().toLowerCase();
    const box = $('#results');
    if (!q) { box.classList.remove('open'); V().setHits(new Set()); return; }
    const exact = [], rest = [];
    for (const e of index) if (e[0].includes(q)) (e[3].toLowerCase() === q ? exact : rest).push(e);
    rest.sort((a, b) => RANK[a[1]] - RANK[b[1]]);
    results = exact.concat(rest); cur = 0;
    const hits = new Set();
    for (const e of results) {
      if (e[1] === 'variable') for (const u of D.V[e[2]][7]) hits.add(u); else hits.add(e[2]);
      if (hits.size > 5000) break;
    }
    V().setHits(hits);
    box.innerHTML = (results.length ? '' : '<div class="more">no match</div>') + results.slice(0, 60).map((e, j) =>
      `<div class="r${j === 0 ? ' on' : ''}" data-r="${j}"><span class="k">${e[1]}</span><span>${esc(e[3])}</span><span class="p">${esc(e[4])}</span></div>`).join('') +
      (results.length > 60 ? `<div class="more">${results.length - 60} more: refine the search</div>` : '');
    box.classList.add('open');
  }
  function pick(j) {
    const e = results[j];
    if (!e) return;
    $('#results').classList.remove('open');
    if (e[1] === 'variable') { const u = D.V[e[2]][7]; if (u.length) V().reveal(u[0]); variable(e[2]); } else V().reveal(e[2]);
  }
  const q = $('#q');
  let timer = 0;
  q.addEventListener('input', () => { clearTimeout(timer); timer = setTimeout(() => search(q.value), 120); });
  q.addEventListener('keydown', (e) => {
    const rows = document.querySelectorAll('#results .r');
    if (e.key === 'Enter') { search(q.value); pick(cur); } else if (e.key === 'Escape') { q.value = ''; search(''); q.blur(); } else if (e.key === 'ArrowDown' || e.key === 'ArrowUp') {
      e.preventDefault(); cur = Math.max(0, Math.min(rows.length - 1, cur + (e.key === 'ArrowDown' ? 1 : -1)));
      rows.forEach((r, j) => r.classList.toggle('on', j === cur)); if (rows[cur]) rows[cur].scrollIntoView({ block: 'nearest' });
    }
  });
  $('#results').addEventListener('click', (e) => { const r = e.target.closest('[data-r]'); if (r) pick(+r.dataset.r); });
  q.addEventListener('focus', () => { if (q.value.trim()) $('#results').classList.add('open'); });
  document.addEventListener('pointerdown', (e) => { if (!e.target.closest('.search')) $('#results').classList.remove('open'); });

  window.nnxcDetails = { show, variable, search };
  document.addEventListener('DOMContentLoaded', () => { modules(); show(0); });
})();
