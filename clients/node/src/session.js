// SandboxSession: many concurrent runs through one long-lived `sandbox serve` (JSON-RPC 2.0 over
// stdio, docs/serve.md). The server is started on first use and started again on the next call
// after it dies; calls in flight when it dies are rejected, never left hanging.
import { spawn } from 'node:child_process';
import readline from 'node:readline';
import { SandboxError } from './errors.js';
import { decodeFrame, parseJson, stringifyJson } from './json.js';
import {
  HandlerFailure, StderrTail, buildRequest, callHandler, checkMs, commandLine, spawnFailure, terminate, whenAborted,
} from './process.js';

const CANCEL_GRACE_MS = 30_000; // after a cancel, how long to wait for the server's answer
const CLOSE_TIMEOUT_MS = 30_000;

/** One server process and the calls waiting on it. */
class Connection {
  constructor(options, onMessage, onGone) {
    const { file, args } = commandLine(options, ['serve', ...serveArgs(options)]);
    this.child = spawn(file, args, {
      cwd: options.cwd,
      env: { ...process.env, ...options.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.pending = new Map(); // JSON-RPC id -> call
    this.runs = new Map(); // run_id -> run call
    this.closing = false;
    this.gone = false;
    this.spawnError = null;
    this.cwd = options.cwd;
    this.stderr = new StderrTail(this.child.stderr, options.onLog);
    this.exited = new Promise((resolve) => {
      this.child.on('close', (code, signal) => {
        this.gone = true;
        onGone(this, code, signal);
        resolve();
      });
    });
    this.child.on('error', (err) => {
      this.spawnError ??= err;
    });
    this.child.stdin.on('error', () => {}); // a dead server: its 'close' rejects what is pending
    const lines = readline.createInterface({ input: this.child.stdout, crlfDelay: Infinity });
    lines.on('line', (line) => onMessage(this, line));
  }

  send(message) {
    if (this.gone || this.child.stdin.destroyed || this.child.stdin.writableEnded) return false;
    this.child.stdin.write(`${stringifyJson(message)}\n`);
    return true;
  }
}

function serveArgs({ maxConcurrent, queue }) {
  const args = [];
  if (maxConcurrent != null) args.push('--max-concurrent', String(maxConcurrent));
  if (queue != null) args.push('--queue', String(queue));
  return args;
}

export class SandboxSession {
  #options;
  #conn = null;
  #nextId = 1;
  #closed = false;
  #closing = null;
  #starts = 0;

  /** @param {object} [options] sandboxPath, policiesDir, env, cwd, maxConcurrent, queue, decode, onLog */
  constructor(options = {}) {
    this.#options = { ...options, cwd: options.cwd ?? process.cwd() };
    commandLine(this.#options, []); // fail fast on a bad sandboxPath
  }

  /** Starts the server now (instead of on the first call) and resolves with its health. */
  start() {
    return this.health();
  }

  /** The server's pid, or null before the first call and after it ended. */
  get pid() {
    return this.#conn?.child.pid ?? null;
  }

  /** How often the server was started again after it died. */
  get restarts() {
    return Math.max(0, this.#starts - 1);
  }

  /**
   * One run. Resolves with the exit frame (plus `result`) when the status is ok; rejects with a
   * SandboxError otherwise. `signal` and `timeoutMs` cancel the run on the server.
   */
  run(tool, request = {}, { onEvent, signal, timeoutMs } = {}) {
    let params;
    try {
      params = buildRequest(tool, request, this.#options.cwd);
      checkMs('timeoutMs', timeoutMs);
    } catch (err) {
      return Promise.reject(err);
    }
    if (signal?.aborted) {
      return Promise.reject(
        new SandboxError('the run was aborted before it started', { kind: 'Interrupted', cause: signal.reason }),
      );
    }
    return new Promise((resolve, reject) => {
      const call = { kind: 'run', resolve, reject, onEvent, signal, timeoutMs, errors: [], result: undefined, handlers: [] };
      call.runId = null;
      call.stop = null;
      this.#send('run', params, call);
      if (call.settled) return; // refused at once (a closed session)
      if (timeoutMs) call.timer = setTimeout(() => this.#stopRun(call, 'timeout'), timeoutMs);
      if (signal) {
        call.unwatch = whenAborted(signal, () => this.#stopRun(call, 'aborted'));
      }
    });
  }

  /** The whitelisted tools (as `sandbox tools --json`). */
  tools() {
    return this.#request('tools');
  }

  /** {ok, version, protocol, accepting, engine: {reachable, version, api_version, ...}} */
  health() {
    return this.#request('health');
  }

  /** Runs by status, active containers, queue depth, per-tool latencies, error counts. */
  metrics() {
    return this.#request('metrics');
  }

  /** Cancels a run by id (what an AbortSignal passed to run() does for you). */
  cancel(runId) {
    return this.#request('cancel', { run_id: runId });
  }

  /**
   * Stops the server: running runs are cancelled (or, with `drain`, allowed to finish), every
   * pending call is settled, and the process has exited when the promise resolves.
   */
  close({ drain = false, timeoutMs = CLOSE_TIMEOUT_MS } = {}) {
    if (this.#closing) return this.#closing;
    this.#closed = true;
    const conn = this.#conn;
    this.#closing = conn ? this.#shutdown(conn, drain, timeoutMs) : Promise.resolve();
    return this.#closing;
  }

  async #shutdown(conn, drain, timeoutMs) {
    conn.closing = true;
    conn.send({ jsonrpc: '2.0', id: this.#nextId++, method: 'shutdown', params: { drain } });
    conn.child.stdin.end();
    if (await settlesWithin(conn.exited, timeoutMs)) return;
    terminate(conn.child);
    await conn.exited;
  }

  // --- calls --------------------------------------------------------------------------------

  #request(method, params) {
    return new Promise((resolve, reject) => {
      this.#send(method, params, { kind: 'call', resolve, reject });
    });
  }

  #send(method, params, call) {
    if (this.#closed) {
      this.#settle(call, new SandboxError('the session is closed', { kind: 'Interrupted' }));
      return;
    }
    const conn = this.#connection();
    const id = this.#nextId++;
    call.id = id;
    call.conn = conn;
    conn.pending.set(id, call);
    const message = { jsonrpc: '2.0', id, method };
    if (params !== undefined) message.params = params;
    conn.send(message);
  }

  #connection() {
    if (!this.#conn || this.#conn.gone) {
      this.#starts += 1;
      this.#conn = new Connection(
        this.#options,
        (conn, line) => this.#onLine(conn, line),
        (conn, code, signal) => this.#onGone(conn, code, signal),
      );
    }
    return this.#conn;
  }

  #onLine(conn, line) {
    let message;
    try {
      message = parseJson(line, this.#options.decode);
    } catch {
      return; // not JSON: the server writes JSON-RPC lines only
    }
    if (message.method === 'event') this.#onEvent(conn, message.params);
    else if (message.method === 'run.assigned') this.#onAssigned(conn, message.params);
    else if ('id' in message && !('method' in message)) this.#onResponse(conn, message);
  }

  #onAssigned(conn, { id, run_id: runId }) {
    const call = conn.pending.get(id);
    if (!call) return;
    call.runId = runId;
    conn.runs.set(runId, call);
    if (call.stop) conn.send({ jsonrpc: '2.0', method: 'cancel', params: { run_id: runId } });
  }

  #onEvent(conn, frame) {
    const call = conn.runs.get(frame?.run_id);
    if (!call) return;
    decodeFrame(frame, this.#options.decode);
    if (frame.type === 'error') call.errors.push(frame);
    if (frame.type === 'result') call.result = frame.payload;
    if (!call.onEvent) return;
    const pending = callHandler(call.onEvent, frame, (failure) => this.#stopRun(call, failure));
    if (pending) call.handlers.push(pending);
  }

  #onResponse(conn, message) {
    const call = conn.pending.get(message.id) ?? (message.id === null && message.error ? unreadRun(conn) : undefined);
    if (!call) return;
    if (message.error) {
      this.#settle(call, SandboxError.fromRpc(message.error, { runId: call.runId ?? null }));
    } else if (call.kind === 'run') {
      // The run has ended; the call settles once the promises onEvent returned have.
      const answer = () => {
        const error = runOutcome(call, message.result);
        this.#settle(call, error, error ? undefined : { ...message.result, result: call.result });
      };
      if (call.handlers.length) Promise.all(call.handlers).then(answer);
      else answer();
    } else {
      this.#settle(call, undefined, message.result);
    }
  }

  #onGone(conn, code, signal) {
    const tail = conn.stderr.describe();
    const failed = conn.spawnError && spawnFailure('sandbox serve', conn.cwd, conn.spawnError);
    for (const call of conn.pending.values()) {
      const error = conn.closing
        ? new SandboxError('the session was closed before the call was answered', { kind: 'Interrupted', runId: call.runId })
        : new SandboxError(
            failed ? failed.message : `sandbox serve ended unexpectedly (${signal ?? `exit code ${code}`}); the call was lost${tail}`,
            {
              kind: 'InfrastructureError',
              runId: call.runId,
              details: { exitCode: code, signal, stderr: conn.stderr.text, ...(failed && { fix: failed.fix }) },
            },
          );
      this.#settle(call, error);
    }
    if (this.#conn === conn) this.#conn = null; // the next call starts a new server
  }

  #stopRun(call, reason) {
    if (call.stop || call.settled) return;
    call.stop = reason;
    if (call.runId) call.conn.send({ jsonrpc: '2.0', method: 'cancel', params: { run_id: call.runId } });
    // Never hang on a server that does not answer the cancel.
    call.fallback = setTimeout(() => this.#settle(call, stopError(call, null)), CANCEL_GRACE_MS);
    call.fallback.unref();
  }

  #settle(call, error, value) {
    if (call.settled) return;
    call.settled = true;
    clearTimeout(call.timer);
    clearTimeout(call.fallback);
    call.unwatch?.();
    call.conn?.pending.delete(call.id);
    if (call.runId) call.conn?.runs.delete(call.runId);
    if (error instanceof HandlerFailure) call.reject(error.thrown);
    else if (error) call.reject(error);
    else call.resolve(value);
  }
}

// A line the server could not read (longer than it takes, nested too deep for its parser) is
// answered with id null. The server reads its lines in order and announces every run before it
// reads the next line, so that line was the oldest run not announced yet: reject that call
// instead of leaving it waiting forever. (The other calls' small messages are always readable.)
function unreadRun(conn) {
  for (const call of conn.pending.values()) {
    if (call.kind === 'run' && call.runId === null) return call;
  }
  return undefined;
}

// What a run's answer (its exit frame) means for the caller's promise.
function runOutcome(call, exit) {
  // A throw from onEvent rejects the call even when the run got to its end before the cancel.
  if (call.stop instanceof HandlerFailure || (call.stop && exit?.status !== 'ok')) return stopError(call, exit);
  if (exit?.status === 'ok') return null;
  return SandboxError.fromRun(exit ?? { status: 'infrastructure_error' }, call.errors);
}

function stopError(call, exit) {
  const runId = call.runId;
  if (call.stop instanceof HandlerFailure) return call.stop;
  if (call.stop === 'timeout') {
    return new SandboxError(`no result within timeoutMs (${call.timeoutMs} ms); the run was cancelled`, {
      kind: 'Timeout', runId, exit, details: { timeoutMs: call.timeoutMs },
    });
  }
  return new SandboxError('the run was aborted; its container was removed', {
    kind: 'Interrupted', runId, exit, cause: call.signal?.reason,
  });
}

function settlesWithin(promise, ms) {
  let timer;
  const expiry = new Promise((resolve) => {
    timer = setTimeout(() => resolve(false), ms);
  });
  return Promise.race([promise.then(() => true), expiry]).finally(() => clearTimeout(timer));
}

// `await using session = new SandboxSession()` where the runtime has explicit resource management.
if (typeof Symbol.asyncDispose === 'symbol') {
  SandboxSession.prototype[Symbol.asyncDispose] = function dispose() {
    return this.close();
  };
}
