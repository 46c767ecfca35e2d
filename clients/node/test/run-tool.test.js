// runTool against the real CLI and engine (the testkit image): one `sandbox run` per call.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { SandboxError, runTool } from '../index.js';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { assertDocker, containersOf, eventWaiter, needsDocker, pinnedPolicies, sandboxCommand, sandboxEnv } from '../testing/fixtures.js';

describe('runTool with the real engine', needsDocker(), () => {
  let policies;
  let options;
  before(() => {
    assertDocker();
    policies = pinnedPolicies();
    options = { sandboxPath: sandboxCommand(), policiesDir: policies.dir, env: sandboxEnv() };
  });
  after(() => policies?.cleanup());

  test('success resolves with the exit frame and the decoded result, events in order', async () => {
    const events = [];
    const exit = await runTool('testkit', { args: { case: 'frames' } }, { ...options, onEvent: (f) => events.push(f) });
    assert.equal(exit.type, 'exit');
    assert.equal(exit.status, 'ok');
    assert.equal(exit.exit_code, 0);
    assert.deepEqual(events.map((f) => f.seq), events.map((_, i) => i));
    assert.equal(events[0].type, 'accepted');
    assert.equal(events.at(-1).type, 'exit');
    assert.equal(events.at(-1).run_id, exit.run_id);
    const result = exit.result;
    assert.equal(result.price, '12.50');
    assert.ok(Number.isNaN(result.nan));
    assert.equal(result.inf, Infinity);
    assert.deepEqual(result.blob, Buffer.from([0, 1]));
    assert.equal(result.when, '2024-01-02T03:04:05+00:00');
    assert.equal(result.text, 'héllo ✓');
  });

  test('datetimes decode to Date by option', async () => {
    const exit = await runTool('testkit', { args: { case: 'frames' } }, { ...options, decode: { dates: 'date' } });
    assert.equal(exit.result.when.toISOString(), '2024-01-02T03:04:05.000Z');
  });

  test('a tool error rejects with the Python traceback', async () => {
    const err = await runTool('testkit', { args: { case: 'raise', message: 'bad row' } }, options).catch((e) => e);
    assert.ok(err instanceof SandboxError);
    assert.equal(err.kind, 'ToolError', err.message);
    assert.equal(err.status, 'tool_error');
    assert.equal(err.exitCode, 1);
    assert.match(err.runId, /^[0-9a-f]{32}$/);
    assert.equal(err.exit.exit_code, 1);
    assert.match(err.message, /^ValueError: bad row \(at \/opt\/testkit\/main.py:\d+ in inner\)$/);
    assert.deepEqual(err.traceback.slice(-2).map((t) => t.function), ['case_raise', 'inner']);
    assert.match(err.stack.split('\n')[1], /^ {4}at inner \(\/opt\/testkit\/main.py:\d+\) {2}\[raise ValueError/);
  });

  test('a structured ToolError keeps its details', async () => {
    const err = await runTool('testkit', { args: { case: 'tool_error' } }, options).catch((e) => e);
    assert.equal(err.kind, 'ToolError', err.message);
    assert.match(err.message, /bad input/);
    assert.deepEqual(err.details.row, 3);
  });

  test('the run deadline (timeout_s) rejects with Timeout', async () => {
    const err = await runTool('testkit', { args: { case: 'sleep', seconds: 30 }, timeout_s: 1 }, options).catch((e) => e);
    assert.equal(err.kind, 'Timeout', err.message);
    assert.equal(err.exitCode, 4);
    assert.deepEqual(containersOf(err.runId), []);
  });

  test('timeoutMs stops the CLI, which removes the container, and rejects with Timeout', async () => {
    const started = Date.now();
    const err = await runTool('testkit', { args: { case: 'sleep', seconds: 60 } }, { ...options, timeoutMs: 2500 }).catch((e) => e);
    assert.equal(err.kind, 'Timeout', err.message);
    assert.ok(Date.now() - started < 20_000);
    assert.equal(err.exit?.status, 'interrupted'); // the CLI's own account
    assert.deepEqual(containersOf(err.runId), []);
  });

  test('abort sends SIGTERM: the container is removed and the call rejects as Interrupted', async () => {
    const controller = new AbortController();
    const started = eventWaiter((f) => f.type === 'started');
    const running = runTool('testkit', { args: { case: 'sleep', seconds: 60 } }, {
      ...options, signal: controller.signal, onEvent: started.onEvent,
    }).catch((e) => e);
    await Promise.race([started.seen, running]);
    controller.abort();
    const err = await running;
    assert.equal(err.kind, 'Interrupted', err.message);
    assert.equal(err.exitCode, 130);
    assert.equal(err.exit.status, 'interrupted');
    assert.deepEqual(containersOf(err.runId), []);
  });

  test('an invalid request rejects with InvalidRequest (exit code 2)', async () => {
    const unknownKey = await runTool('testkit', { args: {}, bogus: true }, options).catch((e) => e);
    assert.equal(unknownKey.kind, 'InvalidRequest', unknownKey.message);
    assert.equal(unknownKey.exitCode, 2);
    assert.match(unknownKey.message, /bogus: unknown key/);
    const badArgs = await runTool('testkit', { args: { case: 'echo', nope: 1 } }, options).catch((e) => e);
    assert.equal(badArgs.kind, 'InvalidRequest', badArgs.message);
  });

  test('an empty output_dir or input path is an invalid request, never the working directory', async () => {
    const cwd = mkdtempSync(path.join(tmpdir(), 'sandbox-node-cwd-'));
    try {
      const output = await runTool('testkit', { args: { case: 'write_outputs' }, output_dir: '' }, { ...options, cwd }).catch((e) => e);
      assert.equal(output.kind, 'InvalidRequest', output.message);
      assert.match(output.message, /output_dir is empty/);
      assert.deepEqual(readdirSync(cwd), []);
      const input = await runTool('testkit', { args: { case: 'echo' }, inputs: { data: '' } }, { ...options, cwd }).catch((e) => e);
      assert.equal(input.kind, 'InvalidRequest', input.message);
      assert.match(input.message, /input 'data': path is empty/);
    } finally {
      rmSync(cwd, { recursive: true, force: true });
    }
  });

  test('a tool without a policy is denied', async () => {
    const err = await runTool('not_whitelisted', {}, options).catch((e) => e);
    assert.equal(err.kind, 'PolicyDenied', err.message);
    assert.equal(err.status, 'denied');
    assert.equal(err.exitCode, 3);
  });
});
