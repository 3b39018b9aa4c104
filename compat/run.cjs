// Runs the seed client's SyncService and WebSocketService (compat/seed/*.ts,
// verbatim copies of the integration guide's code) against a running
// propass-server, the way the guide's Electron main process uses them.
//
// Usage: node run.cjs SERVER_URL USERNAME PASSWORD CLIENT_ID INITIAL_QUOTA
// Prints one line per check and exits 1 if any fails.
'use strict';
const fs = require('fs');
const path = require('path');
const Module = require('module');
const ts = require('typescript');
const axios = require('axios');
const initSqlJs = require('sql.js');

if (typeof globalThis.WebSocket === 'undefined') {
  // Node without a built-in WebSocket: the `ws` package has the same browser API.
  globalThis.WebSocket = require('ws');
}

function loadTs(file) {
  const source = fs.readFileSync(file, 'utf8');
  const { outputText } = ts.transpileModule(source, {
    compilerOptions: { module: ts.ModuleKind.CommonJS, target: ts.ScriptTarget.ES2020, esModuleInterop: true },
    fileName: file,
  });
  const m = new Module(file, module);
  m.filename = file;
  m.paths = Module._nodeModulePaths(__dirname);
  m._compile(outputText, file);
  return m.exports;
}

// better-sqlite3's API (prepare → run/all/get) over sql.js, a real SQLite.
function betterSqlite(SQL) {
  const db = new SQL.Database();
  return {
    exec: (sql) => db.exec(sql),
    prepare(sql) {
      return {
        run(...params) {
          db.run(sql, params);
          const id = db.exec('SELECT last_insert_rowid()')[0].values[0][0];
          return { changes: db.getRowsModified(), lastInsertRowid: id };
        },
        all(...params) {
          const stmt = db.prepare(sql);
          stmt.bind(params);
          const rows = [];
          while (stmt.step()) rows.push(stmt.getAsObject());
          stmt.free();
          return rows;
        },
        get(...params) {
          return this.all(...params)[0];
        },
      };
    },
  };
}

const failures = [];
function check(what, ok, detail) {
  console.log(`${ok ? 'ok  ' : 'FAIL'} ${what}${detail === undefined ? '' : ` (${JSON.stringify(detail)})`}`);
  if (!ok) failures.push(what);
}

function waitFor(pred, ms) {
  return new Promise((resolve) => {
    const start = Date.now();
    const tick = () => (pred() ? resolve(true) : Date.now() - start > ms ? resolve(false) : setTimeout(tick, 50));
    tick();
  });
}

async function main() {
  const [serverUrl, username, password, clientIdArg, quotaArg, deviceIdArg] = process.argv.slice(2);
  const clientId = Number(clientIdArg);
  const quota = Number(quotaArg);
  const { SyncService } = loadTs(path.join(__dirname, 'seed', 'SyncService.ts'));
  const { WebSocketService } = loadTs(path.join(__dirname, 'seed', 'WebSocketService.ts'));
  // As the guide's ServerConfig derives them.
  const wsUrl = serverUrl.replace('http', 'ws');
  // As the guide's ServerConfig.generateDeviceId() builds it — or the id the
  // operator registered ahead (the documented step: `propass-server device add`).
  const deviceId = deviceIdArg || `${require('os').hostname()}_${Date.now().toString(36)}`.toUpperCase();

  // The guide's login handler.
  const login = await axios.post(serverUrl + '/api/auth/login', { username, password, device_id: deviceId });
  check('login answers success with a token and the user', login.data.success === true && !!login.data.token && login.data.user.username === username);
  const token = login.data.token;

  const SQL = await initSqlJs();
  const db = betterSqlite(SQL);
  db.exec(`CREATE TABLE sync_queue (id INTEGER PRIMARY KEY AUTOINCREMENT, type TEXT, payload TEXT, status TEXT, created_at TEXT, error TEXT);
           CREATE INDEX sync_queue_status ON sync_queue(status);
           CREATE TABLE quotas (client_id INTEGER PRIMARY KEY, remaining INTEGER, updated_at TEXT);`);
  db.prepare('INSERT INTO quotas (client_id, remaining) VALUES (?, ?)').run(clientId, quota);

  const sync = new SyncService({ serverUrl, wsUrl, deviceId, jwtToken: token, db });
  check('token is not expiring soon (lifetime above one day)', sync.isTokenExpiringSoon() === false);

  const ws = new WebSocketService({ wsUrl, token, deviceId });
  const seen = [];
  const original = ws.handleMessage.bind(ws);
  ws.handleMessage = (message) => { seen.push(message); original(message); };
  const events = { quota_updated: [], sync_completed: [], copy_completed: [] };
  for (const name of Object.keys(events)) ws.on(name, (data) => events[name].push(data));
  const warnings = [];
  const warn = console.warn;
  console.warn = (...args) => { warnings.push(args.join(' ')); warn(...args); };
  await ws.connect();
  check('WebSocket connects at the URL ServerConfig derives', ws.isConnected());

  ws.send({ type: 'ping' });
  check('ping answered with pong', await waitFor(() => seen.some((m) => m.type === 'pong'), 5000));

  check('recordCopy #1', (await sync.recordCopy(clientId, '04AB12CD34')) === true);
  check('recordCopy #2', (await sync.recordCopy(clientId, '04AB12CD35')) === true);

  const pushed = await sync.pushQueue();
  check('pushQueue syncs both copies', pushed.success && pushed.synced === 2 && pushed.failed === 0, pushed);
  const rows = db.prepare('SELECT status, error FROM sync_queue ORDER BY id').all();
  check('local queue rows marked synced with no error', rows.length === 2 && rows.every((r) => r.status === 'synced' && r.error === null), rows);

  // The kiosk never saw the answer: the same rows go again and must not count twice.
  db.prepare("UPDATE sync_queue SET status = 'pending'").run();
  const again = await sync.pushQueue();
  check('a repeated push is answered synced', again.success && again.synced === 2, again);

  const pulled = await sync.pullQuotas();
  const mine = (pulled.quotas || []).find((q) => q.client_id === clientId);
  check('pullQuotas returns the client, counted once', !!mine && mine.remaining === quota - 2, mine);
  const local = db.prepare('SELECT remaining FROM quotas WHERE client_id = ?').get(clientId);
  check('local quota updated from the pull', local.remaining === quota - 2, local);

  check('copy_completed received for each new copy', await waitFor(() => events.copy_completed.length >= 2, 5000), events.copy_completed.length);
  check('quota_updated received with the new remaining',
    await waitFor(() => events.quota_updated.some((q) => q.client_id === clientId && q.remaining === quota - 2), 5000), events.quota_updated);
  check('sync_completed received', await waitFor(() => events.sync_completed.length >= 1, 5000), events.sync_completed.length);
  check('no message type unknown to the client', warnings.length === 0, warnings);

  const refreshed = await axios.post(serverUrl + '/api/auth/refresh', {}, { headers: { Authorization: `Bearer ${token}` } });
  check('refresh with the current token gives a new one', refreshed.data.success === true && !!refreshed.data.token);

  const down = await axios.get(`${serverUrl}/health`, { timeout: 5000 });
  check('health answers 200', down.status === 200);

  ws.disconnect();
  sync.destroy();
  console.warn = warn;
  if (failures.length) {
    console.log(`seed client compatibility: ${failures.length} check(s) failed`);
    process.exit(1);
  }
  console.log('seed client compatibility: all checks passed');
  process.exit(0);
}

main().catch((e) => {
  console.log(`FAIL ${e && e.stack ? e.stack : e}`);
  process.exit(1);
});
