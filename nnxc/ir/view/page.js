(function () {
  'use strict';
  const t0 = performance.now();
  const D = JSON.parse(document.getElementById('nnxc-data').textContent);
  const K = D.K, P = D.P, L = D.L, T = D.T, C = D.C, Y = D.Y, H = D.H, DT = D.DT, n = K.length;
  const FAM = D.fam, COL = D.colors, TY = D.TY, MC = D.MC || {};
  const $ = (s) => document.querySelector(s);
  const svg = $('#graph'), vp = $('#vp'), main = $('main');
  const exp = new Uint8Array(n); exp[0] = 1;
  const Wd = new Float64Array(n), Ht = new Float64Array(n), X = new Float64Array(n), Yp = new Float64Array(n);
  const PAD = 14, HEAD = 30, HG = 16, VG = 30, MAXCHIPS = 3;
  let sel = -1, hits = new Set(), view = { x: 0, y: 0, k: 1 };

  // -- text ------------------------------------------------------------------------------
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));
  const ctx = document.createElement('canvas').getContext('2d'), tcache = new Map();
  function tw(s, font) {
    const key = font + '|' + s;
    let w = tcache.get(key);
    if (w === undefined) { ctx.font = font; w = ctx.measureText(s).width; tcache.set(key, w); }
    return w;
  }
  const SANS = getComputedStyle(document.body).fontFamily;
  const F_OP = '600 12.5px ' + SANS, F_CL = '650 13px ' + SANS, F_SM = '11px ' + SANS, F_MONO = '10.5px monospace';
  const F_MC = '500 11px ' + SANS;
  const modClass = (i) => MC[i] || '';  // the module's class name, when the frontend recorded it
  const classW = (i) => (MC[i] ? tw(MC[i], F_MC) + 8 : 0);
  function clip(s, font, w) {  // s shortened with an ellipsis to fit w pixels
    if (tw(s, font) <= w) return s;
    let lo = 0, hi = s.length;
    while (lo < hi) { const m = (lo + hi + 1) >> 1; if (tw(s.slice(0, m) + '…', font) <= w) lo = m; else hi = m - 1; }
    return lo ? s.slice(0, lo) + '…' : '';
  }
  function fmt(x) {
    if (x < 1e3) return String(x);
    for (const [d, u] of [[1e12, 'T'], [1e9, 'G'], [1e6, 'M'], [1e3, 'K']]) if (x >= d) return (x / d).toFixed(x / d < 10 ? 2 : 1) + u;
  }
  function fmtBytes(b) {
    const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB']; let k = 0;
    while (b >= 1024 && k < u.length - 1) { b /= 1024; k++; }
    return (k ? b.toFixed(1) : b) + ' ' + u[k];
  }
  const comma = (x) => x.toLocaleString('en-US');
  const chipLabel = (c, i) => {
    if (c < 0) return D.CN[-1 - c][0];
    const p = D.V[c][0], base = (K[i] === 'n' || K[i] === 'x') ? DT[i][1] : '';
    return base && p.startsWith(base + '.') ? p.slice(base.length + 1) : p;
  };
  function boxStats(i) {
    const parts = [comma(D.N[i]) + (D.N[i] === 1 ? ' op' : ' ops')];
    if (D.PA[i]) parts.push(fmt(D.PA[i]) + ' params');
    if (D.FL[i]) parts.push(fmt(D.FL[i]) + ' FLOPs');
    return parts.join(' · ');
  }
  const expanded = (i) => K[i] === 'R' || K[i] === 'r' || exp[i] === 1;
  const isBox = (i) => K[i] === 'm' || K[i] === 'x' || K[i] === 'R' || K[i] === 'r';

  // -- measuring and placing (only what is visible) -----------------------------------------
  function measure(i) {
    const k = K[i];
    if (k === 'm' && !exp[i]) {
      Wd[i] = Math.min(300, Math.max(170, tw(L[i], F_CL) + classW(i) + 60, tw(boxStats(i), F_SM) + 30)); Ht[i] = 60; return;
    }
    if (k === 'x' && !exp[i]) {
      Wd[i] = Math.min(300, Math.max(150, tw(headLabel(i), F_OP) + 56, tw(T[i], F_MONO) + 30, tw(xSummary(i), F_SM) + 30)); Ht[i] = 58; return;
    }
    if (k === 'n') {
      const chips = H[i], rows = Math.min(chips.length, MAXCHIPS) + (chips.length > MAXCHIPS ? 1 : 0);
      let w = Math.max(tw(L[i], F_OP), tw(T[i], F_MONO)) + 30;
      for (let j = 0; j < Math.min(chips.length, MAXCHIPS); j++) w = Math.max(w, tw(chipLabel(chips[j], i), F_MONO) + 36);
      Wd[i] = Math.min(270, Math.max(116, w)); Ht[i] = 40 + (rows ? rows * 19 + 4 : 0); return;
    }
    if (!isBox(i)) { Wd[i] = Math.min(260, Math.max(84, tw(L[i], F_OP) + 28, tw(T[i], F_MONO) + 28)); Ht[i] = 40; return; }
    let w = 0, h = HEAD, rowW = 0, rowH = 0, row = -1;
    for (const c of C[i]) {
      measure(c);
      if (Y[c] !== row) { if (row >= 0) { w = Math.max(w, rowW); h += rowH + VG; } row = Y[c]; rowW = Wd[c]; rowH = Ht[c]; }
      else { rowW += HG + Wd[c]; rowH = Math.max(rowH, Ht[c]); }
    }
    w = Math.max(w, rowW); h += rowH;
    const head = tw(headLabel(i), F_OP) + classW(i) + (K[i] === 'R' ? 0 : tw(boxStats(i), F_SM) + 60);
    Wd[i] = Math.max(w, head) + 2 * PAD; Ht[i] = h + PAD;
  }
  function xSummary(i) {
    const nv = H[i].filter((c) => c >= 0).length;
    return boxStats(i) + (nv ? ` · ${nv} variables` : '');
  }
  function headLabel(i) {
    if (K[i] === 'x' && DT[i][3].some((a) => a[0] === 'length')) return L[i] + ' ×' + DT[i][3].find((a) => a[0] === 'length')[1];
    return L[i];
  }
  function place(i, x, y) {
    X[i] = x; Yp[i] = y;
    if (!isBox(i) || !expanded(i)) return;
    const kids = C[i]; let top = y + HEAD, s = 0;
    while (s < kids.length) {
      let e = s, rowW = 0, rowH = 0;
      while (e < kids.length && Y[kids[e]] === Y[kids[s]]) { rowW += Wd[kids[e]] + (e > s ? HG : 0); rowH = Math.max(rowH, Ht[kids[e]]); e++; }
      let cx = x + (Wd[i] - rowW) / 2;
      for (let j = s; j < e; j++) { const c = kids[j]; place(c, cx, top + (rowH - Ht[c]) / 2); cx += Wd[c] + HG; }
      top += rowH + VG; s = e;
    }
  }
  function rep(i) { let r = i; for (let a = P[i]; a >= 0; a = P[a]) if (!expanded(a)) r = a; return r; }
  function layout() { measure(0); place(0, 0, 0); }

  // -- drawing ---------------------------------------------------------------------------------
  const famOf = (i) => FAM[D.F[i]] || 'other';
  function drawItem(i, out) {
    const k = K[i], x = X[i], y = Yp[i], w = Wd[i], h = Ht[i];
    const cls = (i === sel ? ' sel' : '') + (hitReps.has(i) ? ' hit' : '');
    if (k === 'm') {
      let bar = '', bx = 12, total = 0; const mix = D.MX[i] || [];
      for (const [, c] of mix) total += c;
      for (const [f, c] of mix) { const bw = (w - 24) * c / total; bar += `<rect x="${bx}" y="${h - 11}" width="${Math.max(bw - 1, 1)}" height="4" rx="1" fill="${COL[FAM[f]][1]}"/>`; bx += bw; }
      const lw = tw(L[i], F_CL), mc = modClass(i) && clip(modClass(i), F_MC, w - lw - 52);
      const tag = mc ? `<text class="mc" x="${12 + lw + 7}" y="21">${esc(mc)}</text>` : '';
      out.push(`<g class="item card${cls}" data-i="${i}" transform="translate(${x},${y})"><rect class="bg" width="${w}" height="${h}" rx="9"/>` +
        `<text class="cl" x="12" y="21">${esc(L[i])}</text>${tag}<text class="cs" x="12" y="38">${esc(boxStats(i))}</text>${bar}` +
        `<g class="tog" data-t="${i}"><rect x="${w - 26}" y="8" width="18" height="18" rx="5"/><path d="M${w - 21} 17h8M${w - 17} 13v8"/></g></g>`);
      return;
    }
    if (k === 'n' || k === 'x') {
      const [fill, accent] = COL[famOf(i)];
      let s = `<g class="item node${cls}" data-i="${i}" transform="translate(${x},${y})"><rect class="bg" width="${w}" height="${h}" rx="7" style="fill:${fill}"/>` +
        `<rect x="0" y="0" width="5" height="${h}" rx="2" fill="${accent}"/><text class="op" x="14" y="18">${esc(headLabel(i))}</text>` +
        `<text class="ty" x="14" y="33">${esc(T[i])}</text>`;
      const chips = k === 'x' ? [] : H[i];
      if (k === 'x') s += `<text class="cs" x="14" y="49">${esc(xSummary(i))}</text>`;
      for (let j = 0; j < Math.min(chips.length, MAXCHIPS); j++) {
        s += `<g class="chip" data-v="${chips[j]}"><rect x="12" y="${42 + j * 19}" width="${w - 22}" height="16" rx="4"/>` +
          `<text x="19" y="${54 + j * 19}">${esc(chipLabel(chips[j], i))}</text></g>`;
      }
      if (chips.length > MAXCHIPS) s += `<g class="chip more" data-i="${i}"><text x="16" y="${54 + MAXCHIPS * 19}">+${chips.length - MAXCHIPS} more inputs</text></g>`;
      if (k === 'x') s += `<g class="tog" data-t="${i}"><rect x="${w - 26}" y="8" width="18" height="18" rx="5"/><path d="M${w - 21} 17h8M${w - 17} 13v8"/></g>`;
      out.push(s + '</g>');
      return;
    }
    out.push(`<g class="item term k${k}${cls}" data-i="${i}" transform="translate(${x},${y})"><rect class="bg" width="${w}" height="${h}" rx="20"/>` +
      `<text class="op" x="${w / 2}" y="17" text-anchor="middle">${esc(L[i])}</text><text class="ty" x="${w / 2}" y="31" text-anchor="middle">${esc(T[i])}</text></g>`);
  }
  let hitReps = new Set();
  function draw() {
    const boxes = [], items = [], stack = [[0, 0]];
    hitReps = new Set(); for (const h of hits) hitReps.add(rep(h));
    while (stack.length) {
      const [i, d] = stack.pop();
      if (isBox(i) && expanded(i)) {
        if (i !== 0) {
          const minus = K[i] === 'r' ? '' : `<g class="tog" data-t="${i}"><rect x="${Wd[i] - 26}" y="6" width="18" height="18" rx="5"/><path d="M${Wd[i] - 21} 15h8"/></g>`;
          boxes.push(`<g class="box d${Math.min(d, 4)} k${K[i]}${i === sel ? ' sel' : ''}" data-i="${i}" transform="translate(${X[i]},${Yp[i]})">` +
            `<rect class="boxbg" width="${Wd[i]}" height="${Ht[i]}" rx="10"/><text class="boxhdr" data-t="${K[i] === 'r' ? '' : i}" x="12" y="19">${esc(headLabel(i))}</text>` +
            (modClass(i) ? `<text class="mc" x="${12 + tw(headLabel(i), F_OP) + 8}" y="19">${esc(modClass(i))}</text>` : '') +
            `<text class="boxstat" x="${Wd[i] - 34}" y="19" text-anchor="end">${esc(boxStats(i))}</text>${minus}</g>`);
        }
        for (let j = C[i].length - 1; j >= 0; j--) stack.push([C[i][j], d + 1]);
      } else drawItem(i, items);
    }
    vp.innerHTML = boxes.join('') + drawEdges() + items.join('');
  }
  function drawEdges() {
    const E = D.E, seen = new Map(), outs = new Map(), ins = new Map(), selRep = sel >= 0 ? rep(sel) : -1;
    for (let j = 0; j < E.length; j += 3) {
      const s = rep(E[j]), d = rep(E[j + 1]);
      if (s === d) continue;
      const key = s * n + d;
      if (seen.has(key)) continue;
      const e = [s, d, E[j + 2]]; seen.set(key, e);
      (outs.get(s) || outs.set(s, []).get(s)).push(e); (ins.get(d) || ins.set(d, []).get(d)).push(e);
    }
    const port = (m, list, e, i, xOf) => {
      if (list.length === 1) return X[i] + Wd[i] / 2;
      if (!m.has(list)) m.set(list, list.slice().sort((a, b) => xOf(a) - xOf(b)));
      const sorted = m.get(list), step = Math.min(14, Wd[i] * 0.7 / list.length);
      return X[i] + Wd[i] / 2 + (sorted.indexOf(e) - (list.length - 1) / 2) * step;
    };
    const cache = new Map(), parts = [];
    for (const e of seen.values()) {
      const [s, d] = e;
      const x1 = port(cache, outs.get(s), e, s, (a) => X[a[1]] + Wd[a[1]] / 2), y1 = Yp[s] + Ht[s];
      const x2 = port(cache, ins.get(d), e, d, (a) => X[a[0]] + Wd[a[0]] / 2), y2 = Yp[d];
      const hot = (s === selRep || d === selRep) ? ' hot' : (outs.get(s).length > 6 ? ' fan' : '');
      let path, back = '';
      if (y2 > y1 + 6) { const dy = Math.max(16, (y2 - y1) * 0.45); path = `M${x1},${y1}C${x1},${y1 + dy} ${x2},${y2 - dy} ${x2},${y2 - 2}`; }
      else { const ex = Math.max(X[s] + Wd[s], X[d] + Wd[d]) + 40; back = ' back'; path = `M${x1},${y1}C${x1},${y1 + 50} ${ex},${y1 + 50} ${ex},${(y1 + y2) / 2}S${x2},${y2 - 50} ${x2},${y2 - 2}`; }
      parts.push(`<path class="edge${back}${hot}" d="${path}" marker-end="url(#${hot === ' hot' ? 'ahot' : 'ah'})"><title>${esc(TY[e[2]] || '')}</title></path>`);
    }
    return parts.join('');
  }

  // -- view: pan, zoom, fit ----------------------------------------------------------------------
  const apply = () => vp.setAttribute('transform', `translate(${view.x},${view.y}) scale(${view.k})`);
  function fit() {
    const r = main.getBoundingClientRect();
    view.k = Math.max(0.05, Math.min(1.1, (r.width - 60) / Wd[0], (r.height - 90) / Ht[0]));
    view.x = (r.width - Wd[0] * view.k) / 2; view.y = 24; apply();
  }
  function center(i, k) {
    const r = main.getBoundingClientRect();
    view.k = k || Math.min(1.4, Math.max(view.k, 0.8));
    view.x = r.width / 2 - (X[i] + Wd[i] / 2) * view.k; view.y = r.height / 2.5 - (Yp[i] + Ht[i] / 2) * view.k; apply();
  }
  svg.addEventListener('wheel', (e) => {
    e.preventDefault();
    const f = Math.exp(-e.deltaY * (e.ctrlKey ? 0.01 : 0.0015)), k = Math.max(0.03, Math.min(4, view.k * f));
    view.x = e.offsetX - (e.offsetX - view.x) * k / view.k; view.y = e.offsetY - (e.offsetY - view.y) * k / view.k; view.k = k; apply();
  }, { passive: false });
  let drag = null, moved = false;
  svg.addEventListener('pointerdown', (e) => { drag = [e.clientX, e.clientY, view.x, view.y]; moved = false; });
  window.addEventListener('pointermove', (e) => {
    if (!drag) return;
    const dx = e.clientX - drag[0], dy = e.clientY - drag[1];
    if (!moved && Math.abs(dx) + Math.abs(dy) < 4) return;
    moved = true; main.classList.add('drag'); view.x = drag[2] + dx; view.y = drag[3] + dy; apply();
  });
  window.addEventListener('pointerup', () => { drag = null; main.classList.remove('drag'); });

  // -- actions -----------------------------------------------------------------------------------
  function toggle(i, open) {
    const before = [X[i] * view.k + view.x, Yp[i] * view.k + view.y];
    exp[i] = open === undefined ? 1 - exp[i] : (open ? 1 : 0);
    layout(); view.x = before[0] - X[i] * view.k; view.y = before[1] - Yp[i] * view.k;
    const r = main.getBoundingClientRect(), right = (X[i] + Wd[i]) * view.k + view.x;
    if (exp[i] && right > r.width - 20) view.x -= Math.min(right - r.width + 20, X[i] * view.k + view.x - 20);
    apply(); draw();
  }
  function select(i) { sel = i; draw(); window.nnxcDetails.show(i); }
  function reveal(i) {
    for (let a = P[i]; a >= 0; a = P[a]) if (K[a] === 'm' || K[a] === 'x') exp[a] = 1;
    layout(); center(i); select(i);
  }
  function setAll(open) {
    for (let i = 0; i < n; i++) if (K[i] === 'm' || K[i] === 'x') exp[i] = open ? 1 : 0;
    layout(); fit(); draw();
  }
  svg.addEventListener('click', (e) => {
    if (moved) return;
    const t = e.target.closest('[data-v],[data-t],[data-i]');
    if (!t) { select(-1); return; }
    if (t.dataset.v !== undefined) { sel = +t.closest('[data-i]').dataset.i; draw(); window.nnxcDetails.variable(+t.dataset.v); return; }
    if (t.dataset.t) { const i = +t.dataset.t; toggle(i); select(i); return; }
    if (t.dataset.t === '') { select(+t.closest('[data-i]').dataset.i); return; }
    const i = +t.dataset.i;
    if (K[i] === 'm' && !exp[i]) toggle(i, true);
    select(i);
  });
  $('#fit').onclick = fit;
  $('#expand').onclick = () => setAll(true);
  $('#collapse').onclick = () => setAll(false);
  window.addEventListener('keydown', (e) => {
    if (e.target.tagName === 'INPUT') return;
    if (e.key === '/') { e.preventDefault(); $('#q').focus(); }
    else if (e.key === 'f') fit();
    else if (e.key === 'Escape') select(-1);
  });
  window.addEventListener('resize', () => fit());

  window.nnxcView = {
    D, K, P, exp, reveal, select, toggle, fit, rep, esc, fmt, fmtBytes, comma, chipLabel, boxStats, headLabel, modClass,
    setHits(h) { hits = h; draw(); },
    visible: () => vp.querySelectorAll('.item').length,
  };
  layout(); fit(); draw();
  window.nnxcView.renderMs = performance.now() - t0;
})();
