// Drives the operator dashboard in headless Chromium for the server's browser
// test. The Rust test owns the server and the kiosk; it talks to this script
// over stdio: we print `need <what>` and it answers `ok` or `fail <why>`.
// stdout carries only those lines and the final `pass`; everything else goes
// to stderr.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';
import { mkdirSync, readFileSync } from 'node:fs';
import path from 'node:path';

const T = 15_000; // each wait in the browser
const NEED_T = 180_000; // the orchestrator may have to start a kiosk

function env(name, fallback) {
  const v = process.env[name] ?? fallback;
  if (v == null || v === '') throw new Error(`environment variable ${name} is not set`);
  return v;
}
const log = (...a) => console.error('[dashboard]', ...a);

// ---------------------------------------------------------------- stdio protocol

const input = createInterface({ input: process.stdin });
const lines = [];
const waiting = [];
let stdinClosed = false;
input.on('line', (l) => { const w = waiting.shift(); if (w) w(l); else lines.push(l); });
input.on('close', () => { stdinClosed = true; for (const w of waiting.splice(0)) w(null); });

function nextLine(timeout) {
  if (lines.length) return Promise.resolve(lines.shift());
  if (stdinClosed) return Promise.resolve(null);
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      waiting.splice(waiting.indexOf(done), 1);
      reject(new Error(`no answer on stdin within ${timeout / 1000} s`));
    }, timeout);
    const done = (l) => { clearTimeout(timer); resolve(l); };
    waiting.push(done);
  });
}

async function need(what) {
  log(`need ${what}`);
  process.stdout.write(`need ${what}\n`);
  const answer = await nextLine(NEED_T);
  if (answer == null) throw new Error(`stdin closed while waiting for '${what}'`);
  // 'skip': this machine cannot do it (the orchestrator says why).
  if (answer.trim() === 'ok' || answer.trim() === 'skip') return answer.trim();
  throw new Error(`orchestrator could not do '${what}': ${answer.trim()}`);
}

// ---------------------------------------------------------------- helpers

// Like expect.poll: re-checks until true, so no step relies on a fixed sleep.
async function until(what, check, timeout = T) {
  const end = Date.now() + timeout;
  let last;
  for (;;) {
    try {
      const v = await check();
      if (v) return v;
      last = undefined;
    } catch (e) { last = e; }
    if (Date.now() > end) throw new Error(`timed out after ${timeout / 1000} s waiting for ${what}${last ? ` (${last.message})` : ''}`);
    await new Promise((r) => setTimeout(r, 100));
  }
}

const attr = (v) => JSON.stringify(String(v)); // a quoted CSS attribute value

async function login(page, user, password) {
  await page.getByTestId('login-username').fill(user);
  await page.getByTestId('login-password').fill(password);
  await page.getByTestId('login-submit').click();
}

// On a tablet the nav sits behind the menu button.
async function openView(page, name) {
  const link = page.getByTestId(`nav-${name}`);
  if (!(await link.isVisible())) await page.getByTestId('nav-toggle').click();
  await link.click();
  await page.getByTestId(`view-${name}`).waitFor({ state: 'visible' });
}

const loadedAt = (page) => page.evaluate(() => window.__propassLoadedAt);

// A client's card as numbers: remaining as shown, and the figures behind it.
async function quotaOf(page, clientId) {
  const card = page.locator(`[data-testid=client-row][data-client-id=${attr(clientId)}]`);
  const text = await card.getByTestId('client-remaining').textContent();
  const remaining = Number.parseInt(text, 10);
  if (Number.isNaN(remaining)) throw new Error(`client-remaining is '${text}'`);
  const d = await card.evaluate((el) => ({ ...el.dataset }));
  return { remaining, total: Number(d.total), used: Number(d.used), leased: Number(d.leased) };
}
const remainingOf = async (page, clientId) => (await quotaOf(page, clientId)).remaining;

// ---------------------------------------------------------------- the run

const pages = {};
const pageErrors = [];
let shots;
let step = 'setup';

