// PROPASS operator dashboard. Plain ES2020, no build step: the server embeds
// this file as is. Every string that comes from the server (names, reasons,
// errors a kiosk reported) reaches the page through textContent only.
'use strict';

// The browser test compares this later to prove the page was never reloaded.
window.__propassLoadedAt = Date.now();

const FEED_MAX = 200;
const PAGE = 50;
const HOURS = 72;
const COLORS = ['#2563eb', '#dc2626', '#059669', '#d97706', '#7c3aed', '#0891b2', '#db2777', '#4b5563'];

const $ = (sel, root = document) => root.querySelector(sel);

// One place that builds elements, so no code path is tempted to use innerHTML.
function h(tag, attrs, ...kids) {
  const [name, ...classes] = tag.split('.');
  const el = document.createElement(name);
  if (classes.length) el.className = classes.join(' ');
  return fill(el, attrs, kids);
}
function svg(tag, attrs, ...kids) {
  return fill(document.createElementNS('http://www.w3.org/2000/svg', tag), attrs, kids);
}
function fill(el, attrs, kids) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v == null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'testid') el.dataset.testid = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
  for (const kid of kids.flat()) {
    if (kid != null && kid !== false) el.append(kid instanceof Node ? kid : String(kid));
  }
  return el;
}

// ---------------------------------------------------------------- state

function freshState() {
  return {
    user: null, csrf: null, es: null, retry: 0, retryTimer: null, view: null,
    clients: new Map(), devices: [], deviceAt: new Map(), fleetChanged: new Set(), fleetRedraw: false,
    cards: new Map(), stats: null,
    feed: [], feedIds: new Set(), feedLoaded: false,
    ledger: { cursor: null, next: null, stack: [] },
    audit: { cursor: null, next: null, stack: [], ids: new Set() },
  };
}
let S = freshState();

// ---------------------------------------------------------------- API

class ApiError extends Error {
  constructor(code, message, status) { super(message); this.code = code; this.status = status; }
}

async function api(path, method = 'GET', body) {
  const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
  if (method !== 'GET') {
    init.headers['Content-Type'] = 'application/json';
    init.headers['X-CSRF-Token'] = S.csrf || '';
    init.body = JSON.stringify(body || {});
  }
  let res;
  try {
    res = await fetch(path, init);
  } catch {
    throw new ApiError('network', 'The server cannot be reached. Check the connection and try again.', 0);
  }
  const data = await res.json().catch(() => null);
  if (res.ok && data && data.success !== false) return data;
  const e = (data && data.error) || {};
  if (e.code === 'csrf_rejected' && method !== 'GET') {
    // A stale token (say, after a re-login in another tab): take the current
    // one so that trying again works.
    const s = await api('/api/admin/session').catch(() => null);
    if (s) S.csrf = s.csrf_token;
    throw new ApiError(e.code, `${e.message || 'The request was refused.'} Please try again.`, res.status);
  }
  throw new ApiError(e.code || `http_${res.status}`, e.message || `The server answered HTTP ${res.status}.`, res.status);
}

// Object answers may come bare or wrapped ({client: {...}}); accept both.
const unwrap = (data, key) => (data && data[key] && typeof data[key] === 'object' ? data[key] : data);
const enc = encodeURIComponent;

// Every failure ends here, so nothing fails silently or as a blank page.
function report(err) {
  if (!(err instanceof ApiError)) {
    console.error(err);
    showError(`Something went wrong in the page: ${err && err.message ? err.message : err}`);
    return;
  }
  if (err.code === 'session_required') return endSession();
  if (err.code === 'rate_limited') return showError(`${err.message} Wait a moment before trying again.`);
  showError(err.message);
}

let bannerTimer;
function showError(msg) {
  $('#banner-text').textContent = msg;
  $('#banner').hidden = false;
  clearTimeout(bannerTimer);
  bannerTimer = setTimeout(() => { $('#banner').hidden = true; }, 15000);
}
let toastTimer;
function toast(msg) {
  $('#toast').textContent = msg;
  $('#toast').hidden = false;
  clearTimeout(toastTimer);
  toastTimer = setTimeout(() => { $('#toast').hidden = true; }, 4000);
}

// Disables the button for the duration so a double click is not a double top-up.
async function busy(btn, work) {
  if (btn) btn.disabled = true;
  try { return await work(); } finally { if (btn) btn.disabled = false; }
}

// Runs `fn` once, `ms` after the first of a burst of calls: later calls ride
// along instead of pushing it back, so a steady stream of events (a big
// fleet's heartbeats) still refreshes the view every `ms`.
const timers = {};
function debounce(key, ms, fn) {
  if (timers[key]) return;
  timers[key] = setTimeout(() => {
    delete timers[key];
    Promise.resolve().then(fn).catch(report);
  }, ms);
}

// A CSV export is a plain link (the browser streams the file to disk), so an
// error answer would be saved as the file. Ask first; on an error, say it.
function guardDownload(link) {
  link.addEventListener('click', async (ev) => {
    if (link.dataset.checked === '1') { delete link.dataset.checked; return; }
    ev.preventDefault();
    const stop = new AbortController();
    try {
      let res;
      try {
        res = await fetch(link.href, { credentials: 'same-origin', signal: stop.signal });
      } catch {
        throw new ApiError('network', 'The server cannot be reached. Check the connection and try again.', 0);
      }
      if (!res.ok) {
        const e = ((await res.json().catch(() => null)) || {}).error || {};
        throw new ApiError(e.code || `http_${res.status}`, e.message || `The server answered HTTP ${res.status}.`, res.status);
      }
      stop.abort();
      link.dataset.checked = '1';
      link.click();
    } catch (err) {
      report(err);
    }
  });
}

// ---------------------------------------------------------------- formatting

const fmtTime = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', second: '2-digit' });
const fmtDate = new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric', hour: '2-digit', minute: '2-digit' });
const fmtHour = new Intl.DateTimeFormat(undefined, { weekday: 'short', hour: 'numeric' });

function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  return (d.toDateString() === new Date().toDateString() ? fmtTime : fmtDate).format(d);
}
function timeCell(iso) {
  const d = iso ? new Date(iso) : null;
  return h('td.time', { title: d && !Number.isNaN(d.getTime()) ? d.toLocaleString() : null }, when(iso));
}
const chip = (text, kind = '') => h(`span.chip${kind ? '.' + kind : ''}`, {}, text);
const clientName = (id) => (S.clients.get(id) || {}).name || (id == null ? '—' : `#${id}`);
function deviceName(id) {
  const d = deviceById(id);
  return (d && d.name) || id || '—';
}
const signed = (n) => (n > 0 ? `+${n}` : String(n));

// ---------------------------------------------------------------- session

async function boot() {
  wireStatic();
  try {
    startSession(await api('/api/admin/session'));
  } catch (err) {
    showLogin();
    if (err.code !== 'session_required') report(err);
  }
}

