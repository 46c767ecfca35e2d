// Decoding without Docker: exact big integers, tagged values, and errors that carry tracebacks.
import assert from 'node:assert/strict';
import test from 'node:test';
import { EXIT_CODES, SandboxError, decodeValue, parseJson } from '../index.js';
import { stringifyJson } from '../src/json.js';

test('integers beyond MAX_SAFE_INTEGER parse as BigInt, or as strings by option', () => {
  const text = '{"a":12345678901234567890,"b":-9007199254740993,"c":9007199254740991,"d":1.2345678901234567,"e":"12345678901234567890","f":[1e20]}';
  const value = parseJson(text);
  assert.equal(value.a, 12345678901234567890n);
  assert.equal(value.b, -9007199254740993n);
  assert.equal(value.c, 9007199254740991);
  assert.equal(value.d, 1.2345678901234567);
  assert.equal(value.e, '12345678901234567890'); // inside a string: untouched
  assert.equal(value.f[0], 1e20); // a float literal, not an integer
  assert.deepEqual(parseJson(text, { bigints: 'string' }).a, '12345678901234567890');
});

test('strings with escaped quotes do not confuse the integer scan', () => {
  const value = parseJson('{"s":"x\\"12345678901234567890\\"","n":12345678901234567890}');
  assert.equal(value.s, 'x"12345678901234567890"');
  assert.equal(value.n, 12345678901234567890n);
});

test('BigInt values are written as integer literals', () => {
  assert.equal(stringifyJson({ n: 12345678901234567890n, s: 'a' }), '{"n":12345678901234567890,"s":"a"}');
});

test('tagged values decode to Node types; datetimes stay ISO strings by default', () => {
  const payload = {
    when: { $type: 'datetime', value: '2024-01-02T03:04:05.123456+00:00' },
    day: { $type: 'date', value: '2024-01-02' },
    at: { $type: 'time', value: '03:04:05' },
    price: { $type: 'decimal', value: '12.50' },
    nan: { $type: 'float', value: 'NaN' },
    inf: { $type: 'float', value: '-Infinity' },
    blob: { $type: 'bytes', base64: 'AAE=' },
    nested: [{ deep: { $type: 'decimal', value: '0.1' } }],
  };
  const value = decodeValue(structuredClone(payload));
  assert.equal(value.when, '2024-01-02T03:04:05.123456+00:00');
  assert.equal(value.day, '2024-01-02');
  assert.equal(value.at, '03:04:05');
  assert.equal(value.price, '12.50');
  assert.ok(Number.isNaN(value.nan));
  assert.equal(value.inf, -Infinity);
  assert.deepEqual(value.blob, Buffer.from([0, 1]));
  assert.equal(value.nested[0].deep, '0.1');

  const asDates = decodeValue(structuredClone(payload), { dates: 'date', decimals: 'number' });
  assert.ok(asDates.when instanceof Date);
  assert.equal(asDates.when.toISOString(), '2024-01-02T03:04:05.123Z');
  assert.equal(asDates.day.toISOString(), '2024-01-02T00:00:00.000Z');
  assert.equal(asDates.price, 12.5);
});

test('naive datetimes read as UTC, never as local time', () => {
  const value = decodeValue({ $type: 'datetime', value: '2024-06-01T12:00:00' }, { dates: 'date' });
  assert.equal(value.toISOString(), '2024-06-01T12:00:00.000Z');
});

test('dataframes decode to columns and row objects; repeated names get suffixes', () => {
  const frame = {
    $type: 'dataframe',
    columns: ['id', 'name', 'id'],
    dtypes: { id: 'int64', name: 'object' },
    data: [[1, 'ada', { $type: 'decimal', value: '1.5' }], [2, 'grace', null]],
  };
  const value = decodeValue(frame);
  assert.deepEqual(value.columns, ['id', 'name', 'id']);
  assert.deepEqual(value.rows, [{ id: 1, name: 'ada', 'id.1': '1.5' }, { id: 2, name: 'grace', 'id.1': null }]);
});

