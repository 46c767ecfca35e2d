// Shared by the tests and the benchmark (kept outside test/ so `node --test` does not run it as
// a test file): the sandbox command, a policy directory pinned to the locally built testkit
// image, and the Docker gate.
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
export const FAKE_SERVE = fileURLToPath(new URL('./fake-serve.js', import.meta.url));
export const FAKE_RUN = fileURLToPath(new URL('./fake-run.js', import.meta.url));

/** How to run the sandbox CLI: $SANDBOX_CLI (a JSON argv or a path), the repo's venv, or PATH. */
export function sandboxCommand() {
  const given = process.env.SANDBOX_CLI;
  if (given) return given.trim().startsWith('[') ? JSON.parse(given) : given;
  const python = path.join(REPO, '.venv', 'bin', 'python');
  return existsSync(python) ? [python, '-m', 'sandbox'] : 'sandbox';
}

function docker(args) {
  return spawnSync('docker', args, { encoding: 'utf8', timeout: 30_000 });
}

/**
 * Environment for the CLI: the repository first on PYTHONPATH, so `python -m sandbox` imports this
 * checkout from any working directory.
 */
export function sandboxEnv() {
  return { PYTHONPATH: [REPO, process.env.PYTHONPATH].filter(Boolean).join(path.delimiter) };
}

let engine;
/** null when Docker answers and sandbox/testkit is built, else why not. */
export function dockerProblem() {
  if (engine !== undefined) return engine;
  const found = docker(['image', 'inspect', 'sandbox/testkit', '--format', '{{.Id}}']);
  engine = found.status === 0 ? null : `no Docker engine or no sandbox/testkit image: ${(found.stderr || found.error?.message || '').trim()}`;
  return engine;
}

/** test() options: skipped without an engine, unless SANDBOX_REQUIRE_DOCKER=1 makes it fail. */
export function needsDocker() {
  const problem = dockerProblem();
  if (problem === null || process.env.SANDBOX_REQUIRE_DOCKER === '1') return {};
  return { skip: problem };
}

export function assertDocker() {
  const problem = dockerProblem();
  if (problem !== null) throw new Error(`SANDBOX_REQUIRE_DOCKER=1: ${problem}`);
}

/**
 * A temp policy dir with copies of the repo's policies for `tools`, each pinned to the image
 * built here and with absolute input roots (default: the repo's examples/ and tests/data/).
 */
export function pinnedPolicies(tools = ['testkit'], roots = [path.join(REPO, 'examples'), path.join(REPO, 'tests', 'data')]) {
  const dir = mkdtempSync(path.join(tmpdir(), 'sandbox-node-policies-'));
  for (const tool of tools) {
    let text = readFileSync(path.join(REPO, 'policies', `${tool}.yaml`), 'utf8');
    const image = /image: \{name: ([^,]+), id: "sha256:[0-9a-f]{64}"\}/.exec(text)?.[1];
    const id = docker(['image', 'inspect', image, '--format', '{{.Id}}']).stdout.trim();
    text = text
      .replace(/id: "sha256:[0-9a-f]{64}"/, `id: "${id}"`)
      .replace(/allowed_roots: \[[^\]]*\]/, `allowed_roots: ${JSON.stringify(roots)}`);
    writeFileSync(path.join(dir, `${tool}.yaml`), text);
  }
  return { dir, cleanup: () => rmSync(dir, { recursive: true, force: true }) };
}

/** null when every image exists locally, else which are missing. */
export function missingImages(images) {
  if (dockerProblem() !== null) return dockerProblem();
  const missing = images.filter((image) => docker(['image', 'inspect', image]).status !== 0);
  return missing.length ? `images not built: ${missing.join(', ')}` : null;
}

/** Ids of the containers (running or not) labelled with this run id. */
export function containersOf(runId) {
  const found = docker(['ps', '-aq', '--filter', `label=io.sandbox.run_id=${runId}`]);
  return found.stdout.split('\n').filter(Boolean);
}

/** Resolves once `predicate(frame)` holds for an event; use as onEvent with `.wait`. */
export function eventWaiter(predicate) {
  let resolve;
  const seen = new Promise((r) => {
    resolve = r;
  });
  const onEvent = (frame) => {
    if (predicate(frame)) resolve(frame);
  };
  return { onEvent, seen };
}