function watch(page, name) {
  pages[name] = page;
  page.setDefaultTimeout(T);
  page.setDefaultNavigationTimeout(T);
  page.on('pageerror', (e) => { pageErrors.push(`${name}: ${e.message}`); log(`page ${name} error:`, e.message); });
  page.on('console', (m) => { if (m.type() === 'error' || m.type() === 'warning') log(`page ${name} console ${m.type()}:`, m.text()); });
  return page;
}

async function shot(page, file) {
  await page.screenshot({ path: path.join(shots, file), fullPage: true });
}

async function run(browser) {
  const base = env('PROPASS_ADMIN_URL').replace(/\/+$/, '');
  const admin = [env('PROPASS_ADMIN_USER'), env('PROPASS_ADMIN_PASSWORD')];
  const operator = [env('PROPASS_OPERATOR_USER'), env('PROPASS_OPERATOR_PASSWORD')];
  const kiosk = env('PROPASS_KIOSK_ID');
  const clientId = env('PROPASS_CLIENT_ID');
  const clientName = env('PROPASS_CLIENT_NAME');
  const lowClientId = env('PROPASS_LOW_CLIENT_ID');
  const check = (ok, why) => { if (!ok) throw new Error(why); };
  const steps = [];
  const at = (name, fn) => steps.push([name, fn]);

  const ctxA = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
  const A = watch(await ctxA.newPage(), 'a');
  let ctxB;
  let B;
  let stampA;
  let copyId;

  at('1-login', async () => {
    await A.goto(`${base}/admin`);
    await A.getByTestId('login-username').waitFor({ state: 'visible' });
    stampA = await loadedAt(A);
    check(typeof stampA === 'number', 'window.__propassLoadedAt is not set');
    await login(A, admin[0], `${admin[1]}-wrong`);
    await until('login-error about a wrong username or password', async () => {
      const e = A.getByTestId('login-error');
      return (await e.isVisible()) && /wrong username or password/i.test(await e.textContent());
    });
    await login(A, admin[0], admin[1]);
    await A.getByTestId('view-fleet').waitFor({ state: 'visible' });
    await until('the live stream', async () => /live/i.test(await A.getByTestId('live-status').textContent()));
    await shot(A, '01-fleet.png');
  });

  const onlineCell = () => A.locator(`[data-testid=device-row][data-device-id=${attr(kiosk)}] [data-testid=device-online]`);

  at('2-online', async () => {
    await need('kiosk_online');
    await until(`kiosk ${kiosk} shown online`, async () => (await onlineCell().textContent()).trim() === 'online');
    await shot(A, '02-online.png');
  });

  // The fleet shows the units the kiosk holds in lease, and an operator
  // takes them back (the server audits it; the kiosk asks again at once).
  at('2b-lease', async () => {
    const row = A.locator(`[data-testid=device-row][data-device-id=${attr(kiosk)}]`);
    await until(`kiosk ${kiosk} shown holding a lease`, async () => /\(\d+ held\)/.test(await row.getByTestId('device-clients').textContent()));
    await shot(A, '02b-lease.png');
    await row.getByRole('button', { name: 'Take back lease' }).click();
    await A.getByTestId('dialog-ok').click();
    const who = `user:${admin[0]}`;
    await until('the reclaim in the audit log', async () => A.evaluate(async ({ k, who }) => {
      const r = await fetch(`/api/admin/audit?subject=${encodeURIComponent(`device:${k}`)}`, { credentials: 'same-origin' });
      return (await r.json()).entries.some((e) => e.action === 'device.reclaim' && e.actor === who);
    }, { k: kiosk, who }));
    check((await loadedAt(A)) === stampA, 'page A was reloaded');
  });

  // The kiosk's disk fills up: the fleet flags it at once (the kiosk makes
  // no card meanwhile), and the flag goes once the disk is freed.
  at('2c-disk', async () => {
    const row = A.locator(`[data-testid=device-row][data-device-id=${attr(kiosk)}]`);
    if ((await need('kiosk_disk_full')) === 'skip') {
      log('WARNING: SKIPPED: the kiosk has no disk of its own to fill here');
      return;
    }
    await until(`kiosk ${kiosk} flagged cannot record`, async () => /cannot record: .*full/i.test(await row.textContent()));
    await shot(A, '02c-cannot-record.png');
    await need('kiosk_disk_freed');
    await until(`kiosk ${kiosk} no longer flagged`, async () => !/cannot record/i.test(await row.textContent()));
    check((await loadedAt(A)) === stampA, 'page A was reloaded');
  });

  // A big fleet is searched, not scrolled: the list shows at most 200 rows
  // and says how many more match.
  at('2d-fleet-search', async () => {
    await need('many_kiosks');
    await openView(A, 'clients');
    await openView(A, 'fleet');
    const rows = A.locator('[data-testid=device-row]');
    const more = A.getByTestId('fleet-more');
    await until('the fleet capped at 200 rows', async () => (await rows.count()) === 200);
    const said = await until('how many more match', async () => (await more.textContent()).match(/Showing 200 of (\d+) matching/));
    check(Number(said[1]) > 250, `the note says ${said[0]}`);
    // The 50 kiosks seen just now carry no flag: they need no attention.
    await A.getByTestId('fleet-attention').check();
    const flagged = await until('only the kiosks that need attention', async () => {
      const m = (await more.textContent()).match(/Showing 200 of (\d+) matching/);
      return m && Number(m[1]) !== Number(said[1]) && m;
    });
    check(Number(flagged[1]) === Number(said[1]) - 50, `needing attention: ${flagged[0]}; in all: ${said[0]}`);
    await A.getByTestId('fleet-attention').uncheck();
    await A.getByTestId('fleet-search').fill(kiosk);
    await until(`only kiosk ${kiosk}`, async () => (await rows.count()) === 1 && (await rows.first().getAttribute('data-device-id')) === kiosk);
    check(await more.isHidden(), 'a note under the one matching kiosk');
    await A.getByTestId('fleet-search').fill('no such kiosk');
    await until('no kiosk matches', async () => (await rows.count()) === 0 && /No kiosk matches/.test(await more.textContent()));
    await shot(A, '02d-fleet-search.png');
    await A.getByTestId('fleet-search').fill('');
    await until('the whole fleet again', async () => (await rows.count()) === 200);
    check((await loadedAt(A)) === stampA, 'page A was reloaded');
  });

  at('3-feed', async () => {
    await openView(A, 'feed');
    const rows = A.getByTestId('feed-row');
    // The view loads the latest copies after opening; wait for them before
    // counting, so a late initial load is not taken for the new copy.
    const latest = await A.evaluate(async () => {
      const r = await fetch('/api/admin/copies?limit=20', { credentials: 'same-origin' });
      return (await r.json()).copies.map((c) => String(c.id));
    });
    await until('the feed to show the latest copies', async () => {
      const shown = await rows.evaluateAll((els) => els.map((e) => e.dataset.copyId));
      return latest.every((id) => shown.includes(id));
    });
    const before = new Set(await rows.evaluateAll((els) => els.map((e) => e.dataset.copyId)));
    const countBefore = before.size;
    log(`feed rows before the copy: ${countBefore}`);
    await need('copy');
    copyId = await until(`a new feed row for ${clientName}`, async () => {
      const now = await rows.evaluateAll((els) => els.map((e) => [e.dataset.copyId, e.textContent]));
      const fresh = now.find(([id, text]) => !before.has(id) && text.includes(clientName));
      return fresh && now.length >= Math.min(countBefore + 1, 200) ? fresh[0] : null;
    });
    log(`new copy ${copyId}`);
    check((await loadedAt(A)) === stampA, 'page A was reloaded');
    await shot(A, '03-feed.png');
  });

  at('4-topup', async () => {
    ctxB = await browser.newContext({ viewport: { width: 1280, height: 900 } });
    B = watch(await ctxB.newPage(), 'b');
    await B.goto(`${base}/admin`);
    await login(B, operator[0], operator[1]);
    await B.getByTestId('view-fleet').waitFor({ state: 'visible' });
    check(!(await B.getByTestId('nav-users').isVisible()), 'an operator sees the Users tab');
    const stampB = await loadedAt(B);
    // A second tab of the operator's session watches the audit log live.
    const C = watch(await ctxB.newPage(), 'c');
    await C.goto(`${base}/admin#audit`);
    await C.getByTestId('view-audit').waitFor({ state: 'visible' });
    await until('tab C live', async () => /live/i.test(await C.getByTestId('live-status').textContent()));

    await openView(B, 'clients');
    await openView(A, 'clients');
    const cardA = A.locator(`[data-testid=client-row][data-client-id=${attr(clientId)}]`);
    await cardA.waitFor({ state: 'visible' });
    const before = await quotaOf(A, clientId);
    const old = before.remaining;
    await until(`page B to show remaining ${old}`, async () => (await remainingOf(B, clientId)) === old);
    log(`before the top-up: ${JSON.stringify(before)}`);

    let quotaPosts = 0;
    A.on('request', (r) => { if (r.method() === 'POST' && /\/quota$/.test(new URL(r.url()).pathname)) quotaPosts += 1; });
    await cardA.getByTestId('topup-delta').fill('7');
    await cardA.getByTestId('topup-reason').fill('');
    await cardA.getByTestId('topup-submit').click();
    await until('the top-up form to refuse an empty reason', async () => {
      const m = cardA.getByTestId('topup-message');
      return (await m.isVisible()) && /reason/i.test(await m.textContent());
    });
    check(quotaPosts === 0, 'a top-up without a reason was sent to the server');
    check((await remainingOf(A, clientId)) === old, 'remaining changed after a refused top-up');

    await cardA.getByTestId('topup-reason').fill('order 4711');
    await cardA.getByTestId('topup-submit').click();
    // remaining = old + 7 while the kiosk's lease and the used count stay put;
    // should the kiosk take a bigger lease on hearing of the top-up, remaining
    // is old + 7 less that, and the total must still be exactly 7 more.
    let told = false;
    const toppedUp = (page) => async () => {
      const q = await quotaOf(page, clientId);
      const want = old + 7 - (q.used - before.used) - (q.leased - before.leased);
      if (want !== old + 7 && !told) { told = true; log(`used/leased moved during the top-up: ${JSON.stringify(q)}`); }
      return q.total === before.total + 7 && q.remaining === want;
    };
    await until(`page A to show remaining ${old + 7} (total ${before.total + 7})`, toppedUp(A));
    await until(`page B to show remaining ${old + 7} (total ${before.total + 7}) live`, toppedUp(B));
    check(quotaPosts === 1, `expected one quota request, saw ${quotaPosts}`);
    const auditHas = (page) => async () => (await page.getByTestId('audit-row').evaluateAll((els) => els.map((e) => e.textContent))).some((t) => t.includes('order 4711'));
    await until('the audit entry to appear live on tab C', auditHas(C));
    await shot(A, '04-topup-a.png');
    await shot(B, '05-topup-b.png');
    await openView(B, 'audit');
    await until('the audit entry on page B', auditHas(B));
    check((await loadedAt(B)) === stampB, 'page B was reloaded');
    await C.close();
    delete pages.c;
  });

  // The operator allows the client partial copies and gives its badges
  // keys: both pages show it live; a malformed key is refused by position;
  // once saved, no key is on either page.
  at('4b-policy-keys', async () => {
    const card = (page) => page.locator(`[data-testid=client-row][data-client-id=${attr(clientId)}]`);
    await openView(A, 'clients');
    await openView(B, 'clients');
    const allowed = (page) => async () => /partial copy/.test(await card(page).textContent());
    check(!(await allowed(A)()), 'the client already accepts partial copies');
    await card(A).getByTestId('client-policy').click();
    await until('the partial-copy chip on page A', allowed(A));
    await until('the partial-copy chip on page B, live', allowed(B));

    await card(A).getByTestId('client-keys').click();
    const box = A.getByTestId('reader-keys-input');
    await box.fill('A0A1A2A3A4A5\nnot-a-key');
    await A.getByTestId('dialog-ok').click();
    await until('the dialog to refuse key 2', async () => {
      const e = A.getByTestId('dialog-error');
      return (await e.isVisible()) && /key 2/i.test(await e.textContent());
    });
    check(!/not-a-key/.test(await A.getByTestId('dialog-error').textContent()), 'the error repeats the key');
    await box.fill('5a5a5a5a5a5a, A0A1A2A3A4A5');
    await A.getByTestId('dialog-ok').click();
    const keyed = (page) => async () => /2 reader keys/.test(await card(page).textContent());
    await until('2 reader keys on page A', keyed(A));
    await until('2 reader keys on page B, live', keyed(B));
    for (const [name, page] of [['A', A], ['B', B]]) {
      const html = (await page.content()).toUpperCase();
      const values = await page.evaluate(() => [...document.querySelectorAll('input, textarea')].map((e) => e.value.toUpperCase()));
      check(!html.includes('5A5A5A5A5A5A') && !values.some((v) => v.includes('5A5A5A5A5A5A')), `a key is still on page ${name}`);
    }
    await shot(A, '04b-policy-keys.png');
    check((await loadedAt(A)) === stampA, 'page A was reloaded');
  });

  at('5-ledger', async () => {
    await openView(A, 'ledger');
    await A.locator(`[data-testid=ledger-row][data-copy-id=${attr(copyId)}]`).waitFor({ state: 'visible' });
    const [download] = await Promise.all([A.waitForEvent('download'), A.getByTestId('ledger-export').click()]);
    const file = path.join(shots, 'ledger.csv');
    await download.saveAs(file);
    const text = readFileSync(file, 'utf8').replace(/^\uFEFF/, '');
    const [header, ...rest] = text.split(/\r?\n/);
    log(`csv header: ${header}`);
    check(/[a-z]/i.test(header) && header.includes(',') && !header.includes(kiosk), `first CSV line is not a header: ${header}`);
    check(rest.some((l) => l.includes(kiosk)), `the CSV does not mention kiosk ${kiosk}`);
    await shot(A, '06-ledger.png');
  });

  // An export the server refuses (here: the session is gone) is said on the
  // page, never saved as the CSV file.
  at('5b-export-refused', async () => {
    const ctxD = await browser.newContext({ viewport: { width: 1280, height: 900 }, acceptDownloads: true });
    const D = watch(await ctxD.newPage(), 'd');
    let downloads = 0;
    D.on('download', () => { downloads += 1; });
    await D.goto(`${base}/admin`);
    await login(D, admin[0], admin[1]);
    await D.getByTestId('logout').waitFor({ state: 'visible' });
    await openView(D, 'ledger');
    await ctxD.clearCookies();
    await D.getByTestId('ledger-export').click();
    await D.getByTestId('login-username').waitFor({ state: 'visible' });
    check(downloads === 0, 'a refused export was saved as a file');
    await ctxD.close();
    delete pages.d;
  });

  at('6-charts', async () => {
    await openView(A, 'clients');
    const low = A.locator(`[data-testid=client-row][data-client-id=${attr(lowClientId)}]`);
    await until('the low client flagged on its card', async () => /low quota|exhausted/.test(await low.textContent()));
    const mark = A.locator(`svg[data-testid=chart-hourly] :is(path, rect)[data-client-id=${attr(clientId)}]`);
    await mark.first().waitFor({ state: 'attached' });
    await A.locator('svg[data-testid=chart-burndown]').waitFor({ state: 'visible' });
    // The burn-down starts (72 h ago, before this run) at the quota the
    // client was created with — what it has now, less step 4's top-up of 7 —
    // and shows that top-up as a rise (its hour's copies are fewer than 7).
    const line = A.locator(`svg[data-testid=chart-burndown] path[data-client-id=${attr(clientId)}]`);
    await until('the burn-down drawn with the top-up', async () => {
      const q = await quotaOf(A, clientId);
      const values = ((await line.getAttribute('data-values')) || '').split(' ').map(Number);
      return values.length > 1 && values[0] === q.total - 7 && values.some((v, i) => i > 0 && v > values[i - 1]);
    });
    await shot(A, '07-charts.png');
  });

  at('7-offline', async () => {
    await openView(A, 'fleet');
    await need('kiosk_offline');
    await until(`kiosk ${kiosk} shown offline`, async () => (await onlineCell().textContent()).trim() === 'offline');
    check((await loadedAt(A)) === stampA, 'page A was reloaded');
    await shot(A, '08-offline.png');
  });

  // Past its lifetime a session ends by the clock alone: the server ages
  // it, and the page's open stream hears so at its next re-check (15 s).
  at('7b-session-expired', async () => {
    const stampB = await loadedAt(B);
    await need('operator_session_expired');
    await B.getByTestId('login-notice').waitFor({ state: 'visible', timeout: 2 * T });
    const notice = (await B.getByTestId('login-notice').textContent()).trim();
    check(/session has ended/i.test(notice), `the expired session says: ${notice}`);
    check((await loadedAt(B)) === stampB, 'page B was reloaded');
    await shot(B, '09a-session-expired.png');
    await login(B, operator[0], operator[1]);
    await B.getByTestId('logout').waitFor({ state: 'visible' });
  });

  at('8-session-ended', async () => {
    const stampB = await loadedAt(B);
    await openView(A, 'users');
    const row = A.locator(`[data-testid=user-row][data-username=${attr(operator[0])}]`);
    const toggle = row.getByTestId('user-toggle');
    await until('the Disable button', async () => (await toggle.textContent()).trim() === 'Disable');
    await toggle.click();
    await B.getByTestId('login-notice').waitFor({ state: 'visible' });
    await B.getByTestId('login-username').waitFor({ state: 'visible' });
    check((await loadedAt(B)) === stampB, 'page B was reloaded');
    await shot(B, '09-session-ended.png');
    await until('the Enable button', async () => (await toggle.textContent()).trim() === 'Enable');
    await toggle.click();
    await until('the operator enabled again', async () => (await row.getByTestId('user-state').textContent()).trim() === 'active');
    // Proves the re-enable took: the operator can log in again.
    await login(B, operator[0], operator[1]);
    await B.getByTestId('logout').waitFor({ state: 'visible' });
  });

  at('9-tablet', async () => {
    await A.setViewportSize({ width: 768, height: 1024 });
    await openView(A, 'fleet');
    await A.getByTestId('fleet-table').waitFor({ state: 'visible' });
    await A.locator(`[data-testid=device-row][data-device-id=${attr(kiosk)}]`).waitFor({ state: 'visible' });
    await shot(A, '10-tablet.png');
    const width = await A.evaluate(() => document.documentElement.scrollWidth);
    check(width <= 769, `the page is ${width} px wide at a 768 px viewport`);
    check((await loadedAt(A)) === stampA, 'page A was reloaded');
  });

  for (const [name, fn] of steps) {
    step = name;
    log(`step ${name}`);
    await fn();
    check(!pageErrors.length, `script errors in the page: ${pageErrors.join('; ')}`);
  }
}

async function main() {
  shots = env('PROPASS_SHOTS');
  mkdirSync(shots, { recursive: true });
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    args: ['--no-sandbox'],
    headless: true,
  });
  let ok = false;
  try {
    await run(browser);
    ok = true;
  } catch (err) {
    log(`FAILED at step ${step}:`, err && err.stack ? err.stack : err);
    for (const [name, page] of Object.entries(pages)) {
      if (page.isClosed()) continue;
      const file = `failure-${step}${name === 'a' ? '' : `-${name}`}.png`;
      await page.screenshot({ path: path.join(shots, file), fullPage: true, timeout: 5_000 })
        .then(() => log(`screenshot ${file}`), (e) => log(`no screenshot of page ${name}: ${e.message}`));
    }
  } finally {
    await Promise.race([browser.close(), new Promise((r) => setTimeout(r, 10_000))]);
  }
  if (ok) process.stdout.write('pass\n');
  return ok;
}

main().then(
  (ok) => process.exit(ok ? 0 : 1),
  (err) => { log(err && err.stack ? err.stack : err); process.exit(1); },
);
