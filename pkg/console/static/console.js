// The operator console's page. It reads the console's own data feed and nothing else;
// every value goes into the page as text (textContent, attributes), never as markup.
'use strict';

(() => {
  const SVG = 'http://www.w3.org/2000/svg';
  const W = 900, H = 520, R = 48;
  const DOT_MS = 1400;
  const graph = document.getElementById('graph');
  const state = {
    pos: new Map(),      // agency id → {x, y}
    names: new Map(),    // agency id → name
    edges: new Map(),    // "from>to" → {g, path, label1, label2, stats}
    refresh: 5000,
    polling: false,
    dots: 0,
    recent: 50,
  };

  // el makes an HTML element with attributes and text or element children.
  function el(tag, attrs, ...children) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    e.append(...children.map((c) => (c instanceof Node ? c : String(c))));
    return e;
  }

  function svg(tag, attrs) {
    const e = document.createElementNS(SVG, tag);
    for (const [k, v] of Object.entries(attrs || {})) e.setAttribute(k, v);
    return e;
  }

  const key = (from, to) => `${from}>${to}`;
  const clock = (iso) => (iso ? new Date(iso).toLocaleTimeString([], { hour12: false }) : '');
  const dateTime = (iso) => (iso ? new Date(iso).toLocaleString([], { hour12: false }) : '');

  function ago(ms) {
    if (ms < 0) return 'never';
    if (ms < 1000) return `${ms} ms`;
    const s = Math.round(ms / 1000);
    if (s < 120) return `${s} s`;
    const m = Math.round(s / 60);
    if (m < 120) return `${m} min`;
    const h = Math.round(m / 60);
    return h < 48 ? `${h} h` : `${Math.round(h / 24)} d`;
  }

  function bytes(n) {
    const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
    let i = 0;
    while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
    return `${i ? n.toFixed(1) : n} ${units[i]}`;
  }

  function badge(id, text, level) {
    const b = document.getElementById(id);
    b.textContent = text;
    b.className = `badge ${level || ''}`;
  }

  function showError(panel, message) {
    const p = panel.querySelector('.error');
    panel.classList.toggle('failed', Boolean(message));
    p.hidden = !message;
    p.textContent = message || '';
  }

  // The picture: agencies on an ellipse in the protocol's order, first at the top.
  function layout(agencies) {
    state.pos.clear();
    const n = agencies.length, cx = W / 2, cy = H / 2 - 6, rx = W / 2 - 130, ry = H / 2 - 90;
    agencies.forEach((a, i) => {
      const t = -Math.PI / 2 + (2 * Math.PI * i) / Math.max(n, 1);
      state.pos.set(a.id, { x: cx + rx * Math.cos(t), y: cy + ry * Math.sin(t) });
      state.names.set(a.id, a.name || a.id);
    });
  }

  // edgeGeometry bends each direction of a pair to its own side, so referrals and the
  // receipts coming back run on two lines, each with its count at its middle.
  function edgeGeometry(from, to) {
    const a = state.pos.get(from), b = state.pos.get(to);
    const dx = b.x - a.x, dy = b.y - a.y, len = Math.hypot(dx, dy) || 1;
    const nx = -dy / len, ny = dx / len, bend = 48;
    const c = { x: (a.x + b.x) / 2 + nx * bend, y: (a.y + b.y) / 2 + ny * bend };
    const toward = (p, q, r) => {
      const d = Math.hypot(q.x - p.x, q.y - p.y) || 1;
      return { x: p.x + ((q.x - p.x) / d) * r, y: p.y + ((q.y - p.y) / d) * r };
    };
    const s = toward(a, c, R + 2), e = toward(b, c, R + 4);
    const mid = { x: 0.25 * s.x + 0.5 * c.x + 0.25 * e.x, y: 0.25 * s.y + 0.5 * c.y + 0.25 * e.y };
    return { d: `M${s.x.toFixed(1)},${s.y.toFixed(1)} Q${c.x.toFixed(1)},${c.y.toFixed(1)} ${e.x.toFixed(1)},${e.y.toFixed(1)}`, mid };
  }

  function drawGraph(snap) {
    layout(snap.agencies);
    const edges = document.getElementById('edges'), nodes = document.getElementById('nodes');
    const routes = document.querySelector('#routes tbody'), counts = document.getElementById('counts');
    edges.replaceChildren();
    counts.replaceChildren();
    nodes.replaceChildren();
    routes.replaceChildren();
    document.getElementById('dots').replaceChildren();
    state.edges.clear();
    for (const stats of snap.edges) {
      if (!state.pos.has(stats.from) || !state.pos.has(stats.to) || stats.from === stats.to) continue;
      const geo = edgeGeometry(stats.from, stats.to);
      const g = svg('g', { class: 'edge', 'data-from': stats.from, 'data-to': stats.to });
      const path = svg('path', { d: geo.d, id: `edge-${stats.from}-${stats.to}` });
      // Above the dots, which would hide the count as they pass.
      const badge = svg('g', { class: 'count', 'data-from': stats.from, 'data-to': stats.to, transform: `translate(${geo.mid.x.toFixed(1)},${geo.mid.y.toFixed(1)})` });
      const count = svg('text', { y: '4' });
      const title = svg('title');
      badge.append(svg('circle', { r: '13' }), count, title);
      g.append(path);
      edges.append(g);
      counts.append(badge);
      const cells = Array.from({ length: 6 }, () => el('td', { class: 'num' }));
      const row = el('tr', { 'data-from': stats.from, 'data-to': stats.to },
        el('td', {}, `${state.names.get(stats.from)} → ${state.names.get(stats.to)}`), ...cells);
      routes.append(row);
      state.edges.set(key(stats.from, stats.to), { g, badge, path, count, title, row, cells });
      updateEdge(stats);
    }
    for (const a of snap.agencies) {
      const p = state.pos.get(a.id);
      const g = svg('g', { class: 'node', 'data-agency': a.id, transform: `translate(${p.x.toFixed(1)},${p.y.toFixed(1)})` });
      const id = svg('text', { class: 'id', y: '5' });
      id.textContent = a.id;
      g.append(svg('circle', { r: String(R) }), id);
      if (a.name && a.name !== a.id) {
        // Outside the circle, away from the centre, where the edges do not run.
        const above = p.y < H / 2 - 40;
        const name = svg('text', { class: 'name', y: String(above ? -R - 9 : R + 18) });
        name.textContent = a.name;
        g.append(name);
      }
      nodes.append(g);
    }
  }

  function updateEdge(stats) {
    const e = state.edges.get(key(stats.from, stats.to));
    if (!e) return;
    const level = stats.in_flight > 0 ? 'inflight' : stats.events + stats.resent > 0 ? 'active' : 'idle';
    e.g.setAttribute('class', `edge ${level}`);
    e.badge.setAttribute('class', `count ${level}`);
    e.path.setAttribute('marker-end', `url(#arrow-${level})`);
    e.count.textContent = String(stats.events);
    e.title.textContent = `${state.names.get(stats.from)} → ${state.names.get(stats.to)}: ${stats.events} events, ${stats.in_flight} in flight`;
    const values = [stats.events, stats.handovers, stats.in_flight, stats.transit_ms >= 0 ? ago(stats.transit_ms) : '–', stats.resent, stats.refused];
    values.forEach((v, i) => { e.cells[i].textContent = String(v); });
    e.row.className = level;
    for (const f of ['events', 'handovers', 'in_flight', 'received', 'refused', 'resent']) e.g.dataset[f.replace('_', '')] = String(stats[f]);
  }

  // launch moves a dot along the edge an event crosses.
  function launch(ev) {
    const e = state.edges.get(key(ev.from, ev.to));
    if (!e) return;
    const kind = ev.type === 'handover_referred' ? 'referral' : ev.type === 'receipt_issued' ? 'receipt' : 'other';
    const dot = svg('circle', { r: '7', class: `dot ${kind}` });
    document.getElementById('dots').append(dot);
    state.dots++;
    graph.dataset.dots = String(state.dots);
    const len = e.path.getTotalLength(), start = performance.now();
    const step = (now) => {
      const t = Math.min((now - start) / DOT_MS, 1);
      const p = e.path.getPointAtLength(len * t);
      dot.setAttribute('cx', p.x.toFixed(1));
      dot.setAttribute('cy', p.y.toFixed(1));
      if (t < 1) requestAnimationFrame(step); else dot.remove();
    };
    requestAnimationFrame(step);
  }

  function flashRefused(agency) {
    const node = document.querySelector(`#nodes .node[data-agency="${CSS.escape(agency)}"]`);
    if (!node) return;
    node.classList.add('refused');
    setTimeout(() => node.classList.remove('refused'), 3000);
  }

  function recentRow(ev) {
    const receipt = ev.receipt || ev.state ? `${ev.receipt || '–'} → ${ev.state || '–'}` : '';
    const detail = [(ev.withheld || []).join(', '), ev.reason || ''].filter(Boolean).join(' / ');
    return el('tr', { class: `stage-${ev.stage}`, 'data-handover': ev.handover_id, 'data-sequence': String(ev.sequence) },
      el('td', {}, clock(ev.time)), el('td', {}, ev.stage), el('td', {}, ev.type),
      el('td', {}, `${ev.from} → ${ev.to}`), el('td', { class: 'id' }, ev.handover_id),
      el('td', {}, receipt), el('td', {}, detail));
  }

  function addRecent(ev) {
    const body = document.querySelector('#recent tbody');
    body.querySelector('tr.none')?.remove();
    body.prepend(recentRow(ev));
    while (body.rows.length > state.recent) body.lastElementChild.remove();
  }

  function setFlowError(message) {
    showError(document.getElementById('flow'), message ? `The FLOW stream is unreachable: ${message}` : '');
    badge('summary-flow', message ? 'flow: unreachable' : 'flow: live', message ? 'bad' : 'ok');
  }

  function onSnapshot(snap) {
    state.refresh = snap.refresh_ms || state.refresh;
    drawGraph(snap);
    const body = document.querySelector('#recent tbody');
    const rows = snap.recent.slice().reverse().map(recentRow);
    body.replaceChildren(...(rows.length ? rows : [el('tr', { class: 'none' }, el('td', { colspan: '7' }, 'none yet'))]));
    state.recent = Math.max(snap.recent.length, 50);
    document.getElementById('since').textContent = snap.since ? `counted since ${dateTime(snap.since)}` : '';
    setFlowError(snap.flow_error);
    if (!state.polling) {
      state.polling = true;
      poll('overdue', '/api/overdue', renderOverdue);
      poll('deadletters', '/api/deadletters', renderDeadLetters);
      poll('streams', '/api/streams', renderStreams);
    }
  }

  function follow() {
    const source = new EventSource('/api/flow/stream');
    source.addEventListener('snapshot', (m) => onSnapshot(JSON.parse(m.data)));
    source.addEventListener('flow', (m) => {
      const { event, edge } = JSON.parse(m.data);
      updateEdge(edge);
      addRecent(event);
      if (event.stage === 'sent' || event.stage === 'resent') launch(event);
      if (event.stage === 'refused') flashRefused(event.to);
    });
    source.addEventListener('status', (m) => setFlowError(JSON.parse(m.data).flow_error));
    // EventSource reconnects by itself and then gets a snapshot again.
    source.onerror = () => {
      showError(document.getElementById('flow'), 'Lost the console; reconnecting…');
      badge('summary-flow', 'flow: reconnecting', 'bad');
    };
  }

  // poll reads one source every state.refresh, and says so when it is unreachable.
  function poll(id, url, render) {
    const panel = document.getElementById(id);
    const tick = async () => {
      try {
        const resp = await fetch(url, { cache: 'no-store', headers: { Accept: 'application/json' } });
        const body = await resp.json().catch(() => null);
        if (!resp.ok || !body) throw new Error((body && body.error) || `HTTP ${resp.status}`);
        render(panel, body.items);
        showError(panel, '');
        panel.querySelector('.updated').textContent = `updated ${clock(body.time)}`;
      } catch (err) {
        showError(panel, `Unreachable: ${err.message}`);
        badge(`summary-${id}`, `${id === 'deadletters' ? 'dead letters' : id}: unreachable`, 'bad');
      } finally {
        setTimeout(tick, state.refresh);
      }
    };
    tick();
  }

  function fill(panel, rows, columns) {
    const body = panel.querySelector('tbody');
    body.replaceChildren(...(rows.length ? rows : [el('tr', { class: 'none' }, el('td', { colspan: String(columns) }, 'none'))]));
    panel.querySelector('.count').textContent = `(${rows.length})`;
  }

  function renderOverdue(panel, items) {
    const now = Date.now();
    fill(panel, items.map((o) => {
      const due = new Date(o.due).getTime();
      return el('tr', { 'data-handover': o.handover_id, 'data-agency': o.agency, 'data-deadline': o.deadline },
        el('td', {}, o.agency), el('td', {}, o.direction), el('td', { class: 'id' }, o.handover_id),
        el('td', { class: 'id' }, o.case_id), el('td', {}, `${o.from} → ${o.to}`), el('td', {}, o.state),
        el('td', {}, o.deadline), el('td', {}, dateTime(o.due)),
        el('td', {}, due <= now ? ago(now - due) : 'marked by the recipient'));
    }), 9);
    badge('summary-overdue', `overdue: ${items.length}`, items.length ? 'warn' : 'ok');
  }

  function renderDeadLetters(panel, items) {
    fill(panel, items.map((d) => el('tr', { 'data-handover': d.handover_id, 'data-agency': d.agency, 'data-stream': d.stream },
      el('td', {}, d.agency), el('td', {}, d.stream), el('td', { class: 'num' }, d.sequence), el('td', {}, dateTime(d.time)),
      el('td', {}, d.from), el('td', { class: 'id' }, d.handover_id), el('td', { class: 'id' }, d.event_id),
      el('td', { class: 'num' }, d.deliveries), el('td', {}, d.reason))), 9);
    badge('summary-deadletters', `dead letters: ${items.length}`, items.length ? 'bad' : 'ok');
  }

  function renderStreams(panel, items) {
    const now = Date.now();
    let lagging = 0;
    fill(panel, items.map((s) => {
      const behind = s.sources.some((src) => src.lag > 0) || s.consumers.some((c) => c.pending > 0 || c.ack_pending > 0);
      if (behind) lagging++;
      const sources = s.sources.map((src) => `← ${src.name} ${src.lag} (heard ${src.heard_ms < 0 ? 'never' : ago(src.heard_ms) + ' ago'})`).join('; ');
      const consumers = s.consumers.map((c) => `${c.name} ${c.pending} / ${c.ack_pending} / ${c.redelivered}`).join('; ');
      return el('tr', { class: behind ? 'lagging' : '', 'data-stream': s.name, 'data-account': s.account },
        el('td', {}, s.server), el('td', {}, s.account), el('td', {}, s.name),
        el('td', { class: 'num' }, s.messages), el('td', { class: 'num' }, bytes(s.bytes)),
        el('td', {}, s.last_message ? `${ago(now - new Date(s.last_message).getTime())} ago` : 'never'),
        el('td', {}, sources), el('td', {}, consumers));
    }), 8);
    badge('summary-streams', lagging ? `streams: ${lagging} behind` : `streams: ${items.length} ok`, lagging ? 'warn' : 'ok');
  }

  follow();
})();
