// What runTool and SandboxSession share: the sandbox command line, the request object sent to
// it, a bounded tail of the child's stderr, and stopping a child (SIGTERM, then SIGKILL).
import { statSync } from 'node:fs';
import path from 'node:path';
import { stringifyJson } from './json.js';

const STDERR_TAIL_BYTES = 16 * 1024;
export const KILL_GRACE_MS = 15_000;

/**
 * `sandboxPath` is a command (default `sandbox` on PATH) or an argv prefix such as
 * [python, '-m', 'sandbox']; global options go before the sandbox command.
 */
export function commandLine({ sandboxPath, policiesDir, logFormat }, commandArgs) {
  const base = sandboxPath == null ? ['sandbox'] : Array.isArray(sandboxPath) ? [...sandboxPath] : [sandboxPath];
  if (base.length === 0 || base.some((part) => typeof part !== 'string' || part === '')) {
    throw new TypeError('sandboxPath must be a command or a non-empty array of strings');
  }
  const globals = [];
  if (policiesDir != null) globals.push('--policies', path.resolve(String(policiesDir)));
  if (logFormat != null) globals.push('--log-format', logFormat);
  return { file: base[0], args: [...base.slice(1), ...globals, ...commandArgs] };
}

/**
 * The contract's request object for `tool`. Relative input and output paths are resolved
 * against `cwd` now, so they mean what the caller meant whatever the server's directory.
 */
export function buildRequest(tool, request, cwd = process.cwd()) {
  if (typeof tool !== 'string' || tool === '') throw new TypeError('tool must be a non-empty string');
  const given = request ?? {};
  if (typeof given !== 'object' || Array.isArray(given)) throw new TypeError('request must be an object');
  if ('tool' in given && given.tool !== tool) {
    throw new TypeError(`request.tool (${given.tool}) differs from tool (${tool})`);
  }
  const out = { ...given, tool };
  // An empty path stays empty, an invalid request as for the CLI: never `cwd` itself.
  const resolve = (p) => (typeof p === 'string' && p !== '' ? path.resolve(cwd, p) : p);
  if (out.inputs && typeof out.inputs === 'object' && !Array.isArray(out.inputs)) {
    out.inputs = Object.fromEntries(Object.entries(out.inputs).map(([name, p]) => [name, resolve(p)]));
  }
  if ('output_dir' in out) out.output_dir = resolve(out.output_dir);
  return out;
}

export function encodeRequest(request) {
  return stringifyJson(request);
}

/**
 * Why `file` could not be started, and the fix. Node reports a missing working directory as
 * ENOENT of the command itself, which would send the caller looking for the wrong thing.
 */
export function spawnFailure(file, cwd, err) {
  if (err?.code === 'ENOENT' && !statSync(cwd, { throwIfNoEntry: false })?.isDirectory()) {
    return { message: `could not start ${file}: the working directory ${cwd} does not exist`, fix: 'pass an existing directory as cwd' };
  }
  return {
    message: `could not start ${file}: ${err?.message}`,
    fix: 'install the sandbox CLI or pass sandboxPath (e.g. [python, "-m", "sandbox"])',
  };
}

/** Keeps the last 16 KiB of a stream's text; forwards each line to `onLine` if given. */
export class StderrTail {
  constructor(stream, onLine) {
    this.text = '';
    let partial = '';
    stream.setEncoding('utf8');
    stream.on('data', (chunk) => {
      this.text = (this.text + chunk).slice(-STDERR_TAIL_BYTES);
      if (!onLine) return;
      const lines = (partial + chunk).split('\n');
      partial = lines.pop() ?? '';
      for (const line of lines) safely(onLine, line);
    });
    stream.on('end', () => {
      if (onLine && partial) safely(onLine, partial);
    });
  }

  describe() {
    const text = this.text.trim();
    return text ? `\n--- stderr of sandbox (tail) ---\n${text}` : '';
  }
}

function safely(fn, arg) {
  try {
    fn(arg);
  } catch {
    // a logging hook must not break the run
  }
}

/** SIGTERM now (the CLI then removes its containers), SIGKILL if it is still alive later. */
export function terminate(child, graceMs = KILL_GRACE_MS) {
  if (child.exitCode !== null || child.signalCode !== null) return;
  child.kill('SIGTERM');
  const timer = setTimeout(() => {
    if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
  }, graceMs);
  timer.unref();
  child.once('exit', () => clearTimeout(timer));
}

// One 'abort' listener per signal, however many runs share it: a listener per run made Node warn
// (MaxListenersExceededWarning) from the eleventh concurrent run on one AbortSignal.
const abortWatchers = new WeakMap();

/** Calls `fn` once when `signal` aborts; returns the function that stops watching. */
export function whenAborted(signal, fn) {
  let watchers = abortWatchers.get(signal);
  if (!watchers) {
    watchers = new Set();
    abortWatchers.set(signal, watchers);
    const all = watchers;
    signal.addEventListener('abort', () => {
      abortWatchers.delete(signal);
      for (const watcher of all) watcher();
    }, { once: true });
  }
  const watcher = () => fn();
  watchers.add(watcher);
  return () => {
    watchers.delete(watcher);
  };
}

/** What an onEvent handler threw (or its promise rejected with), whatever its type. */
export class HandlerFailure {
  constructor(thrown) {
    this.thrown = thrown;
  }
}

/**
 * Calls `onEvent(frame)`. A throw, or a rejection of the promise it returns, is passed to
 * `fail` as a HandlerFailure (never an unhandled rejection). Returns the handler's promise,
 * settled either way, for the call to wait on before it settles, or undefined.
 */
export function callHandler(onEvent, frame, fail) {
  let returned;
  try {
    returned = onEvent(frame);
  } catch (err) {
    fail(new HandlerFailure(err));
    return undefined;
  }
  if (typeof returned?.then !== 'function') return undefined;
  return Promise.resolve(returned).then(
    () => {},
    (err) => fail(new HandlerFailure(err)),
  );
}

/** Checks a positive finite number of milliseconds (or undefined). */
export function checkMs(name, value) {
  if (value === undefined || value === null) return undefined;
  if (typeof value !== 'number' || !(value > 0) || !Number.isFinite(value)) {
    throw new TypeError(`${name} must be a positive number of milliseconds`);
  }
  return value;
}