function showLogin(notice) {
  $('#app').hidden = true;
  $('#login').hidden = false;
  $('#login-notice').textContent = notice || '';
  $('#login-notice').hidden = !notice;
  $('#login-error').hidden = true;
  $('#login-password').value = '';
  $('#login-username').focus();
}

async function login(ev) {
  ev.preventDefault();
  const username = $('#login-username').value.trim();
  const password = $('#login-password').value;
  const error = $('#login-error');
  error.hidden = true;
  if (!username || !password) {
    error.textContent = 'Enter your username and password.';
    error.hidden = false;
    return;
  }
  try {
    const s = await busy($('#login-submit'), () => api('/api/admin/login', 'POST', { username, password }));
    startSession(s);
  } catch (err) {
    error.textContent = err.code === 'invalid_credentials' ? 'Wrong username or password.' : err.message;
    error.hidden = false;
  }
}

function startSession(s) {
  closeLive();
  S = freshState();
  S.user = s.user;
  S.csrf = s.csrf_token;
  for (const id of ['fleet-body', 'feed-body', 'client-list', 'ledger-body', 'audit-body', 'users-body', 'chart-legend']) $(`#${id}`).replaceChildren();
  $('#enroll-result').hidden = true;
  $('#banner').hidden = true;
  $('#login').hidden = true;
  $('#app').hidden = false;
  $('#login-notice').hidden = true;
  $('#who').textContent = `${s.user.username} · ${s.user.role}`;
  $('#nav [data-view="users"]').hidden = s.user.role !== 'admin';
  openLive();
  route();
}

// The one way out, whether the server ended the session or the person did.
function endSession(message, quiet) {
  if (!S.user) return;
  closeLive();
  for (const [k, t] of Object.entries(timers)) { clearTimeout(t); delete timers[k]; }
  if ($('#dlg').open) $('#dlg').close();
  S = freshState();
  showLogin(quiet ? '' : [message, 'Your session has ended — log in again.'].filter(Boolean).join(' '));
}

async function logout() {
  try { await api('/api/admin/logout', 'POST', {}); } catch (err) { if (err.code !== 'session_required') return report(err); }
  endSession(null, true);
}

// ---------------------------------------------------------------- live events

function setLive(state) {
  const el = $('#live-status');
  el.className = `live ${state}`;
  el.textContent = { live: 'Live', reconnecting: 'Reconnecting…', connecting: 'Connecting…' }[state];
}

function closeLive() {
  clearTimeout(S.retryTimer);
  if (S.es) S.es.close();
  S.es = null;
}

function openLive() {
  closeLive();
  setLive(S.retry ? 'reconnecting' : 'connecting');
  const es = new EventSource('/api/admin/events');
  S.es = es;
  const on = (name, fn) => es.addEventListener(name, (ev) => {
    if (S.es !== es) return;
    let data;
    try { data = JSON.parse(ev.data || '{}'); } catch { return; }
    try { fn(data); } catch (err) { report(err); }
  });
  // Every hello, the first included, refetches: events sent while we were
  // loading or disconnected are not replayed by the server.
  on('hello', () => { S.retry = 0; setLive('live'); refreshAll(); });
  on('copy', onCopy);
  on('client', onClient);
  on('devices', (d) => (d.devices || []).forEach(onDevice));
  on('audit', onAudit);
  // The server's frame says what the notice says: one line, not two.
  on('session_ended', () => endSession());
  es.onerror = () => {
    if (S.es !== es) return;
    setLive('reconnecting');
    // CONNECTING means the browser retries by itself; CLOSED means it gave up
    // (an HTTP error such as 401), so ask whether the session still exists.
    if (es.readyState === EventSource.CLOSED) scheduleReconnect();
  };
}

function scheduleReconnect() {
  closeLive();
  const delay = Math.min(30000, 1000 * 2 ** S.retry);
  S.retry += 1;
  S.retryTimer = setTimeout(async () => {
    try {
      const s = await api('/api/admin/session');
      S.csrf = s.csrf_token;
      openLive();
    } catch (err) {
      if (err.code === 'session_required') endSession();
      else scheduleReconnect();
    }
  }, delay);
}

function refreshAll() {
  Promise.all([loadClients(), loadDevices()])
    .then(() => S.view && VIEWS[S.view]())
    .catch(report);
}

function onCopy(c) {
  const fresh = addFeed([c]);
  if (fresh.length && S.view === 'feed') {
    const body = $('#feed-body');
    body.prepend(feedRow(c, true));
    while (body.children.length > FEED_MAX) body.lastChild.remove();
    $('#feed-empty').hidden = true;
  }
  if (S.view === 'ledger' && !S.ledger.cursor) debounce('ledger', 500, () => loadLedger(null));
  if (S.view === 'clients') debounce('stats', 1000, loadStats);
}

function onClient(c) {
  const before = S.clients.get(c.id);
  S.clients.set(c.id, c);
  if (!before || before.name !== c.name) fillClientPickers();
  if (S.view === 'clients') {
    renderClients();
    // A top-up, a correction or a void changes the burn-down's hours, not only its end.
    if (before && (before.total !== c.total || c.used < before.used)) debounce('stats', 1000, loadStats);
    else debounce('charts', 300, drawCharts);
    const card = S.cards.get(c.id);
    if (card && !card.r.history.hidden) loadHistory(c.id).catch(report);
  }
  if (S.view === 'fleet' && before && before.name !== c.name) renderFleet();
}

function onAudit(e) {
  if (S.view === 'users') debounce('users', 300, loadUsers);
  const action = auditAction();
  if (S.view !== 'audit' || S.audit.cursor || (action && e.action !== action) || S.audit.ids.has(e.id)) return;
  S.audit.ids.add(e.id);
  $('#audit-body').prepend(auditRow(e, true));
  $('#audit-empty').hidden = true;
}

// ---------------------------------------------------------------- routing

// What each view fetches beyond clients and devices, which events keep current.
const VIEWS = {
  fleet: async () => {},
  feed: loadFeed,
  clients: loadStats,
  ledger: () => loadLedger(S.ledger.cursor),
  audit: () => loadAudit(S.audit.cursor),
  users: loadUsers,
};

function closeMenu() {
  $('.top').classList.remove('open');
  $('#nav-toggle').setAttribute('aria-expanded', 'false');
}

function route() {
  if (!S.user) return;
  let name = location.hash.slice(1);
  if (!VIEWS[name] || (name === 'users' && S.user.role !== 'admin')) name = 'fleet';
  S.view = name;
  for (const v of Object.keys(VIEWS)) $(`#view-${v}`).hidden = v !== name;
  for (const a of document.querySelectorAll('#nav a')) {
    if (a.dataset.view === name) a.setAttribute('aria-current', 'page'); else a.removeAttribute('aria-current');
  }
  closeMenu();
  const base = name === 'fleet' || name === 'clients' ? [loadClients(), loadDevices()] : [];
  Promise.all([...base, VIEWS[name]()]).catch(report);
}

