// SandboxSession against the real `sandbox serve` and engine (the testkit image).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { SandboxError, SandboxSession } from '../index.js';
import { assertDocker, containersOf, eventWaiter, needsDocker, pinnedPolicies, sandboxCommand, sandboxEnv } from '../testing/fixtures.js';

describe('SandboxSession with the real engine', needsDocker(), () => {
  let policies;
  let options;
  before(() => {
    assertDocker();
    policies = pinnedPolicies();
    options = { sandboxPath: sandboxCommand(), policiesDir: policies.dir, env: sandboxEnv(), maxConcurrent: 3 };
  });
  after(() => policies?.cleanup());

  test('many concurrent runs through one session each get their own result', async () => {
    const session = new SandboxSession(options);
    try {
      const health = await session.start();
      assert.equal(health.ok, true);
      assert.equal(health.engine.reachable, true);
      const pid = session.pid;
      const runs = Array.from({ length: 10 }, (_, i) =>
        session.run('testkit', { args: { case: 'echo', message: `run ${i}` } }),
      );
      const exits = await Promise.all(runs);
      exits.forEach((exit, i) => {
        assert.equal(exit.status, 'ok');
        assert.equal(exit.result.args.message, `run ${i}`);
        assert.equal(exit.result.run_id, exit.run_id);
      });
      assert.equal(new Set(exits.map((e) => e.run_id)).size, 10);
      assert.equal(session.pid, pid); // one server for all of them
      const metrics = await session.metrics();
      assert.equal(metrics.max_concurrent, 3);
      assert.equal(metrics.runs.ok, 10);
      assert.equal(metrics.tools.testkit.runs, 10);
      assert.equal(metrics.active_containers, 0);
      const tools = await session.tools();
      assert.deepEqual(tools.map((t) => t.tool), ['testkit']);
    } finally {
      await session.close();
    }
  });

  test('a tool error rejects with the traceback; the session keeps serving', async () => {
    const session = new SandboxSession(options);
    try {
      const err = await session.run('testkit', { args: { case: 'raise' } }).catch((e) => e);
      assert.ok(err instanceof SandboxError);
      assert.equal(err.kind, 'ToolError', err.message);
      assert.equal(err.exitCode, 1);
      assert.equal(err.traceback.at(-1).function, 'inner');
      assert.match(err.stack, /at inner \(\/opt\/testkit\/main.py:\d+\)/);
      const exit = await session.run('testkit', { args: { case: 'echo' } });
      assert.equal(exit.status, 'ok');
    } finally {
      await session.close();
    }
  });

  test('abort cancels one run mid-run (container removed) while another completes', async () => {
    const session = new SandboxSession(options);
    try {
      const controller = new AbortController();
      const started = eventWaiter((f) => f.type === 'started');
      const doomed = session.run('testkit', { args: { case: 'sleep', seconds: 60 } }, {
        signal: controller.signal, onEvent: started.onEvent,
      }).catch((e) => e);
      const other = session.run('testkit', { args: { case: 'sleep', seconds: 1 } });
      await Promise.race([started.seen, doomed]);
      const t0 = Date.now();
      controller.abort();
      const err = await doomed;
      assert.equal(err.kind, 'Interrupted', err.message);
      assert.equal(err.exitCode, 130);
      assert.equal(err.exit.status, 'interrupted');
      assert.ok(Date.now() - t0 < 10_000);
      assert.deepEqual(containersOf(err.runId), []);
      assert.equal((await other).result.slept, true);
    } finally {
      await session.close();
    }
  });

  test('timeoutMs cancels the run on the server and rejects with Timeout', async () => {
    const session = new SandboxSession(options);
    try {
      const err = await session.run('testkit', { args: { case: 'sleep', seconds: 60 } }, { timeoutMs: 2000 }).catch((e) => e);
      assert.equal(err.kind, 'Timeout', err.message);
      assert.equal(err.exit.status, 'interrupted');
      assert.deepEqual(containersOf(err.runId), []);
    } finally {
      await session.close();
    }
  });

  test('a server crash mid-run rejects the call; the next call restarts it and reaps the orphan', async () => {
    const session = new SandboxSession(options);
    try {
      const started = eventWaiter((f) => f.type === 'started');
      const running = session.run('testkit', { args: { case: 'sleep', seconds: 60 } }, { onEvent: started.onEvent }).catch((e) => e);
      const frame = await Promise.race([started.seen, running]);
      const crashed = session.pid;
      process.kill(crashed, 'SIGKILL');
      const err = await running;
      assert.equal(err.kind, 'InfrastructureError', err.message);
      assert.match(err.message, /sandbox serve ended unexpectedly \(SIGKILL\)/);
      assert.equal(err.runId, frame.run_id);
      const exit = await session.run('testkit', { args: { case: 'echo' } });
      assert.equal(exit.status, 'ok');
      assert.notEqual(session.pid, crashed);
      assert.equal(session.restarts, 1);
      // The new server reaped the container its crashed predecessor left running.
      assert.deepEqual(containersOf(frame.run_id), []);
    } finally {
      await session.close();
    }
  });

  test('invalid requests reject with InvalidRequest, denied tools with PolicyDenied', async () => {
    const session = new SandboxSession(options);
    try {
      const unknownKey = await session.run('testkit', { args: {}, bogus: 1 }).catch((e) => e);
      assert.equal(unknownKey.kind, 'InvalidRequest', unknownKey.message);
      assert.equal(unknownKey.exitCode, 2);
      assert.match(unknownKey.message, /bogus: unknown key/);
      const badArgs = await session.run('testkit', { args: { case: 'echo', nope: 1 } }).catch((e) => e);
      assert.equal(badArgs.kind, 'InvalidRequest', badArgs.message);
      const denied = await session.run('not_whitelisted').catch((e) => e);
      assert.equal(denied.kind, 'PolicyDenied', denied.message);
      const cancelUnknown = await session.cancel('nope').catch((e) => e);
      assert.equal(cancelUnknown.rpcCode, -32002);
    } finally {
      await session.close();
    }
  });

  test('a request the server cannot read rejects with InvalidRequest instead of hanging', async () => {
    const session = new SandboxSession(options);
    try {
      let deep = {};
      for (let i = 0; i < 1500; i++) deep = { a: deep };
      const tooLong = 'x'.repeat(17 * 1024 * 1024);
      const [before, nested, huge, after] = await Promise.allSettled([
        session.run('testkit', { args: { case: 'echo', message: 'before' } }),
        session.run('testkit', { args: { case: 'echo', payload: deep } }),
        session.run('testkit', { args: { case: 'echo', message: tooLong } }),
        session.run('testkit', { args: { case: 'echo', message: 'after' } }),
      ]);
      assert.equal(nested.reason?.kind, 'InvalidRequest', nested.reason?.message);
      assert.equal(nested.reason.rpcCode, -32700);
      assert.match(nested.reason.message, /recursion/);
      assert.equal(huge.reason?.kind, 'InvalidRequest', huge.reason?.message);
      assert.equal(huge.reason.rpcCode, -32600);
      assert.match(huge.reason.message, /longer than/);
      assert.equal(before.value?.result.args.message, 'before');
      assert.equal(after.value?.result.args.message, 'after');
    } finally {
      await session.close();
    }
  });

  test('close() cancels what is running, removes the containers and waits for the server', async () => {
    const session = new SandboxSession(options);
    const started = eventWaiter((f) => f.type === 'started');
    const running = session.run('testkit', { args: { case: 'sleep', seconds: 60 } }, { onEvent: started.onEvent }).catch((e) => e);
    const frame = await Promise.race([started.seen, running]);
    await session.close();
    const err = await running;
    assert.equal(err.kind, 'Interrupted', err.message);
    assert.equal(err.exit?.status, 'interrupted');
    assert.deepEqual(containersOf(frame.run_id), []);
    assert.equal(session.pid, null);
  });
});
