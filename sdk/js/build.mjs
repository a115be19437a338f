#!/usr/bin/env node
// eventhost-build: a JavaScript or TypeScript handler into a WebAssembly
// component, with componentize-js.
//
//   node build.mjs HANDLER_DIR [-o OUT.wasm] [--wit WIT_DIR]
//
// HANDLER_DIR holds handler.ts (or handler.js) and handler.toml. The steps:
//
// 1. The manifest's sections say which capabilities the component may
//    import: componentize-js gives a component every import of the world it
//    is built against, and the host refuses a component importing one its
//    manifest does not grant. So the build writes a world `app` that
//    includes `core` (emit, log, config) plus the interfaces of exactly the
//    granted `[keyvalue]` and `[eventstore]` sections, next to a copy of the
//    WIT folder; and it keeps componentize-js's `wasi:http` (what `fetch`
//    uses) only with an `[http]` section.
// 2. TypeScript is type-checked with tsc (strict).
// 3. esbuild bundles the handler, the SDK and any npm packages it imports
//    into one ES module; the host interfaces stay imports.
// 4. componentize-js turns the bundle into a component (about a minute).
//
// The SDK's own files are found beside this script, the tools
// (componentize-js, esbuild, typescript) in a node_modules folder that
// Node resolves from here, so the script also works vendored into a
// handler project.

