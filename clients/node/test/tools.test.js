// The four data tools through one SandboxSession: the demo pipeline (ingest -> dbt -> Dagster,
// EDA alongside), concurrent wherever the data allows, one run cancelled mid-run, typed errors.
// Needs the tool images (sandbox images build dbt eda pyairbyte dagster); skipped without
// them unless SANDBOX_REQUIRE_DOCKER=1.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { SandboxError, SandboxSession } from '../index.js';
import { REPO, containersOf, missingImages, pinnedPolicies, sandboxCommand, sandboxEnv } from '../testing/fixtures.js';

const IMAGES = ['sandbox/pyairbyte', 'sandbox/dbt', 'sandbox/dagster', 'sandbox/eda'];
const TOOLS = ['pyairbyte_ingest', 'dbt_transform', 'dagster_orchestrate', 'eda_analyze'];
const EXAMPLES = path.join(REPO, 'examples');
const problem = missingImages(IMAGES);
const gate = problem === null || process.env.SANDBOX_REQUIRE_DOCKER === '1' ? {} : { skip: problem };

describe('the four data tools through one session', { ...gate, timeout: 900_000 }, () => {
  let work;
  let policies;
  let session;
  before(() => {
    if (problem !== null) throw new Error(problem);
    work = mkdtempSync(path.join(tmpdir(), 'sandbox-node-tools-'));
    policies = pinnedPolicies(TOOLS, [EXAMPLES, work]);
    session = new SandboxSession({
      sandboxPath: sandboxCommand(), policiesDir: policies.dir, env: sandboxEnv(), maxConcurrent: 4,
    });
  });
  after(async () => {
    await session?.close();
    policies?.cleanup();
    if (work) rmSync(work, { recursive: true, force: true });
  });
  const out = (name) => path.join(work, name);

  test('ingest, profile, cancel and typed errors run concurrently; dbt and Dagster follow', async () => {
    const controller = new AbortController();
    let cancelledRun = null;
    const [ingest, profile, cancelled, badArgs, toolError] = await Promise.allSettled([
      session.run('pyairbyte_ingest', {
        args: { source: 'source-faker', config: { count: 200, seed: 42 }, database: 'ingest.duckdb' },
        output_dir: out('ingest'),
      }),
      session.run('eda_analyze', {
        args: { format: 'csv', file: 'orders.csv', parse_dates: ['order_date'], title: 'Orders' },
        inputs: { data: path.join(EXAMPLES, 'data') },
        output_dir: out('eda'),
      }),
      session.run('pyairbyte_ingest', {
        args: { source: 'source-faker', config: { count: 250_000 }, database: 'big.duckdb' },
        output_dir: out('cancelled'),
      }, {
        signal: controller.signal,
        onEvent: (frame) => {
          if (frame.type === 'started') {
            cancelledRun = frame.run_id;
            setTimeout(() => controller.abort(), 1000); // mid-run: the tool is importing/reading
          }
        },
      }),
      session.run('eda_analyze', { args: { format: 'xlsx' }, inputs: { data: path.join(EXAMPLES, 'data') }, output_dir: out('bad') }),
      session.run('eda_analyze', { args: { format: 'csv' }, output_dir: out('no-input') }),
    ]);

    assert.equal(ingest.status, 'fulfilled', ingest.reason?.stack);
    assert.equal(ingest.value.result.database, 'ingest.duckdb');
    assert.equal(profile.status, 'fulfilled', profile.reason?.stack);
    assert.equal(profile.value.result.summary.rows, 300);

    assert.ok(cancelled.reason instanceof SandboxError);
    assert.equal(cancelled.reason.kind, 'Interrupted', cancelled.reason.message);
    assert.equal(cancelled.reason.runId, cancelledRun);
    assert.deepEqual(containersOf(cancelledRun), []);

    assert.equal(badArgs.reason.kind, 'InvalidRequest', badArgs.reason.message);
    assert.equal(badArgs.reason.exitCode, 2);
    assert.equal(toolError.reason.kind, 'ToolError', toolError.reason.message);
    assert.match(toolError.reason.message, /needs an input named 'data'/);
    assert.ok(toolError.reason.traceback.some((t) => t.file === '/opt/tool/main.py'));

    const dbt = await session.run('dbt_transform', {
      args: { command: 'build' },
      inputs: { project: path.join(EXAMPLES, 'dbt_project'), source_db: out('ingest') },
      output_dir: out('dbt'),
    });
    assert.equal(dbt.status, 'ok');
    assert.ok(dbt.outputs.some((o) => o.path === 'dbt.duckdb'));

    const warehouse = path.join(out('dbt'), 'dbt.duckdb');
    const [dagster, marts] = await Promise.all([
      session.run('dagster_orchestrate', {
        args: {}, inputs: { definitions: path.join(EXAMPLES, 'dagster'), warehouse }, output_dir: out('dagster'),
      }),
      session.run('eda_analyze', {
        args: { format: 'duckdb', table: 'marts.mart_product_sales' }, inputs: { data: warehouse }, output_dir: out('eda-marts'),
      }),
    ]);
    assert.deepEqual(Object.keys(dagster.result.assets).sort(), ['sales_report', 'segment_summary', 'top_customers']);
    assert.ok(marts.result.summary.rows > 0);

    const metrics = await session.metrics();
    assert.deepEqual(Object.keys(metrics.tools).sort(), [...TOOLS].sort());
    assert.equal(metrics.runs.interrupted, 1);
    assert.equal(metrics.active_containers, 0);
  });
});
