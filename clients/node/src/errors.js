// SandboxError: every failure of a run or a call, typed by the contract's error kinds, with the
// Python traceback of a failed tool spliced into the stack so it reads like a Node.js stack.

/** The `sandbox run` exit code of each status (contract section 1). */
export const EXIT_CODES = Object.freeze({
  ok: 0,
  tool_error: 1,
  invalid_request: 2,
  denied: 3,
  timeout: 4,
  resource_limit: 5,
  infrastructure_error: 6,
  interrupted: 130,
});

const STATUS_BY_KIND = {
  InvalidRequest: 'invalid_request',
  PolicyDenied: 'denied',
  ToolError: 'tool_error',
  ProtocolError: 'tool_error',
  Timeout: 'timeout',
  ResourceLimit: 'resource_limit',
  InfrastructureError: 'infrastructure_error',
  Interrupted: 'interrupted',
};

const KIND_BY_STATUS = {
  invalid_request: 'InvalidRequest',
  denied: 'PolicyDenied',
  tool_error: 'ToolError',
  timeout: 'Timeout',
  resource_limit: 'ResourceLimit',
  infrastructure_error: 'InfrastructureError',
  interrupted: 'Interrupted',
};

// JSON-RPC error codes of `sandbox serve` (docs/serve.md) and the kind a caller sees for each.
const KIND_BY_RPC_CODE = {
  [-32700]: 'InvalidRequest',
  [-32600]: 'InvalidRequest',
  [-32602]: 'InvalidRequest',
  [-32002]: 'InvalidRequest', // cancel of a run the server does not know
  [-32000]: 'Interrupted', // the server is shutting down
  [-32001]: 'InfrastructureError', // the queue is full
};

export class SandboxError extends Error {
  /**
   * @param {string} message
   * @param {object} [fields]
   */
  constructor(message, fields = {}) {
    const { kind = 'InfrastructureError', status, runId = null, traceback = [], details = {} } = fields;
    super(message, 'cause' in fields ? { cause: fields.cause } : undefined);
    this.kind = kind;
    this.status = status ?? STATUS_BY_KIND[kind] ?? 'infrastructure_error';
    this.exitCode = EXIT_CODES[this.status] ?? EXIT_CODES.infrastructure_error;
    this.runId = runId;
    this.details = details;
    this.rpcCode = fields.rpcCode ?? null;
    // Shown in the stack already; kept out of util.inspect's property dump.
    Object.defineProperty(this, 'traceback', { value: traceback, enumerable: false, writable: true });
    Object.defineProperty(this, 'exit', { value: fields.exit ?? null, enumerable: false, writable: true });
    if (traceback.length) this.stack = spliceTraceback(this.stack, traceback);
  }

  /**
   * The error of a run that ended with a status other than ok.
   * @param {object} exit the exit frame
   * @param {object[]} errorFrames the run's error frames
   * @param {object} [extra] e.g. {cause}
   */
  static fromRun(exit, errorFrames = [], extra = {}) {
    const kind = KIND_BY_STATUS[exit.status] ?? 'InfrastructureError';
    // The error that decided the status, else the last one the run reported.
    const frame =
      errorFrames.find((f) => STATUS_BY_KIND[f.error?.kind] === exit.status) ?? errorFrames.at(-1);
    const error = frame?.error ?? {};
    const traceback = Array.isArray(error.traceback) ? error.traceback : [];
    const where = traceback.at(-1);
    let message = error.message ?? `the run ended with status ${exit.status}`;
    if (where) message += ` (at ${where.file}:${where.line} in ${where.function})`;
    return new SandboxError(message, {
      kind: error.kind ?? kind,
      status: exit.status,
      runId: exit.run_id ?? null,
      traceback,
      details: error.details ?? {},
      exit,
      ...extra,
    });
  }

  /** The error of a JSON-RPC call that `sandbox serve` answered with an error object. */
  static fromRpc(error, extra = {}) {
    const data = error?.data ?? {};
    const code = error?.code;
    const kind = code === -32003 ? (data.kind ?? 'InfrastructureError') : (KIND_BY_RPC_CODE[code] ?? 'InfrastructureError');
    return new SandboxError(String(error?.message ?? 'sandbox serve answered with an error'), {
      kind,
      rpcCode: typeof code === 'number' ? code : null,
      details: data.details ?? data,
      ...extra,
    });
  }
}
SandboxError.prototype.name = 'SandboxError';

// Python lists the innermost call last; a stack lists it first, followed by the Node.js frames.
function spliceTraceback(stack, traceback) {
  const lines = String(stack ?? '').split('\n');
  const firstFrame = lines.findIndex((line) => /^\s+at /.test(line));
  const head = firstFrame === -1 ? lines : lines.slice(0, firstFrame);
  const tail = firstFrame === -1 ? [] : lines.slice(firstFrame);
  const python = [...traceback].reverse().map((entry) => {
    const code = entry.code ? `  [${entry.code}]` : '';
    return `    at ${entry.function || '<module>'} (${entry.file}:${entry.line ?? '?'})${code}`;
  });
  return [...head, ...python, ...tail].join('\n');
}
