// p50 wall time of a trivial run ({"case": "echo"} on the testkit image), four ways:
//   runTool (one `sandbox run` process per run), one SandboxSession (a warm `sandbox serve`),
//   and a bare docker-SDK create/start/wait/remove of the same image and command, plain and with
//   the coordinator's cheaper flags (network_disabled, log driver none).
// The four are interleaved round-robin, so a busy machine slows them alike.
// Usage: node bench/trivial.js [rounds]   (needs Docker and the sandbox/testkit image)
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { performance } from 'node:perf_hooks';
import readline from 'node:readline';
import { SandboxSession, runTool } from '../index.js';
import { REPO, assertDocker, pinnedPolicies, sandboxCommand, sandboxEnv } from '../testing/fixtures.js';

const ROUNDS = Number(process.argv[2] ?? 20);
const REQUEST = { args: { case: 'echo' } };

// Reads a variant per line ("plain" or "lean"), answers with the seconds one cycle took.
const BARE = `
import sys, time, docker
api = docker.from_env(version="auto").api
def once(lean):
    extra = {"log_config": {"type": "none", "config": {}}} if lean else {}
    c = api.create_container("sandbox/testkit", command=["python3", "/opt/testkit/main.py"],
                             network_disabled=lean,
                             host_config=api.create_host_config(network_mode="none", **extra))
    api.start(c)
    api.wait(c)
    api.remove_container(c, force=True)
for line in sys.stdin:
    t0 = time.perf_counter(); once(line.strip() == "lean")
    print(time.perf_counter() - t0, flush=True)
`;

function bareHelper() {
  const python = Array.isArray(sandboxCommand()) ? sandboxCommand()[0] : 'python3';
  const child = spawn(python, ['-c', BARE], { cwd: REPO, stdio: ['pipe', 'pipe', 'inherit'] });
  const answers = readline.createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  return {
    async cycle(variant) {
      child.stdin.write(`${variant}\n`);
      const { value } = await answers.next();
      return Number(value);
    },
    async close() {
      child.stdin.end();
      await once(child, 'close');
    },
  };
}

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const p95 = (xs) => [...xs].sort((a, b) => a - b)[Math.max(0, Math.ceil(0.95 * xs.length) - 1)];
const timed = async (fn) => {
  const t0 = performance.now();
  await fn();
  return (performance.now() - t0) / 1000;
};

assertDocker();
const policies = pinnedPolicies();
const options = { sandboxPath: sandboxCommand(), policiesDir: policies.dir, env: sandboxEnv() };
const session = new SandboxSession(options);
const bare = bareHelper();
try {
  const methods = {
    'runTool (one sandbox run process per run)': () => timed(() => runTool('testkit', REQUEST, options)),
    'SandboxSession (one warm sandbox serve)': () => timed(() => session.run('testkit', REQUEST)),
    'bare docker SDK create/start/wait/remove': () => bare.cycle('plain'),
    '  + network_disabled, log driver none': () => bare.cycle('lean'),
  };
  const samples = Object.fromEntries(Object.keys(methods).map((name) => [name, []]));
  await session.start();
  for (const fn of Object.values(methods)) await fn(); // warm-up: page cache, first imports
  for (let round = 0; round < ROUNDS; round++) {
    for (const [name, fn] of Object.entries(methods)) samples[name].push(await fn());
  }
  console.log(`trivial run ({"case":"echo"}), ${ROUNDS} interleaved rounds after a warm-up:`);
  for (const [name, xs] of Object.entries(samples)) {
    console.log(`${name.padEnd(44)} p50 ${median(xs).toFixed(3)} s   p95 ${p95(xs).toFixed(3)} s`);
  }
  const wall = await timed(() => Promise.all(Array.from({ length: ROUNDS }, () => session.run('testkit', REQUEST))));
  const metrics = await session.metrics();
  console.log(`session, ${ROUNDS} runs at once (max_concurrent ${metrics.max_concurrent}): ${wall.toFixed(2)} s wall, ${(ROUNDS / wall).toFixed(1)} runs/s`);
  const stats = metrics.tools.testkit;
  console.log(`server metrics, testkit: start latency (accepted->started) p50 ${stats.start_latency_s.p50} s, duration p50 ${stats.duration_s.p50} s`);
} finally {
  await session.close();
  await bare.close();
  policies.cleanup();
}
