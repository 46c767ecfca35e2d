// A scripted stand-in for `sandbox run --request -` for runTool's tests without Docker: reads
// the request from stdin and writes an ok run's frames (accepted, result, exit).
let body = '';
process.stdin.setEncoding('utf8');
process.stdin.on('data', (chunk) => {
  body += chunk;
});
process.stdin.on('end', () => {
  const { tool } = JSON.parse(body);
  const runId = 'run-1';
  let seq = 0;
  const frame = (type, fields) => ({ v: 1, run_id: runId, seq: seq++, ts: new Date().toISOString(), type, ...fields });
  const frames = [
    frame('accepted', { tool }),
    frame('result', { payload: { tool } }),
    frame('exit', { status: 'ok', exit_code: 0, oom_killed: false, duration_s: 0.01, outputs: [], refused: [] }),
  ];
  process.stdout.write(frames.map((f) => `${JSON.stringify(f)}\n`).join(''));
});