// ---------------------------------------------------------------- fleet

async function loadDevices() {
  const r = await api('/api/admin/devices');
  S.devices = r.devices || [];
  S.deviceAt = new Map(S.devices.map((d, i) => [d.device_id, i]));
  if (S.view === 'fleet') renderFleet();
  if (S.view === 'clients') renderClients();
}

// A kiosk's row, sent by the server (in a `devices` event, with the other
// kiosks that changed at the same time) whenever it changes: folded in without
// refetching the fleet, and the views redrawn at most every 200 ms, so a big
// fleet's heartbeats cost neither a fleet list nor a redraw each.
function onDevice(d) {
  if (!d || !d.device_id) return;
  if (S.view === 'fleet') {
    // Only a kiosk that enters or leaves the filtered list moves the rows
    // below it; any other redraws its own row, if it is shown.
    const keep = fleetFilter();
    const old = deviceById(d.device_id);
    const was = !!old && keep(old);
    if (was !== keep(d)) S.fleetRedraw = true;
    else if (was) S.fleetChanged.add(d.device_id);
  }
  putDevice(d);
  debounce('device-views', 200, () => {
    if (S.view === 'fleet') refreshFleetRows();
    if (S.view === 'clients') renderClients();
  });
}

const deviceById = (id) => S.devices[S.deviceAt.get(id)];
function putDevice(d) {
  const i = S.deviceAt.get(d.device_id);
  if (i != null) S.devices[i] = d;
  else { S.deviceAt.set(d.device_id, S.devices.length); S.devices.push(d); }
}

// The fleet view shows at most this many rows: a fleet of thousands is
// searched, not scrolled, and a page that redraws 10,000 rows at each
// heartbeat is one a tablet cannot keep up with.
const FLEET_ROWS = 200;

function fleetFilter() {
  const f = $('#fleet-filters');
  const q = f.elements.q.value.trim().toLowerCase();
  const attention = f.elements.attention.checked;
  return (d) => {
    if (q && !String(d.device_id).toLowerCase().includes(q) && !String(d.name || '').toLowerCase().includes(q)) return false;
    if (!attention) return true;
    const flags = (d.health && d.health.flags) || [];
    return d.status === 'pending' || flags.length > 0;
  };
}

function renderFleet() {
  S.fleetChanged.clear();
  S.fleetRedraw = false;
  const shown = S.devices.filter(fleetFilter());
  const rows = shown.slice(0, FLEET_ROWS).map(deviceRow);
  $('#fleet-body').replaceChildren(...rows);
  $('#fleet-empty').hidden = S.devices.length > 0;
  const more = $('#fleet-more');
  if (S.devices.length > 0 && shown.length === 0) more.textContent = 'No kiosk matches.';
  else if (shown.length > rows.length) more.textContent = `Showing ${rows.length} of ${shown.length} matching kiosks: narrow the search to see the others.`;
  else more.textContent = '';
  more.hidden = !more.textContent;
  fleetSummary();
}

// Rows of kiosks that changed, redrawn in place (those beyond the rows
// shown cost nothing); a kiosk that entered or left the filtered list
// redraws the list.
function refreshFleetRows() {
  if (S.fleetRedraw) return renderFleet();
  const shown = new Map([...$('#fleet-body').children].map((tr) => [tr.dataset.deviceId, tr]));
  for (const id of S.fleetChanged) {
    const tr = shown.get(id);
    const d = deviceById(id);
    if (tr && d) tr.replaceWith(deviceRow(d));
  }
  S.fleetChanged.clear();
  fleetSummary();
}

function fleetSummary() {
  const online = S.devices.filter((d) => d.health && d.health.online).length;
  const pending = S.devices.filter((d) => d.status === 'pending').length;
  $('#fleet-summary').textContent = `${S.devices.length} kiosks · ${online} online${pending ? ` · ${pending} awaiting approval` : ''}`;
}

function deviceRow(d) {
  const hl = d.health || {};
  const online = !!hl.online;
  const id = d.device_id;
  const act = (label, fn, cls = 'ghost') => h(`button.small.${cls}`, { type: 'button', onclick: (ev) => fn(d, ev.currentTarget) }, label);
  const actions = [];
  if (d.status === 'pending') actions.push(act('Approve', approveDevice, 'primary'));
  actions.push(act('Rename', renameDevice));
  if (d.status === 'active') actions.push(act('Clients', assignClients), act('Revoke', revokeDevice, 'danger'));
  const held = (d.leases || []).filter((l) => l.units > 0);
  if (held.length) actions.push(act('Take back lease', reclaimLease));
  if (d.status === 'revoked') actions.push(act('Reinstate', reinstateDevice));
  const backlog = hl.pending == null ? '—' : String(hl.pending);
  const skew = hl.clock_skew_ms == null ? null : `clock skew ${Math.round(hl.clock_skew_ms / 1000)} s`;
  const detail = [hl.reader && `reader: ${hl.reader}`, skew, hl.failed ? `${hl.failed} failed` : null].filter(Boolean).join(' · ');
  return h('tr', { testid: 'device-row', 'data-device-id': id, class: `st-${d.status}` },
    h('td', {}, h('div.strong', {}, d.name || id), d.name ? h('div.sub', {}, id) : null,
      hl.last_error && hl.last_error !== hl.storage_error ? h('div.sub.err', { title: 'last error' }, hl.last_error) : null,
      hl.storage_error ? h('div.sub.err', { title: 'its database refuses writes: it makes no card' }, `cannot record: ${hl.storage_error}`) : null),
    h('td', {}, h('span', { class: `badge st-${d.status}` }, d.status || '?')),
    h('td', {}, h('span', { class: `badge ${online ? 'on' : 'off'}`, testid: 'device-online' }, online ? 'online' : 'offline')),
    timeCell([hl.heartbeat_at, d.last_seen].filter(Boolean).sort((x, y) => Date.parse(y) - Date.parse(x))[0]),
    h('td', {}, d.agent_version || '—'),
    h('td.num', { title: hl.oldest_pending_at ? `oldest ${new Date(hl.oldest_pending_at).toLocaleString()}` : null }, backlog),
    h('td', {}, (hl.flags || []).map((f) => chip(f.replace(/_/g, ' '), 'warn')), detail ? h('div.sub', {}, detail) : null),
    h('td', { testid: 'device-clients' }, clientsHeld(d) || '—'),
    h('td.actions', {}, actions));
}

