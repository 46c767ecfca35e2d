// SandboxSession's side of the protocol against a scripted server (testing/fake-serve.js): no
// Docker, fast. The real server is exercised in session.test.js.
import assert from 'node:assert/strict';
import test from 'node:test';
import { SandboxError, SandboxSession, runTool } from '../index.js';
import { FAKE_RUN, FAKE_SERVE } from '../testing/fixtures.js';

const fake = (options = {}) => new SandboxSession({ sandboxPath: [process.execPath, FAKE_SERVE], ...options });

test('concurrent runs are correlated by run.assigned and decoded', async () => {
  const session = fake();
  try {
    const events = new Map();
    const results = await Promise.all(
      [1, 2, 3, 4, 5].map((n) =>
        session.run('echo', { args: { n } }, { onEvent: (f) => events.set(f.run_id, [...(events.get(f.run_id) ?? []), f.type]) }),
      ),
    );
    results.forEach((exit, i) => {
      assert.equal(exit.status, 'ok');
      assert.deepEqual(exit.result.echo, { n: i + 1 });
      assert.equal(exit.result.when, '2024-01-02T03:04:05');
      assert.equal(exit.result.big, 12345678901234567890n);
      assert.deepEqual(events.get(exit.run_id), ['accepted', 'result', 'exit']);
    });
  } finally {
    await session.close();
  }
});

test('decode options apply to session payloads', async () => {
  const session = fake({ decode: { dates: 'date', bigints: 'string' } });
  try {
    const exit = await session.run('echo');
    assert.ok(exit.result.when instanceof Date);
    assert.equal(exit.result.big, '12345678901234567890');
  } finally {
    await session.close();
  }
});

test('abort sends cancel and rejects with Interrupted', async () => {
  const session = fake();
  try {
    const controller = new AbortController();
    const running = session.run('slow', {}, {
      signal: controller.signal,
      onEvent: (f) => f.type === 'accepted' && controller.abort(new Error('user gave up')),
    });
    const err = await running.then(() => assert.fail('resolved'), (e) => e);
    assert.ok(err instanceof SandboxError);
    assert.equal(err.kind, 'Interrupted');
    assert.equal(err.exitCode, 130);
    assert.equal(err.runId, 'run-1');
    assert.equal(err.cause.message, 'user gave up');
  } finally {
    await session.close();
  }
});

test('timeoutMs cancels the run and rejects with Timeout', async () => {
  const session = fake();
  try {
    const err = await session.run('slow', {}, { timeoutMs: 200 }).catch((e) => e);
    assert.equal(err.kind, 'Timeout');
    assert.equal(err.status, 'timeout');
    assert.equal(err.details.timeoutMs, 200);
  } finally {
    await session.close();
  }
});

test('an error thrown by onEvent cancels the run and rejects with it', async () => {
  const session = fake();
  try {
    const boom = new Error('handler failed');
    const err = await session.run('slow', {}, { onEvent: () => { throw boom; } }).catch((e) => e);
    assert.equal(err, boom);
  } finally {
    await session.close();
  }
});

test('an error thrown by onEvent rejects the call even when the run then ends ok', async () => {
  const session = fake();
  try {
    for (const type of ['result', 'exit']) {
      const boom = new Error(`handler failed on ${type}`);
      const outcome = await session.run('echo', {}, {
        onEvent: (f) => {
          if (f.type === type) throw boom;
        },
      }).then(() => 'resolved', (e) => e);
      assert.equal(outcome, boom);
    }
  } finally {
    await session.close();
  }
});

// Both ways of running, each against its scripted stand-in.
const runners = {
  session: async (onEvent) => {
    const session = fake();
    try {
      return await session.run('echo', {}, { onEvent });
    } finally {
      await session.close();
    }
  },
  runTool: (onEvent) => runTool('echo', {}, { sandboxPath: [process.execPath, FAKE_RUN], onEvent }),
};

for (const [name, run] of Object.entries(runners)) {
  test(`${name}: a promise onEvent returns that rejects rejects the call (no unhandled rejection)`, async () => {
    const unhandled = [];
    const onUnhandled = (reason) => unhandled.push(reason);
    process.on('unhandledRejection', onUnhandled);
    try {
      for (const type of ['accepted', 'result', 'exit']) {
        const boom = new Error(`async handler failed on ${type}`);
        const outcome = await run(async (f) => {
          await new Promise((r) => setTimeout(r, 20));
          if (f.type === type) throw boom;
        }).then(() => 'resolved', (e) => e);
        assert.equal(outcome, boom);
      }
      await new Promise((r) => setTimeout(r, 50));
      assert.deepEqual(unhandled, []);
    } finally {
      process.off('unhandledRejection', onUnhandled);
    }
  });

  test(`${name}: the call settles only after the promises onEvent returned`, async () => {
    const handled = [];
    const exit = await run(async (f) => {
      await new Promise((r) => setTimeout(r, 30));
      handled.push(f.type);
    });
    assert.equal(exit.status, 'ok');
    assert.deepEqual(handled, ['accepted', 'result', 'exit']);
  });

  test(`${name}: what onEvent throws is what the call rejects with, whatever its type`, async () => {
    for (const thrown of ['timeout', 'aborted', 0, undefined, { code: 7 }]) {
      const outcome = await run((f) => {
        if (f.type === 'result') throw thrown;
      }).then(() => 'resolved', (e) => ({ rejected: e }));
      assert.deepEqual(outcome, { rejected: thrown });
    }
  });
}

