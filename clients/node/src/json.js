// JSON in and out of the sandbox without losing what JSON.parse would lose:
// integers beyond Number.MAX_SAFE_INTEGER (Python ints are unbounded) and the protocol's tagged
// values ({"$type": ...}) for datetimes, decimals, non-finite floats, bytes and dataframes.
import { randomUUID } from 'node:crypto';

// A marker no real string can collide with (it carries a random id of this process).
const MARK = `\u0000sandbox-bigint:${randomUUID()}:`;
const LONG_DIGITS = /\d{16}/; // integers with up to 15 digits are always safe
const INTEGER = /^-?\d+$/;

/** @typedef {{dates?: 'string'|'date', decimals?: 'string'|'number', bigints?: 'bigint'|'string'}} DecodeOptions */

/**
 * JSON.parse that keeps integers beyond Number.MAX_SAFE_INTEGER exact: as BigInt (default) or
 * as their digit string (`bigints: 'string'`).
 * @param {string} text
 * @param {DecodeOptions} [options]
 */
export function parseJson(text, options = {}) {
  if (!LONG_DIGITS.test(text)) return JSON.parse(text); // the fast path: nothing to protect
  const protectedText = protectBigInts(text);
  if (protectedText === text) return JSON.parse(text);
  const asString = options.bigints === 'string';
  return JSON.parse(protectedText, (_key, value) => {
    if (typeof value !== 'string' || !value.startsWith(MARK)) return value;
    const digits = value.slice(MARK.length);
    return asString ? digits : BigInt(digits);
  });
}

/** Rewrites unsafe integer literals (outside strings) as marked strings. */
function protectBigInts(text) {
  let out = '';
  let last = 0;
  let i = 0;
  while (i < text.length) {
    const c = text.charCodeAt(i);
    if (c === 0x22) {
      i = endOfString(text, i);
    } else if (c === 0x2d || (c >= 0x30 && c <= 0x39)) {
      const start = i;
      while (i < text.length && isNumberChar(text.charCodeAt(i))) i++;
      const token = text.slice(start, i);
      if (INTEGER.test(token) && !Number.isSafeInteger(Number(token))) {
        out += text.slice(last, start) + JSON.stringify(MARK + token);
        last = i;
      }
    } else {
      i++;
    }
  }
  return last === 0 ? text : out + text.slice(last);
}

function endOfString(text, quote) {
  let i = quote + 1;
  while (i < text.length) {
    const c = text.charCodeAt(i);
    if (c === 0x5c) i += 2;
    else if (c === 0x22) return i + 1;
    else i++;
  }
  return i;
}

function isNumberChar(c) {
  // digits . e E + -
  return (c >= 0x30 && c <= 0x39) || c === 0x2e || c === 0x65 || c === 0x45 || c === 0x2b || c === 0x2d;
}

/**
 * JSON.stringify that writes BigInt values as plain integer literals.
 * @param {unknown} value
 */
export function stringifyJson(value) {
  let sawBigInt = false;
  const text = JSON.stringify(value, (_key, v) => {
    if (typeof v !== 'bigint') return v;
    sawBigInt = true;
    return MARK + v.toString();
  });
  if (!sawBigInt) return text;
  const escaped = JSON.stringify(MARK).slice(1, -1).replace(/[\\^$.*+?()[\]{}|]/g, '\\$&');
  return text.replace(new RegExp(`"${escaped}(-?\\d+)"`, 'g'), '$1');
}

// --- tagged values --------------------------------------------------------------------------

const NOT_TAGGED = Symbol('not tagged');
const OFFSET = /(?:[zZ]|[+-]\d\d:?\d\d)$/;

function hasExactly(obj, keys) {
  const own = Object.keys(obj);
  return own.length === keys.length && keys.every((k) => Object.hasOwn(obj, k));
}

function toDate(text, suffix = '') {
  // Python writes naive datetimes without an offset; read them as UTC, never as local time.
  const iso = text + suffix + (OFFSET.test(text + suffix) ? '' : 'Z');
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? text : date; // unparseable: keep the exact text
}

function decodeDataframe(obj, options) {
  const { columns, dtypes, data } = obj;
  if (!Array.isArray(columns) || !Array.isArray(data) || typeof dtypes !== 'object' || dtypes === null) {
    return NOT_TAGGED;
  }
  const keys = uniqueKeys(columns.map(String));
  // Object.fromEntries defines own properties: a column named `__proto__` stays a cell instead
  // of setting the row's prototype to what the tool sent.
  const rows = data.map((row) =>
    Object.fromEntries(keys.map((key, i) => [key, decodeValue(Array.isArray(row) ? row[i] : undefined, options)])),
  );
  return { columns, dtypes, rows };
}

// Repeated column names become `name.1`, `name.2` (pandas' read_csv convention) so no cell is
// lost; as there, a suffix that is itself a column's name (`a`, `a`, `a.1`) is skipped.
function uniqueKeys(names) {
  const given = new Set(names);
  const counts = new Map();
  return names.map((name) => {
    let key = name;
    let count = counts.get(name) ?? 0;
    while (count > 0) {
      counts.set(name, count + 1);
      key = `${name}.${count}`;
      count = given.has(key) ? count + 1 : (counts.get(key) ?? 0);
    }
    counts.set(key, count + 1);
    return key;
  });
}

const DECODERS = {
  datetime: (o, opt) => (opt.dates === 'date' ? toDate(o.value) : o.value),
  date: (o, opt) => (opt.dates === 'date' ? toDate(o.value, 'T00:00:00') : o.value),
  time: (o) => o.value,
  decimal: (o, opt) => (opt.decimals === 'number' ? Number(o.value) : o.value),
  float: (o) => (['NaN', 'Infinity', '-Infinity'].includes(o.value) ? Number(o.value) : NOT_TAGGED),
};

function decodeTagged(obj, options) {
  const tag = obj.$type;
  if (Object.hasOwn(DECODERS, tag)) {
    if (!hasExactly(obj, ['$type', 'value']) || typeof obj.value !== 'string') return NOT_TAGGED;
    return DECODERS[tag](obj, options);
  }
  if (tag === 'bytes') {
    if (!hasExactly(obj, ['$type', 'base64']) || typeof obj.base64 !== 'string') return NOT_TAGGED;
    return Buffer.from(obj.base64, 'base64');
  }
  if (tag === 'dataframe' && hasExactly(obj, ['$type', 'columns', 'dtypes', 'data'])) {
    return decodeDataframe(obj, options);
  }
  return NOT_TAGGED;
}

/**
 * Decodes the protocol's tagged values anywhere inside a payload. An object is decoded only when
 * its shape is exactly a tag's; anything else (even with a `$type` key) is left as it is.
 * @param {unknown} value
 * @param {DecodeOptions} [options]
 */
export function decodeValue(value, options = {}) {
  if (Array.isArray(value)) return value.map((v) => decodeValue(v, options));
  if (value === null || typeof value !== 'object') return value;
  if (typeof value.$type === 'string') {
    const decoded = decodeTagged(value, options);
    if (decoded !== NOT_TAGGED) return decoded;
  }
  for (const key of Object.keys(value)) value[key] = decodeValue(value[key], options);
  return value;
}

/** Decodes the payload of data and result frames in place; returns the frame. */
export function decodeFrame(frame, options = {}) {
  if ((frame.type === 'data' || frame.type === 'result') && 'payload' in frame) {
    frame.payload = decodeValue(frame.payload, options);
  }
  return frame;
}