// Each client a kiosk serves, with the units it holds in lease of it
// (spendable offline).
function clientsHeld(d) {
  const held = new Map((d.leases || []).map((l) => [l.client_id, l.units]));
  return (d.clients || [])
    .map((c) => (held.get(c) ? `${clientName(c)} (${held.get(c)} held)` : clientName(c)))
    .join(', ');
}

// Accepts the bare device object or a wrapped one and folds it into the list.
function mergeDevice(data) {
  const d = unwrap(data, 'device');
  if (d && d.device_id) putDevice(d);
  renderFleet();
}

function clientChecks(selected) {
  const chosen = new Set((selected || []).map(String));
  const active = [...S.clients.values()].filter((c) => !c.archived).sort(byName);
  if (!active.length) return [h('p.muted', {}, 'No clients yet.')];
  return active.map((c) => h('label.inline', {}, h('input', { type: 'checkbox', name: 'client', value: c.id, checked: chosen.has(String(c.id)) }), c.name));
}
const checkedIds = (root) => [...root.querySelectorAll('input[name=client]:checked')].map((i) => idValue(i.value));
// Client ids are numbers in JSON; a checkbox value is a string.
const idValue = (v) => (/^\d+$/.test(v) ? Number(v) : v);

function approveDevice(d) {
  dialog(`Approve ${d.name || d.device_id}`, [h('p', {}, 'Clients this kiosk serves:'), ...clientChecks(d.clients)], 'Approve',
    async (form) => mergeDevice(await api(`/api/admin/devices/${enc(d.device_id)}/approve`, 'POST', { clients: checkedIds(form) })));
}
function assignClients(d) {
  dialog(`Clients of ${d.name || d.device_id}`, clientChecks(d.clients), 'Save', async (form) => {
    const now = new Set(checkedIds(form).map(String));
    const was = new Set((d.clients || []).map(String));
    const add = [...now].filter((x) => !was.has(x)).map(idValue);
    const remove = [...was].filter((x) => !now.has(x)).map(idValue);
    if (add.length || remove.length) mergeDevice(await api(`/api/admin/devices/${enc(d.device_id)}/clients`, 'POST', { add, remove }));
  });
}
function renameDevice(d) {
  const input = h('input', { name: 'name', value: d.name || '', maxlength: 100, required: true });
  dialog(`Rename ${d.device_id}`, [h('label', {}, 'Name ', input)], 'Rename', async () => {
    const name = input.value.trim();
    if (!name) throw new Error('Enter a name.');
    mergeDevice(await api(`/api/admin/devices/${enc(d.device_id)}`, 'PATCH', { name }));
  });
}
function revokeDevice(d) {
  dialog(`Revoke ${d.name || d.device_id}?`, [h('p', {}, 'The kiosk stops copying and its credentials stop working. You can reinstate it later.')], 'Revoke',
    async () => mergeDevice(await api(`/api/admin/devices/${enc(d.device_id)}/revoke`, 'POST', {})));
}
function reclaimLease(d) {
  const units = (d.leases || []).reduce((n, l) => n + l.units, 0);
  dialog(`Take back the lease of ${d.name || d.device_id}?`,
    [h('p', {}, `The ${units} unit(s) it holds go back to its clients' free units. For a kiosk that will not come back: a connected kiosk asks for units again at once, and copies it made offline are still recorded when it returns.`)],
    'Take back', async () => mergeDevice(await api(`/api/admin/devices/${enc(d.device_id)}/reclaim`, 'POST', {})));
}
function reinstateDevice(d, btn) {
  busy(btn, async () => mergeDevice(await api(`/api/admin/devices/${enc(d.device_id)}/reinstate`, 'POST', {}))).catch(report);
}

async function createEnrollment(ev) {
  ev.preventDefault();
  const form = ev.currentTarget;
  const body = {};
  const name = form.elements.name.value.trim();
  if (name) body.name = name;
  const clients = checkedIds(form);
  if (clients.length) body.clients = clients;
  const hours = form.elements.valid_hours.value;
  if (hours) body.valid_hours = Number(hours);
  try {
    const r = await busy(form.querySelector('button[type=submit]'), () => api('/api/admin/enrollment-codes', 'POST', body));
    $('#enroll-command').textContent = `propass-agent enroll --server ${location.origin} --code ${r.code}`;
    $('#enroll-expires').textContent = r.expires_at ? new Date(r.expires_at).toLocaleString() : 'soon';
    $('#enroll-result').hidden = false;
    form.elements.name.value = '';
  } catch (err) { report(err); }
}

// ---------------------------------------------------------------- live feed

// Returns the copies that were new, newest first, capped at FEED_MAX.
function addFeed(list) {
  const fresh = list.filter((c) => c && c.id != null && !S.feedIds.has(c.id));
  if (!fresh.length) return fresh;
  const key = (c) => Date.parse(c.received_at || c.occurred_at) || 0;
  S.feed = S.feed.concat(fresh).sort((a, b) => key(b) - key(a)).slice(0, FEED_MAX);
  S.feedIds = new Set(S.feed.map((c) => c.id));
  return fresh;
}

async function loadFeed() {
  const r = await api(`/api/admin/copies?limit=20`);
  addFeed(r.copies || []);
  if (S.view === 'feed') {
    $('#feed-body').replaceChildren(...S.feed.map((c) => feedRow(c, false)));
    $('#feed-empty').hidden = S.feed.length > 0;
  }
}

function copyFlags(c) {
  return [c.overdraft && chip('overdraft', 'bad'), c.unverified && chip('unverified', 'warn'), c.voided && chip('voided')];
}
function feedRow(c, fresh) {
  return h(`tr${fresh ? '.fresh' : ''}`, { testid: 'feed-row', 'data-copy-id': c.id },
    timeCell(c.occurred_at || c.received_at),
    h('td', {}, deviceName(c.device_id)),
    h('td', {}, clientName(c.client_id)),
    h('td', {}, c.kind || '—'),
    h('td', {}, copyFlags(c)));
}

// ---------------------------------------------------------------- clients

const byName = (a, b) => String(a.name).localeCompare(String(b.name));

async function loadClients() {
  // Archived ones too: the ledger still names them and the view can show them.
  const r = await api('/api/admin/clients?archived=true');
  S.clients = new Map((r.clients || []).map((c) => [c.id, c]));
  fillClientPickers();
  if (S.view === 'clients') { renderClients(); drawCharts(); }
  if (S.view === 'fleet') renderFleet();
}

// Pickers are rebuilt whenever names change; what was chosen stays chosen.
function fillClientPickers() {
  const sel = $('#ledger-filters').elements.client;
  const keep = sel.value;
  const all = [...S.clients.values()].sort(byName);
  sel.replaceChildren(h('option', { value: '' }, 'All clients'), ...all.map((c) => h('option', { value: c.id }, c.name + (c.archived ? ' (archived)' : ''))));
  sel.value = keep;
  const box = $('#enroll-clients');
  box.replaceChildren(...clientChecks(checkedIds(box)));
}