// Node warns (MaxListenersExceededWarning) from the eleventh listener on one AbortSignal.
async function warningsDuring(fn) {
  const warnings = [];
  const onWarning = (w) => warnings.push(w.name);
  process.on('warning', onWarning);
  try {
    await fn();
    await new Promise((r) => setImmediate(r));
  } finally {
    process.off('warning', onWarning);
  }
  return warnings;
}

test('many session runs sharing one AbortSignal: no listener warning, all aborted', async () => {
  const session = fake();
  try {
    const controller = new AbortController();
    const warnings = await warningsDuring(async () => {
      const runs = Array.from({ length: 15 }, () => session.run('slow', {}, { signal: controller.signal }));
      await new Promise((r) => setTimeout(r, 200));
      controller.abort();
      for (const outcome of await Promise.allSettled(runs)) {
        assert.equal(outcome.status, 'rejected');
        assert.equal(outcome.reason.kind, 'Interrupted');
      }
    });
    assert.deepEqual(warnings, []);
  } finally {
    await session.close();
  }
});

test('many runTool calls sharing one AbortSignal: no listener warning', async () => {
  const controller = new AbortController();
  const warnings = await warningsDuring(async () => {
    const runs = Array.from({ length: 15 }, () =>
      runTool('echo', {}, { sandboxPath: [process.execPath, FAKE_RUN], signal: controller.signal }));
    for (const exit of await Promise.all(runs)) assert.equal(exit.status, 'ok');
  });
  assert.deepEqual(warnings, []);
});

test('a crashed server rejects calls in flight and is started again for the next call', async () => {
  const session = fake();
  try {
    const slow = session.run('slow');
    const crash = session.run('crash');
    for (const outcome of await Promise.allSettled([slow, crash])) {
      assert.equal(outcome.status, 'rejected');
      assert.equal(outcome.reason.kind, 'InfrastructureError');
      assert.match(outcome.reason.message, /ended unexpectedly \(exit code 3\)/);
    }
    const exit = await session.run('echo');
    assert.equal(exit.status, 'ok');
    assert.equal(session.restarts, 1);
  } finally {
    await session.close();
  }
});

test('a server that cannot start rejects the call instead of hanging', async () => {
  const session = new SandboxSession({ sandboxPath: '/nonexistent/sandbox' });
  const err = await session.run('echo').catch((e) => e);
  assert.equal(err.kind, 'InfrastructureError');
  assert.match(err.message, /could not start sandbox serve: spawn \/nonexistent\/sandbox ENOENT/);
  await session.close();
});

test('close settles pending runs and later calls reject as Interrupted', async () => {
  const session = fake();
  const slow = session.run('slow').catch((e) => e);
  await session.health(); // the run is on the server by now
  await session.close();
  const err = await slow;
  assert.equal(err.kind, 'Interrupted');
  assert.equal(session.pid, null);
  const later = await session.run('echo').catch((e) => e);
  assert.equal(later.kind, 'Interrupted');
  assert.match(later.message, /session is closed/);
});

test('unknown methods surface as SandboxError with the rpc code', async () => {
  const session = fake();
  try {
    const err = await session.metrics().catch((e) => e); // the fake has no metrics
    assert.equal(err.rpcCode, -32601);
    assert.equal(err.kind, 'InfrastructureError');
  } finally {
    await session.close();
  }
});

test('bad arguments are rejected before anything is spawned', async () => {
  const session = fake();
  await assert.rejects(session.run(''), TypeError);
  await assert.rejects(session.run('t', 'x'), TypeError);
  await assert.rejects(session.run('t', { tool: 'other' }), TypeError);
  await assert.rejects(session.run('t', {}, { timeoutMs: -1 }), TypeError);
  assert.equal(session.pid, null);
  await assert.rejects(runTool('t', {}, { sandboxPath: [] }), TypeError);
  await session.close();
});

test('a missing working directory is named as such, not as a missing CLI', async () => {
  const cwd = '/nonexistent/work-dir';
  const err = await runTool('echo', {}, { sandboxPath: [process.execPath, FAKE_SERVE], cwd }).catch((e) => e);
  assert.equal(err.kind, 'InfrastructureError');
  assert.match(err.message, /the working directory \/nonexistent\/work-dir does not exist/);
  assert.match(err.details.fix, /cwd/);
  const session = fake({ cwd });
  const lost = await session.run('echo').catch((e) => e);
  assert.match(lost.message, /could not start sandbox serve: the working directory \/nonexistent\/work-dir does not exist/);
  assert.match(lost.details.fix, /cwd/);
  await session.close();
});

test('runTool reports a missing CLI as InfrastructureError with a fix', async () => {
  const err = await runTool('echo', {}, { sandboxPath: '/nonexistent/sandbox' }).catch((e) => e);
  assert.equal(err.kind, 'InfrastructureError');
  assert.match(err.details.fix, /sandboxPath/);
});
