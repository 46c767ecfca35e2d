// @sandbox/client: run whitelisted data tools in the sandbox from Node.js.
// Docs: docs/node.md in the repository. Types: index.d.ts.
export { runTool } from './src/run-tool.js';
export { SandboxSession } from './src/session.js';
export { SandboxError, EXIT_CODES } from './src/errors.js';
export { decodeValue, parseJson } from './src/json.js';