// Cards are kept and updated in place, so a live update never wipes what
// someone is typing into a top-up form.
function renderClients() {
  const list = $('#client-list');
  const showArchived = $('#show-archived').checked;
  const shown = [...S.clients.values()].filter((c) => showArchived || !c.archived).sort(byName);
  shown.forEach((c, i) => {
    let card = S.cards.get(c.id);
    if (!card) { card = clientCard(c.id); S.cards.set(c.id, card); }
    updateCard(card, c);
    if (list.children[i] !== card.el) list.insertBefore(card.el, list.children[i] || null);
  });
  const ids = new Set(shown.map((c) => c.id));
  for (const [id, card] of S.cards) if (!ids.has(id)) { card.el.remove(); S.cards.delete(id); }
  $('#clients-empty').hidden = shown.length > 0;
}

function clientCard(id) {
  const r = {
    name: h('h3'), badges: h('span.badges'), remaining: h('strong.remaining', { testid: 'client-remaining' }),
    used: h('div.bar-used', { testid: 'quota-bar' }), leased: h('div.bar-leased'),
    figures: h('div.figures'), kiosks: h('div.sub'),
    delta: h('input', { type: 'number', step: 1, name: 'delta', placeholder: '±', testid: 'topup-delta', 'aria-label': 'Quota change' }),
    reason: h('input', { name: 'reason', placeholder: 'Reason (required)', maxlength: 200, testid: 'topup-reason', 'aria-label': 'Reason' }),
    submit: h('button', { type: 'submit', testid: 'topup-submit' }, 'Top up'),
    msg: h('p.form-msg', { testid: 'topup-message', role: 'status', hidden: true }),
    history: h('div.history', { testid: 'quota-history', hidden: true }),
    archive: h('button.small.ghost', { type: 'button', onclick: () => toggleArchive(id) }),
    policy: h('button.small.ghost', { type: 'button', testid: 'client-policy', onclick: () => togglePolicy(id) }),
  };
  const el = h('article.card.client', { testid: 'client-row', 'data-client-id': id },
    h('div.client-head', {}, r.name, r.badges,
      h('span.grow'),
      h('span.remaining-box', {}, r.remaining, h('span.muted', {}, ' left'))),
    h('div.bar', { title: 'used / leased / total' }, r.used, r.leased),
    r.figures, r.kiosks,
    h('form.topup', { novalidate: true, onsubmit: (ev) => topUp(ev, id, r) }, r.delta, r.reason, r.submit),
    r.msg,
    h('div.card-actions', {},
      h('button.small.ghost', { type: 'button', onclick: () => toggleHistory(id) }, 'History'),
      h('button.small.ghost', { type: 'button', onclick: () => renameClient(id) }, 'Rename'),
      r.policy,
      h('button.small.ghost', { type: 'button', testid: 'client-keys', onclick: () => setReaderKeys(id) }, 'Reader keys'),
      r.archive),
    r.history);
  return { el, r };
}

function updateCard({ el, r }, c) {
  r.name.textContent = c.name;
  const keys = Number(c.reader_key_count) || 0;
  r.badges.replaceChildren(c.archived ? chip('archived') : '', c.partial_copy ? chip('partial copy') : '',
    keys ? chip(`${keys} reader key${keys === 1 ? '' : 's'}`) : '',
    ...(c.flags || []).map((f) => chip(f.replace(/_/g, ' '), 'warn')));
  r.remaining.textContent = String(c.remaining);
  const total = Math.max(0, Number(c.total) || 0);
  const pct = (n) => (total > 0 ? Math.max(0, Math.min(100, (100 * n) / total)) : (n > 0 ? 100 : 0));
  const used = pct(c.used);
  r.used.style.width = `${used}%`;
  r.leased.style.width = `${Math.min(pct(c.leased), 100 - used)}%`;
  r.figures.textContent = `used ${c.used} of ${c.total} · leased ${c.leased} · overdrafts ${c.overdrafts}`;
  r.kiosks.textContent = (c.kiosks || []).length ? `Kiosks: ${c.kiosks.map(deviceName).join(', ')}` : 'No kiosk serves this client.';
  // For tests and scripts: the figures the text above is made of.
  Object.assign(el.dataset, { total: c.total, used: c.used, leased: c.leased });
  el.classList.toggle('overdrawn', c.remaining < 0);
  el.classList.toggle('archived', !!c.archived);
  r.archive.textContent = c.archived ? 'Unarchive' : 'Archive';
  r.policy.textContent = c.partial_copy ? 'Whole copies only' : 'Allow partial copies';
  r.policy.title = c.partial_copy
    ? 'Refuse badges with sectors the kiosk cannot read'
    : 'Copy badges without the sectors the kiosk cannot read';
}

function mergeClient(data) {
  const c = unwrap(data, 'client');
  if (c && c.id != null) onClient(c);
  return c;
}

async function topUp(ev, id, r) {
  ev.preventDefault();
  const say = (text, bad) => { r.msg.textContent = text; r.msg.className = `form-msg${bad ? ' error' : ''}`; r.msg.hidden = false; };
  const delta = Number(r.delta.value);
  const reason = r.reason.value.trim();
  if (!r.delta.value || !Number.isInteger(delta) || delta === 0) { say('Enter a whole number other than 0 (negative to take quota back).', true); r.delta.focus(); return; }
  if (!reason) { say('A reason is required for every quota change.', true); r.reason.focus(); return; }
  try {
    const c = await busy(r.submit, () => api(`/api/admin/clients/${enc(id)}/quota`, 'POST', { delta, reason }));
    mergeClient(c);
    r.delta.value = '';
    r.reason.value = '';
    say(`${signed(delta)} recorded.`, false);
  } catch (err) {
    say(err.message, true);
    report(err);
  }
}

function toggleHistory(id) {
  const card = S.cards.get(id);
  if (!card) return;
  card.r.history.hidden = !card.r.history.hidden;
  if (!card.r.history.hidden) loadHistory(id).catch(report);
}
async function loadHistory(id) {
  const r = await api(`/api/admin/clients/${enc(id)}/quota-history`);
  const card = S.cards.get(id);
  if (!card) return;
  const entries = r.entries || [];
  card.r.history.replaceChildren(entries.length
    ? h('table.grid.compact', {}, h('tbody', {}, entries.map((e) => h('tr', {},
      timeCell(e.at), h('td', {}, e.actor || '—'), h('td.num', {}, signed(e.delta)), h('td', {}, e.reason || '')))))
    : h('p.muted', {}, 'No quota changes yet.'));
}

