// Type declarations for @sandbox/client (written by hand; the package is plain ES modules).
// Protocol v1 frames and the request object: contract sections 1, 2 and 4 (docs/node.md).

/// <reference types="node" />

export type Status =
  | 'ok'
  | 'tool_error'
  | 'invalid_request'
  | 'denied'
  | 'timeout'
  | 'resource_limit'
  | 'infrastructure_error'
  | 'interrupted';

export type ErrorKind =
  | 'InvalidRequest'
  | 'PolicyDenied'
  | 'ToolError'
  | 'Timeout'
  | 'ResourceLimit'
  | 'ProtocolError'
  | 'InfrastructureError'
  | 'Interrupted';

/** The request object of the contract, without `tool` (given separately). */
export interface RunRequest {
  /** Arguments for the tool's script, checked against the policy's args_schema. */
  args?: Record<string, unknown>;
  /** Input name -> host path (mounted read-only at /inputs/NAME); relative paths are resolved. */
  inputs?: Record<string, string>;
  /** Host directory for outputs; must not exist yet or be empty. */
  output_dir?: string | null;
  /** Lowers the policy's deadline (seconds); never raises it. */
  timeout_s?: number | null;
}

export interface TracebackEntry {
  file: string;
  line: number | null;
  function: string;
  code: string;
}

export interface ErrorInfo {
  kind: ErrorKind;
  message: string;
  traceback: TracebackEntry[];
  details: Record<string, unknown>;
}

export interface OutputEntry {
  /** Relative to output_dir, '/'-separated. */
  path: string;
  bytes: number;
  sha256: string;
}

export interface RefusedEntry {
  path: string;
  reason: string;
}

interface Envelope {
  v: 1;
  run_id: string;
  seq: number;
  /** RFC 3339, UTC. */
  ts: string;
}

export interface AcceptedFrame extends Envelope {
  type: 'accepted';
  tool: string;
  image: string;
  image_id: string;
  policy_sha256: string;
  limits: Record<string, unknown>;
}
export interface StartedFrame extends Envelope {
  type: 'started';
  container_id: string;
}
export interface LogFrame extends Envelope {
  type: 'log';
  stream: 'stdout' | 'stderr';
  line: string;
}
export interface ProgressFrame extends Envelope {
  type: 'progress';
  message: string;
  fraction?: number;
}
/** `payload` is decoded (tagged values, big integers) per DecodeOptions. */
export interface DataFrame extends Envelope {
  type: 'data';
  payload: unknown;
}
export interface ResultFrame extends Envelope {
  type: 'result';
  payload: unknown;
}
export interface ErrorFrame extends Envelope {
  type: 'error';
  error: ErrorInfo;
}
export interface ExitFrame extends Envelope {
  type: 'exit';
  status: Status;
  /** The container's exit code; null if no container ran. */
  exit_code: number | null;
  oom_killed: boolean;
  duration_s: number;
  outputs: OutputEntry[];
  refused: RefusedEntry[];
  /** A failed run that had written outputs: the absolute path they were moved to
   * (`.sandbox-failed/RUN_ID` beside output_dir, docs/protocol.md). Absent otherwise. */
  partial_outputs?: string;
}
export type Frame =
  | AcceptedFrame
  | StartedFrame
  | LogFrame
  | ProgressFrame
  | DataFrame
  | ResultFrame
  | ErrorFrame
  | ExitFrame;

/** What a successful run resolves with: its exit frame plus the decoded result payload. */
export interface RunResult<R = unknown> extends ExitFrame {
  status: 'ok';
  /** The payload of the run's `result` frame (undefined if the tool returned none). */
  result: R | undefined;
}

/**
 * How payloads are decoded. Defaults never lose information: datetimes and decimals stay
 * strings, integers beyond Number.MAX_SAFE_INTEGER become BigInt.
 */
export interface DecodeOptions {
  /** 'string' (default): ISO text as sent; 'date': a Date (UTC for naive values; sub-ms digits dropped). */
  dates?: 'string' | 'date';
  /** 'string' (default): exact decimal text; 'number': a (possibly rounded) Number. */
  decimals?: 'string' | 'number';
  /** 'bigint' (default) or 'string' for integers beyond Number.MAX_SAFE_INTEGER. */
  bigints?: 'bigint' | 'string';
}

export interface ProcessOptions {
  /** The CLI: a command (default 'sandbox' on PATH) or an argv prefix, e.g. [python, '-m', 'sandbox']. */
  sandboxPath?: string | string[];
  /** Policy directory (default: $SANDBOX_POLICY_DIR, else ./policies of the CLI's cwd). */
  policiesDir?: string;
  /** Extra environment for the CLI (merged over process.env). */
  env?: Record<string, string | undefined>;
  /** Working directory of the CLI, and base of relative input/output paths. */
  cwd?: string;
  /** 'text' (default) or 'json' log lines on the CLI's stderr. */
  logFormat?: 'text' | 'json';
  /** Receives each stderr line of the CLI (its logs). */
  onLog?: (line: string) => void;
  decode?: DecodeOptions;
}