import { spawnSync } from 'node:child_process';
import { cpSync, existsSync, mkdirSync, mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const SDK_DIR = dirname(fileURLToPath(import.meta.url));

/** The SDK's entry points, as a handler imports them. */
const SDK_MODULES = { eventhost: 'index', 'eventhost/kv': 'kv', 'eventhost/events': 'events' };

/** The manifest section granting each capability, and the WIT imports it brings. */
const CAPABILITIES = {
  keyvalue: {
    prefix: 'wasi:keyvalue/',
    imports: ['wasi:keyvalue/store@0.2.0-draft', 'wasi:keyvalue/atomics@0.2.0-draft', 'wasi:keyvalue/batch@0.2.0-draft'],
  },
  eventstore: { prefix: 'eventhost:handler/event-store@', imports: ['event-store'] },
  http: { prefix: 'wasi:http/', imports: [] },
};

class BuildError extends Error {}

function usage() {
  return `usage: eventhost-build HANDLER_DIR [-o OUT.wasm] [--wit WIT_DIR]

Builds HANDLER_DIR/handler.ts (or handler.js) into a WebAssembly component
for eventhost, linking only what HANDLER_DIR/handler.toml grants.

  -o, --out PATH   the component to write (default: ./<dir name>.wasm)
  --wit DIR        the eventhost WIT folder (default: HANDLER_DIR/wit)`;
}

function step(message) {
  console.log(`eventhost-build: ${message}`);
}

function parse(argv) {
  let parsed;
  try {
    parsed = parseArgs({
      args: argv,
      allowPositionals: true,
      options: {
        out: { type: 'string', short: 'o' },
        wit: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
  } catch (err) {
    throw new BuildError(`${err.message}\n\n${usage()}`);
  }
  if (parsed.values.help) {
    console.log(usage());
    process.exit(0);
  }
  if (parsed.positionals.length !== 1) throw new BuildError(usage());
  const dir = resolve(parsed.positionals[0]);
  const out = resolve(parsed.values.out ?? `${basename(dir)}.wasm`);
  return { dir, out, wit: parsed.values.wit && resolve(parsed.values.wit) };
}

/** The handler source, the manifest and the WIT folder of HANDLER_DIR. */
function locate({ dir, wit }) {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new BuildError(`${dir} is not a directory`);
  const sources = ['handler.ts', 'handler.js'].map((name) => join(dir, name)).filter(existsSync);
  if (sources.length === 0) throw new BuildError(`${dir} has no handler.ts or handler.js`);
  if (sources.length > 1) throw new BuildError(`${dir} has both handler.ts and handler.js: keep one`);
  const manifest = join(dir, 'handler.toml');
  if (!existsSync(manifest)) throw new BuildError(`${dir} has no handler.toml (the handler's manifest)`);
  const witDir = wit ?? join(dir, 'wit');
  if (!existsSync(witDir)) {
    throw new BuildError(`no WIT folder: ${witDir} does not exist (pass --wit, e.g. the eventhost repository's wit/)`);
  }
  return { source: sources[0], manifest, witDir };
}

/** The capability sections of the manifest: `[keyvalue]`, `[eventstore]`, `[http]`. */
function grantedCapabilities(manifestPath) {
  const text = readFileSync(manifestPath, 'utf8');
  const granted = new Set();
  for (const match of text.matchAll(/^\s*\[\s*(keyvalue|eventstore|http)\s*\]\s*(#.*)?$/gm)) {
    granted.add(match[1]);
  }
  return granted;
}

/**
 * A copy of the WIT folder with a world `app`: `core` plus the granted
 * state interfaces. Returns the copy's path.
 */
function writeWorld(witDir, granted, work) {
  const files = readdirSync(witDir).filter((name) => name.endsWith('.wit'));
  const withCore = files.find((name) => /^\s*world\s+core\s*\{/m.test(readFileSync(join(witDir, name), 'utf8')));
  if (!withCore) {
    throw new BuildError(`${witDir} has no \`world core\`: it is not the eventhost WIT (eventhost:handler@0.2.0 or later)`);
  }
  const pkg = readFileSync(join(witDir, withCore), 'utf8').match(/^\s*package\s+([^;\s]+)\s*;/m);
  if (!pkg) throw new BuildError(`${join(witDir, withCore)} declares no package`);
  const copy = join(work, 'wit');
  cpSync(witDir, copy, { recursive: true });
  const imports = [...granted].flatMap((name) => CAPABILITIES[name].imports);
  const world = [
    `package ${pkg[1]};`,
    ``,
    `// Written by eventhost-build for one handler: what its manifest grants.`,
    `world app {`,
    `    include core;`,
    ...imports.map((name) => `    import ${name};`),
    `}`,
    ``,
  ].join('\n');
  writeFileSync(join(copy, 'eventhost-build-app.wit'), world);
  return copy;
}

/** The URL of a tool's module, from a node_modules folder Node resolves from the SDK. */
function tool(specifier) {
  try {
    return import.meta.resolve(specifier);
  } catch {
    const pkg = specifier.match(/^(@[^/]+\/)?[^/]+/)[0];
    throw new BuildError(
      `${pkg} is not installed where ${SDK_DIR} can find it: run \`npm ci\` (or \`npm install\`) in the project`,
    );
  }
}

/** Type-checks a TypeScript handler (strict), against the SDK's types. */
function typecheck(source, work) {
  const entry = (name) => join(SDK_DIR, `${name}.d.ts`);
  const paths = Object.fromEntries(Object.entries(SDK_MODULES).map(([spec, name]) => [spec, [entry(name)]]));
  const tsconfig = {
    compilerOptions: {
      strict: true,
      noEmit: true,
      target: 'ES2022',
      module: 'ESNext',
      moduleResolution: 'Bundler',
      lib: ['ES2022', 'DOM'],
      types: [],
      skipLibCheck: true,
      paths,
    },
    files: [source],
  };
  const config = join(work, 'tsconfig.json');
  writeFileSync(config, JSON.stringify(tsconfig, null, 2));
  const tsc = join(dirname(fileURLToPath(tool('typescript/package.json'))), 'bin', 'tsc');
  const run = spawnSync(process.execPath, [tsc, '-p', config, '--pretty', 'false'], { encoding: 'utf8' });
  if (run.error) throw new BuildError(`running tsc: ${run.error.message}`);
  if (run.status !== 0) {
    const output = `${run.stdout}${run.stderr}`.trim();
    throw new BuildError(`type errors in ${basename(source)}:\n${output}`);
  }
}

/** One ES module: the handler, the SDK, npm packages; host interfaces stay imports. */
async function bundle(source, granted, work) {
  const esbuild = await import(tool('esbuild'));
  const sdk = {
    name: 'eventhost-sdk',
    setup(build) {
      build.onResolve({ filter: /^eventhost(\/[a-z]+)?$/ }, ({ path }) => {
        const name = SDK_MODULES[path];
        if (!name) return { errors: [{ text: `the SDK has no module ${path} (it has ${Object.keys(SDK_MODULES).join(', ')})` }] };
        return { path: join(SDK_DIR, `${name}.js`) };
      });
    },
  };
  const outfile = join(work, 'handler.bundle.js');
  let result;
  try {
    result = await (esbuild.build ?? esbuild.default.build)({
      entryPoints: [source],
      outfile,
      bundle: true,
      format: 'esm',
      platform: 'neutral',
      target: 'es2022',
      mainFields: ['module', 'main'],
      external: ['eventhost:*', 'wasi:*'],
      plugins: [sdk],
      metafile: true,
      logLevel: 'silent',
    });
  } catch (err) {
    const messages = (err.errors ?? []).map((e) => {
      const at = e.location ? `${e.location.file}:${e.location.line}:${e.location.column}: ` : '';
      return `  ${at}${e.text}`;
    });
    throw new BuildError(`bundling ${basename(source)} failed:\n${messages.join('\n') || err.message}`);
  }
  const output = Object.values(result.metafile.outputs)[0];
  if (!output.exports.includes('handle')) {
    throw new BuildError(
      `${basename(source)} does not export \`handle\`: export const handle = handler((event) => { ... })`,
    );
  }
  // A host interface the manifest does not grant: say which section to add.
  for (const { path } of output.imports.filter((i) => i.external)) {
    for (const [section, { prefix }] of Object.entries(CAPABILITIES)) {
      if (path.startsWith(prefix) && !granted.has(section)) {
        throw new BuildError(
          `the handler imports ${path} (through ${section === 'keyvalue' ? 'eventhost/kv' : 'eventhost/events'}), ` +
            `which handler.toml does not grant: add a [${section}] section`,
        );
      }
    }
  }
  return outfile;
}

async function componentize(bundled, wit, granted) {
  const { componentize } = await import(tool('@bytecodealliance/componentize-js'));
  // fetch-event serves incoming HTTP requests: never wanted. http is what
  // fetch() uses, linked to the host's wasi:http only with an [http] grant.
  const disableFeatures = granted.has('http') ? ['fetch-event'] : ['http', 'fetch-event'];
  try {
    const { component } = await componentize({
      sourcePath: bundled,
      witPath: wit,
      worldName: 'app',
      disableFeatures,
    });
    return component;
  } catch (err) {
    throw new BuildError(`componentize-js failed:\n${err.message}`);
  }
}

async function main() {
  const args = parse(process.argv.slice(2));
  const { source, manifest, witDir } = locate(args);
  const granted = grantedCapabilities(manifest);
  const linked = ['emit', 'logging', 'config', ...[...granted].map((name) => `[${name}]`)];
  step(`${source}`);
  step(`capabilities: ${linked.join(', ')} (from ${basename(manifest)})`);

  const work = mkdtempSync(join(tmpdir(), 'eventhost-build-'));
  try {
    const wit = writeWorld(witDir, granted, work);
    if (source.endsWith('.ts')) {
      step('type-checking (tsc)');
      typecheck(source, work);
    }
    step('bundling (esbuild)');
    const bundled = await bundle(source, granted, work);
    step('componentizing (componentize-js; this takes a minute)');
    const started = Date.now();
    const component = await componentize(bundled, wit, granted);
    mkdirSync(dirname(args.out), { recursive: true });
    writeFileSync(args.out, component);
    const mib = (component.length / (1 << 20)).toFixed(1);
    const seconds = ((Date.now() - started) / 1000).toFixed(0);
    step(`wrote ${args.out} (${mib} MiB, componentized in ${seconds} s)`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

main().catch((err) => {
  console.error(`eventhost-build: error: ${err instanceof BuildError ? err.message : err.stack}`);
  process.exit(1);
});