function renameClient(id) {
  const c = S.clients.get(id);
  const input = h('input', { name: 'name', value: c ? c.name : '', maxlength: 100, required: true });
  dialog('Rename client', [h('label', {}, 'Name ', input)], 'Rename', async () => {
    const name = input.value.trim();
    if (!name) throw new Error('Enter a name.');
    mergeClient(await api(`/api/admin/clients/${enc(id)}`, 'PATCH', { name }));
  });
}
function togglePolicy(id) {
  const c = S.clients.get(id);
  if (!c) return;
  const card = S.cards.get(id);
  busy(card && card.r.policy, async () => mergeClient(await api(`/api/admin/clients/${enc(id)}`, 'PATCH', { partial_copy: !c.partial_copy }))).catch(report);
}

// The keys replace the ones set; the server never shows them again, so the
// box starts empty whatever is set.
function setReaderKeys(id) {
  const c = S.clients.get(id);
  const set = c ? Number(c.reader_key_count) || 0 : 0;
  const input = h('textarea', { name: 'keys', rows: 4, spellcheck: 'false', autocomplete: 'off', testid: 'reader-keys-input', placeholder: 'A0A1A2A3A4A5' });
  dialog(`Reader keys of ${c ? c.name : `#${id}`}`, [
    h('p', {}, `MIFARE keys of this client's badges, 12 hexadecimal digits each, one per line or separated by commas. They replace the ${set} set now, which are never shown again; an empty box removes them. Kiosks serving the client use them from their next pull, which they are asked to make at once.`),
    input,
  ], 'Save keys', async () => {
    const keys = input.value.split(/[\s,]+/).filter(Boolean);
    // Named by position, never repeated: a key is a secret.
    const bad = keys.findIndex((k) => !/^[0-9a-fA-F]{12}$/.test(k));
    if (bad >= 0) throw new Error(`Key ${bad + 1} is not 12 hexadecimal digits.`);
    mergeClient(await api(`/api/admin/clients/${enc(id)}/reader-keys`, 'PUT', { keys }));
  });
  // Saved or cancelled, the keys leave the page.
  $('#dlg').addEventListener('close', () => { input.value = ''; }, { once: true });
}
function toggleArchive(id) {
  const c = S.clients.get(id);
  if (!c) return;
  const card = S.cards.get(id);
  busy(card && card.r.archive, async () => mergeClient(await api(`/api/admin/clients/${enc(id)}`, 'PATCH', { archived: !c.archived }))).catch(report);
}

async function createClient(ev) {
  ev.preventDefault();
  const form = ev.currentTarget;
  const msg = form.querySelector('.form-msg');
  const name = form.elements.name.value.trim();
  const quota = Number(form.elements.quota.value);
  msg.hidden = true;
  if (!name || form.elements.quota.value === '' || !Number.isInteger(quota) || quota < 0) {
    msg.textContent = 'Give the client a name and a whole-number quota of 0 or more.';
    msg.hidden = false;
    return;
  }
  try {
    const c = await busy(form.querySelector('button[type=submit]'), () => api('/api/admin/clients', 'POST', { name, quota, partial_copy: form.elements.partial_copy.checked }));
    mergeClient(c);
    form.reset();
    toast(`Client ${name} created.`);
  } catch (err) { report(err); }
}

// ---------------------------------------------------------------- charts

async function loadStats() {
  S.stats = await api(`/api/admin/stats/hourly?hours=${HOURS}`);
  if (S.view === 'clients') drawCharts();
}

// Turns the sparse series into dense hourly arrays over the whole window.
function hourlyGrid() {
  const st = S.stats;
  if (!st) return null;
  // `from` is the first hour's start; without it, count back from `to`.
  const to = (st.to && Date.parse(st.to)) || Date.now();
  const start = (st.from && Date.parse(st.from)) || Math.floor(to / 3600e3) * 3600e3 - (HOURS - 1) * 3600e3;
  const perHour = (points, field) => {
    const out = new Array(HOURS).fill(0);
    for (const p of points || []) {
      const i = Math.round((Date.parse(p.hour) - start) / 3600e3);
      if (i >= 0 && i < HOURS) out[i] += Number(p[field]) || 0;
    }
    return out;
  };
  const series = (st.series || []).map((s) => ({
    id: s.client_id,
    name: (S.clients.get(s.client_id) || {}).name || s.name || `#${s.client_id}`,
    counts: perHour(s.counts, 'copies'),
    deltas: perHour(s.quota_changes, 'delta'),
  })).filter((s) => s.counts.some((n) => n > 0) || s.deltas.some((n) => n !== 0))
    .sort((a, b) => String(a.id).localeCompare(String(b.id), undefined, { numeric: true }));
  series.forEach((s, i) => { s.color = COLORS[i % COLORS.length]; });
  return { start, series };
}

function drawCharts() {
  const grid = hourlyGrid();
  const hourly = $('#chart-hourly');
  const burn = $('#chart-burndown');
  const legend = $('#chart-legend');
  if (!grid || !grid.series.length) {
    for (const el of [hourly, burn]) el.replaceChildren(svg('text', { x: CW / 2, y: CH / 2, 'text-anchor': 'middle', class: 'chart-empty' }, grid ? 'No copies or quota changes in the last 72 hours' : 'Loading…'));
    legend.replaceChildren();
    return;
  }
  barChart(hourly, grid.start, grid.series);
  // Unused quota (total - used, leased units included) at the end of hour i
  // = unused now + copies made after hour i - quota added after hour i.
  lineChart(burn, grid.start, grid.series.map((s) => {
    const c = S.clients.get(s.id) || {};
    const now = (Number(c.total) || 0) - (Number(c.used) || 0);
    let after = 0;
    const values = new Array(HOURS);
    for (let i = HOURS - 1; i >= 0; i -= 1) { values[i] = now + after; after += s.counts[i] - s.deltas[i]; }
    return { ...s, values };
  }));
  legend.replaceChildren(...grid.series.map((s) => h('li', {}, swatch(s.color), s.name)));
}

// Through the style property, not the attribute: the page's CSP forbids inline style attributes.
function swatch(color) {
  const el = h('span.swatch');
  el.style.background = color;
  return el;
}

// Both charts share one frame: 72 hourly slots across, a value scale up.
const CW = 600, CH = 220, CL = 44, CR = 8, CT = 10, CB = 22;
function frame(start, lo, hi) {
  const slot = (CW - CL - CR) / HOURS;
  const y = (v) => CT + ((hi - v) * (CH - CT - CB)) / (hi - lo);
  const kids = [];
  const placed = [];
  for (const v of [hi, lo < 0 ? 0 : Math.round((lo + hi) / 2), lo]) {
    if (placed.some((py) => Math.abs(py - y(v)) < 12)) continue; // labels would overlap
    placed.push(y(v));
    kids.push(svg('line', { x1: CL, x2: CW - CR, y1: y(v), y2: y(v), class: v === 0 && lo < 0 ? 'zero' : 'gridline' }),
      svg('text', { x: CL - 4, y: y(v) + 4, 'text-anchor': 'end', class: 'axis' }, String(v)));
  }
  for (let i = 0; i < HOURS; i += 12) {
    kids.push(svg('text', { x: CL + i * slot, y: CH - 6, class: 'axis' }, fmtHour.format(new Date(start + i * 3600e3))));
  }
  return { slot, y, kids };
}

