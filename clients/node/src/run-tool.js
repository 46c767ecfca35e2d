// runTool: one run, one `sandbox run --request -` process. Simple and isolated; each run pays
// for a Python interpreter start (use SandboxSession for many runs).
import { spawn } from 'node:child_process';
import readline from 'node:readline';
import { SandboxError } from './errors.js';
import { decodeFrame, parseJson } from './json.js';
import {
  HandlerFailure, StderrTail, buildRequest, callHandler, checkMs, commandLine, encodeRequest, spawnFailure, terminate,
  whenAborted,
} from './process.js';

/**
 * Runs `tool` once. Resolves with the exit frame (plus `result`, the decoded payload of the
 * run's result frame) when the status is ok; rejects with a SandboxError otherwise.
 * @param {string} tool
 * @param {object} [request] {args, inputs, output_dir, timeout_s}
 * @param {object} [options]
 */
export async function runTool(tool, request = {}, options = {}) {
  const cwd = options.cwd ?? process.cwd();
  const body = encodeRequest(buildRequest(tool, request, cwd));
  const timeoutMs = checkMs('timeoutMs', options.timeoutMs);
  const { signal } = options;
  if (signal?.aborted) {
    throw new SandboxError('the run was aborted before it started', { kind: 'Interrupted', cause: signal.reason });
  }
  const { file, args } = commandLine(options, ['run', '--request', '-']);
  const child = spawn(file, args, {
    cwd,
    env: { ...process.env, ...options.env },
    stdio: ['pipe', 'pipe', 'pipe'],
  });
  return new Promise((resolve, reject) => {
    new OneRun(child, { ...options, cwd, timeoutMs }, resolve, reject).begin(body);
  });
}

/** The state of one child process, from spawn to the settled promise. */
class OneRun {
  constructor(child, options, resolve, reject) {
    this.child = child;
    this.options = options;
    this.resolve = resolve;
    this.reject = reject;
    this.errors = [];
    this.exit = null;
    this.result = undefined;
    this.stopReason = null; // 'timeout' | 'aborted' | a HandlerFailure (what onEvent threw)
    this.handlers = []; // the promises onEvent returned: the call settles after them
    this.spawnError = null;
    this.pending = 2; // the stdout reader and the process must both be done
    this.stderr = new StderrTail(child.stderr, options.onLog);
  }

  begin(body) {
    const { child, options } = this;
    child.on('error', (err) => {
      this.spawnError ??= err;
    });
    child.stdin.on('error', () => {}); // the child died early: reported by its exit
    child.stdin.end(body);
    const lines = readline.createInterface({ input: child.stdout, crlfDelay: Infinity });
    lines.on('line', (line) => this.onLine(line));
    lines.on('close', () => this.done());
    child.on('close', () => this.done());
    if (options.timeoutMs) {
      this.timer = setTimeout(() => this.stop('timeout'), options.timeoutMs);
    }
    if (options.signal) {
      this.unwatch = whenAborted(options.signal, () => this.stop('aborted'));
    }
  }

  onLine(line) {
    if (!line.trim()) return;
    let frame;
    try {
      frame = decodeFrame(parseJson(line, this.options.decode), this.options.decode);
    } catch {
      return; // stdout carries frames only; a stray line is not ours to interpret
    }
    if (frame.type === 'error') this.errors.push(frame);
    if (frame.type === 'result') this.result = frame.payload;
    if (frame.type === 'exit') this.exit = frame;
    if (!this.options.onEvent) return;
    const pending = callHandler(this.options.onEvent, frame, (failure) => this.stop(failure));
    if (pending) this.handlers.push(pending);
  }

  stop(reason) {
    if (this.stopReason !== null) return;
    this.stopReason = reason;
    terminate(this.child);
  }

  done() {
    this.pending -= 1;
    if (this.pending > 0) return;
    clearTimeout(this.timer);
    this.unwatch?.();
    if (this.handlers.length) Promise.all(this.handlers).then(() => this.settle());
    else this.settle();
  }

  settle() {
    if (this.stopReason instanceof HandlerFailure) {
      this.reject(this.stopReason.thrown);
      return;
    }
    try {
      const outcome = this.outcome();
      if (outcome instanceof Error) this.reject(outcome);
      else this.resolve(outcome);
    } catch (err) {
      this.reject(err);
    }
  }

  outcome() {
    const { exit, stopReason } = this;
    const runId = exit?.run_id ?? null;
    if (stopReason === 'timeout') {
      const ms = this.options.timeoutMs;
      return new SandboxError(`no result within timeoutMs (${ms} ms); the run was stopped`, {
        kind: 'Timeout', runId, exit, details: { timeoutMs: ms },
      });
    }
    if (stopReason === 'aborted' && exit?.status !== 'ok') {
      return new SandboxError('the run was aborted; its container was removed', {
        kind: 'Interrupted', runId, exit, cause: this.options.signal?.reason,
      });
    }
    if (this.spawnError) {
      const { message, fix } = spawnFailure(this.child.spawnfile, this.options.cwd, this.spawnError);
      return new SandboxError(message, { kind: 'InfrastructureError', cause: this.spawnError, details: { fix } });
    }
    if (!exit) {
      const how = this.child.signalCode ?? `exit code ${this.child.exitCode}`;
      return new SandboxError(`sandbox ended (${how}) without an exit frame${this.stderr.describe()}`, {
        kind: 'InfrastructureError', details: { stderr: this.stderr.text },
      });
    }
    if (exit.status === 'ok') return { ...exit, result: this.result };
    return SandboxError.fromRun(exit, this.errors);
  }
}
