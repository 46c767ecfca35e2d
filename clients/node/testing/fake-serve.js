// A scripted stand-in for `sandbox serve` (JSON-RPC 2.0 over stdio) for the session's protocol
// tests without Docker. The tool name picks the behaviour: echo, slow, crash, exit_after_assign.
import readline from 'node:readline';

let seq = 0;
const runs = new Map(); // run_id -> {id, timer}
const send = (message) => process.stdout.write(`${JSON.stringify(message)}\n`);
const frame = (runId, type, fields) => ({ v: 1, run_id: runId, seq: seq++, ts: new Date().toISOString(), type, ...fields });
const exitFrame = (runId, status) =>
  frame(runId, 'exit', { status, exit_code: status === 'ok' ? 0 : 1, oom_killed: false, duration_s: 0.01, outputs: [], refused: [] });

function finish(runId, status, extra = []) {
  const run = runs.get(runId);
  if (!run) return;
  runs.delete(runId);
  clearTimeout(run.timer);
  for (const f of extra) send({ jsonrpc: '2.0', method: 'event', params: f });
  const exit = exitFrame(runId, status);
  send({ jsonrpc: '2.0', method: 'event', params: exit });
  send({ jsonrpc: '2.0', id: run.id, result: exit });
}

function run(id, params) {
  const runId = `run-${id}`;
  runs.set(runId, { id });
  send({ jsonrpc: '2.0', method: 'run.assigned', params: { id, run_id: runId, queued: false } });
  send({ jsonrpc: '2.0', method: 'event', params: frame(runId, 'accepted', { tool: params.tool }) });
  if (params.tool === 'crash') process.exit(3);
  if (params.tool === 'slow') {
    runs.get(runId).timer = setTimeout(() => finish(runId, 'ok'), 60_000);
    return;
  }
  // The raw text carries an integer JSON.parse would round, to check the client keeps it exact.
  const payload = { echo: params.args ?? {}, when: { $type: 'datetime', value: '2024-01-02T03:04:05' }, big: 'BIG' };
  const result = JSON.stringify({ jsonrpc: '2.0', method: 'event', params: frame(runId, 'result', { payload }) });
  process.stdout.write(`${result.replace('"BIG"', '12345678901234567890')}\n`);
  finish(runId, 'ok');
}

const lines = readline.createInterface({ input: process.stdin });
lines.on('line', (line) => {
  const message = JSON.parse(line);
  if (message.method === 'run') run(message.id, message.params);
  else if (message.method === 'cancel') {
    const runId = message.params.run_id;
    const known = runs.has(runId);
    finish(runId, 'interrupted', [frame(runId, 'error', { error: { kind: 'Interrupted', message: 'cancelled', traceback: [], details: {} } })]);
    if ('id' in message) send({ jsonrpc: '2.0', id: message.id, result: { run_id: runId, was: known ? 'running' : 'unknown' } });
  } else if (message.method === 'health') send({ jsonrpc: '2.0', id: message.id, result: { ok: true, pid: process.pid } });
  else if (message.method === 'shutdown') {
    for (const runId of [...runs.keys()]) finish(runId, 'interrupted');
    send({ jsonrpc: '2.0', id: message.id, result: {} });
    process.exit(0);
  } else send({ jsonrpc: '2.0', id: message.id ?? null, error: { code: -32601, message: 'method not found' } });
});
lines.on('close', () => {
  for (const runId of [...runs.keys()]) finish(runId, 'interrupted');
  process.exit(0);
});