function barChart(el, start, series) {
  const totals = new Array(HOURS).fill(0);
  for (const s of series) s.counts.forEach((n, i) => { totals[i] += n; });
  const f = frame(start, 0, Math.max(2, ...totals));
  const base = new Array(HOURS).fill(0);
  for (const s of series) {
    s.counts.forEach((n, i) => {
      if (!n) return;
      const top = f.y(base[i] + n);
      f.kids.push(svg('rect', { x: CL + i * f.slot + 0.5, width: Math.max(1, f.slot - 1), y: top, height: f.y(base[i]) - top, fill: s.color, 'data-client-id': s.id },
        svg('title', {}, `${s.name}: ${n} at ${fmtHour.format(new Date(start + i * 3600e3))}`)));
      base[i] += n;
    });
  }
  el.replaceChildren(...f.kids);
}

function lineChart(el, start, series) {
  const all = series.flatMap((s) => s.values);
  const lo = Math.min(0, ...all);
  const hi = Math.max(lo + 2, ...all);
  const f = frame(start, lo, hi);
  for (const s of series) {
    const d = s.values.map((v, i) => `${i ? 'L' : 'M'}${(CL + (i + 0.5) * f.slot).toFixed(1)},${f.y(v).toFixed(1)}`).join('');
    f.kids.push(svg('path', { d, stroke: s.color, class: 'series', 'data-client-id': s.id, 'data-values': s.values.join(' ') }, svg('title', {}, s.name)));
  }
  el.replaceChildren(...f.kids);
}

// ---------------------------------------------------------------- ledger

function ledgerQuery() {
  const f = $('#ledger-filters').elements;
  const q = new URLSearchParams();
  if (f.client.value) q.set('client', f.client.value);
  if (f.device.value.trim()) q.set('device', f.device.value.trim());
  for (const k of ['from', 'to']) {
    const t = f[k].value && new Date(f[k].value);
    if (t && !Number.isNaN(t.getTime())) q.set(k, t.toISOString());
  }
  if (f.overdraft.checked) q.set('overdraft', 'true');
  if (f.unverified.checked) q.set('unverified', 'true');
  return q;
}

async function loadLedger(cursor) {
  const q = ledgerQuery();
  $('#ledger-export').href = `/api/admin/copies.csv${q.toString() ? `?${q}` : ''}`;
  q.set('limit', PAGE);
  if (cursor) q.set('cursor', cursor);
  const r = await api(`/api/admin/copies?${q}`);
  S.ledger.cursor = cursor;
  S.ledger.next = r.next_cursor || null;
  const rows = (r.copies || []).map(ledgerRow);
  $('#ledger-body').replaceChildren(...rows);
  $('#ledger-empty').hidden = rows.length > 0;
  pager('ledger', S.ledger);
}

function pager(name, st) {
  $(`#${name}-prev`).disabled = !st.stack.length;
  $(`#${name}-next`).disabled = !st.next;
  $(`#${name}-page`).textContent = `Page ${st.stack.length + 1}`;
}

function ledgerRow(c) {
  const canVoid = c.unverified && !c.voided;
  return h(`tr${c.voided ? '.voided' : ''}`, { testid: 'ledger-row', 'data-copy-id': c.id },
    timeCell(c.received_at), timeCell(c.occurred_at),
    h('td', { title: c.device_id || '' }, deviceName(c.device_id)),
    h('td', {}, clientName(c.client_id)),
    h('td', {}, c.kind || '—'),
    h('td.mono', {}, c.uid || '—'),
    h('td', {}, copyFlags(c)),
    h('td.actions', {}, canVoid ? h('button.small.danger', { type: 'button', testid: 'void', onclick: () => voidCopy(c) }, 'Void') : null));
}

function voidCopy(c) {
  const input = h('input', { name: 'reason', maxlength: 200, placeholder: 'why this copy does not count', required: true });
  dialog('Void unverified copy', [h('p', {}, `Copy ${c.id} on ${deviceName(c.device_id)} for ${clientName(c.client_id)}.`), h('label', {}, 'Reason ', input)], 'Void', async () => {
    const reason = input.value.trim();
    if (!reason) throw new Error('A reason is required to void a copy.');
    const r = await api(`/api/admin/copies/${enc(c.id)}/void`, 'POST', { reason });
    if (r && r.client) mergeClient(r.client);
    await loadLedger(S.ledger.cursor);
  });
}

// ---------------------------------------------------------------- audit

const auditAction = () => $('#audit-filters').elements.action.value.trim();

async function loadAudit(cursor) {
  const q = new URLSearchParams();
  const action = auditAction();
  if (action) q.set('action', action);
  $('#audit-export').href = `/api/admin/audit.csv${action ? `?${q}` : ''}`;
  q.set('limit', PAGE);
  if (cursor) q.set('cursor', cursor);
  const r = await api(`/api/admin/audit?${q}`);
  const entries = r.entries || [];
  S.audit.cursor = cursor;
  S.audit.next = r.next_cursor || null;
  S.audit.ids = new Set(entries.map((e) => e.id));
  $('#audit-body').replaceChildren(...entries.map((e) => auditRow(e, false)));
  $('#audit-empty').hidden = entries.length > 0;
  const known = new Set([...document.querySelectorAll('#audit-actions option')].map((o) => o.value));
  for (const e of entries) if (e.action && !known.has(e.action)) { known.add(e.action); $('#audit-actions').append(h('option', { value: e.action })); }
  pager('audit', S.audit);
}

// Reason first, then the other arguments as key: value, all as plain text.
function detailCell(detail) {
  const td = h('td.detail');
  if (detail == null) return td;
  if (typeof detail !== 'object') return fill(td, {}, [String(detail)]);
  if (detail.reason != null) td.append(h('span.reason', {}, `“${detail.reason}”`));
  for (const [k, v] of Object.entries(detail)) {
    if (k === 'reason' || v == null) continue;
    td.append(h('span.kv', {}, `${k.replace(/_/g, ' ')}: ${typeof v === 'object' ? JSON.stringify(v) : v}`));
  }
  return td;
}
function auditRow(e, fresh) {
  return h(`tr${fresh ? '.fresh' : ''}`, { testid: 'audit-row', 'data-audit-id': e.id },
    timeCell(e.at), h('td', {}, e.actor || '—'), h('td.mono', {}, e.action || ''),
    h('td', {}, e.subject == null ? '' : String(e.subject)), detailCell(e.detail));
}

// ---------------------------------------------------------------- users