test('a repeated dataframe name never takes the name of another column, as in pandas read_csv', () => {
  const frame = { $type: 'dataframe', columns: ['a', 'a', 'a.1', 'a'], dtypes: {}, data: [[1, 2, 3, 4]] };
  assert.deepEqual(decodeValue(frame).rows, [{ a: 1, 'a.2': 2, 'a.1': 3, 'a.3': 4 }]);
});

test('a dataframe column named __proto__ is a cell, never the row prototype', () => {
  const text = '{"$type":"dataframe","columns":["name","__proto__"],"dtypes":{},"data":[["a",{"isAdmin":true}],["b",5]]}';
  const frame = decodeValue(parseJson(text));
  for (const row of frame.rows) assert.equal(Object.getPrototypeOf(row), Object.prototype);
  assert.equal(frame.rows[0].isAdmin, undefined);
  assert.deepEqual(Object.keys(frame.rows[0]), ['name', '__proto__']);
  assert.deepEqual(frame.rows[0].__proto__, { isAdmin: true });
  assert.equal(frame.rows[1].__proto__, 5);
});

test('objects that only look tagged are left alone', () => {
  const lookalikes = [
    { $type: 'decimal', value: '1', extra: true },
    { $type: 'bytes', value: 'AAE=' },
    { $type: 'float', value: '1.5' },
    { $type: 'mystery', value: 'x' },
  ];
  assert.deepEqual(decodeValue(structuredClone(lookalikes)), lookalikes);
});

test('a failed run becomes a SandboxError with the Python traceback in its stack', () => {
  const traceback = [
    { file: '/opt/tool/lib.py', line: 10, function: 'main', code: 'helper()' },
    { file: '/opt/tool/main.py', line: 55, function: 'helper', code: 'raise ValueError("boom")' },
  ];
  const exit = { type: 'exit', run_id: 'r1', status: 'tool_error', exit_code: 1 };
  const errorFrame = { type: 'error', error: { kind: 'ToolError', message: 'ValueError: boom', traceback, details: { type: 'ValueError' } } };
  const err = SandboxError.fromRun(exit, [errorFrame]);
  assert.ok(err instanceof Error);
  assert.equal(err.name, 'SandboxError');
  assert.equal(err.kind, 'ToolError');
  assert.equal(err.status, 'tool_error');
  assert.equal(err.exitCode, 1);
  assert.equal(err.runId, 'r1');
  assert.deepEqual(err.traceback, traceback);
  assert.deepEqual(err.details, { type: 'ValueError' });
  assert.equal(err.exit, exit);
  assert.match(err.message, /ValueError: boom \(at \/opt\/tool\/main.py:55 in helper\)/);
  const lines = err.stack.split('\n');
  assert.match(lines[1], /^ {4}at helper \(\/opt\/tool\/main.py:55\)/); // innermost first
  assert.match(lines[2], /^ {4}at main \(\/opt\/tool\/lib.py:10\)/);
  assert.match(lines[3], /^ {4}at .*\((file:|node:)/); // then the Node.js frames
});

test('the error that decided the status wins over other error frames', () => {
  const frames = [
    { type: 'error', error: { kind: 'ToolError', message: 'script said so', traceback: [], details: {} } },
    { type: 'error', error: { kind: 'Timeout', message: 'deadline', traceback: [], details: {} } },
  ];
  const err = SandboxError.fromRun({ status: 'timeout', run_id: 'r' }, frames);
  assert.equal(err.kind, 'Timeout');
  assert.equal(err.exitCode, EXIT_CODES.timeout);
});

test('JSON-RPC errors map to contract kinds', () => {
  assert.equal(SandboxError.fromRpc({ code: -32602, message: 'bad' }).kind, 'InvalidRequest');
  assert.equal(SandboxError.fromRpc({ code: -32001, message: 'full' }).kind, 'InfrastructureError');
  assert.equal(SandboxError.fromRpc({ code: -32000, message: 'stopping' }).kind, 'Interrupted');
  const policy = SandboxError.fromRpc({ code: -32003, message: 'x', data: { kind: 'InvalidRequest', details: { path: 'p' } } });
  assert.equal(policy.kind, 'InvalidRequest');
  assert.equal(policy.rpcCode, -32003);
  assert.deepEqual(policy.details, { path: 'p' });
});