export interface CallOptions {
  /** Called with every frame of the run, in order, the exit frame last. Throwing stops the run. */
  /** Every frame, in order. A throw or a rejected returned promise rejects the call, which
   * settles only after the promises it returned. */
  onEvent?: (frame: Frame) => void | Promise<void>;
  /** Aborting stops the run (container removed) and rejects with kind 'Interrupted'. */
  signal?: AbortSignal;
  /** Client-side deadline: the run is stopped and the call rejects with kind 'Timeout'. */
  timeoutMs?: number;
}

export interface RunToolOptions extends ProcessOptions, CallOptions {}

/** One run in its own `sandbox run --request -` process. */
export function runTool<R = unknown>(
  tool: string,
  request?: RunRequest,
  options?: RunToolOptions,
): Promise<RunResult<R>>;

export interface SessionOptions extends ProcessOptions {
  /** `sandbox serve --max-concurrent` (default: from cores and memory). */
  maxConcurrent?: number;
  /** `sandbox serve --queue` (default 64). */
  queue?: number;
}

export interface ToolInfo {
  tool: string;
  description: string;
  image: string;
  image_id: string;
  runtime: 'runc' | 'runsc';
  network: string;
  timeout_s: number;
  memory_mb: number;
  args_schema: Record<string, unknown>;
}

export interface Health {
  ok: boolean;
  version: string;
  protocol: number;
  accepting: boolean;
  engine: {
    reachable: boolean;
    version?: string;
    api_version?: string;
    runtimes?: string[];
    cgroup_version?: string;
    error?: string;
  };
}

export interface Percentiles {
  p50: number | null;
  p95: number | null;
  count: number;
}

export interface Metrics {
  uptime_s: number;
  accepting: boolean;
  max_concurrent: number;
  queue_max: number;
  active_runs: number;
  queue_depth: number;
  active_containers: number;
  runs: Record<Status, number>;
  runs_total: number;
  /** error frames by error.kind */
  errors: Partial<Record<ErrorKind, number>>;
  /** JSON-RPC errors answered, by code */
  rpc_errors: Record<string, number>;
  tools: Record<
    string,
    { runs: number; queue_wait_s: Percentiles; start_latency_s: Percentiles; duration_s: Percentiles }
  >;
}

/** Many concurrent runs through one long-lived `sandbox serve`. */
export class SandboxSession {
  constructor(options?: SessionOptions);
  /** The server's pid; null before the first call and after it ended. */
  readonly pid: number | null;
  /** How often the server was started again after it died. */
  readonly restarts: number;
  /** Starts the server now rather than on the first call; resolves with its health. */
  start(): Promise<Health>;
  run<R = unknown>(tool: string, request?: RunRequest, options?: CallOptions): Promise<RunResult<R>>;
  tools(): Promise<ToolInfo[]>;
  health(): Promise<Health>;
  metrics(): Promise<Metrics>;
  /** Cancels a run by id (an AbortSignal passed to run() does this for you). */
  cancel(runId: string): Promise<{ run_id: string; was: 'running' | 'queued' }>;
  /** Cancels (or, with drain, finishes) what runs, settles every call, waits for the server to exit. */
  close(options?: { drain?: boolean; timeoutMs?: number }): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

export interface SandboxErrorFields {
  kind?: ErrorKind;
  status?: Status;
  runId?: string | null;
  traceback?: TracebackEntry[];
  details?: Record<string, unknown>;
  exit?: ExitFrame | null;
  rpcCode?: number | null;
  cause?: unknown;
}

/** Every failure of a run or a call. `stack` starts with the tool's Python frames, innermost first. */
export class SandboxError extends Error {
  constructor(message: string, fields?: SandboxErrorFields);
  readonly name: 'SandboxError';
  kind: ErrorKind;
  status: Status;
  /** The `sandbox run` exit code for `status` (1 tool error ... 130 interrupted). */
  exitCode: number;
  runId: string | null;
  /** The Python traceback of a failed tool, innermost call last (as Python lists it). */
  traceback: TracebackEntry[];
  details: Record<string, unknown>;
  /** The run's exit frame, when the run got that far. */
  exit: ExitFrame | null;
  /** The JSON-RPC error code when `sandbox serve` refused the call itself. */
  rpcCode: number | null;
  static fromRun(exit: ExitFrame, errorFrames?: ErrorFrame[], extra?: SandboxErrorFields): SandboxError;
  static fromRpc(
    error: { code: number; message: string; data?: Record<string, unknown> },
    extra?: SandboxErrorFields,
  ): SandboxError;
}

export const EXIT_CODES: Readonly<Record<Status, number>>;

/** JSON.parse keeping integers beyond Number.MAX_SAFE_INTEGER exact (BigInt or string). */
export function parseJson(text: string, options?: DecodeOptions): unknown;

/** Decodes tagged values ({"$type": ...}) anywhere inside a payload (in place for objects). */
export function decodeValue(value: unknown, options?: DecodeOptions): unknown;