async function loadUsers() {
  const r = await api('/api/admin/users');
  $('#users-body').replaceChildren(...(r.users || []).map(userRow));
}

function userRow(u) {
  const me = S.user && u.username === S.user.username;
  const role = h('select', { testid: 'user-role', 'aria-label': `Role of ${u.username}` },
    ['operator', 'admin'].map((x) => h('option', { value: x, selected: x === u.role }, x)));
  role.addEventListener('change', () => updateUser(u.username, { role: role.value }, role, `${u.username} is now ${role.value}.`)
    .catch(() => { role.value = u.role; }));
  const toggle = h('button', { type: 'button', testid: 'user-toggle', class: `small ${u.disabled ? 'primary' : 'danger'}` }, u.disabled ? 'Enable' : 'Disable');
  toggle.addEventListener('click', () => updateUser(u.username, { disabled: !u.disabled }, toggle,
    `${u.username} ${u.disabled ? 'enabled' : 'disabled'}.`).catch(() => {}));
  return h(`tr${u.disabled ? '.disabled' : ''}`, { testid: 'user-row', 'data-username': u.username },
    h('td', {}, h('span.strong', {}, u.username), me ? h('span.muted', {}, ' (you)') : null),
    h('td', {}, role),
    h('td', {}, h('span', { class: `badge ${u.disabled ? 'off' : 'on'}`, testid: 'user-state' }, u.disabled ? 'disabled' : 'active')),
    timeCell(u.created_at),
    h('td.actions', {}, toggle, h('button.small.ghost', { type: 'button', onclick: () => resetPassword(u.username) }, 'Reset password')));
}

async function updateUser(username, patch, btn, done) {
  try {
    await busy(btn, () => api(`/api/admin/users/${enc(username)}`, 'PATCH', patch));
    toast(done);
  } catch (err) {
    report(err);
    throw err;
  } finally {
    if (S.user && S.view === 'users') loadUsers().catch(report);
  }
}

function resetPassword(username) {
  const input = h('input', { type: 'password', name: 'password', autocomplete: 'new-password', required: true });
  dialog(`New password for ${username}`, [h('label', {}, 'Password ', input), h('p.muted', {}, 'Their open sessions end.')], 'Set password', async () => {
    if (!input.value) throw new Error('Enter a password.');
    await api(`/api/admin/users/${enc(username)}`, 'PATCH', { password: input.value });
    toast(`Password of ${username} changed.`);
  });
}

async function createUser(ev) {
  ev.preventDefault();
  const form = ev.currentTarget;
  const msg = form.querySelector('.form-msg');
  const body = { username: form.elements.username.value.trim(), password: form.elements.password.value, role: form.elements.role.value };
  msg.hidden = true;
  if (!body.username || !body.password) { msg.textContent = 'Enter a username and a password.'; msg.hidden = false; return; }
  try {
    await busy(form.querySelector('button[type=submit]'), () => api('/api/admin/users', 'POST', body));
    form.reset();
    toast(`User ${body.username} created.`);
    await loadUsers();
  } catch (err) { report(err); }
}

// ---------------------------------------------------------------- dialog

// A single modal for every small question; `work` throws to keep it open
// with the message shown inside it.
function dialog(title, body, okLabel, work) {
  const dlg = $('#dlg');
  const err = $('#dlg-error');
  $('#dlg-title').textContent = title;
  $('#dlg-body').replaceChildren(...body);
  $('#dlg-ok').textContent = okLabel;
  err.hidden = true;
  dlg.onsubmit = async (ev) => {
    ev.preventDefault();
    err.hidden = true;
    try {
      await busy($('#dlg-ok'), () => work($('#dlg-form')));
      dlg.close();
    } catch (e) {
      if (e instanceof ApiError && e.code === 'session_required') { dlg.close(); return report(e); }
      err.textContent = e.message;
      err.hidden = false;
    }
  };
  dlg.showModal();
  const first = $('#dlg-body :is(input, textarea)');
  if (first) first.focus();
}

// ---------------------------------------------------------------- wiring

// Keyset pages: Next follows next_cursor, Previous pops the cursors we came by.
function wirePager(name, load) {
  $(`#${name}-next`).addEventListener('click', () => {
    const st = S[name];
    if (!st.next) return;
    st.stack.push(st.cursor);
    load(st.next).catch(report);
  });
  $(`#${name}-prev`).addEventListener('click', () => {
    const st = S[name];
    if (st.stack.length) load(st.stack.pop()).catch(report);
  });
}

function wireStatic() {
  $('#login-form').addEventListener('submit', login);
  $('#logout').addEventListener('click', logout);
  $('#banner-close').addEventListener('click', () => { $('#banner').hidden = true; });
  $('#dlg-cancel').addEventListener('click', () => $('#dlg').close());
  $('#nav-toggle').addEventListener('click', () => {
    const open = $('.top').classList.toggle('open');
    $('#nav-toggle').setAttribute('aria-expanded', String(open));
  });
  // A click on the current view's link changes no hash, so close the menu here too.
  $('#nav').addEventListener('click', closeMenu);
  window.addEventListener('hashchange', route);

  $('#enroll-form').addEventListener('submit', createEnrollment);
  const ff = $('#fleet-filters');
  ff.addEventListener('submit', (ev) => { ev.preventDefault(); renderFleet(); });
  ff.addEventListener('input', () => debounce('fleet-filter', 150, renderFleet));
  $('#enroll-dismiss').addEventListener('click', () => { $('#enroll-result').hidden = true; });
  $('#enroll-copy').addEventListener('click', () => {
    const text = $('#enroll-command').textContent;
    // The clipboard API exists only on secure origins; elsewhere select the text.
    (navigator.clipboard ? navigator.clipboard.writeText(text) : Promise.reject(new Error('no clipboard')))
      .then(() => toast('Command copied.'))
      .catch(() => window.getSelection().selectAllChildren($('#enroll-command')));
  });

  $('#client-form').addEventListener('submit', createClient);
  $('#show-archived').addEventListener('change', renderClients);

  const lf = $('#ledger-filters');
  const applyLedger = () => { S.ledger.stack = []; loadLedger(null).catch(report); };
  lf.addEventListener('submit', (ev) => { ev.preventDefault(); applyLedger(); });
  lf.addEventListener('change', (ev) => { if (ev.target.name !== 'device') applyLedger(); });
  lf.addEventListener('reset', () => setTimeout(applyLedger));
  wirePager('ledger', loadLedger);

  $('#audit-filters').addEventListener('submit', (ev) => { ev.preventDefault(); S.audit.stack = []; loadAudit(null).catch(report); });
  wirePager('audit', loadAudit);

  $('#user-form').addEventListener('submit', createUser);
  guardDownload($('#ledger-export'));
  guardDownload($('#audit-export'));
}

boot();
